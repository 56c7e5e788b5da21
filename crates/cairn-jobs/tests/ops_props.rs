//! Property tests for hostile input to the engine's pure decoders: files-job request JSON
//! (`FilesJobRequest`: `serde_json::from_slice`, then `validate`) and the stored CBOR records of
//! this crate and of `cairn-store`, which all decode through `cairn_core::record::Record`.

use std::collections::BTreeMap;

use cairn_core::record::Record;
use cairn_core::{
    Digest, ErrorKind, FilePath, FilesJobId, LibraryId, NodeId, ObjectId, UploadJobId, VersionHash,
    WriteToken,
};
use cairn_jobs::ops::{Op, MAX_FILE_SIZE, MAX_OPS};
use cairn_jobs::planner::Segment;
use cairn_jobs::records::{
    DraftHead, DraftRecord, FilesJobRecord, JobStatus, KnownFile, LibraryRecord, ObjectRecord,
    SealedPart, SegmentHashes, SegmentRecord, UjChunk, UploadJobRecord, VersionHead, VersionRecord,
};
use cairn_jobs::tree::{Content, DirNode, Entry, FileEntry, PartSeg, PendingSeg, Shape, TreeStats};
use cairn_jobs::FilesJobRequest;
use cairn_store::pack::{ChunkLoc, PackId};
use cairn_store::store::{PackInfo, PackState};
use cairn_store::{ChunkRef, PartRecord};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Longest mime type or link target `validate` accepts (`ops::MAX_STRING`, private).
const MAX_STRING: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Files-job requests.

fn small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,5}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn path_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => "/?[a-z]{1,3}(/[a-z.]{1,3}){0,2}/?".prop_map(Value::from),
        1 => Just(json!("")),
        1 => Just(json!("/")),
        1 => Just(json!("a/../b")),
        1 => Just(json!("a//b")),
        1 => Just(json!("a\u{0}b")),
        1 => Just(json!("a\\b")),
        1 => Just(json!(7)),
        1 => (250..260usize).prop_map(|n| Value::from("s".repeat(n))),
    ]
}

fn size_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => (0..10_000u64).prop_map(Value::from),
        2 => (MAX_FILE_SIZE - 1..=MAX_FILE_SIZE + 1).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => Just(json!("12")),
    ]
}

fn string_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => "[a-z]{1,8}/[a-z0-9.+-]{1,8}".prop_map(Value::from),
        1 => Just(json!("./files/a/b")),
        1 => Just(json!("bad\nline")),
        1 => Just(json!("c1\u{85}control")),
        1 => (MAX_STRING..=MAX_STRING + 1).prop_map(|n| Value::from("m".repeat(n))),
        1 => Just(json!(["not", "a", "string"])),
    ]
}

fn encryption_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"scheme": "none"})),
        Just(json!({"scheme": "cgck"})),
        Just(json!({"scheme": "NONE"})),
        Just(json!({})),
        Just(json!({"scheme": null})),
        Just(Value::Null),
        Just(json!({"scheme": ["cgck"]})),
        Just(json!({"scheme": 1})),
        Just(json!("cgck")),
    ]
}

/// Whether an `encryption` value asks for none: absent, null, `{}`, or scheme null or "none".
fn no_encryption(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => {
            matches!(
                o.get("scheme"),
                None | Some(Value::Null) | Some(Value::String(_))
            ) && o
                .get("scheme")
                .and_then(Value::as_str)
                .is_none_or(|s| s == "none")
        }
        Some(_) => false,
    }
}

fn blake3_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => any::<[u8; 32]>().prop_map(|d| Value::from(Digest::from_bytes(d).to_hex())),
        1 => "[0-9a-fA-F]{63,65}".prop_map(Value::from),
        1 => Just(json!("zz")),
    ]
}

