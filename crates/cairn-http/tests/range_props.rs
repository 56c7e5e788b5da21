//! Property tests for the Range planner (`cairn_http::range::plan`): whatever the header, a plan
//! stays inside the representation, and well-formed headers get exactly the RFC 9110 answer
//! (with Cairn's documented choices: ends past EOF are clamped, overlapping lengths adding up to
//! more than the file give the whole file, more than 100 ranges is 416).

use cairn_http::range::{plan, Plan, MAX_RANGES};
use proptest::prelude::*;

/// Checks the invariants every answer must satisfy, for any header and size.
fn assert_in_bounds(header: Option<&str>, size: u64) {
    match plan(header, size) {
        Ok(Plan::Full) => {}
        Ok(Plan::Single(start, len)) => {
            assert!(len > 0, "{header:?} / {size}: empty single range");
            assert!(
                start < size && len <= size - start,
                "{header:?} / {size}: ({start}, {len}) leaves 0..{size}"
            );
        }
        Ok(Plan::Multi(ranges)) => {
            assert!(
                (2..=MAX_RANGES).contains(&ranges.len()),
                "{header:?} / {size}: {} ranges",
                ranges.len()
            );
            let mut total: u128 = 0;
            for &(start, len) in &ranges {
                assert!(len > 0, "{header:?} / {size}: empty range in {ranges:?}");
                assert!(
                    start < size && len <= size - start,
                    "{header:?} / {size}: ({start}, {len}) leaves 0..{size}"
                );
                total += u128::from(len);
            }
            assert!(
                total <= u128::from(size),
                "{header:?} / {size}: multipart sends {total} bytes, more than the file"
            );
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 416, "{header:?} / {size}: {e:?}");
            assert_eq!(e.range_size, Some(size), "{header:?} / {size}: {e:?}");
            assert_eq!(e.kind, "bad_range");
        }
    }
}

