//! The engine's stored records and their column families. Values are versioned CBOR
//! [`Record`]s except three raw ones: `history` (a version digest), `uj_tail` (bytes) and
//! `engine` (node id, start count). Keys are the ids' binary forms so related entries sort together.

use cairn_core::record::Record;
use cairn_core::{Digest, FilesJobId, LibraryId, ObjectId, UploadJobId, VersionHash, WriteToken};
use cairn_store::{CfKind, ChunkRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::planner::Segment;

/// LibraryId → [`LibraryRecord`].
pub const CF_LIBRARIES: &str = "libraries";
/// ObjectId → [`ObjectRecord`].
pub const CF_OBJECTS: &str = "objects";
/// Version digest (32) → [`VersionRecord`].
pub const CF_VERSIONS: &str = "versions";
/// ObjectId (20) | !seq (u64 BE) → version digest: history, newest first.
pub const CF_HISTORY: &str = "history";
/// Write token bytes → [`DraftRecord`].
pub const CF_DRAFTS: &str = "drafts";
/// FilesJobId → [`FilesJobRecord`].
pub const CF_FILES_JOBS: &str = "files_jobs";
/// UploadJobId → [`UploadJobRecord`].
pub const CF_UPLOAD_JOBS: &str = "upload_jobs";
/// UploadJobId (16) | n (u32 BE) → [`UjChunk`]: the chunks received so far, in order.
pub const CF_UJ_CHUNKS: &str = "uj_chunks";
/// UploadJobId (16) | i (u32 BE) → [`SegmentRecord`]: the job's plan, written once.
pub const CF_UJ_SEGMENTS: &str = "uj_segments";
/// UploadJobId → the bytes received after the last chunk cut (at most two chunks).
pub const CF_UJ_TAIL: &str = "uj_tail";
/// Library (20) | file blake3 (32) | size (u64 BE) → [`KnownFile`]: where a finalized file's
/// bytes are, so an add op carrying the same hash links them instead of uploading again.
pub const CF_FILE_INDEX: &str = "file_index";
/// Node digest → [`DirNode`](crate::tree::DirNode).
pub const CF_NODES: &str = "nodes";
/// Node digest → refcount (add counter): versions, drafts and parent nodes referencing it.
pub const CF_NODE_REFS: &str = "node_refs";

/// Engine settings that outlive a process: node id, start count.
pub const CF_ENGINE: &str = "engine";

pub const JOB_CFS: &[(&str, CfKind)] = &[
    (CF_ENGINE, CfKind::Plain),
    (CF_LIBRARIES, CfKind::Plain),
    (CF_OBJECTS, CfKind::Plain),
    (CF_VERSIONS, CfKind::Plain),
    (CF_HISTORY, CfKind::Plain),
    (CF_DRAFTS, CfKind::Plain),
    (CF_FILES_JOBS, CfKind::Plain),
    (CF_UPLOAD_JOBS, CfKind::Plain),
    (CF_UJ_CHUNKS, CfKind::Plain),
    (CF_UJ_SEGMENTS, CfKind::Plain),
    (CF_UJ_TAIL, CfKind::Plain),
    (CF_NODES, CfKind::Plain),
    (CF_FILE_INDEX, CfKind::Plain),
    (CF_NODE_REFS, CfKind::Add),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LibraryRecord {
    pub id: LibraryId,
    pub name: String,
    pub created: u64,
}
impl Record for LibraryRecord {
    const NAME: &'static str = "library";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub id: ObjectId,
    pub library: LibraryId,
    pub head: Option<VersionHash>,
    /// Sequence number of the newest version ever created (versions count from 1).
    pub last_seq: u64,
    pub created: u64,
}
impl Record for ObjectRecord {
    const NAME: &'static str = "object";
}

/// An immutable version. Its hash's digest is the blake3 of this record's encoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    pub object: ObjectId,
    pub library: LibraryId,
    pub parent: Option<VersionHash>,
    pub seq: u64,
    pub root: Digest,
    pub meta: Value,
    /// Logical bytes of all files.
    pub size: u64,
    pub created: u64,
}
impl Record for VersionRecord {
    const NAME: &'static str = "version";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DraftRecord {
    pub token: WriteToken,
    pub library: LibraryId,
    pub base: Option<VersionHash>,
    pub root: Digest,
    pub meta: Value,
    pub files_jobs: Vec<FilesJobId>,
    /// Set by "finalize files": no more files jobs may be added.
    pub files_finalized: bool,
    pub created: u64,
}
impl Record for DraftRecord {
    const NAME: &'static str = "draft";
}

/// Files-job status as the protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    #[serde(rename = "IN_PROGRESS")]
    InProgress,
    #[serde(rename = "COMPLETED")]
    Completed,
    #[serde(rename = "FAILED")]
    Failed,
    #[serde(rename = "STOPPED")]
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesJobRecord {
    pub id: FilesJobId,
    pub draft: WriteToken,
    pub upload_jobs: Vec<UploadJobId>,
    pub status: JobStatus,
    /// The engine start count when the job last made progress: older means STOPPED by a restart.
    pub epoch: u64,
    pub error: Option<String>,
    pub created: u64,
}
impl Record for FilesJobRecord {
    const NAME: &'static str = "files job";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadJobRecord {
    pub id: UploadJobId,
    pub files_job: FilesJobId,
    pub draft: WriteToken,
    /// The segments themselves are in `CF_UJ_SEGMENTS`, so this record, rewritten at every
    /// commit, stays small however many files the job holds.
    pub segment_count: u32,
    pub size: u64,
    /// Bytes durably received: those in `CF_UJ_CHUNKS` plus the tail.
    pub received: u64,
    pub chunks: u32,
    pub tail_len: u64,
    /// Set when sealed: the part, and how many leading segments it holds completely
    /// (all of them, unless force completion sealed a partial job).
    pub sealed: Option<SealedPart>,
    /// Filled when sealed.
    #[serde(default)]
    pub segment_hashes: SegmentHashes,
}
impl Record for UploadJobRecord {
    const NAME: &'static str = "upload job";
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SealedPart {
    pub digest: Digest,
    pub size: u64,
    pub complete_segments: u32,
}

/// What sealing computes besides the part: each complete segment's blake3 value (see
/// `cairn_core::hash::SegmentHasher`), from which finalize derives every file's blake3.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SegmentHashes {
    pub values: Vec<Option<[u8; 32]>>,
}

/// One received chunk of an upload job and the segment it belongs to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct UjChunk {
    pub segment: u32,
    pub chunk: ChunkRef,
}
impl Record for UjChunk {
    const NAME: &'static str = "upload chunk";
}