/// One op object: the fields `RawOp` reads, each present or not, plus an unknown extra field.
fn op_value() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        12 => prop::sample::select(vec![
            "add", "add", "add", "del", "delete", "move", "copy", "link", "meta", "metadata",
        ]),
        1 => prop::sample::select(vec!["ingest-copy", "ADD"]),
    ];
    let kind = prop_oneof![
        8 => prop::sample::select(vec!["file", "file", "directory", "dir"]),
        1 => Just("symlink"),
    ];
    (
        (
            prop::option::weighted(0.7, op),
            prop::option::weighted(0.5, kind),
            prop::option::weighted(0.95, path_value()),
            prop::option::weighted(0.8, size_value()),
            prop::option::weighted(0.3, string_value()),
        ),
        (
            prop::option::weighted(0.5, path_value()),
            prop::option::weighted(0.5, string_value()),
            prop::option::weighted(0.5, small_json()),
            prop::option::weighted(0.15, encryption_value()),
            prop::option::weighted(0.3, blake3_value()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((op, kind, path, size, mime), (source, target, meta, enc, blake3, extra))| {
                let mut m = Map::new();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.to_string(), v);
                    }
                };
                put("op", op.map(Value::from));
                put("type", kind.map(Value::from));
                put("path", path);
                put("size", size);
                put("mime_type", mime);
                put("copy_move_source_path", source);
                put("target", target);
                put("meta", meta);
                put("encryption", enc);
                put("blake3", blake3);
                put("unknown_field", extra.then(|| json!({"ignored": true})));
                Value::Object(m)
            },
        )
}

fn request_value() -> impl Strategy<Value = Value> {
    (
        prop::option::of(0..3u64),
        prop::option::of(any::<bool>()),
        prop::option::weighted(0.2, encryption_value()),
        prop::collection::vec(op_value(), 1..5),
    )
        .prop_map(|(seq, complete, enc, ops)| {
            let mut m = Map::new();
            if let Some(seq) = seq {
                m.insert("seq".into(), seq.into());
            }
            if let Some(c) = complete {
                m.insert("seq_complete".into(), c.into());
            }
            if let Some(enc) = enc {
                m.insert("defaults".into(), json!({ "encryption": enc }));
            }
            m.insert("ops".into(), Value::Array(ops));
            Value::Object(m)
        })
}

fn assert_clean_file_path(path: &FilePath) {
    assert!(!path.is_root(), "an op names the root");
    assert_eq!(FilePath::parse(path.as_str()).as_ref(), Ok(path));
}

fn assert_bounded_string(s: &str) {
    assert!(s.len() <= MAX_STRING, "{} bytes", s.len());
    assert!(!s.chars().any(char::is_control), "{s:?}");
}

