//! `cairn_http::range::plan` on any header and size.
//!
//! Input: `SIZE\nHEADER` (a first line that is not a number means size 1000 and the whole input
//! is the header). Besides "no panic", every plan must stay inside `0..size`, and a header in the
//! strict grammar (`bytes=` then `a-b`, `a-` or `-n` items with canonical numbers, `,`-separated)
//! must get exactly the RFC 9110 answer of the independent model below.

#![no_main]

use cairn_http::range::{plan, Plan, MAX_RANGES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (size, header) = match text.split_once('\n') {
        Some((first, rest)) => match first.parse::<u64>() {
            Ok(size) => (size, rest),
            Err(_) => (1000, text),
        },
        None => (1000, text),
    };
    for size in [size, 0, 1, u64::MAX] {
        let got = plan(Some(header), size);
        check_bounds(header, size, &got);
        if let Some(want) = model(header, size) {
            assert_eq!(got.ok(), want, "{header:?} / {size}");
        }
    }
});

fn check_bounds(header: &str, size: u64, got: &Result<Plan, cairn_http::error::ApiError>) {
    let in_file = |&(start, len): &(u64, u64)| len > 0 && start < size && len <= size - start;
    match got {
        Ok(Plan::Full) => {}
        Ok(Plan::Single(start, len)) => {
            assert!(in_file(&(*start, *len)), "{header:?} / {size}: {got:?}")
        }
        Ok(Plan::Multi(ranges)) => {
            assert!((2..=MAX_RANGES).contains(&ranges.len()), "{header:?}");
            assert!(ranges.iter().all(in_file), "{header:?} / {size}: {got:?}");
            let total: u128 = ranges.iter().map(|r| u128::from(r.1)).sum();
            assert!(total <= u128::from(size), "{header:?} / {size}: {got:?}");
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 416, "{header:?}");
            assert_eq!(e.range_size, Some(size), "{header:?}");
        }
    }
}

/// A number as the strict grammar writes it: digits, no leading zero, fits in u64.
fn canonical(s: &str) -> Option<u64> {
    let n: u64 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// The expected answer for headers in the strict grammar; `None` when the header is outside it
/// (then only the bounds are checked). The inner `None` is a 416.
fn model(header: &str, size: u64) -> Option<Option<Plan>> {
    let specs = header.strip_prefix("bytes=")?;
    let mut items = Vec::new();
    for item in specs.split(',') {
        let (a, b) = item.split_once('-')?;
        items.push(match (a, b) {
            ("", n) => (None, Some(canonical(n)?)),
            (a, "") => (Some(canonical(a)?), None),
            (a, b) => (Some(canonical(a)?), Some(canonical(b)?)),
        });
    }
    if items.len() > MAX_RANGES
        || items.iter().any(|i| match *i {
            (None, Some(0)) => true,
            (Some(a), Some(b)) => b < a,
            _ => false,
        })
    {
        return Some(None);
    }
    let ranges: Vec<(u64, u64)> = items
        .iter()
        .filter_map(|i| {
            let last = size.checked_sub(1)?;
            let (start, end) = match *i {
                (None, Some(n)) => (size - n.min(size), last),
                (Some(a), None) => (a, last),
                (Some(a), Some(b)) => (a, b.min(last)),
                (None, None) => unreachable!(),
            };
            (start < size).then(|| (start, end - start + 1))
        })
        .collect();
    let total: u128 = ranges.iter().map(|r| u128::from(r.1)).sum();
    Some(match ranges.len() {
        0 => None,
        1 => Some(Plan::Single(ranges[0].0, ranges[0].1)),
        _ if total > u128::from(size) => Some(Plan::Full),
        _ => Some(Plan::Multi(ranges)),
    })
}
