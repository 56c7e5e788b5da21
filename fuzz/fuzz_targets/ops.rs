//! Files-job request bodies: `serde_json::from_slice::<FilesJobRequest>` then `validate`.
//!
//! A request validates exactly when each op validates on its own and `defaults` names no
//! encryption; accepted ops have clean non-root paths, sizes of at most 1 TiB, and mime types
//! and link targets of at most 4096 bytes without control characters. A refusal is `invalid`
//! or `too_large` and names the first bad op.

#![no_main]

use cairn_core::{ErrorKind, FilePath};
use cairn_jobs::ops::{Op, MAX_FILE_SIZE, MAX_OPS};
use cairn_jobs::FilesJobRequest;
use libfuzzer_sys::fuzz_target;

fn clean(path: &FilePath) {
    assert!(!path.is_root());
    assert_eq!(FilePath::parse(path.as_str()).as_ref(), Ok(path));
}

fn bounded(s: &str) {
    assert!(s.len() <= 4096 && !s.chars().any(char::is_control), "{s:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<FilesJobRequest>(data) else {
        return;
    };
    let first_bad = req.ops.iter().position(|op| op.validate().is_err());
    match req.validate() {
        Ok(ops) => {
            assert!(first_bad.is_none());
            assert_eq!(ops.len(), req.ops.len());
            assert!(ops.len() <= MAX_OPS);
            for (raw, op) in req.ops.iter().zip(&ops) {
                assert_eq!(raw.validate().as_ref().ok(), Some(op));
                match op {
                    Op::AddFile {
                        path,
                        size,
                        mime_type,
                        ..
                    } => {
                        clean(path);
                        assert!(*size <= MAX_FILE_SIZE);
                        if let Some(m) = mime_type {
                            bounded(m);
                        }
                    }
                    Op::AddDir { path, .. } | Op::Del { path } | Op::Meta { path, .. } => {
                        clean(path)
                    }
                    Op::Move { from, to } | Op::Copy { from, to } => {
                        clean(from);
                        clean(to);
                    }
                    Op::Link { path, target, .. } => {
                        clean(path);
                        bounded(target);
                    }
                }
            }
        }
        Err(e) => {
            assert!(
                matches!(e.kind, ErrorKind::Invalid | ErrorKind::TooLarge),
                "{e}"
            );
            let scheme = req
                .defaults
                .as_ref()
                .and_then(|d| d.pointer("/encryption/scheme"))
                .and_then(|s| s.as_str());
            if req.ops.len() <= MAX_OPS && matches!(scheme, None | Some("none")) {
                let i = first_bad.expect("a refused request has a bad op");
                assert!(e.reason.starts_with(&format!("op {i}: ")), "{e}");
            }
        }
    }
});
