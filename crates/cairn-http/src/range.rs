//! Range requests, decided as plain values (no I/O): which bytes a GET returns and with which
//! status. Syntax is checked by the `http-range-header` crate; resolution against the size
//! follows RFC 9110 with the behaviour the official client relies on: an end past EOF is clamped.
//! An empty file ignores a well-formed range (200), as nginx does.

use crate::error::ApiError;

/// Most ranges honoured in one request (the crate's own DoS limit is the same).
pub const MAX_RANGES: usize = 100;

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole representation.
    Full,
    /// 206 with one range `(start, len)`.
    Single(u64, u64),
    /// 206 `multipart/byteranges` with these ranges.
    Multi(Vec<(u64, u64)>),
}

/// Decides the reply to `Range: header` for a representation of `size` bytes.
/// A malformed or wholly unsatisfiable header is a 416 carrying the size.
pub fn plan(header: Option<&str>, size: u64) -> Result<Plan, ApiError> {
    let Some(h) = header else {
        return Ok(Plan::Full);
    };
    let bad = |why: &str| ApiError::range_not_satisfiable(size, format!("Range {h:?}: {why}"));
    // RFC 9110: the unit is case-insensitive, and a unit the server does not know is ignored
    // (the whole content is sent); a malformed `bytes` range is refused.
    let h = h.trim();
    let Some(specs) = h
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .map(|_| &h[6..])
    else {
        return Ok(Plan::Full);
    };
    // A list may hold empty elements, which a recipient must accept (RFC 9110 §5.6.1).
    let items: Vec<String> = specs
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(normalize)
        .collect();
    http_range_header::parse_range_header(&format!("bytes={}", items.join(",")))
        .map_err(|_| bad("not a valid bytes range"))?;
    if items.len() > MAX_RANGES {
        return Err(bad("too many ranges"));
    }
    if items.iter().any(|i| backwards(i)) {
        return Err(bad("a range ends before it starts"));
    }
    if size == 0 {
        // Nothing of an empty file is satisfiable, and RFC 9110 lets a server ignore Range:
        // nginx does here, and so does Cairn, so `bytes=0-` of an empty file is its empty body.
        return Ok(Plan::Full);
    }
    let ranges: Vec<(u64, u64)> = items
        .iter()
        .filter_map(|item| resolve(item, size))
        .collect();
    match ranges.len() {
        0 => Err(bad("no range overlaps the content")),
        1 => Ok(Plan::Single(ranges[0].0, ranges[0].1)),
        // Overlapping ranges could multiply the response; serve the whole thing instead.
        // Summed in u128: up to 100 lengths of up to `size` bytes each overflow u64.
        _ if ranges.iter().map(|r| u128::from(r.1)).sum::<u128>() > u128::from(size) => {
            Ok(Plan::Full)
        }
        _ => Ok(Plan::Multi(ranges)),
    }
}

