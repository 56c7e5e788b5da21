//! Conditional requests (RFC 9110 §13), sans IO. For downloads: from a file's validators and the
//! request's precondition headers, whether it gets its content (and whether a `Range` counts),
//! a 304 or a 412. For finalize: what the object's newest version must be ([`head_condition`]).
//!
//! The order is the RFC's (§13.2.2): `If-Match`, else `If-Unmodified-Since`, can fail the request
//! (412); then `If-None-Match`, else `If-Modified-Since`, can make it a 304; then `If-Range`
//! decides whether the `Range` header is honoured. A date that does not parse is ignored, as the
//! RFC asks, and so is an `If-Modified-Since` in the future.
//!
//! `Last-Modified` is a weak validator here (§8.8.2.2): two versions finalized within one second
//! share it. So `If-Range` honours the `Range` only for the ETag, never for a date: a date could
//! join the start of one version to the rest of another in the client's file. A file without a
//! modification date (a draft's, which changes under one date) has the date conditions ignored,
//! as §13.1.3 and §13.1.4 ask.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_core::VersionHash;
use cairn_jobs::{HeadCondition, Versions};

/// A file's validators: its strong ETag (quoted) and when it last changed, if that is known
/// (seconds since the epoch: what `Last-Modified` says).
pub struct Validators<'a> {
    pub etag: &'a str,
    pub modified: Option<u64>,
}

/// The precondition headers of a request, as sent.
#[derive(Default, Clone, Copy)]
pub struct Preconditions<'a> {
    pub if_match: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the content; `honour_range` is false when `If-Range` no longer matches.
    Content {
        honour_range: bool,
    },
    NotModified,
    /// 412, with the header that failed.
    PreconditionFailed(&'static str),
}

pub fn evaluate(v: &Validators, p: Preconditions, now: SystemTime) -> Outcome {
    if let Some(list) = p.if_match {
        if !tags(list).any(|t| t == "*" || t == v.etag) {
            return Outcome::PreconditionFailed("If-Match");
        }
    } else if let (Some(since), Some(modified)) = (p.if_unmodified_since.and_then(date), v.modified)
    {
        if modified > since {
            return Outcome::PreconditionFailed("If-Unmodified-Since");
        }
    }
    if let Some(list) = p.if_none_match {
        // Weak comparison: a `W/` tag matches the strong tag it names.
        if tags(list).any(|t| t == "*" || t == v.etag || t.strip_prefix("W/") == Some(v.etag)) {
            return Outcome::NotModified;
        }
    } else if let (Some(since), Some(modified)) = (p.if_modified_since.and_then(date), v.modified) {
        let future = UNIX_EPOCH + Duration::from_secs(since) > now;
        if !future && modified <= since {
            return Outcome::NotModified;
        }
    }
    // Strong comparison: a `W/` tag, like any date, does not match.
    let honour_range = p.if_range.is_none_or(|r| r.trim() == v.etag);
    Outcome::Content { honour_range }
}

/// A finalize's `If-Match` and `If-None-Match` as a condition on the object's newest version,
/// whose entity-tag is its version hash: `"hq__…"` (a bare `hq__…` is taken too). If-Match
/// compares strongly, so a `W/` tag there matches nothing, as does a tag that is not a version
/// hash.
pub fn head_condition(if_match: Option<&str>, if_none_match: Option<&str>) -> HeadCondition {
    HeadCondition {
        if_match: if_match.map(|l| versions(l, false)),
        if_none_match: if_none_match.map(|l| versions(l, true)),
    }
}

fn versions(list: &str, weak_matches: bool) -> Versions {
    if tags(list).any(|t| t == "*") {
        return Versions::Any;
    }
    let named = tags(list)
        .filter_map(|t| match t.strip_prefix("W/") {
            Some(weak) => weak_matches.then_some(weak),
            None => Some(t),
        })
        .filter_map(|t| {
            let bare = t.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
            bare.unwrap_or(t).parse::<VersionHash>().ok()
        })
        .collect();
    Versions::These(named)
}