/// One well-formed range item, as the client meant it.
#[derive(Debug, Clone, Copy)]
enum Spec {
    /// `a-b`
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`
    Suffix(u64),
    /// `a-` followed by an end too large for 64 bits: means "to the end".
    FromHuge(u64),
}

impl Spec {
    fn render(self) -> String {
        match self {
            Spec::FromTo(a, b) => format!("{a}-{b}"),
            Spec::From(a) => format!("{a}-"),
            Spec::Suffix(n) => format!("-{n}"),
            Spec::FromHuge(a) => format!("{a}-{}0", u64::MAX),
        }
    }
}

/// The answer RFC 9110 (and docs/api.md §10) gives, computed independently of the parser.
fn expected(specs: &[Spec], size: u64) -> Option<Plan> {
    if specs.len() > MAX_RANGES {
        return None;
    }
    // `a-b` with `b < a`, and `-0`, are malformed.
    let malformed =
        |s: &Spec| matches!(*s, Spec::Suffix(0)) || matches!(*s, Spec::FromTo(a, b) if b < a);
    if specs.iter().any(malformed) {
        return None;
    }
    // An empty file ignores any other range, as nginx does.
    if size == 0 {
        return Some(Plan::Full);
    }
    let ranges: Vec<(u64, u64)> = specs
        .iter()
        .filter_map(|spec| {
            let (start, last) = match *spec {
                Spec::FromTo(a, b) => (a, b.min(size.checked_sub(1)?)),
                Spec::From(a) | Spec::FromHuge(a) => (a, size.checked_sub(1)?),
                Spec::Suffix(n) => (size - n.min(size), size.checked_sub(1)?),
            };
            (start < size).then(|| (start, last - start + 1))
        })
        .collect();
    let total: u128 = ranges.iter().map(|r| u128::from(r.1)).sum();
    match ranges.len() {
        0 => None,
        1 => Some(Plan::Single(ranges[0].0, ranges[0].1)),
        _ if total > u128::from(size) => Some(Plan::Full),
        _ => Some(Plan::Multi(ranges)),
    }
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..3000u64,
        1 => Just(0u64),
        1 => any::<u64>(),
        1 => (u64::MAX - 3)..=u64::MAX,
    ]
}

/// Positions around the interesting boundaries of `size`, and anywhere.
fn position(size: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..=size.saturating_mul(2).max(4),
        1 => (size.saturating_sub(2))..=size.saturating_add(2),
        1 => any::<u64>(),
        1 => Just(u64::MAX),
    ]
}

fn spec(size: u64) -> impl Strategy<Value = Spec> {
    prop_oneof![
        3 => (position(size), position(size)).prop_map(|(a, b)| Spec::FromTo(a.min(b), a.max(b))),
        1 => (position(size), position(size)).prop_map(|(a, b)| Spec::FromTo(a, b)),
        2 => position(size).prop_map(Spec::From),
        2 => position(size).prop_map(Spec::Suffix),
        1 => position(size).prop_map(Spec::FromHuge),
    ]
}

fn sized_specs() -> impl Strategy<Value = (u64, Vec<Spec>)> {
    size().prop_flat_map(|size| {
        let count = prop_oneof![6 => 1..4usize, 1 => 4..12usize, 1 => 99..103usize];
        (
            Just(size),
            count.prop_flat_map(move |n| prop::collection::vec(spec(size), n)),
        )
    })
}

/// Spellings of the unit and separators the parser must treat alike.
fn render(specs: &[Spec], unit: &str, sep: &str, pad: &str) -> String {
    let items: Vec<String> = specs.iter().map(|s| s.render()).collect();
    format!("{pad}{unit}{}{pad}", items.join(sep))
}

/// Headers that look like Range headers, with the characters the grammar cares about.
fn header_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[bB][yY][tT][eE][sS]=[0-9,\\- ]{0,40}",
        "[bB][yY][tT][eE][sS]=([0-9]{0,22}-[0-9]{0,22}, ?){0,5}",
        "[ \t]{0,2}(bytes|items|by tes)[ =]{0,2}[0-9a-f+\\-, ]{0,24}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any header, any size: a plan stays inside `0..size`, no range is empty, a multipart
    /// reply never carries more bytes than the file and has 2..=100 parts, and every refusal
    /// is a 416 `bad_range` carrying the size.
    #[test]
    fn any_header_plans_within_the_file(header in header_like(), size in size()) {
        assert_in_bounds(Some(&header), size);
    }

    /// Well-formed headers, however spelled, get exactly the RFC 9110 answer: unsatisfiable
    /// items are dropped, ends past EOF are clamped, a backwards item or `-0` is 416,
    /// overlapping lengths adding up to more than the file give the whole file.
    #[test]
    fn well_formed_headers_match_the_rfc_model(
        (size, specs) in sized_specs(),
        unit in prop::sample::select(vec!["bytes=", "Bytes=", "BYTES="]),
        sep in prop::sample::select(vec![",", ", ", " ,", " , "]),
        pad in prop::sample::select(vec!["", " ", "\t"]),
    ) {
        let header = render(&specs, unit, sep, pad);
        assert_in_bounds(Some(&header), size);
        let got = plan(Some(&header), size).ok();
        prop_assert_eq!(got, expected(&specs, size), "{:?} / {}", header, size);
    }

    /// A single `a-` or `a-b` starting at or after EOF of a non-empty file is the 416 (never a
    /// 200 or an empty 206).
    #[test]
    fn a_start_at_or_after_eof_is_416(size in size().prop_filter("empty files ignore ranges", |&s| s > 0), past in 0..1000u64, end in any::<Option<u64>>()) {
        let start = size.saturating_add(past);
        let header = match end {
            Some(end) => format!("bytes={start}-{}", end.max(start)),
            None => format!("bytes={start}-"),
        };
        let err = plan(Some(&header), size).unwrap_err();
        prop_assert_eq!((err.status.as_u16(), err.range_size), (416, Some(size)));
    }

    /// An end at or past EOF is clamped to the last byte: `a-b` with `a < size <= b+1` is the
    /// same as `a-`.
    #[test]
    fn an_end_past_eof_is_clamped(size in 1..u64::MAX, start_frac in 0.0..1.0f64, over in any::<u64>()) {
        let start = ((size as f64 * start_frac) as u64).min(size - 1);
        let end = (size - 1).saturating_add(over);
        let header = format!("bytes={start}-{end}");
        prop_assert_eq!(plan(Some(&header), size).unwrap(), Plan::Single(start, size - start));
        let header = format!("bytes={start}-{end}999999999999999999999");
        prop_assert_eq!(plan(Some(&header), size).unwrap(), Plan::Single(start, size - start));
    }

    /// A unit other than `bytes` is ignored (the whole content), and no header is the whole
    /// content.
    #[test]
    fn other_units_and_no_header_are_full(unit in "[a-z]{1,8}", rest in "[ -~]{0,20}", size in size()) {
        prop_assume!(!unit.eq_ignore_ascii_case("bytes"));
        let header = format!("{unit}={rest}");
        prop_assert_eq!(plan(Some(&header), size).unwrap(), Plan::Full);
        prop_assert_eq!(plan(None, size).unwrap(), Plan::Full);
    }
}