/// What an accepted op must satisfy, checked against the raw JSON it came from.
fn assert_op_matches(raw: &Value, op: &Op) {
    let name = raw.get("op").and_then(Value::as_str).unwrap_or("add");
    let path = |field: &str| {
        FilePath::parse(raw[field].as_str().expect("accepted ops have string paths")).unwrap()
    };
    match op {
        Op::AddFile {
            path: p,
            size,
            mime_type,
            meta,
            hash,
        } => {
            assert_eq!(name, "add");
            assert_clean_file_path(p);
            assert_eq!(*p, path("path"));
            assert!(*size <= MAX_FILE_SIZE);
            assert_eq!(Some(*size), raw["size"].as_u64());
            if let Some(m) = mime_type {
                assert_bounded_string(m);
            }
            assert_eq!(
                mime_type.as_deref(),
                raw.get("mime_type").and_then(Value::as_str)
            );
            assert_eq!(meta.as_ref(), raw.get("meta").filter(|m| !m.is_null()));
            let raw_hash = raw.get("blake3").and_then(Value::as_str);
            assert_eq!(*hash, raw_hash.map(|h| Digest::from_hex(h).unwrap()));
        }
        Op::AddDir { path: p, .. } => {
            assert_eq!(name, "add");
            assert_clean_file_path(p);
        }
        Op::Del { path: p } => {
            assert!(name == "del" || name == "delete");
            assert_clean_file_path(p);
        }
        Op::Move { from, to } | Op::Copy { from, to } => {
            assert!(name == "move" || name == "copy");
            assert_clean_file_path(from);
            assert_clean_file_path(to);
            assert_eq!(*from, path("copy_move_source_path"));
            assert_eq!(*to, path("path"));
        }
        Op::Link {
            path: p, target, ..
        } => {
            assert_eq!(name, "link");
            assert_clean_file_path(p);
            assert_bounded_string(target);
        }
        Op::Meta { path: p, meta } => {
            assert!(name == "meta" || name == "metadata");
            assert_clean_file_path(p);
            assert!(!meta.is_null());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any bytes, and any JSON text: deserializing and validating never panics, and a refusal
    /// is `invalid` or `too_large`.
    #[test]
    fn arbitrary_bodies_never_panic(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "[{}\\[\\]\":,a-z0-9 -]{0,64}".prop_map(String::into_bytes),
            request_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
    ) {
        if let Ok(req) = serde_json::from_slice::<FilesJobRequest>(&body) {
            if let Err(e) = req.validate() {
                prop_assert!(matches!(e.kind, ErrorKind::Invalid | ErrorKind::TooLarge), "{}", e);
            }
        }
    }

    /// A request validates exactly when each of its ops validates on its own (and `defaults`
    /// names no encryption); then every op obeys the bounds (clean non-root paths, size at most
    /// 1 TiB, mime types and link targets at most 4096 bytes without control characters) and
    /// says what its JSON said. A refusal names the first bad op.
    #[test]
    fn validated_requests_obey_the_bounds(request in request_value()) {
        let body = serde_json::to_vec(&request).unwrap();
        let Ok(req) = serde_json::from_slice::<FilesJobRequest>(&body) else {
            // Only wrongly typed fields (a number for a path, a string for a size…) fail here.
            return Ok(());
        };
        let raw_ops = request["ops"].as_array().unwrap();
        prop_assert_eq!(req.ops.len(), raw_ops.len());
        let defaults_ok = no_encryption(request.pointer("/defaults/encryption"));
        let first_bad = req.ops.iter().position(|op| op.validate().is_err());
        match req.validate() {
            Ok(ops) => {
                prop_assert!(defaults_ok && first_bad.is_none());
                prop_assert_eq!(ops.len(), raw_ops.len());
                prop_assert!(ops.len() <= MAX_OPS);
                for ((raw, raw_op), op) in raw_ops.iter().zip(&req.ops).zip(&ops) {
                    assert_op_matches(raw, op);
                    prop_assert_eq!(raw_op.validate().ok(), Some(op.clone()));
                }
            }
            Err(e) => {
                prop_assert!(matches!(e.kind, ErrorKind::Invalid | ErrorKind::TooLarge), "{}", e);
                if defaults_ok {
                    let i = first_bad.expect("a refused request has a bad op");
                    let prefix = format!("op {i}: ");
                    prop_assert!(e.reason.starts_with(&prefix), "{}", e.reason);
                } else {
                    prop_assert!(e.reason.starts_with("encryption"), "{}", e.reason);
                }
            }
        }
    }

    /// The file size limit is exact: up to 1 TiB is accepted, one byte more is `too_large`.
    #[test]
    fn file_size_limit_is_exact(size in prop_oneof![0..=MAX_FILE_SIZE, MAX_FILE_SIZE..=u64::MAX]) {
        let body = json!({"ops": [{"path": "f", "size": size}]}).to_string();
        let req: FilesJobRequest = serde_json::from_str(&body).unwrap();
        match req.validate() {
            Ok(ops) => {
                prop_assert!(size <= MAX_FILE_SIZE);
                let accepted = matches!(&ops[..], [Op::AddFile { size: s, .. }] if *s == size);
                prop_assert!(accepted, "{:?}", ops);
            }
            Err(e) => {
                prop_assert!(size > MAX_FILE_SIZE);
                prop_assert_eq!(e.kind, ErrorKind::TooLarge);
            }
        }
    }
}

/// The op count limit is exact: `MAX_OPS` ops validate, one more is `too_large`.
#[test]
fn op_count_limit_is_exact() {
    let body = |n: usize| {
        let ops = vec![r#"{"op":"del","path":"a"}"#; n].join(",");
        format!(r#"{{"ops":[{ops}]}}"#)
    };
    let req: FilesJobRequest = serde_json::from_str(&body(MAX_OPS)).unwrap();
    assert_eq!(req.validate().unwrap().len(), MAX_OPS);
    let req: FilesJobRequest = serde_json::from_str(&body(MAX_OPS + 1)).unwrap();
    assert_eq!(req.validate().unwrap_err().kind, ErrorKind::TooLarge);
    // Past the limit, ops are skipped unparsed rather than kept: memory stays that of the limit.
    let req: FilesJobRequest = serde_json::from_str(&body(3 * MAX_OPS)).unwrap();
    assert_eq!(req.ops.len(), MAX_OPS + 1);
    assert_eq!(req.validate().unwrap_err().kind, ErrorKind::TooLarge);
    // Skipped ops must still be JSON.
    let broken = body(MAX_OPS + 5).replace("]}", ",{]}");
    assert!(serde_json::from_str::<FilesJobRequest>(&broken).is_err());
}

// ---------------------------------------------------------------------------------------------
// Stored records.

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

fn chunk_ref() -> impl Strategy<Value = ChunkRef> {
    (digest(), any::<u32>()).prop_map(|(hash, len)| ChunkRef { hash, len })
}

fn token() -> impl Strategy<Value = WriteToken> {
    (any::<[u8; 20]>(), any::<[u8; 20]>(), any::<[u8; 16]>()).prop_map(|(o, n, rand)| WriteToken {
        object: ObjectId::new(o),
        node: NodeId::new(n),
        rand,
    })
}

fn version_hash() -> impl Strategy<Value = VersionHash> {
    (digest(), any::<u64>(), any::<[u8; 20]>())
        .prop_map(|(d, s, o)| VersionHash::new(d, s, ObjectId::new(o)))
}

fn file_path() -> impl Strategy<Value = FilePath> {
    "[a-z]{1,3}(/[a-z]{1,3}(\\.[a-z]{1,2})?){0,2}".prop_map(|p| FilePath::parse(&p).unwrap())
}

fn meta() -> impl Strategy<Value = Option<Value>> {
    // `Some(Null)` and `None` share one encoding, so meta is never `Some(Null)`.
    prop::option::of(small_json().prop_filter("null", |v| !v.is_null()))
}

fn part_seg() -> impl Strategy<Value = PartSeg> {
    (digest(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(digest, part_size, off, len)| PartSeg {
            digest,
            part_size,
            off,
            len,
        },
    )
}

fn file_entry() -> impl Strategy<Value = FileEntry> {
    let content = prop_oneof![
        prop::collection::vec(part_seg(), 0..3).prop_map(Content::Parts),
        prop::collection::vec(
            (any::<[u8; 16]>(), any::<u32>(), any::<u64>()).prop_map(|(u, segment, len)| {
                PendingSeg {
                    upload_job: UploadJobId::new(u),
                    segment,
                    len,
                }
            }),
            0..3
        )
        .prop_map(Content::Pending),
        "(\\./files/|/qfab/)[a-z/]{0,8}".prop_map(Content::Link),
    ];
    (
        any::<u64>(),
        prop::option::of("[a-z]{1,5}/[a-z]{1,5}"),
        meta(),
        content,
        prop::option::of(digest()),
        prop::option::of(digest()),
    )
        .prop_map(
            |(size, mime_type, meta, content, hash, declared)| FileEntry {
                size,
                mime_type,
                meta,
                content,
                hash,
                declared,
            },
        )
}

fn dir_node() -> impl Strategy<Value = DirNode> {
    let entry = prop_oneof![
        digest().prop_map(Entry::Dir),
        file_entry().prop_map(Entry::File)
    ];
    (
        prop::collection::btree_map("[a-zé .]{1,6}", entry, 0..4),
        meta(),
        prop::option::of((0..1u64 << 40, 0..1u64 << 40, any::<u64>())),
    )
        .prop_map(|(entries, meta, stats)| DirNode {
            entries,
            meta,
            stats: stats.map(|(files, pending, bytes)| TreeStats {
                files,
                pending,
                bytes,
                shape: (files % 2 == 0).then_some(Shape {
                    dirs: pending,
                    depth: bytes % 300,
                    longest: bytes,
                }),
            }),
        })
}

fn part_record() -> impl Strategy<Value = PartRecord> {
    (
        digest(),
        any::<u64>(),
        prop::collection::vec(chunk_ref(), 0..4),
    )
        .prop_map(|(digest, size, chunks)| PartRecord {
            digest,
            size,
            chunks,
        })
}

fn upload_job_record() -> impl Strategy<Value = UploadJobRecord> {
    (
        (any::<[u8; 16]>(), any::<[u8; 16]>(), token()),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
        ),
        prop::option::of((digest(), any::<u64>(), any::<u32>())),
        prop::collection::vec(any::<Option<[u8; 32]>>(), 0..3),
    )
        .prop_map(
            |(
                (id, fj, draft),
                (segment_count, size, received, chunks, tail_len),
                sealed,
                values,
            )| {
                UploadJobRecord {
                    id: UploadJobId::new(id),
                    files_job: FilesJobId::new(fj),
                    draft,
                    segment_count,
                    size,
                    received,
                    chunks,
                    tail_len,
                    sealed: sealed.map(|(digest, size, complete_segments)| SealedPart {
                        digest,
                        size,
                        complete_segments,
                    }),
                    segment_hashes: SegmentHashes { values },
                }
            },
        )
}

fn draft_record() -> impl Strategy<Value = DraftRecord> {
    (
        token(),
        any::<[u8; 20]>(),
        prop::option::of(version_hash()),
        digest(),
        small_json(),
        prop::collection::vec(any::<[u8; 16]>(), 0..3),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(token, lib, base, root, meta, jobs, files_finalized, created)| DraftRecord {
                token,
                library: LibraryId::new(lib),
                base,
                root,
                meta,
                files_jobs: jobs.into_iter().map(FilesJobId::new).collect(),
                files_finalized,
                created,
            },
        )
}

fn version_record() -> impl Strategy<Value = VersionRecord> {
    (
        any::<[u8; 20]>(),
        prop::option::of(version_hash()),
        any::<u64>(),
        digest(),
        small_json(),
        any::<u64>(),
    )
        .prop_map(|(o, parent, seq, root, meta, size)| VersionRecord {
            object: ObjectId::new(o),
            library: LibraryId::new(o),
            parent,
            seq,
            root,
            meta,
            size,
            created: seq,
        })
}

fn segment_record() -> impl Strategy<Value = SegmentRecord> {
    (
        file_path(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(path, file_size, off, len, start)| SegmentRecord {
            seg: Segment {
                path,
                file_size,
                off,
                len,
            },
            start,
        })
}

/// The encoding of a valid record of some stored type.
fn valid_encoding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        part_record().prop_map(|r| r.encode()),
        dir_node().prop_map(|r| r.encode()),
        upload_job_record().prop_map(|r| r.encode()),
        draft_record().prop_map(|r| r.encode()),
        version_record().prop_map(|r| r.encode()),
        segment_record().prop_map(|r| r.encode()),
        prop::collection::vec(part_seg(), 0..3).prop_map(|parts| KnownFile { parts }.encode()),
        (any::<u32>(), chunk_ref())
            .prop_map(|(segment, chunk)| UjChunk { segment, chunk }.encode()),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(p, offset, len, outboard)| ChunkLoc {
                pack: PackId(p),
                offset,
                len,
                outboard,
            }
            .encode()
        ),
        (any::<[u8; 16]>(), token(), prop::option::of("[a-z ]{0,8}")).prop_map(
            |(id, draft, error)| {
                FilesJobRecord {
                    id: FilesJobId::new(id),
                    draft,
                    upload_jobs: vec![UploadJobId::new(id)],
                    status: JobStatus::Stopped,
                    epoch: 3,
                    error,
                    created: 4,
                }
                .encode()
            }
        ),
        (any::<[u8; 20]>(), prop::option::of(version_hash())).prop_map(|(o, head)| {
            ObjectRecord {
                id: ObjectId::new(o),
                library: LibraryId::new(o),
                head,
                last_seq: 1,
                created: 2,
                head_moved: u64::from(o[0]),
            }
            .encode()
        }),
        (any::<[u8; 20]>(), "[a-z]{0,8}").prop_map(|(l, name)| {
            LibraryRecord {
                id: LibraryId::new(l),
                name,
                created: 5,
            }
            .encode()
        }),
        Just(
            PackInfo {
                state: PackState::Retired
            }
            .encode()
        ),
    ]
}

/// Decodes `bytes` as `T`: an error must be `Corrupt`; a value must re-encode to bytes that
/// decode and encode again to the same bytes (decoding is stable after one round).
fn check<T: Record>(bytes: &[u8]) -> bool {
    match T::decode(bytes) {
        Ok(value) => {
            let once = value.encode();
            let again = T::decode(&once)
                .unwrap_or_else(|e| panic!("{}: re-encoded record fails: {e}", T::NAME));
            assert_eq!(again.encode(), once, "{}: unstable round trip", T::NAME);
            true
        }
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Corrupt, "{}: {e}", T::NAME);
            false
        }
    }
}

