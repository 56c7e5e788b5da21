//! Path rules for files inside a content object's `files` tree.
//!
//! Every path that reaches the engine goes through [`FilePath`], so the rules live in one place:
//! once a value of this type exists, no layer above or below has to worry about `..` escapes,
//! Windows separators, NUL bytes cutting a C string short, or names no filesystem could hold.
//!
//! The normalized form is relative, segments joined by `/`, with no leading or trailing slash.
//! Clients write both `/dir/a.mp4` and `dir/a.mp4`, so leading slashes are accepted and dropped;
//! everything else that is ambiguous is rejected rather than repaired, because a silently
//! "fixed" path would name a different file than the one the client meant.
//!
//! Names are otherwise kept byte for byte (any UTF-8, case preserved): the Fabric treats them as
//! opaque, and so must Cairn.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Longest allowed segment in bytes, the common filesystem `NAME_MAX`.
pub const MAX_SEGMENT_LEN: usize = 255;
/// Longest allowed normalized path in bytes, the common filesystem `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;
/// Most segments a path may have; bounds recursion in tree walks.
pub const MAX_DEPTH: usize = 256;

/// How much of an offending segment or path an error message quotes.
const QUOTE_LEN: usize = 64;

/// Why a path was rejected. Each rule has its own variant, so callers (and tests) can tell them
/// apart; messages quote the offending part, shortened, with control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing left after dropping slashes, where a file (not the root) was required.
    #[error("path is empty")]
    Empty,
    /// `a//b`: an empty segment almost always means a client joined paths wrongly.
    #[error("path {path:?} has an empty segment")]
    EmptySegment { path: String },
    /// `.` and `..` are relative references; the tree has no notion of them.
    #[error("path segment {segment:?} is not allowed: `.` and `..` are not file names")]
    DotSegment { segment: String },
    /// NUL or another ASCII control character, which terminals and C APIs misread.
    #[error("path segment {segment:?} contains control character {byte:#04x}")]
    ControlChar { segment: String, byte: u8 },
    /// `\` is a separator on Windows; allowing it would let one path mean two things.
    #[error("path segment {segment:?} contains a backslash")]
    Backslash { segment: String },
    /// A name that was expected to be one segment contains `/`.
    #[error("{segment:?} is not a single path segment: it contains `/`")]
    NotASegment { segment: String },
    #[error("path segment {segment:?} is {len} bytes long; the limit is {max}", max = MAX_SEGMENT_LEN)]
    SegmentTooLong { segment: String, len: usize },
    #[error("path is {len} bytes long; the limit is {max}", max = MAX_PATH_LEN)]
    PathTooLong { len: usize },
    #[error("path has more than {max} segments", max = MAX_DEPTH)]
    TooDeep,
}

/// A normalized, validated relative path inside an object's `files` tree.
///
/// The empty path is the root directory. Ordering is that of the underlying string bytes, which
/// is also the order of storage keys built from [`FilePath::as_str`], so the two never disagree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilePath(String);

impl FilePath {
    /// The root directory: the empty path.
    pub fn root() -> FilePath {
        FilePath(String::new())
    }

    /// Parses the path of a file: like [`FilePath::parse_dir`], but the root is an error,
    /// because a file can never live at the root itself.
    pub fn parse(input: &str) -> Result<FilePath, PathError> {
        let path = FilePath::parse_dir(input)?;
        if path.is_root() {
            return Err(PathError::Empty);
        }
        Ok(path)
    }

