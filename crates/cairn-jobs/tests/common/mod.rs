//! Shared helpers for the engine's integration tests: an engine on a temp dir with small parts
//! and chunks (so a few MiB cross many boundaries), and upload/read helpers that go through the
//! same async, streaming entry points the HTTP layer uses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_core::{FilePath, WriteToken};
use cairn_jobs::ops::{FilesJobRequest, RawOp};
use cairn_jobs::{Engine, EngineConfig, FilesJobCreated, PlanLimits, Qhit};
use cairn_store::ChunkParams;

pub const SMALL_CHUNKS: ChunkParams = ChunkParams {
    min: 1 << 10,
    avg: 4 << 10,
    max: 16 << 10,
};

pub fn config(dir: &std::path::Path, part_size: u64, chunking: ChunkParams) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.plan = PlanLimits {
        part_size,
        max_segments: 64,
        ..PlanLimits::default()
    };
    cfg.store.chunking = chunking;
    cfg.store.pack_target_size = 4 << 20;
    cfg.commit_every = 64 << 10;
    cfg
}

pub fn small_engine(dir: &std::path::Path) -> Arc<Engine> {
    Arc::new(Engine::open(config(dir, 256 << 10, SMALL_CHUNKS)).unwrap())
}

#[path = "../../../../tests/common/testdata.rs"]
mod testdata;
/// Deterministic pseudo-random bytes (blake3 XOF), distinct per seed; the same as the `cairn`
/// binary's tests use.
#[allow(unused_imports)] // not every test binary makes data
pub use testdata::pattern as data;

pub fn add_file(path: &str, size: u64) -> RawOp {
    RawOp {
        path: Some(path.into()),
        size: Some(size),
        ..RawOp::default()
    }
}

pub fn op(json: serde_json::Value) -> RawOp {
    serde_json::from_value(json).unwrap()
}

pub fn request(ops: Vec<RawOp>) -> FilesJobRequest {
    FilesJobRequest::from_ops(ops)
}

/// A new library and object with an open draft.
pub fn new_object(e: &Engine) -> WriteToken {
    let lib = e.create_library("test").unwrap();
    let (_, draft) = e.create_object(&lib.id).unwrap();
    draft.token
}

/// Sends one request body in frames of `frame` bytes.
pub async fn post(
    e: &Arc<Engine>,
    t: WriteToken,
    job: &FilesJobCreated,
    i: usize,
    body: Vec<u8>,
    frame: usize,
) -> cairn_core::Result<cairn_jobs::UploadReply> {
    let frames: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(frame.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let len = body.len() as u64;
    e.upload(
        t,
        job.id,
        job.jobs[i],
        Some(len),
        futures::stream::iter(frames),
    )
    .await
}

/// Uploads every job of `job` the way the JS client does: status, then one POST per segment
/// with the bytes after `skip`.
pub async fn upload_all(
    e: &Arc<Engine>,
    t: WriteToken,
    job: &FilesJobCreated,
    files: &BTreeMap<String, Vec<u8>>,
) {
    for (i, uj) in job.jobs.iter().enumerate() {
        let st = e.upload_status(&t, &job.id, uj, 0, 10_000).unwrap();
        for s in st.files {
            if s.rem == 0 {
                continue;
            }
            let src = &files[&s.path];
            let body = src[(s.off + s.skip) as usize..(s.off + s.len) as usize].to_vec();
            post(e, t, job, i, body, 7919).await.unwrap();
        }
    }
}

pub fn read_all(e: &Engine, q: &Qhit, path: &str) -> cairn_core::Result<Vec<u8>> {
    let h = e.open_file(q, &FilePath::parse(path).unwrap())?;
    let mut out = Vec::with_capacity(h.size as usize);
    e.read_file(&h, 0, h.size, |b| {
        out.extend_from_slice(b);
        Ok(())
    })?;
    Ok(out)
}

/// Flips bits (`mask`) of data byte `at` of the first chunk record of the first pack.
pub fn flip_first_chunk_byte(dir: &std::path::Path, at: u64, mask: u8) {
    let pack = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    use cairn_store::pack::{
        decode_record_header, CODEC_RAW_OUTBOARD, HEADER_LEN, RECORD_HEADER_LEN, RECORD_MAGIC,
    };
    // Records start at the first write block after the header (see cairn_store::staging), whose
    // size depends on the file system: find the first record's magic.
    let first = (HEADER_LEN as usize..bytes.len())
        .find(|&i| bytes[i..].starts_with(RECORD_MAGIC))
        .unwrap();
    let h = decode_record_header(&bytes[first..]).unwrap();
    let outboard = match h.codec {
        CODEC_RAW_OUTBOARD => cairn_store::outboard::outboard_len(h.len),
        _ => 0,
    };
    bytes[first + (RECORD_HEADER_LEN + u64::from(outboard) + at) as usize] ^= mask;
    std::fs::write(&pack, &bytes).unwrap();
}

/// Adds `files` in one files job, uploads them, and returns the job.
pub async fn add_and_upload(
    e: &Arc<Engine>,
    t: WriteToken,
    files: &BTreeMap<String, Vec<u8>>,
) -> FilesJobCreated {
    let job = e
        .create_files_job(
            &t,
            &request(
                files
                    .iter()
                    .map(|(p, d)| add_file(p, d.len() as u64))
                    .collect(),
            ),
        )
        .unwrap();
    upload_all(e, t, &job, files).await;
    job
}
