//! Cairn's core vocabulary, with no I/O: the typed identifiers of the Files API (in the exact
//! binary layouts the official client decodes), blake3 digests, the path rules every file path
//! passes through, versioned CBOR records, and the error kinds every layer above reports.
//!
//! Everything here is pure and deterministic, so it is tested by round-trips and pinned vectors.

pub mod error;
pub mod hash;
pub mod id;
pub mod json_scan;
pub mod path;
pub mod record;

pub use error::{Error, ErrorKind, Result};
pub use hash::Digest;
pub use id::{
    FilesJobId, IdError, LibraryId, NodeId, ObjectId, PartHash, SpaceId, UploadJobId, VersionHash,
    WriteToken,
};
pub use path::{FilePath, PathError};
