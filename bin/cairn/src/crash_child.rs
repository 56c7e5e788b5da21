//! `cairn crash-child DATA_DIR ABORT_AFTER`: a test helper for the crash test (tests/crash.rs).
//!
//! It uploads a fixed set of files through the engine, resuming from the server-side `skip`
//! like a real client, in requests of random sizes. After each acknowledged request it prints
//! `ACK <upload job> <received>`. Once `ABORT_AFTER` more bytes have been sent in this run, it
//! starts one more request, hands the engine part of its body, and aborts the whole process
//! (no destructors, no shutdown) a moment later. When everything is uploaded it prints `DONE`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use cairn_core::{FilesJobId, UploadJobId, WriteToken};
use cairn_jobs::ops::{FilesJobRequest, RawOp};
use cairn_jobs::{Engine, EngineConfig, PlanLimits};
use cairn_store::ChunkParams;
use futures::StreamExt;
use rand::{Rng, SeedableRng};

/// The files uploaded: name and size; contents are `content(index, size)`.
pub const FILES: &[(&str, u64)] = &[
    ("a.bin", 1_500_000),
    ("dir/b.bin", 700_000),
    ("dir/c.bin", 100_000),
    ("empty", 0),
];

pub fn content(i: usize, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    blake3::Hasher::new()
        .update(&(i as u64).to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn config(dir: &Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.plan = PlanLimits {
        part_size: 512 << 10,
        max_segments: 64,
        ..PlanLimits::default()
    };
    cfg.store.chunking = ChunkParams {
        min: 1 << 10,
        avg: 4 << 10,
        max: 16 << 10,
    };
    cfg.store.pack_target_size = 1 << 20;
    cfg.commit_every = 64 << 10;
    cfg
}

struct Ids {
    token: WriteToken,
    fj: FilesJobId,
    jobs: Vec<UploadJobId>,
}

/// The ids of the upload, created on the first run and read back on later ones.
fn ids(engine: &Engine, dir: &Path) -> Result<Ids> {
    let path = dir.join("crash-ids.txt");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut words = text.split_whitespace();
        let token = words.next().context("token")?.parse()?;
        let fj = words.next().context("files job")?.parse()?;
        let jobs = words.map(str::parse).collect::<Result<_, _>>()?;
        return Ok(Ids { token, fj, jobs });
    }
    let lib = engine.create_library("crash")?;
    let (_, draft) = engine.create_object(&lib.id)?;
    let ops = FILES
        .iter()
        .map(|(p, s)| RawOp {
            path: Some(p.to_string()),
            size: Some(*s),
            ..RawOp::default()
        })
        .collect();
    let job = engine.create_files_job(&draft.token, &FilesJobRequest::from_ops(ops))?;
    let mut text = format!("{} {}", draft.token, job.id);
    for uj in &job.jobs {
        text.push_str(&format!(" {uj}"));
    }
    let tmp = dir.join("crash-ids.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Ids {
        token: draft.token,
        fj: job.id,
        jobs: job.jobs,
    })
}

pub async fn run(args: &[String]) -> Result<()> {
    let dir = Path::new(args.first().context("data dir")?);
    let abort_after: u64 = args.get(1).context("abort-after bytes")?.parse()?;
    let engine = Arc::new(Engine::open(config(dir))?);
    let ids = ids(&engine, dir)?;
    let sources: Vec<Vec<u8>> = FILES
        .iter()
        .enumerate()
        .map(|(i, (_, s))| content(i, *s))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(abort_after);
    let mut sent = 0u64;
    let mut out = std::io::stdout();
    for uj in &ids.jobs {
        let status = engine.upload_status(&ids.token, &ids.fj, uj, 0, u64::MAX)?;
        for seg in status.files.iter().filter(|s| s.rem > 0) {
            let i = FILES
                .iter()
                .position(|(p, _)| *p == seg.path)
                .context("unknown path")?;
            let mut rest = &sources[i][(seg.off + seg.skip) as usize..(seg.off + seg.len) as usize];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=40_000).min(rest.len());
                let (piece, tail) = rest.split_at(n);
                if sent + n as u64 > abort_after {
                    let k = (abort_after - sent) as usize;
                    let first = Bytes::copy_from_slice(&piece[..k]);
                    let delay = rng.gen_range(0..3000);
                    let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(first)]).chain(
                        futures::stream::once(async move {
                            tokio::time::sleep(std::time::Duration::from_micros(delay)).await;
                            std::process::abort()
                        }),
                    );
                    let _ = engine.upload(ids.token, ids.fj, *uj, None, body).await;
                    unreachable!("the body aborts the process");
                }
                let reply = engine
                    .upload(
                        ids.token,
                        ids.fj,
                        *uj,
                        Some(n as u64),
                        futures::stream::iter(vec![Ok::<_, std::io::Error>(
                            Bytes::copy_from_slice(piece),
                        )]),
                    )
                    .await?;
                writeln!(out, "ACK {uj} {}", reply.received)?;
                out.flush()?;
                sent += n as u64;
                rest = tail;
            }
        }
    }
    writeln!(out, "DONE")?;
    Ok(())
}
