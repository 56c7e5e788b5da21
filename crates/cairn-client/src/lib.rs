//! Cairn's HTTP client: the Files API as typed calls, with retries, plus the two long-running
//! operations a person does — uploading a tree of files (parallel, resumable, streaming from
//! disk) and downloading a file or a byte range of it.
//!
//! Used by the `cairn` CLI and by tests and benchmarks.

pub mod api;
pub mod lockfile;
pub mod upload;

pub use api::{check_server_url, Client, ClientError, Result};
pub use upload::{
    forget_draft, upload_tree, Progress, SkippedName, SkippedSpecial, UploadOptions, UploadOutcome,
};