/// One range item in the form the parser takes, meaning the same: leading zeros go (RFC 9110's
/// `1*DIGIT` allows them; the crate does not), an end too large for 64 bits means "to the end"
/// (`a-`, as ends past EOF are clamped), and a suffix too large for 64 bits is the whole file.
/// Anything that is not digits is left for the parser to refuse.
fn normalize(item: &str) -> String {
    let Some((a, b)) = item.split_once('-') else {
        return item.to_string();
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let trim = |s: &str| match s.trim_start_matches('0') {
        "" => "0".to_string(),
        t => t.to_string(),
    };
    let (a, b) = (
        if digits(a) { trim(a) } else { a.to_string() },
        if digits(b) { trim(b) } else { b.to_string() },
    );
    match (a.is_empty(), digits(&b) && b.parse::<u64>().is_err()) {
        (false, true) => format!("{a}-"),
        (true, true) => format!("-{}", u64::MAX),
        _ => format!("{a}-{b}"),
    }
}

/// `a-b` with `b < a`.
fn backwards(item: &str) -> bool {
    match item.split_once('-') {
        Some((a, b)) => matches!((a.parse::<u64>(), b.parse::<u64>()), (Ok(a), Ok(b)) if b < a),
        None => false,
    }
}

/// One `a-b`, `a-` or `-n` item as `(start, len)`, or `None` if it is unsatisfiable.
fn resolve(item: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = item.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        let len = n.min(size);
        return (len > 0).then(|| (size - len, len));
    }
    let start: u64 = a.parse().ok()?;
    if start >= size {
        return None;
    }
    let end = match b {
        "" => size - 1,
        _ => b.parse::<u64>().ok()?.min(size - 1),
    };
    (end >= start).then(|| (start, end - start + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let s = 1000;
        let cases: &[(Option<&str>, Option<Plan>)] = &[
            (None, Some(Plan::Full)),
            (Some("bytes=0-99"), Some(Plan::Single(0, 100))),
            (Some("bytes=990-"), Some(Plan::Single(990, 10))),
            (Some("bytes=-10"), Some(Plan::Single(990, 10))),
            (Some("bytes=-5000"), Some(Plan::Single(0, 1000))),
            (Some("bytes=900-9999999"), Some(Plan::Single(900, 100))),
            (Some("bytes=0-9999999"), Some(Plan::Single(0, 1000))),
            (Some("bytes=999-999"), Some(Plan::Single(999, 1))),
            // Empty list elements are accepted (RFC 9110 §5.6.1); a list of only those is not.
            (Some("bytes=,,0-1, ,"), Some(Plan::Single(0, 2))),
            (Some("bytes=,"), None),
            (Some("bytes="), None),
            (
                Some("bytes=0-1,10-19"),
                Some(Plan::Multi(vec![(0, 2), (10, 10)])),
            ),
            (Some("bytes=0-1,5000-6000"), Some(Plan::Single(0, 2))),
            (Some("bytes=0-999,0-999"), Some(Plan::Full)),
            (Some("bytes=1000-"), None),
            (Some("bytes=1000-2000"), None),
            (Some("bytes=-0"), None),
            (Some("bytes=5-1"), None),
            (Some("bytes=abc"), None),
            (Some("items=0-1"), Some(Plan::Full)),
            (Some("bytes=-"), None),
            (Some("bytes=18446744073709551616-"), None),
            (
                Some("bytes=0-99999999999999999999"),
                Some(Plan::Single(0, 1000)),
            ),
            (Some("Bytes=0-1"), Some(Plan::Single(0, 2))),
            (Some("bytes=5-1,0-1"), None),
            // Leading zeros are digits like any others (RFC 9110 `1*DIGIT`).
            (Some("bytes=00-04"), Some(Plan::Single(0, 5))),
            (Some("bytes=0-04"), Some(Plan::Single(0, 5))),
            (Some("bytes=-05"), Some(Plan::Single(995, 5))),
            (Some("bytes=-00"), None),
            (Some("bytes=0010-0019"), Some(Plan::Single(10, 10))),
            // A suffix longer than 64 bits is, like any suffix longer than the file, all of it.
            (
                Some("bytes=-18446744073709551616"),
                Some(Plan::Single(0, 1000)),
            ),
            (Some("bytes=0x10-20"), None),
            (Some("bytes=1-2-3"), None),
        ];
        for (h, want) in cases {
            let got = plan(*h, s);
            match want {
                Some(p) => assert_eq!(got.as_ref().ok(), Some(p), "{h:?}"),
                None => {
                    let e = got.expect_err(h.unwrap_or(""));
                    assert_eq!(
                        (e.status.as_u16(), e.range_size),
                        (416, Some(1000)),
                        "{h:?}"
                    );
                }
            }
        }
        // An empty file ignores a well-formed range, as nginx does; a malformed one is still 416.
        for h in ["bytes=0-0", "bytes=0-", "bytes=-5", "bytes=0-1,5-9"] {
            assert_eq!(plan(Some(h), 0).ok(), Some(Plan::Full), "{h}");
        }
        for h in ["bytes=abc", "bytes=5-1", "bytes=-0"] {
            assert_eq!(plan(Some(h), 0).unwrap_err().range_size, Some(0), "{h}");
        }
    }
}
