//! `cairn demo DIR`: the engine end to end on a real directory. Every file is planned by a files
//! job, streamed into its upload jobs (several in parallel, read with positional reads), the
//! draft is finalized into a version, and every file is read back through the streaming reader
//! and compared with the original by blake3.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use cairn_core::FilePath;
use cairn_jobs::ops::{FilesJobRequest, RawOp};
use cairn_jobs::{Engine, EngineConfig, FilesJobCreated, Qhit};
use futures::{StreamExt, TryStreamExt};

const FRAME: usize = 1 << 20;

pub async fn run(args: &[String]) -> Result<()> {
    let Some(src) = args.first().filter(|a| !a.starts_with("--")) else {
        bail!("demo needs a directory")
    };
    let src = PathBuf::from(src);
    let data = PathBuf::from(crate::flag(args, "--data").unwrap_or("./cairn-data"));
    let files = walk(&src)?;
    let engine = Arc::new(Engine::open(EngineConfig::new(&data))?);
    let total: u64 = files.iter().map(|(_, _, s)| s).sum();
    crate::cli::stdout_line(&format!(
        "ingesting {} files, {} bytes, from {} into {}",
        files.len(),
        total,
        src.display(),
        data.display()
    ));

    let started = std::time::Instant::now();
    let lib = engine.create_library("demo")?;
    let (_, draft) = engine.create_object(&lib.id)?;
    let ops = files
        .iter()
        .map(|(rel, _, size)| RawOp {
            path: Some(rel.clone()),
            size: Some(*size),
            ..RawOp::default()
        })
        .collect();
    let req = FilesJobRequest::from_ops(ops);
    let job = engine.create_files_job(&draft.token, &req)?;
    upload_jobs(&engine, draft.token, &job, &src).await?;
    let (hash, _) = engine.finalize(&draft.token)?;
    let secs = started.elapsed().as_secs_f64();
    crate::cli::stdout_line(&format!(
        "version {hash} ({} upload jobs, {:.1} MiB/s)",
        job.jobs.len(),
        total as f64 / secs / 1048576.0
    ));

    verify(&engine, &Qhit::Version(hash), &files).await?;
    let stats = engine.store().stats()?;
    crate::cli::stdout_line(&format!(
        "read back {} files byte-exact; stored {} chunk bytes in {} packs (logical {} bytes, dedup ratio {:.2})",
        files.len(),
        stats.chunk_bytes,
        stats.packs,
        total,
        total as f64 / stats.chunk_bytes.max(1) as f64
    ));
    Ok(())
}

/// Regular files under `root`: (relative path, absolute path, size), sorted.
fn walk(root: &Path) -> Result<Vec<(String, PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)?
                    .to_str()
                    .context("non-UTF-8 file name")?
                    .to_string();
                FilePath::parse(&rel).with_context(|| format!("{rel}: not a valid Cairn path"))?;
                out.push((rel, path, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sends every upload job, four at a time; each job's segments are read from the source files.
async fn upload_jobs(
    engine: &Arc<Engine>,
    token: cairn_core::WriteToken,
    job: &FilesJobCreated,
    root: &Path,
) -> Result<()> {
    futures::stream::iter(job.jobs.iter().copied())
        .map(|uj| {
            let engine = engine.clone();
            let root = root.to_path_buf();
            let fj = job.id;
            async move {
                let status = engine.upload_status(&token, &fj, &uj, 0, u64::MAX)?;
                for seg in status.files.iter().filter(|s| s.rem > 0) {
                    let path = root.join(&seg.path);
                    let body = file_stream(path, seg.off + seg.skip, seg.rem);
                    engine.upload(token, fj, uj, Some(seg.rem), body).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<()>()
        .await
}

/// Streams `len` bytes of `path` from `off`, one frame at a time (positional reads).
fn file_stream(
    path: PathBuf,
    off: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::try_unfold((path, off, len), |(path, off, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let n = (left as usize).min(FRAME);
        let p = path.clone();
        let buf = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; n];
            std::fs::File::open(&p)?.read_exact_at(&mut buf, off)?;
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Some((
            Bytes::from(buf),
            (path, off + n as u64, left - n as u64),
        )))
    })
}

async fn verify(engine: &Arc<Engine>, q: &Qhit, files: &[(String, PathBuf, u64)]) -> Result<()> {
    for (rel, abs, size) in files {
        let h = engine.open_file(q, &FilePath::parse(rel)?)?;
        if h.size != *size {
            bail!("{rel}: size {} read back, {size} on disk", h.size);
        }
        let mut stream = std::pin::pin!(engine.read_stream(h, 0, *size));
        let mut got = blake3::Hasher::new();
        while let Some(piece) = stream.next().await {
            got.update(&piece?);
        }
        let want = blake3::Hasher::new()
            .update_reader(std::fs::File::open(abs)?)?
            .finalize();
        if got.finalize() != want {
            bail!("{rel}: bytes read back differ from the original");
        }
    }
    Ok(())
}