    /// Parses the path of a directory, where `""` and `"/"` mean the root.
    ///
    /// Drops all leading slashes and one trailing slash (a directory spelled `dir/`). A second
    /// trailing slash would be an empty segment and is rejected like one in the middle.
    pub fn parse_dir(input: &str) -> Result<FilePath, PathError> {
        let trimmed = input.trim_start_matches('/');
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Ok(FilePath::root());
        }
        check_path_len(trimmed.len())?;
        for (index, segment) in trimmed.split('/').enumerate() {
            check_depth(index + 1)?;
            check_segment(segment, trimmed)?;
        }
        Ok(FilePath(trimmed.to_owned()))
    }

    /// The normalized form: no leading or trailing `/`, empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments in order; none for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        // Only the root has an empty segment (the empty string itself), so filtering empties
        // changes nothing else.
        self.0.split('/').filter(|segment| !segment.is_empty())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The containing directory (the root for top-level names); `None` for the root itself.
    pub fn parent(&self) -> Option<FilePath> {
        if self.is_root() {
            return None;
        }
        let parent = self.0.rsplit_once('/').map_or("", |(parent, _)| parent);
        Some(FilePath(parent.to_owned()))
    }

    /// The last segment; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.segments().last()
    }

    /// This path with one more segment. `name` must be a single valid segment, so a join can
    /// never climb out of `self` or reach into a different subtree.
    pub fn join(&self, name: &str) -> Result<FilePath, PathError> {
        if name.contains('/') {
            return Err(PathError::NotASegment {
                segment: quote(name),
            });
        }
        check_segment(name, name)?;
        check_depth(self.segments().count() + 1)?;
        let joined = if self.is_root() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.0)
        };
        check_path_len(joined.len())?;
        Ok(FilePath(joined))
    }

    /// Whether `prefix` is this path or one of its ancestors, compared segment by segment
    /// (`ab` is not under `a`). Every path starts with the root.
    pub fn starts_with(&self, prefix: &FilePath) -> bool {
        self.strip_prefix(prefix).is_some()
    }

    /// The rest of this path below `prefix`: the root if they are equal, `None` if `prefix` is
    /// not an ancestor (segment-wise).
    pub fn strip_prefix(&self, prefix: &FilePath) -> Option<FilePath> {
        if prefix.is_root() {
            return Some(self.clone());
        }
        let rest = self.0.strip_prefix(prefix.as_str())?;
        if rest.is_empty() {
            return Some(FilePath::root());
        }
        rest.strip_prefix('/').map(|rest| FilePath(rest.to_owned()))
    }
}

fn check_path_len(len: usize) -> Result<(), PathError> {
    if len > MAX_PATH_LEN {
        return Err(PathError::PathTooLong { len });
    }
    Ok(())
}

fn check_depth(depth: usize) -> Result<(), PathError> {
    if depth > MAX_DEPTH {
        return Err(PathError::TooDeep);
    }
    Ok(())
}

/// Checks one segment; `path` is only used to describe where an empty segment was found.
fn check_segment(segment: &str, path: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError::EmptySegment { path: quote(path) });
    }
    if segment == "." || segment == ".." {
        return Err(PathError::DotSegment {
            segment: segment.to_owned(),
        });
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(PathError::SegmentTooLong {
            segment: quote(segment),
            len: segment.len(),
        });
    }
    if let Some(byte) = segment.bytes().find(u8::is_ascii_control) {
        return Err(PathError::ControlChar {
            segment: quote(segment),
            byte,
        });
    }
    if segment.contains('\\') {
        return Err(PathError::Backslash {
            segment: quote(segment),
        });
    }
    Ok(())
}