impl UploadJobRecord {
    pub fn is_complete(&self) -> bool {
        self.sealed.is_some()
    }
}

/// One segment of an upload job's plan, with its offset in the job's byte stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub seg: Segment,
    pub start: u64,
}
impl Record for SegmentRecord {
    const NAME: &'static str = "upload segment";
}

impl SegmentRecord {
    pub fn end(&self) -> u64 {
        self.start + self.seg.len
    }
}

/// A finalized file's part slices, found by library, hash and size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownFile {
    pub parts: Vec<crate::tree::PartSeg>,
}
impl Record for KnownFile {
    const NAME: &'static str = "known file";
}

pub fn file_index_key(library: &LibraryId, hash: &Digest, size: u64) -> Vec<u8> {
    let mut k = library.as_bytes().to_vec();
    k.extend_from_slice(hash.as_bytes());
    k.extend_from_slice(&size.to_be_bytes());
    k
}

pub fn uj_chunk_key(uj: &UploadJobId, n: u32) -> Vec<u8> {
    let mut k = uj.as_bytes().to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

pub fn history_key(object: &ObjectId, seq: u64) -> Vec<u8> {
    let mut k = object.as_bytes().to_vec();
    k.extend_from_slice(&(u64::MAX - seq).to_be_bytes());
    k
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
