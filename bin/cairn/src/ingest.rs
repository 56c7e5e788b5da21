//! `cairn ingest-bench`: ingests a synthetic stream (blake3 XOF output, so nothing dedups)
//! through the engine in 32 MiB upload jobs and prints one JSON line with the throughput and the
//! process's peak RSS. The memory test asserts that the peak stays flat for a 4 GiB stream.

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use cairn_jobs::ops::{FilesJobRequest, RawOp};
use cairn_jobs::{Engine, EngineConfig};
use futures::{StreamExt, TryStreamExt};

const FRAME: u64 = 1 << 20;

pub async fn run(args: &[String]) -> Result<()> {
    let size = crate::parse_size(crate::flag(args, "--size").unwrap_or("1GiB"))?;
    let parallel: usize = crate::flag(args, "--parallel").unwrap_or("2").parse()?;
    let tmp;
    let data = match crate::flag(args, "--data") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    let engine = Arc::new(Engine::open(EngineConfig::new(&data))?);
    let lib = engine.create_library("bench")?;
    let (_, draft) = engine.create_object(&lib.id)?;
    let op = RawOp {
        path: Some("stream.bin".into()),
        size: Some(size),
        ..RawOp::default()
    };
    let job = engine.create_files_job(&draft.token, &FilesJobRequest::from_ops(vec![op]))?;
    let started = std::time::Instant::now();
    let token = draft.token;
    futures::stream::iter(job.jobs.iter().copied())
        .map(|uj| {
            let engine = engine.clone();
            async move {
                let st = engine.upload_status(&token, &job.id, &uj, 0, 1)?;
                let seg = &st.files[0];
                engine
                    .upload(
                        token,
                        job.id,
                        uj,
                        Some(seg.len),
                        synthetic(seg.off, seg.len),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await?;
    let (hash, _) = engine.finalize(&token)?;
    let secs = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "bytes": size,
        "seconds": secs,
        "mib_per_s": size as f64 / secs / 1048576.0,
        "peak_rss_kib": crate::peak_rss_kib(),
        "upload_jobs": job.jobs.len(),
        "version": hash.to_string(),
    });
    crate::cli::stdout_line(&format!("{report}"));
    drop(engine);
    if crate::flag(args, "--data").is_none() {
        std::fs::remove_dir_all(&data)?;
    }
    Ok(())
}

/// Bytes `[off, off+len)` of an endless pseudo-random stream, in 1 MiB frames.
fn synthetic(off: u64, len: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::unfold(off, move |pos| async move {
        let end = off + len;
        (pos < end).then(|| {
            let n = FRAME.min(end - pos);
            let mut buf = vec![0u8; n as usize];
            let mut xof = blake3::Hasher::new()
                .update(b"cairn-synthetic")
                .finalize_xof();
            xof.set_position(pos);
            xof.fill(&mut buf);
            (Ok(Bytes::from(buf)), pos + n)
        })
    })
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cairn-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
