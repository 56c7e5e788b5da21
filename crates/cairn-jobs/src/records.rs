//! The engine's stored records and their column families. Values are versioned CBOR
//! [`Record`]s except four raw ones: `history` (a version digest), `uj_tail` (bytes), `engine`
//! (node id, start count) and `lib_objects` (keys only). Keys are the ids' binary forms so
//! related entries sort together.

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
/// LibraryId (20) | ObjectId (20) → nothing: which objects a library holds, so listing one
/// library (or checking it is empty) does not read every object's record. Written in the same
/// batch as the object's record; built once from `objects` for a store made before it existed.
pub const CF_LIB_OBJECTS: &str = "lib_objects";

/// The [`CF_LIB_OBJECTS`] key of `object` in `library`.
pub fn lib_object_key(library: &LibraryId, object: &ObjectId) -> Vec<u8> {
    [library.as_bytes().as_slice(), object.as_bytes().as_slice()].concat()
}

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
/// Write token bytes → [`FinalizedRecord`]: drafts finalized with an `Idempotency-Key`, so a
/// retry of that finalize (its reply lost) is answered as the first was. Answers for a day
/// ([`FINALIZED_KEEP_SECS`]); removed by the object's next keyed finalize after that, or with
/// the object. A store with this column family cannot be opened by a build older than it.
pub const CF_FINALIZED: &str = "finalized";
/// How long a [`FinalizedRecord`] answers retries: a client retries within minutes.
pub const FINALIZED_KEEP_SECS: u64 = 24 * 3600;

pub const JOB_CFS: &[(&str, CfKind)] = &[
    (CF_ENGINE, CfKind::Plain),
    (CF_LIBRARIES, CfKind::Plain),
    (CF_OBJECTS, CfKind::Plain),
    (CF_LIB_OBJECTS, CfKind::Plain),
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
    (CF_FINALIZED, CfKind::Plain),
];

/// A draft finalized with an idempotency key: the version it became and the key, which a
/// retry must repeat to be answered with that version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalizedRecord {
    pub hash: VersionHash,
    pub key: String,
    pub at: u64,
}
impl Record for FinalizedRecord {
    const NAME: &'static str = "finalized";
}

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
    /// When the head last moved back to an older version (seconds since the epoch; 0: never):
    /// a delete of the head version. What the object's files were last changed at is the
    /// later of this and the head version's `created`, so the `Last-Modified` of a file read
    /// through the object id never goes backwards (QA: after a head delete it did, and a
    /// date-only revalidation was told "not modified" about other bytes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub head_moved: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

/// A [`VersionRecord`] without its metadata, for reads that need only the tree or who owns
/// it: the metadata (up to 16 MiB, many times that decoded) is skipped, not built.
#[derive(Debug, Clone, Deserialize)]
pub struct VersionHead {
    pub object: ObjectId,
    pub library: LibraryId,
    pub seq: u64,
    pub root: Digest,
    pub size: u64,
    pub created: u64,
}

/// A [`DraftRecord`] without its metadata (see [`VersionHead`]).
#[derive(Debug, Clone, Deserialize)]
pub struct DraftHead {
    pub token: WriteToken,
    pub library: LibraryId,
    pub base: Option<VersionHash>,
    pub root: Digest,
    pub files_jobs: Vec<FilesJobId>,
    pub files_finalized: bool,
    pub created: u64,
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

/// The paths a force completion of a files job dropped in the passes it has committed so far,
/// kept beside the job's record until the whole force completion has succeeded
/// (`Engine::force_resolve`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DroppedPaths {
    pub paths: Vec<String>,
}
impl Record for DroppedPaths {
    const NAME: &'static str = "dropped paths";
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
    #[serde(with = "hash_values")]
    pub values: Vec<Option<[u8; 32]>>,
}

/// Segment hash values as CBOR byte strings. Serde's default writes a `[u8; 32]` as an array of
/// 32 integers: a job of 800 small files then held 25,600 CBOR items that every read of its
/// record decoded (finalize read it once per file, which made finalizing thousands of small files
/// quadratic). Records written that way still decode.
mod hash_values {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[Option<[u8; 32]>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(values.len()))?;
        for v in values {
            seq.serialize_element(&v.map(cairn_core::Digest))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<[u8; 32]>>, D::Error> {
        let values: Vec<Option<Value>> = Vec::deserialize(d)?;
        Ok(values.into_iter().map(|v| v.map(|v| v.0)).collect())
    }

    /// One value: 32 bytes, as a byte string or (as written before) an array of integers.
    struct Value([u8; 32]);

    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
            d.deserialize_any(ValueVisitor)
        }
    }

    struct ValueVisitor;

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("32 bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Value, E> {
            v.try_into()
                .map(Value)
                .map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = [0u8; 32];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(33, &self));
            }
            Ok(Value(out))
        }
    }
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

#[cfg(test)]
mod segment_hash_tests {
    use super::*;

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    /// Bytes serialized as a CBOR byte string.
    struct Raw(Vec<u8>);

    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    #[derive(Serialize)]
    struct Encoded<T> {
        values: Vec<Option<T>>,
    }

    fn decode(bytes: &[u8]) -> Result<SegmentHashes, ciborium::de::Error<std::io::Error>> {
        ciborium::from_reader(bytes)
    }

    #[test]
    fn values_are_byte_strings_and_old_integer_arrays_still_decode() {
        let values = vec![Some([7u8; 32]), None, Some([200u8; 32])];
        let now = cbor(&SegmentHashes {
            values: values.clone(),
        });
        // A 32-byte string: header 0x58 0x20.
        assert!(now.windows(2).any(|w| w == [0x58, 0x20]));
        // Serde's default for `[u8; 32]`, as records were written before: arrays of integers.
        let before = cbor(&Encoded {
            values: values.clone(),
        });
        assert!(!before.windows(2).any(|w| w == [0x58, 0x20]));
        for bytes in [&now, &before] {
            assert_eq!(decode(bytes).unwrap().values, values);
        }
        // Wrong lengths are refused, in either form.
        assert!(decode(&cbor(&Encoded {
            values: vec![Some([1u8; 31])]
        }))
        .is_err());
        assert!(decode(&cbor(&Encoded {
            values: vec![Some(Raw(vec![1; 33]))]
        }))
        .is_err());
        assert!(decode(&cbor(&Encoded {
            values: vec![Some(Raw(vec![1; 31]))]
        }))
        .is_err());
    }
}