/// Shortens text for an error message, on a character boundary, marking the cut with `…`.
fn quote(text: &str) -> String {
    if text.len() <= QUOTE_LEN {
        return text.to_owned();
    }
    let mut end = QUOTE_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The normalized form; the root displays as the empty string, as it serializes.
impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for FilePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Validates with the directory rules, so stored records can hold the root, and a record that
/// was tampered with (or written by an older, laxer version) cannot smuggle in a bad path.
impl<'de> Deserialize<'de> for FilePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        FilePath::parse_dir(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> FilePath {
        FilePath::parse(text).unwrap()
    }

    #[test]
    fn good_inputs_normalize() {
        let long_segment = "x".repeat(MAX_SEGMENT_LEN);
        let deep = vec!["d"; MAX_DEPTH].join("/");
        let cases: &[(&str, &str)] = &[
            ("a.mp4", "a.mp4"),
            ("/dir/a.mp4", "dir/a.mp4"),
            ("dir/a.mp4", "dir/a.mp4"),
            ("///dir/a.mp4", "dir/a.mp4"),
            ("dir/sub/", "dir/sub"),
            ("/dir/", "dir"),
            ("...", "..."),
            (".hidden", ".hidden"),
            ("a..b/c.", "a..b/c."),
            ("Ünïcødé/日本語.txt", "Ünïcødé/日本語.txt"),
            ("Case/KEEPS", "Case/KEEPS"),
            ("with space/ tab-less ", "with space/ tab-less "),
            (&long_segment, &long_segment),
            (&deep, &deep),
        ];
        for (input, expected) in cases {
            assert_eq!(
                FilePath::parse(input).unwrap().as_str(),
                *expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn bad_inputs_name_the_rule() {
        let long_segment = "x".repeat(MAX_SEGMENT_LEN + 1);
        let too_deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let too_long = vec!["y".repeat(200); 21].join("/");
        type Check = fn(&PathError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == PathError::Empty),
            ("/", |e| *e == PathError::Empty),
            ("///", |e| *e == PathError::Empty),
            ("a//b", |e| matches!(e, PathError::EmptySegment { .. })),
            ("a//", |e| matches!(e, PathError::EmptySegment { .. })),
            ("./a", |e| matches!(e, PathError::DotSegment { .. })),
            ("a/..", |e| matches!(e, PathError::DotSegment { .. })),
            ("a/../../etc/passwd", |e| {
                matches!(e, PathError::DotSegment { .. })
            }),
            ("a\0b", |e| {
                matches!(e, PathError::ControlChar { byte: 0, .. })
            }),
            ("a/b\nc", |e| {
                matches!(e, PathError::ControlChar { byte: b'\n', .. })
            }),
            ("del\x7f", |e| {
                matches!(e, PathError::ControlChar { byte: 0x7f, .. })
            }),
            ("a\\b", |e| matches!(e, PathError::Backslash { .. })),
            ("\\\\server\\share", |e| {
                matches!(e, PathError::Backslash { .. })
            }),
            (&long_segment, |e| {
                matches!(e, PathError::SegmentTooLong { len: 256, .. })
            }),
            (&too_deep, |e| *e == PathError::TooDeep),
            (&too_long, |e| {
                matches!(e, PathError::PathTooLong { len: 4220 })
            }),
        ];
        for (input, check) in cases {
            let err = FilePath::parse(input).unwrap_err();
            assert!(check(&err), "{input:?} gave {err:?}");
        }
    }

    #[test]
    fn messages_quote_the_segment_shortened_and_escaped() {
        let err = FilePath::parse("ok/bad\0name").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"path segment "bad\0name" contains control character 0x00"#
        );
        let err = FilePath::parse(&"é".repeat(200)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains('…') && message.contains("400 bytes"),
            "{message}"
        );
        assert!(message.len() < 160, "{message}");
    }

    #[test]
    fn parse_dir_allows_the_root() {
        for input in ["", "/", "//"] {
            assert!(FilePath::parse_dir(input).unwrap().is_root(), "{input:?}");
        }
        assert_eq!(FilePath::parse_dir("/a/b/").unwrap(), p("a/b"));
        assert!(FilePath::parse_dir("a/./b").is_err());
    }

    #[test]
    fn navigation() {
        let path = p("dir/sub/a.mp4");
        assert_eq!(path.segments().collect::<Vec<_>>(), ["dir", "sub", "a.mp4"]);
        assert_eq!(path.file_name(), Some("a.mp4"));
        assert_eq!(path.parent(), Some(p("dir/sub")));
        assert_eq!(p("top").parent(), Some(FilePath::root()));
        assert_eq!(FilePath::root().parent(), None);
        assert_eq!(FilePath::root().file_name(), None);
        assert_eq!(FilePath::root().segments().count(), 0);
        assert!(FilePath::root().is_root() && !path.is_root());
    }

    #[test]
    fn join_takes_exactly_one_valid_segment() {
        assert_eq!(FilePath::root().join("a").unwrap(), p("a"));
        assert_eq!(p("a").join("b c").unwrap(), p("a/b c"));
        assert!(matches!(
            p("a").join("b/c"),
            Err(PathError::NotASegment { .. })
        ));
        assert!(matches!(
            p("a").join(".."),
            Err(PathError::DotSegment { .. })
        ));
        assert!(matches!(
            p("a").join(""),
            Err(PathError::EmptySegment { .. })
        ));
        assert!(matches!(
            p("a").join("x\\y"),
            Err(PathError::Backslash { .. })
        ));
        let deep = p(&vec!["d"; MAX_DEPTH].join("/"));
        assert_eq!(deep.join("e"), Err(PathError::TooDeep));
        let long = p(&vec!["y".repeat(255); 16].join("/"));
        assert!(matches!(
            long.join(&"z".repeat(20)),
            Err(PathError::PathTooLong { .. })
        ));
    }

    #[test]
    fn prefixes_are_segment_wise() {
        let path = p("a/b/c");
        assert!(path.starts_with(&p("a")));
        assert!(path.starts_with(&p("a/b")));
        assert!(path.starts_with(&path));
        assert!(path.starts_with(&FilePath::root()));
        assert!(!p("ab/c").starts_with(&p("a")));
        assert!(!p("a").starts_with(&p("a/b")));
        assert_eq!(path.strip_prefix(&p("a")), Some(p("b/c")));
        assert_eq!(path.strip_prefix(&path), Some(FilePath::root()));
        assert_eq!(path.strip_prefix(&FilePath::root()), Some(path.clone()));
        assert_eq!(p("ab/c").strip_prefix(&p("a")), None);
    }

    #[test]
    fn serde_uses_the_string_and_validates() {
        let path = p("dir/a.mp4");
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, r#""dir/a.mp4""#);
        assert_eq!(serde_json::from_str::<FilePath>(&json).unwrap(), path);
        assert_eq!(
            serde_json::from_str::<FilePath>(r#""/x/""#).unwrap(),
            p("x")
        );
        assert!(serde_json::from_str::<FilePath>(r#""""#).unwrap().is_root());
        assert!(serde_json::from_str::<FilePath>(r#""a/../b""#).is_err());

        let mut cbor = Vec::new();
        ciborium::into_writer(&path, &mut cbor).unwrap();
        assert_eq!(
            ciborium::from_reader::<FilePath, _>(cbor.as_slice()).unwrap(),
            path
        );
    }

    /// Inputs built from the pieces that matter to the rules, so the interesting cases are
    /// common instead of vanishingly rare in uniformly random strings.
    fn tricky_input() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just("a"),
            Just("b."),
            Just("é"),
            Just(" "),
            Just("\\"),
            Just("\0"),
            Just("\x1f"),
        ];
        prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
    }

    fn assert_clean(path: &FilePath) {
        let text = path.as_str();
        assert_eq!(FilePath::parse_dir(text).as_ref(), Ok(path));
        assert!(!text.starts_with('/') && !text.ends_with('/'), "{text:?}");
        assert!(!text.contains('\0') && !text.contains('\\'), "{text:?}");
        assert!(!text.bytes().any(|b| b.is_ascii_control()), "{text:?}");
        for segment in text.split('/').filter(|_| !path.is_root()) {
            assert!(
                !segment.is_empty() && segment != "." && segment != "..",
                "{text:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsed_paths_are_clean_and_idempotent(input in tricky_input()) {
            if let Ok(path) = FilePath::parse_dir(&input) {
                assert_clean(&path);
            }
            if let Ok(path) = FilePath::parse(&input) {
                prop_assert!(!path.is_root());
                assert_clean(&path);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic_and_stay_clean(input in any::<String>()) {
            if let Ok(path) = FilePath::parse_dir(&input) {
                assert_clean(&path);
            }
        }
    }
}