/// Decodes `bytes` as every stored record type; returns how many accepted it.
fn check_every_record(bytes: &[u8]) -> usize {
    [
        check::<PartRecord>(bytes),
        check::<ChunkLoc>(bytes),
        check::<PackInfo>(bytes),
        check::<DirNode>(bytes),
        check::<LibraryRecord>(bytes),
        check::<ObjectRecord>(bytes),
        check::<VersionRecord>(bytes),
        check::<DraftRecord>(bytes),
        check::<FilesJobRecord>(bytes),
        check::<UploadJobRecord>(bytes),
        check::<UjChunk>(bytes),
        check::<SegmentRecord>(bytes),
        check::<KnownFile>(bytes),
    ]
    .iter()
    .filter(|ok| **ok)
    .count()
}

fn damage() -> impl Strategy<Value = (Vec<u8>, Vec<(prop::sample::Index, u8, u8)>)> {
    (
        valid_encoding(),
        prop::collection::vec((any::<prop::sample::Index>(), 0..4u8, any::<u8>()), 1..4),
    )
}

/// Applies edits: 0 overwrites a byte, 1 inserts one, 2 removes one, 3 truncates.
fn apply(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    for (at, what, byte) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at.index(bytes.len());
        match what {
            0 => bytes[i] = *byte,
            1 => bytes.insert(i, *byte),
            2 => {
                bytes.remove(i);
            }
            _ => bytes.truncate(i),
        }
    }
    bytes
}