fn tags(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// An HTTP-date as seconds since the epoch; `None` if it does not parse.
fn date(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "\"abc\"";
    const MODIFIED: u64 = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 GMT
    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const EARLIER: &str = "Tue, 14 Nov 2023 22:13:19 GMT";
    const LATER: &str = "Tue, 14 Nov 2023 22:13:21 GMT";

    /// Evaluates the headers given as (name, value) pairs, an hour after the file changed.
    fn run(headers: &[(&str, &'static str)]) -> Outcome {
        let mut p = Preconditions::default();
        for &(name, value) in headers {
            let slot = match name {
                "if-match" => &mut p.if_match,
                "if-unmodified-since" => &mut p.if_unmodified_since,
                "if-none-match" => &mut p.if_none_match,
                "if-modified-since" => &mut p.if_modified_since,
                "if-range" => &mut p.if_range,
                _ => unreachable!("{name}"),
            };
            *slot = Some(value);
        }
        let v = Validators {
            etag: ETAG,
            modified: Some(MODIFIED),
        };
        evaluate(&v, p, UNIX_EPOCH + Duration::from_secs(MODIFIED + 3600))
    }

    #[test]
    fn without_a_modification_date_the_date_conditions_are_ignored() {
        let v = Validators {
            etag: ETAG,
            modified: None,
        };
        let now = UNIX_EPOCH + Duration::from_secs(MODIFIED + 3600);
        let content = Outcome::Content { honour_range: true };
        for (ims, ius) in [(Some(LATER), None), (None, Some(EARLIER))] {
            let p = Preconditions {
                if_modified_since: ims,
                if_unmodified_since: ius,
                ..Preconditions::default()
            };
            assert_eq!(evaluate(&v, p, now), content, "{ims:?} {ius:?}");
        }
    }

    #[test]
    fn finalize_tags_name_version_hashes() {
        use cairn_core::{Digest, ObjectId};
        let v = |n: u8| VersionHash::new(Digest::from_bytes([n; 32]), 9, ObjectId::new([n; 20]));
        let (v1, v2) = (v(1), v(2));
        let these = |l: &[VersionHash]| Some(Versions::These(l.to_vec()));
        let cases = [
            (format!("\"{v1}\""), these(&[v1]), these(&[v1])),
            (format!("{v1}"), these(&[v1]), these(&[v1])),
            (
                format!("\"{v1}\", \"{v2}\""),
                these(&[v1, v2]),
                these(&[v1, v2]),
            ),
            (format!("W/\"{v1}\""), these(&[]), these(&[v1])),
            ("\"junk\", \"\"".to_string(), these(&[]), these(&[])),
            (
                format!("\"{v1}\", *"),
                Some(Versions::Any),
                Some(Versions::Any),
            ),
        ];
        for (list, if_match, if_none_match) in cases {
            let c = head_condition(Some(&list), Some(&list));
            assert_eq!(
                (c.if_match, c.if_none_match),
                (if_match, if_none_match),
                "{list}"
            );
        }
        assert_eq!(head_condition(None, None), HeadCondition::default());
    }

    #[test]
    fn the_rfc_9110_order_and_comparisons() {
        use Outcome::*;
        let content = Content { honour_range: true };
        let failed = PreconditionFailed;
        #[rustfmt::skip]
        let cases: &[(&[(&str, &'static str)], Outcome)] = &[
            (&[], content),
            // If-Match: strong comparison, `*` for any current representation.
            (&[("if-match", ETAG)], content),
            (&[("if-match", "*")], content),
            (&[("if-match", "\"x\", \"abc\"")], content),
            (&[("if-match", "\"x\"")], failed("If-Match")),
            (&[("if-match", "W/\"abc\"")], failed("If-Match")),
            (&[("if-match", "")], failed("If-Match")),
            // If-Unmodified-Since, looked at only without If-Match.
            (&[("if-unmodified-since", LM)], content),
            (&[("if-unmodified-since", LATER)], content),
            (&[("if-unmodified-since", EARLIER)], failed("If-Unmodified-Since")),
            (&[("if-unmodified-since", "yesterday")], content),
            (&[("if-match", ETAG), ("if-unmodified-since", EARLIER)], content),
            // If-None-Match: weak comparison; it wins over If-Modified-Since.
            (&[("if-none-match", ETAG)], NotModified),
            (&[("if-none-match", "W/\"abc\"")], NotModified),
            (&[("if-none-match", "*")], NotModified),
            (&[("if-none-match", "\"x\"")], content),
            (&[("if-none-match", "\"x\""), ("if-modified-since", LATER)], content),
            // If-Modified-Since: not modified at or after Last-Modified; a future date is ignored.
            (&[("if-modified-since", LM)], NotModified),
            (&[("if-modified-since", LATER)], NotModified),
            (&[("if-modified-since", EARLIER)], content),
            (&[("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")], content),
            (&[("if-modified-since", "not a date")], content),
            // 412 comes before 304.
            (&[("if-match", "\"x\""), ("if-none-match", ETAG)], failed("If-Match")),
            // If-Range: only the ETag keeps the Range; a date, even the exact Last-Modified,
            // and a weak tag do not.
            (&[("if-range", ETAG)], content),
            (&[("if-range", LM)], Content { honour_range: false }),
            (&[("if-range", "W/\"abc\"")], Content { honour_range: false }),
            (&[("if-range", "\"stale\"")], Content { honour_range: false }),
            (&[("if-range", LATER)], Content { honour_range: false }),
        ];
        for (headers, want) in cases {
            assert_eq!(&run(headers), want, "{headers:?}");
        }
    }
}
