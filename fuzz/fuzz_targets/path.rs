//! `cairn_core::FilePath` on any UTF-8 input.
//!
//! An accepted path must obey every rule (no `.`/`..`/empty segment, no NUL, control character
//! or backslash, no leading or trailing `/`, within the length, depth and segment limits), be
//! the input with only leading slashes and one trailing slash removed, re-parse to itself, and
//! navigate consistently; `join` and serde must agree with parsing.

#![no_main]

use cairn_core::path::{MAX_DEPTH, MAX_PATH_LEN, MAX_SEGMENT_LEN};
use cairn_core::{FilePath, PathError};
use libfuzzer_sys::fuzz_target;

fn assert_clean(path: &FilePath) {
    let text = path.as_str();
    assert!(text.len() <= MAX_PATH_LEN);
    assert!(!text.starts_with('/') && !text.ends_with('/'), "{text:?}");
    assert_eq!(FilePath::parse_dir(text).as_ref(), Ok(path));
    if path.is_root() {
        assert_eq!(text, "");
        return;
    }
    let segments: Vec<&str> = text.split('/').collect();
    assert!(segments.len() <= MAX_DEPTH);
    assert_eq!(path.segments().collect::<Vec<_>>(), segments);
    for s in segments {
        assert!(!s.is_empty() && s != "." && s != "..", "{text:?}");
        assert!(s.len() <= MAX_SEGMENT_LEN);
        assert!(
            !s.contains('\\') && !s.bytes().any(|b| b.is_ascii_control()),
            "{text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let dir = FilePath::parse_dir(input);
    match &dir {
        Ok(path) => {
            assert_clean(path);
            let rest = input.trim_start_matches('/');
            assert!(rest == path.as_str() || rest.strip_suffix('/') == Some(path.as_str()));
            if path.is_root() {
                assert_eq!(FilePath::parse(input), Err(PathError::Empty));
            } else {
                assert_eq!(FilePath::parse(input).as_ref(), Ok(path));
                let parent = path.parent().unwrap();
                let name = path.file_name().unwrap();
                assert_eq!(parent.join(name).as_ref(), Ok(path));
                assert!(path.starts_with(&parent));
                assert_eq!(path.strip_prefix(&parent), FilePath::parse(name).ok());
            }
        }
        Err(_) => assert!(FilePath::parse(input).is_err()),
    }
    // The last segment joined onto the rest must agree with parsing the whole.
    if let Some((head, name)) = input.rsplit_once('/') {
        if let Ok(head) = FilePath::parse_dir(head) {
            let joined = head.join(name);
            if let Ok(j) = &joined {
                assert_clean(j);
                assert_eq!(j.parent().as_ref(), Some(&head));
                assert_eq!(j.file_name(), Some(name));
            }
            if !name.is_empty() {
                let whole = FilePath::parse_dir(&format!("{head}/{name}"));
                assert_eq!(joined.ok(), whole.ok(), "{input:?}");
            }
        }
    }
    let json = serde_json::to_string(input).unwrap();
    assert_eq!(serde_json::from_str::<FilePath>(&json).ok(), dir.ok());
});