proptest! {
    /// The views that reads decode instead of whole records (skipping the metadata) see the
    /// fields the records hold.
    #[test]
    fn record_views_read_the_records_fields(v in version_record(), d in draft_record()) {
        let head = VersionRecord::decode_view::<VersionHead>(&v.encode()).unwrap();
        prop_assert_eq!(
            (head.object, head.library, head.seq, head.root, head.size, head.created),
            (v.object, v.library, v.seq, v.root, v.size, v.created)
        );
        let head = DraftRecord::decode_view::<DraftHead>(&d.encode()).unwrap();
        prop_assert_eq!(
            (head.library, head.base, head.root, head.created),
            (d.library, d.base, d.root, d.created)
        );
        prop_assert_eq!((head.files_jobs, head.files_finalized), (d.files_jobs, d.files_finalized));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes behind the right version byte, as every stored type: `Corrupt` or a
    /// value with a stable encoding, never a panic.
    #[test]
    fn arbitrary_bytes_decode_to_corrupt_or_a_stable_record(body in prop::collection::vec(any::<u8>(), 0..160)) {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&body);
        check_every_record(&bytes);
    }

    /// Valid encodings of every stored type decode as themselves; any strict prefix is refused
    /// by every type; damaged encodings are `Corrupt` or decode to a stable value.
    #[test]
    fn damaged_records_are_refused_or_stable((bytes, edits) in damage(), cut in any::<prop::sample::Index>()) {
        prop_assert!(check_every_record(&bytes) >= 1);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(check_every_record(&bytes[..cut]), 0, "prefix of {} bytes accepted", cut);
        check_every_record(&apply(bytes, &edits));
    }

    /// Paths inside stored records are re-validated on decode: a segment record whose path
    /// text was rewritten to contain `..`, an empty segment, a backslash or a control character
    /// is `Corrupt`, never a record holding a bad path.
    #[test]
    fn decoded_paths_are_revalidated(
        record in segment_record(),
        bad in prop::sample::select(vec!["..", "a/..", "a//b", "a\\b", "x\u{1}", "."]),
    ) {
        let good = record.seg.path.as_str();
        prop_assume!(good.len() > bad.len() + 1);
        // Same length, so the CBOR text header stays valid: `bad/xxx…`.
        let evil = format!("{bad}/{}", "x".repeat(good.len() - bad.len() - 1));
        prop_assert!(FilePath::parse_dir(&evil).is_err());
        let mut needle = b"path".to_vec();
        needle.push(0x60 + good.len() as u8);
        needle.extend_from_slice(good.as_bytes());
        let mut bytes = record.encode();
        let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap() + 5;
        bytes[at..at + good.len()].copy_from_slice(evil.as_bytes());
        let err = SegmentRecord::decode(&bytes).unwrap_err();
        prop_assert_eq!(err.kind, ErrorKind::Corrupt);
    }
}

/// Pinned shapes of hostile CBOR that used to be easy to get wrong in decoders: deep nesting
/// inside free JSON meta, a huge announced length, and an unknown enum variant.
#[test]
fn hostile_cbor_shapes_are_corrupt() {
    // A DirNode whose meta is 10,000 nested arrays: refused by the recursion limit.
    let mut deep = vec![1u8, 0xa2, 0x67];
    deep.extend_from_slice(b"entries");
    deep.push(0xa0);
    deep.push(0x64);
    deep.extend_from_slice(b"meta");
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    deep.push(0xf6);
    assert_eq!(DirNode::decode(&deep).unwrap_err().kind, ErrorKind::Corrupt);
    // A PartRecord announcing 2^64-1 chunks.
    let mut huge = vec![1u8, 0xa3, 0x66];
    huge.extend_from_slice(b"digest");
    huge.push(0x58);
    huge.push(32);
    huge.extend_from_slice(&[0; 32]);
    huge.push(0x64);
    huge.extend_from_slice(b"size");
    huge.push(0x00);
    huge.push(0x66);
    huge.extend_from_slice(b"chunks");
    huge.push(0x9b);
    huge.extend_from_slice(&[0xff; 8]);
    assert_eq!(
        PartRecord::decode(&huge).unwrap_err().kind,
        ErrorKind::Corrupt
    );
    // A PackInfo with a state that does not exist.
    let mut state = vec![1u8, 0xa1, 0x65];
    state.extend_from_slice(b"state");
    state.push(0x65);
    state.extend_from_slice(b"Bogus");
    assert_eq!(
        PackInfo::decode(&state).unwrap_err().kind,
        ErrorKind::Corrupt
    );
    // And the same DirNode shape with shallow meta decodes.
    let mut ok = vec![1u8, 0xa2, 0x67];
    ok.extend_from_slice(b"entries");
    ok.push(0xa0);
    ok.push(0x64);
    ok.extend_from_slice(b"meta");
    ok.push(0xf6);
    let node = DirNode::decode(&ok).unwrap();
    assert_eq!(
        node,
        DirNode {
            entries: BTreeMap::new(),
            meta: None,
            stats: None,
        }
    );
}

/// Writes the seed corpora of the `record` and `ids` fuzz targets (`fuzz/corpus/`) with the real
/// encoders. Run by hand when a record layout changes:
/// `cargo test -p cairn-jobs --test ops_props -- --ignored write_fuzz_seed_corpus`
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let d = |n: u8| Digest::from_bytes([n; 32]);
    let object = ObjectId::new([4; 20]);
    let library = LibraryId::new([3; 20]);
    let token = WriteToken {
        object,
        node: NodeId::new([9; 20]),
        rand: [7; 16],
    };
    let version = VersionHash::new(d(1), 1234, object);
    let uj = UploadJobId::new([5; 16]);
    let fj = FilesJobId::new([6; 16]);
    let chunk = ChunkRef {
        hash: d(2),
        len: 65536,
    };
    let part_seg = PartSeg {
        digest: d(2),
        part_size: 70000,
        off: 0,
        len: 70000,
    };

    let part = PartRecord {
        digest: d(2),
        size: 70000,
        chunks: vec![
            chunk,
            ChunkRef {
                hash: d(8),
                len: 4464,
            },
        ],
    };
    write("record", "part", &part.encode());
    let mut entries = BTreeMap::new();
    entries.insert("sub".to_string(), Entry::Dir(d(3)));
    entries.insert(
        "a.mp4".to_string(),
        Entry::File(FileEntry {
            size: 70000,
            mime_type: Some("video/mp4".into()),
            meta: Some(json!({"title": "A", "tags": [1, 2.5, null, true]})),
            content: Content::Parts(vec![part_seg]),
            hash: Some(d(4)),
            declared: None,
        }),
    );
    entries.insert(
        "pending.bin".to_string(),
        Entry::File(FileEntry {
            size: 10,
            mime_type: None,
            meta: None,
            content: Content::Pending(vec![PendingSeg {
                upload_job: uj,
                segment: 0,
                len: 10,
            }]),
            hash: None,
            declared: Some(d(5)),
        }),
    );
    entries.insert(
        "link".to_string(),
        Entry::File(FileEntry {
            size: 70000,
            mime_type: None,
            meta: None,
            content: Content::Link("./files/a.mp4".into()),
            hash: None,
            declared: None,
        }),
    );
    let node = DirNode {
        entries,
        meta: Some(json!({"dir": "meta"})),
        stats: Some(TreeStats {
            files: 3,
            pending: 1,
            bytes: 12,
            shape: Some(Shape {
                dirs: 1,
                depth: 2,
                longest: 9,
            }),
        }),
    };
    write("record", "dir_node", &node.encode());
    write("record", "dir_node_empty", &DirNode::default().encode());
    write(
        "record",
        "library",
        &LibraryRecord {
            id: library,
            name: "demo".into(),
            created: 1_700_000_000,
        }
        .encode(),
    );
    write(
        "record",
        "object",
        &ObjectRecord {
            id: object,
            library,
            head: Some(version),
            last_seq: 3,
            created: 1_700_000_000,
            head_moved: 1_700_000_100,
        }
        .encode(),
    );
    write(
        "record",
        "version",
        &VersionRecord {
            object,
            library,
            parent: Some(version),
            seq: 4,
            root: d(3),
            meta: json!({"public": {"name": "x"}}),
            size: 70010,
            created: 1_700_000_001,
        }
        .encode(),
    );
    write(
        "record",
        "draft",
        &DraftRecord {
            token,
            library,
            base: Some(version),
            root: d(3),
            meta: json!({}),
            files_jobs: vec![fj],
            files_finalized: false,
            created: 1_700_000_002,
        }
        .encode(),
    );
    write(
        "record",
        "files_job",
        &FilesJobRecord {
            id: fj,
            draft: token,
            upload_jobs: vec![uj],
            status: JobStatus::InProgress,
            epoch: 2,
            error: Some("op 0: missing path".into()),
            created: 1_700_000_003,
        }
        .encode(),
    );
    write(
        "record",
        "upload_job_sealed",
        &UploadJobRecord {
            id: uj,
            files_job: fj,
            draft: token,
            segment_count: 2,
            size: 70010,
            received: 70010,
            chunks: 2,
            tail_len: 0,
            sealed: Some(SealedPart {
                digest: d(2),
                size: 70010,
                complete_segments: 2,
            }),
            segment_hashes: SegmentHashes {
                values: vec![Some([4; 32]), None],
            },
        }
        .encode(),
    );
    write(
        "record",
        "upload_job_open",
        &UploadJobRecord {
            id: uj,
            files_job: fj,
            draft: token,
            segment_count: 1,
            size: 10,
            received: 3,
            chunks: 0,
            tail_len: 3,
            sealed: None,
            segment_hashes: SegmentHashes::default(),
        }
        .encode(),
    );
    write(
        "record",
        "uj_chunk",
        &UjChunk { segment: 1, chunk }.encode(),
    );
    write(
        "record",
        "segment",
        &SegmentRecord {
            seg: Segment {
                path: FilePath::parse("dir/a.mp4").unwrap(),
                file_size: 70000,
                off: 0,
                len: 70000,
            },
            start: 0,
        }
        .encode(),
    );
    write(
        "record",
        "known_file",
        &KnownFile {
            parts: vec![part_seg],
        }
        .encode(),
    );
    write(
        "record",
        "chunk_loc",
        &ChunkLoc {
            pack: PackId(1),
            offset: 4096,
            len: 65536,
            outboard: 192,
        }
        .encode(),
    );
    write(
        "record",
        "pack_info",
        &PackInfo {
            state: PackState::Sealed,
        }
        .encode(),
    );

    let texts = [
        ("library", library.to_string()),
        ("object", object.to_string()),
        ("space", cairn_core::SpaceId::new([1; 20]).to_string()),
        ("node", token.node.to_string()),
        ("upload_job", uj.to_string()),
        ("files_job", fj.to_string()),
        ("write_token", token.to_string()),
        ("version_hash", version.to_string()),
        (
            "version_hash_max",
            VersionHash::new(d(9), u64::MAX, object).to_string(),
        ),
        ("part_hash", version.part_hash().to_string()),
        ("encrypted_part", "hqpe3x5HBqZvHAV4tqSBbdb".to_string()),
    ];
    for (name, text) in texts {
        write("ids", name, text.as_bytes());
    }
    write("ids", "payload_write_token", &token.to_bytes());
    write("ids", "payload_version_hash", &version.to_bytes());
    write("ids", "payload_part_hash", &version.part_hash().to_bytes());
    write("ids", "payload_object_coded", &object.to_coded_bytes());
}
