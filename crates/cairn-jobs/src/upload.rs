//! Upload jobs: ordered bytes appended at the job's current offset, chunked per file segment,
//! committed durably, and sealed into a part when the last byte arrives.
//!
//! One request is ingested by a task of its own, on the async runtime (see `Engine::ingest`);
//! back-pressure from disk to socket is the store's bounded write backlog. The task holds the
//! upload job's lock until its last commit, so a retry waits for the interrupted request's bytes
//! to be saved and then sees the exact `skip`.
//!
//! Commits: every `commit_every` bytes at the last chunk cut (no tail needed), and at the end of
//! the request, whether it ended normally or was cut off, with the bytes after the last cut kept
//! as the job's tail. Resuming restarts the chunker from exactly that state, so an interrupted
//! upload produces the same chunks as an uninterrupted one.

use std::sync::Arc;

use bytes::Bytes;
use cairn_core::{Error, ErrorKind, FilesJobId, Result, UploadJobId, WriteToken};
use cairn_store::{ChunkRef, PartRecord, SegmentChunker, WriteSession};
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::engine::{Engine, UPLOAD_PERMITS};
use crate::records::*;

/// Unfinished upload jobs whose streamed hashes are kept (each at most a few tens of KiB).
const MAX_STREAM_HASHES: usize = 1024;

/// Upload-job locks kept before unused ones are pruned (see `Engine::uj_lock`).
const UJ_LOCKS_PRUNE_AT: usize = 1024;

/// Full 4 MiB write windows allowed to wait for the store's writer thread before an upload
/// stops reading its body until the disk catches up.
const WRITE_BACKLOG: usize = 4;

/// At most this much of a refused body is read and dropped (see [`drain`]).
const DRAIN_MAX: u64 = 64 << 20;

/// Reads and drops what is left of a body whose bytes were refused (a full disk), when its
/// length is known and at most [`DRAIN_MAX`]: a reply sent while the client is still sending
/// ends, when the connection closes with the rest unread, in a reset that can destroy the
/// reply before the client reads it (QA: curl saw only `100 Continue` where a 507 had been
/// sent). Nothing read here is kept. The caller bounds the time it takes.
async fn drain<S, E>(body: &mut std::pin::Pin<&mut S>, left: Option<u64>)
where
    S: Stream<Item = std::result::Result<Bytes, E>>,
{
    let Some(mut left) = left.filter(|&n| n <= DRAIN_MAX) else {
        return;
    };
    while left > 0 {
        match body.next().await {
            Some(Ok(frame)) => left = left.saturating_sub(frame.len() as u64),
            _ => return,
        }
    }
}

/// Runs `f`, which may wait on the disk, without stalling the other tasks of this runtime
/// thread: on a multi-threaded runtime the thread hands its tasks to another one meanwhile. (A
/// current-thread runtime, as in some tests, has no other thread: `f` just runs.)
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A write session for request bodies: a chunk that arrived again is checked against its
/// stored copy, and when that copy is not in the page cache the read runs as [`blocking`].
fn ingest_session(engine: &Engine) -> cairn_store::WriteSession<'_> {
    let mut session = engine.store.session();
    session.wait_with(|read| blocking(read));
    session
}

/// Per-segment progress of an upload job (the reference's upload-status entry).
#[derive(Debug, Clone, Serialize)]
pub struct SegmentStatus {
    pub path: String,
    pub size: u64,
    pub off: u64,
    pub len: u64,
    pub skip: u64,
    pub rem: u64,
}

/// `GET …/uploads/{uj}`: a page of segment statuses.
#[derive(Debug, Clone, Serialize)]
pub struct UploadStatus {
    pub id: UploadJobId,
    /// Next `start`, or -1 when this page is the last.
    pub next: i64,
    pub total: u64,
    pub files: Vec<SegmentStatus>,
}

/// The reply to an upload request.
#[derive(Debug, Clone, Serialize)]
pub struct UploadReply {
    pub id: UploadJobId,
    /// Bytes this request added to the job.
    pub accepted: u64,
    pub received: u64,
    pub size: u64,
    pub complete: bool,
}

/// Largest page of an upload status.
pub const MAX_STATUS_PAGE: u64 = 10_000;

impl Engine {
    pub(crate) fn uj_lock(&self, uj: &UploadJobId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.uj_locks.lock();
        // Sealing a job drops its lock; jobs abandoned before that would keep theirs for the
        // server's life. Locks that nobody holds or waits for (only the map refers to them) are
        // dropped now and then: whoever comes next simply gets a fresh one.
        if locks.len() >= UJ_LOCKS_PRUNE_AT && !locks.contains_key(uj) {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(*uj).or_default().clone()
    }

    /// Waits, for at most `max`, until no request for upload job `uj` is being received; false
    /// if one still is. A client that drops a request and reads the status at once would
    /// otherwise be told the offset from before that request, whose bytes the server is still
    /// saving (it notices the drop a few milliseconds later): resumed from there without
    /// `Content-Range`, the retry's bytes would land after the dropped request's ones.
    ///
    /// The job is checked against `token` and `fj` first (not found otherwise): a request that
    /// names another draft's job neither waits for its lock nor learns from the wait whether
    /// that job is receiving data.
    pub async fn settle_upload(
        &self,
        token: &WriteToken,
        fj: &FilesJobId,
        uj: &UploadJobId,
        max: std::time::Duration,
    ) -> Result<bool> {
        self.upload_job_in(token, fj, uj)?;
        let Some(lock) = self.uj_locks.lock().get(uj).cloned() else {
            return Ok(true);
        };
        Ok(tokio::time::timeout(max, lock.lock_owned()).await.is_ok())
    }

    /// Finds an upload job and checks it belongs to `token` and `fj`.
    pub fn upload_job_in(
        &self,
        token: &WriteToken,
        fj: &FilesJobId,
        uj: &UploadJobId,
    ) -> Result<UploadJobRecord> {
        let rec = self.upload_job(uj)?;
        if rec.draft != *token || rec.files_job != *fj {
            return Err(Error::not_found(format!(
                "upload job {uj} not found in files job {fj}"
            )));
        }
        Ok(rec)
    }

    pub fn upload_status(
        &self,
        token: &WriteToken,
        fj: &FilesJobId,
        uj: &UploadJobId,
        start: u64,
        limit: u64,
    ) -> Result<UploadStatus> {
        let rec = self.upload_job_in(token, fj, uj)?;
        let limit = limit.clamp(1, MAX_STATUS_PAGE);
        let total = u64::from(rec.segment_count);
        let first = u32::try_from(start.min(total)).unwrap_or(rec.segment_count);
        let files = self
            .uj_segments(uj, first, limit as usize)?
            .into_iter()
            .map(|s| {
                let skip = rec.received.saturating_sub(s.start).min(s.seg.len);
                SegmentStatus {
                    path: s.seg.path.to_string(),
                    size: s.seg.file_size,
                    off: s.seg.off,
                    len: s.seg.len,
                    skip,
                    rem: s.seg.len - skip,
                }
            })
            .collect();
        let end = start.saturating_add(limit);
        Ok(UploadStatus {
            id: *uj,
            next: if end >= total { -1 } else { end as i64 },
            total,
            files,
        })
    }

    /// Receives one request body for an upload job. `declared` is the body length if known
    /// (checked against what the job still expects before anything is read).
    ///
    /// Cancel-safe: the body is ingested by a task of its own, so if this future is dropped
    /// (the connection went away), what arrived is still committed.
    pub async fn upload<S, E>(
        self: &Arc<Self>,
        token: WriteToken,
        fj: FilesJobId,
        uj: UploadJobId,
        declared: Option<u64>,
        body: S,
    ) -> Result<UploadReply>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.upload_at(token, fj, uj, declared, (None, None), body)
            .await
    }

    /// [`Engine::upload`] that also states the offset the body starts at and the job's total
    /// size (from a `Content-Range`): an offset that is not the job's is a `conflict` and nothing
    /// is read, so a blind retry can never append bytes twice; a total that is not the job's
    /// size is `invalid` (the client is sending some other upload).
    pub async fn upload_at<S, E>(
        self: &Arc<Self>,
        token: WriteToken,
        fj: FilesJobId,
        uj: UploadJobId,
        declared: Option<u64>,
        (offset, total): (Option<u64>, Option<u64>),
        body: S,
    ) -> Result<UploadReply>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        // The job's lock first, before anything is read: an upload status waits for it
        // ([`Engine::settle_upload`]), so the earlier it is taken the smaller the window in which
        // a status read misses a request its client just dropped. A request waiting behind
        // another on the same job holds no permit meanwhile. Offsets and room are checked by
        // `ingest` under it, after any interrupted request on this job has saved its bytes.
        // Only a job of this draft is locked, though: a request naming another draft's job
        // must not hold that job's lock (making its force completion answer 409) or time it.
        self.upload_job_in(&token, &fj, &uj)?;
        let guard = self.uj_lock(&uj).lock_owned().await;
        let job = self.upload_job_in(&token, &fj, &uj)?;
        if job.is_complete() {
            return Err(Error::gone(format!("upload job {uj} is already complete")));
        }
        if let Some(total) = total.filter(|&t| t != job.size) {
            return Err(Error::invalid(format!(
                "Content-Range total {total} is not the size of upload job {uj} ({} bytes)",
                job.size
            )));
        }
        // All permits held (by as many uploads whose clients send slowly, say): wait at most
        // the idle time, as a download waits for read budget, rather than queue for as long
        // as they last. Nothing was read, so the client retries the same request.
        let permit =
            tokio::time::timeout(self.cfg.idle_timeout, self.uploads.clone().acquire_owned())
                .await
                .map_err(|_| {
                    Error::busy(format!(
                    "all {UPLOAD_PERMITS} upload slots stayed taken by other uploads for {} s; \
                     nothing of this request was read, send it again",
                    self.cfg.idle_timeout.as_secs()
                ))
                })?
                .map_err(|_| Error::internal("engine closed"))?;
        let me = self.clone();
        let task = tokio::spawn(async move {
            let _held = (guard, permit);
            me.ingest(&token, &fj, &uj, declared, offset, body).await
        });
        let result = task
            .await
            .map_err(|e| Error::internal(format!("ingest task failed: {e}")))?;
        // A draft deleted while its upload streamed takes the job's records with it, and the
        // ingest fails on whichever record it missed first ("segment 0 of upload job … not
        // found"): say what happened instead (QA).
        match result {
            Err(e)
                if e.is(ErrorKind::NotFound)
                    && matches!(self.draft_head(&token), Err(d) if d.is(ErrorKind::NotFound)) =>
            {
                Err(Error::not_found(format!(
                    "write token {token} not found: the draft was deleted while this upload \
                     was being received ({})",
                    e.reason
                )))
            }
            other => other,
        }
    }

    /// The body of [`Engine::upload_at`]; the caller holds the upload job's lock.
    ///
    /// Each frame is hashed, chunked and staged right here, on the runtime thread that received
    /// it, while it is still in that core's cache: handing frames to a blocking thread cost a
    /// wake-up each and about 10% more CPU (measured). What waits on the disk does not run here:
    /// full write windows go to the store's writer thread, and commits (fsyncs), pushes that
    /// may seal the open pack, and the wait for a long write backlog run in [`blocking`]. (Index
    /// lookups for dedup stay here: RocksDB point reads, mostly from memory.)
    async fn ingest<S, E>(
        &self,
        token: &WriteToken,
        fj: &FilesJobId,
        uj: &UploadJobId,
        declared: Option<u64>,
        offset: Option<u64>,
        body: S,
    ) -> Result<UploadReply>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut rec = self.upload_job_in(token, fj, uj)?;
        if rec.sealed.is_none() && rec.received == rec.size {
            // Every byte arrived but the seal after the last commit failed: seal it now.
            blocking(|| self.seal(&rec, rec.segment_count))?;
            rec = self.upload_job_in(token, fj, uj)?;
        }
        check_room(&rec, declared, offset)?;
        let mut ing = Ingest::start(self, rec)?;
        let mut body = std::pin::pin!(body);
        let idle = self.cfg.idle_timeout;
        let mut stopping = self.stopping.subscribe();
        let mut body_len = 0u64;
        // Set when the server's own stop cut the body off, not its client.
        let mut stopped = false;
        // The job is marked active by the first byte that arrives, not by the request: one
        // that brings nothing leaves a FAILED job's error as it was.
        let mut touched = false;
        // Ok(true): the body ended normally; Ok(false): it was cut off.
        let outcome = loop {
            // A client that stops sending is cut off after `idle_timeout`, and every upload
            // when the server stops: what arrived is kept (see skip) and the lock is freed.
            let next = tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => {
                    // Every byte the request stated is here: it is whole, whatever its end
                    // of body was about to say (review 30: a 503 "cut off" for a sealed job).
                    if declared.is_some_and(|n| body_len >= n) {
                        break Ok(true);
                    }
                    tracing::info!(upload_job = %uj, "server stopping: upload cut off");
                    stopped = true;
                    break Ok(false);
                }
                next = tokio::time::timeout(idle, body.next()) => next,
            };
            let item = match next {
                Ok(Some(item)) => item,
                // A body that ends before its stated length was cut off (hyper reports this
                // for a `Content-Length`; a length stated by `Content-Range` is checked here).
                Ok(None) => break Ok(declared.is_none_or(|n| body_len >= n)),
                Err(_) => {
                    tracing::info!(upload_job = %uj, "upload body idle too long");
                    break Ok(false);
                }
            };
            let bytes = match item {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::info!(upload_job = %uj, error = %e, "upload body cut off");
                    break Ok(false);
                }
            };
            // A length stated only by `Content-Range` (a chunked body) binds like a
            // `Content-Length`: bytes past it are not the range the client named.
            body_len = body_len.saturating_add(bytes.len() as u64);
            match declared {
                Some(n) if body_len > n => {
                    ing.poisoned = true;
                    break Err(Error::too_large(format!(
                        "the body is longer than the {n} bytes its headers state"
                    )));
                }
                _ => {}
            }
            if !touched && !bytes.is_empty() {
                touched = true;
                if let Err(e) = blocking(|| self.touch_job(fj)) {
                    break Err(e);
                }
            }
            if self.store.write_backlog() > WRITE_BACKLOG {
                blocking(|| self.store.wait_write_backlog(WRITE_BACKLOG));
            }
            // A push that commits, or that may fill the open pack (sealing it waits for an
            // fsync), runs off the runtime. The margin covers the chunker's unfinished chunk
            // and the records' headers and outboards.
            let margin = 2 * u64::from(self.store.chunking().max);
            let waits =
                ing.commit_due(bytes.len()) || self.store.may_roll(bytes.len() as u64 + margin);
            let pushed = match waits {
                true => blocking(|| ing.push(bytes)),
                false => ing.push(bytes),
            };
            if let Err(e) = pushed {
                let left = declared.map(|n| n.saturating_sub(body_len));
                tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => {}
                    // One idle period for all of it: a client trickling the rest cannot hold
                    // the job's lock for long.
                    _ = tokio::time::timeout(idle, drain(&mut body, left)) => {}
                }
                break Err(e);
            }
        };
        // Whatever arrived is kept, also when the request failed part-way — unless the failure
        // left the in-memory state unsure (a failed write), in which case only what was
        // already committed stands.
        let saved = match ing.poisoned {
            true => Err(Error::internal(
                "upload state discarded after a failed write or a body too long",
            )),
            false => blocking(|| ing.finish()),
        };
        if let Some(e) = outcome.as_ref().err().or(saved.as_ref().err()) {
            if matches!(
                e.kind,
                ErrorKind::Internal | ErrorKind::NoSpace | ErrorKind::Corrupt
            ) {
                blocking(|| self.fail_job(fj, &e.reason));
            }
        }
        if !outcome? && saved.is_ok() {
            // The server stopping is not the client's fault: 503, which clients retry (after
            // reading `skip`), rather than the 400 of a body its client cut short.
            return Err(match stopped {
                true => Error::busy(
                    "the server is stopping: this upload was cut off and what arrived is kept; \
                     resume from the upload status's skip once the server is back",
                ),
                false => {
                    Error::invalid("the request body was cut off; what arrived is kept (see skip)")
                }
            });
        }
        saved
    }

    /// Stops the uploads still receiving (each commits what arrived, so a client resumes from
    /// there) and waits, at most `within`, until every upload has finished its last commit.
    /// Called by the server once it has stopped accepting and its grace period has run out.
    pub async fn stop_uploads(&self, within: std::time::Duration) {
        self.stopping.send_replace(true);
        let all = crate::engine::UPLOAD_PERMITS as u32;
        if tokio::time::timeout(within, self.uploads.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("uploads still committing after {within:?}; stopping anyway");
        }
    }

    /// Marks the files job active in this process's epoch (a restarted server reports STOPPED
    /// until data arrives again or the job is resumed). Data arriving also clears a FAILED
    /// job's error, as `resume` does: a job taking data again after a full disk was freed
    /// reported FAILED, and kept the stale error once COMPLETED (QA); if this upload fails
    /// too, it is FAILED again with the new error.
    fn touch_job(&self, fj: &FilesJobId) -> Result<()> {
        let job: FilesJobRecord =
            self.get(CF_FILES_JOBS, fj.as_bytes(), || format!("files job {fj}"))?;
        if job.epoch == self.epoch && job.status == JobStatus::InProgress && job.error.is_none() {
            return Ok(());
        }
        let _w = self.state.write();
        let mut job: FilesJobRecord =
            self.get(CF_FILES_JOBS, fj.as_bytes(), || format!("files job {fj}"))?;
        job.epoch = self.epoch;
        job.status = JobStatus::InProgress;
        job.error = None;
        let mut b = self.store.index().batch();
        b.put_record(CF_FILES_JOBS, fj.as_bytes(), &job);
        self.store.commit(b)
    }

    /// Seals an upload job: its first `complete` segments become one part (all of them after a
    /// normal upload; fewer after force completion). Chunks received for later segments and the
    /// tail are released.
    /// Reads the kept chunks back (each verified) once, hashing each complete segment for the
    /// file hashes (the part digest needs only the chunk list: `cairn_store::part_digest`).
    fn hash_segments(
        &self,
        rec: &UploadJobRecord,
        complete: u32,
        chunks: &[(Box<[u8]>, UjChunk)],
    ) -> Result<SegmentHashes> {
        let segments = self.uj_segments(&rec.id, 0, complete as usize)?;
        let kept: Vec<&UjChunk> = chunks
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.segment < complete)
            .collect();
        let mut values = Vec::with_capacity(segments.len());
        for group in kept.chunk_by(|a, b| a.segment == b.segment) {
            let s = &segments[group[0].segment as usize].seg;
            // A whole file that made one chunk: the chunk's name is the file's blake3.
            if let [one] = group {
                if s.off == 0 && s.len == s.file_size && u64::from(one.chunk.len) == s.len {
                    values.push(Some(*one.chunk.hash.as_bytes()));
                    continue;
                }
            }
            // A segment that does not line up with the BLAKE3 tree has no hasher: nothing to read.
            let Some(mut h) = cairn_core::hash::SegmentHasher::new(s.off, s.len, s.file_size)
            else {
                values.push(None);
                continue;
            };
            for c in group {
                h.update(&self.store.read_chunk(&c.chunk)?);
            }
            values.push(Some(h.finish()));
        }
        if values.len() != complete as usize {
            return Err(Error::corrupt(format!(
                "upload job {} is missing the chunks of a segment",
                rec.id
            )));
        }
        Ok(SegmentHashes { values })
    }

    pub(crate) fn seal(&self, rec: &UploadJobRecord, complete: u32) -> Result<()> {
        self.seal_with(rec, complete, None, true)
    }

    /// [`Engine::seal`] whose batch is written without waiting for its fsync: for a caller
    /// that seals many jobs and makes the last write synced (RocksDB's log keeps its order, so
    /// that fsync covers every earlier batch) before it answers.
    pub(crate) fn seal_unsynced(&self, rec: &UploadJobRecord, complete: u32) -> Result<()> {
        self.seal_with(rec, complete, None, false)
    }

    /// [`Engine::seal`] with the segment hashes already computed while the bytes streamed in
    /// (an upload received whole by one process); otherwise they are computed by reading the
    /// chunks back.
    fn seal_with(
        &self,
        rec: &UploadJobRecord,
        complete: u32,
        known: Option<SegmentHashes>,
        sync: bool,
    ) -> Result<()> {
        let chunks = self.uj_chunks(&rec.id)?;
        let kept: Vec<ChunkRef> = chunks
            .iter()
            .filter(|(_, c)| c.segment < complete)
            .map(|(_, c)| c.chunk)
            .collect();
        let size = match complete {
            c if c >= rec.segment_count => rec.size,
            c => self.uj_segment(&rec.id, c)?.start,
        };
        let chunk_bytes: u64 = kept.iter().map(|c| u64::from(c.len)).sum();
        if chunk_bytes != size {
            // Another seal (a resume, a files finalize) may have taken the chunks into the
            // part since this one was asked for: done, not damage (review 30).
            if self.upload_job(&rec.id)?.sealed.is_some() {
                return Ok(());
            }
            return Err(Error::corrupt(format!(
                "upload job {} has {chunk_bytes} bytes of chunks for {size} bytes of segments",
                rec.id
            )));
        }
        let hashes = match known {
            Some(k) => k,
            None => self.hash_segments(rec, complete, &chunks)?,
        };
        let digest = cairn_store::part_digest(&kept);
        let part = PartRecord {
            digest,
            size,
            chunks: kept,
        };
        let _r = self.state.read();
        let guard = self.store.ref_guard();
        let mut fresh = self.upload_job(&rec.id)?;
        if fresh.sealed.is_some() {
            return Ok(());
        }
        let mut b = self.store.index().batch();
        if size > 0 {
            self.store.reference_part(&mut b, &part, &guard)?;
        }
        self.store
            .release_chunks(&mut b, chunks.iter().map(|(_, c)| &c.chunk));
        for (k, _) in &chunks {
            b.delete(CF_UJ_CHUNKS, k);
        }
        b.delete(CF_UJ_TAIL, rec.id.as_bytes());
        fresh.sealed = Some(SealedPart {
            digest,
            size,
            complete_segments: complete,
        });
        fresh.segment_hashes = hashes;
        fresh.tail_len = 0;
        b.put_record(CF_UPLOAD_JOBS, rec.id.as_bytes(), &fresh);
        self.store.index().write(b, sync)?;
        drop(guard);
        self.uj_locks.lock().remove(&rec.id);
        self.stream_hashes.lock().remove(&rec.id);
        Ok(())
    }
}

fn check_room(rec: &UploadJobRecord, declared: Option<u64>, offset: Option<u64>) -> Result<()> {
    if rec.is_complete() {
        return Err(Error::gone(format!(
            "upload job {} is already complete",
            rec.id
        )));
    }
    if let Some(at) = offset.filter(|&at| at != rec.received) {
        return Err(Error::conflict(format!(
            "the body starts at offset {at} but upload job {} is at offset {}",
            rec.id, rec.received
        )));
    }
    let room = rec.size - rec.received;
    match declared {
        Some(n) if n > room => Err(Error::too_large(format!(
            "{n} bytes sent but upload job {} expects only {room} more (at offset {})",
            rec.id, rec.received
        ))),
        _ => Ok(()),
    }
}

/// The state of one request's ingest.
struct Ingest<'e> {
    engine: &'e Engine,
    rec: UploadJobRecord,
    session: WriteSession<'e>,
    chunker: SegmentChunker,
    /// Stream offset of everything pushed.
    pos: u64,
    segment: u32,
    seg_end: u64,
    /// Length of the current segment.
    seg_len: u64,
    pending: Vec<UjChunk>,
    since_commit: u64,
    /// The job's durable offset when this request started.
    started_at: u64,
    /// Hashes of everything pushed, kept when this request started at the job's first byte, so
    /// sealing need not read the part back.
    hashes: Option<StreamHashes>,
    /// Set when a write failed midway (the chunker, the pending list and the offsets may
    /// disagree) or the body proved longer than the job: nothing more is committed from this
    /// request.
    poisoned: bool,
}

impl<'e> Ingest<'e> {
    fn start(engine: &'e Engine, rec: UploadJobRecord) -> Result<Ingest<'e>> {
        let tail = match rec.tail_len {
            0 => Vec::new(),
            _ => engine
                .store
                .index()
                .get(CF_UJ_TAIL, rec.id.as_bytes())?
                .unwrap_or_default(),
        };
        if tail.len() as u64 != rec.tail_len {
            return Err(Error::corrupt(format!(
                "upload job {} tail is {} bytes, expected {}",
                rec.id,
                tail.len(),
                rec.tail_len
            )));
        }
        let pos = rec.received;
        let (segment, seg_end, seg_len) = locate(engine, &rec, pos)?;
        let chunker = SegmentChunker::with_pending(engine.store.chunking(), tail, seg_end - pos);
        Ok(Ingest {
            engine,
            session: ingest_session(engine),
            chunker,
            pos,
            segment,
            seg_end,
            seg_len,
            pending: Vec::new(),
            since_commit: 0,
            poisoned: false,
            started_at: rec.received,
            hashes: match rec.received {
                0 => Some(StreamHashes::start(engine, &rec)?),
                // A previous request of this process left off exactly here.
                at => engine
                    .stream_hashes
                    .lock()
                    .remove(&rec.id)
                    .filter(|(off, _)| *off == at)
                    .map(|(_, h)| h),
            },
            rec,
        })
    }

    /// Whether pushing `n` more bytes makes a commit (an fsync) due.
    fn commit_due(&self, n: usize) -> bool {
        self.since_commit.saturating_add(n as u64) >= self.engine.cfg.commit_every
    }

    fn push(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            if self.pos >= self.rec.size {
                // A body longer than the job (sent without a length to refuse up front) is bad
                // input: nothing of it is kept beyond what periodic commits already saved, so
                // the job does not complete on a request that fails.
                self.poisoned = true;
                return Err(Error::too_large(format!(
                    "more bytes than upload job {} declares ({} bytes)",
                    self.rec.id, self.rec.size
                )));
            }
            let n = (self.seg_end - self.pos).min(data.len() as u64) as usize;
            self.feed(data.split_to(n))
                .inspect_err(|_| self.poisoned = true)?;
        }
        if self.since_commit >= self.engine.cfg.commit_every {
            self.commit(false).inspect_err(|_| self.poisoned = true)?;
        }
        Ok(())
    }

    /// Pushes bytes of the current segment; at the segment's end, flushes its last chunk.
    fn feed(&mut self, data: Bytes) -> Result<()> {
        if let Some(h) = self.hashes.as_mut() {
            h.update(&data);
        }
        let n = data.len() as u64;
        let (session, pending, seg) = (&mut self.session, &mut self.pending, self.segment);
        self.chunker.push(data, |c| {
            pending.push(UjChunk {
                segment: seg,
                chunk: session.add_chunk_pieces(c)?,
            });
            Ok::<_, Error>(())
        })?;
        self.pos += n;
        self.since_commit += n;
        if self.pos == self.seg_end {
            let by_chunks = self.hashes.as_ref().is_some_and(|h| h.by_chunks);
            let (first, seg_len) = (pending.len(), self.seg_len);
            let mut several = None;
            let emitted = std::cell::Cell::new(0usize);
            self.chunker.finish_then(
                |c| {
                    emitted.set(emitted.get() + 1);
                    pending.push(UjChunk {
                        segment: seg,
                        chunk: session.add_chunk_pieces(c)?,
                    });
                    Ok::<_, Error>(())
                },
                |held| {
                    // Hashed only when the file did not make exactly one chunk (whose name is
                    // its hash), and only when the chunker held the whole segment.
                    let len: usize = held.iter().map(|p| p.len()).sum();
                    if by_chunks && emitted.get() != 1 && len as u64 == seg_len {
                        let mut h = blake3::Hasher::new();
                        for p in held {
                            h.update(p);
                        }
                        several = Some(*h.finalize().as_bytes());
                    }
                },
            )?;
            // One chunk that is the whole file: its name is the file's blake3, already known.
            let from_chunks = match &pending[first..] {
                [one] if u64::from(one.chunk.len) == seg_len => Some(*one.chunk.hash.as_bytes()),
                _ => several,
            };
            (self.segment, self.seg_end, self.seg_len) = locate(self.engine, &self.rec, self.pos)?;
            self.chunker.begin(self.seg_len);
            if let Some(h) = self.hashes.as_mut() {
                h.next_segment(self.engine, &self.rec, self.segment, from_chunks)?;
            }
        }
        Ok(())
    }

    /// Commits durably. With `with_tail`, everything pushed is saved (the bytes after the last
    /// cut as the tail); otherwise up to the last cut.
    fn commit(&mut self, with_tail: bool) -> Result<()> {
        // Never move the durable offset backwards: if no cut happened since a saved tail,
        // save the tail again.
        let at_cut = self.pos - self.chunker.pending() as u64;
        let with_tail = with_tail || at_cut < self.rec.received;
        let tail = if with_tail {
            self.chunker.pending_bytes()
        } else {
            Vec::new()
        };
        let received = self.pos - (self.chunker.pending() - tail.len()) as u64;
        if received == self.rec.received
            && tail.len() as u64 == self.rec.tail_len
            && self.pending.is_empty()
        {
            return Ok(());
        }
        let engine = self.engine;
        let _r = engine.state.read();
        engine.upload_job(&self.rec.id)?; // the draft may have been finalized or discarded
        let mut rec = self.rec.clone();
        let mut b = engine.store.index().batch();
        for c in &self.pending {
            b.put_record(CF_UJ_CHUNKS, &uj_chunk_key(&rec.id, rec.chunks), c);
            rec.chunks += 1;
        }
        if tail.is_empty() {
            b.delete(CF_UJ_TAIL, rec.id.as_bytes());
        } else {
            b.put(CF_UJ_TAIL, rec.id.as_bytes(), &tail);
        }
        rec.received = received;
        rec.tail_len = tail.len() as u64;
        b.put_record(CF_UPLOAD_JOBS, rec.id.as_bytes(), &rec);
        let session = std::mem::replace(&mut self.session, ingest_session(engine));
        session.commit(b)?;
        // Only a committed batch changes what this request believes is durable.
        self.rec = rec;
        self.pending.clear();
        self.since_commit = 0;
        Ok(())
    }

    /// Saves everything that arrived, and seals the job if it is complete.
    fn finish(mut self) -> Result<UploadReply> {
        self.commit(true)?;
        let complete = self.rec.received == self.rec.size;
        if complete {
            let known = self
                .hashes
                .take()
                .and_then(|h| h.finish(self.rec.segment_count));
            self.engine
                .seal_with(&self.rec, self.rec.segment_count, known, true)?;
        } else if let Some(h) = self.hashes.take() {
            // Everything pushed is now durable: the next request can continue these hashes.
            // Jobs left unfinished must not pile up: past a bound, one is forgotten (its seal
            // then reads its bytes back instead).
            let mut kept = self.engine.stream_hashes.lock();
            if kept.len() >= MAX_STREAM_HASHES && !kept.contains_key(&self.rec.id) {
                if let Some(old) = kept.keys().next().copied() {
                    kept.remove(&old);
                }
            }
            kept.insert(self.rec.id, (self.rec.received, h));
        }
        Ok(UploadReply {
            id: self.rec.id,
            accepted: self.rec.received - self.started_at,
            received: self.rec.received,
            size: self.rec.size,
            complete,
        })
    }
}

/// The segment containing stream offset `pos`, that segment's end offset and its length (the
/// segment count, the job's size and 0 at the end).
fn locate(engine: &Engine, rec: &UploadJobRecord, pos: u64) -> Result<(u32, u64, u64)> {
    let i = engine.segment_at(rec, pos)?;
    if i >= rec.segment_count {
        return Ok((rec.segment_count, rec.size, 0));
    }
    let s = engine.uj_segment(&rec.id, i)?;
    Ok((i, s.end(), s.seg.len))
}

/// The per-segment hashes, computed as the bytes of a whole job stream in.
pub(crate) struct StreamHashes {
    values: Vec<Option<[u8; 32]>>,
    current: Option<cairn_core::hash::SegmentHasher>,
    /// The current segment is a whole file of at most one maximum chunk: the chunker holds all
    /// of it until its end, so its hash is taken from its chunks there (the chunk's own name
    /// when it makes one chunk, which is the usual case) instead of hashing it as it streams.
    by_chunks: bool,
}

impl StreamHashes {
    fn start(engine: &Engine, rec: &UploadJobRecord) -> Result<StreamHashes> {
        let mut h = StreamHashes {
            values: Vec::new(),
            current: None,
            by_chunks: false,
        };
        h.open(engine, rec, 0)?;
        Ok(h)
    }

    fn open(&mut self, engine: &Engine, rec: &UploadJobRecord, segment: u32) -> Result<()> {
        self.by_chunks = false;
        if segment < rec.segment_count {
            let s = engine.uj_segment(&rec.id, segment)?.seg;
            let whole = s.off == 0 && s.len == s.file_size;
            if whole && s.len <= u64::from(engine.store.chunking().max) {
                self.by_chunks = true;
            } else {
                self.current = cairn_core::hash::SegmentHasher::new(s.off, s.len, s.file_size);
            }
        }
        Ok(())
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(c) = self.current.as_mut() {
            c.update(data);
        }
    }

    /// Closes the segment just completed (`from_chunks` is its hash when it was taken from
    /// its chunks) and opens `next`.
    fn next_segment(
        &mut self,
        engine: &Engine,
        rec: &UploadJobRecord,
        next: u32,
        from_chunks: Option<[u8; 32]>,
    ) -> Result<()> {
        let value = match self.by_chunks {
            true => from_chunks,
            false => self.current.take().map(|c| c.finish()),
        };
        self.values.push(value);
        self.open(engine, rec, next)
    }

    fn finish(self, segments: u32) -> Option<SegmentHashes> {
        (self.values.len() == segments as usize).then_some(SegmentHashes {
            values: self.values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine with a draft and a files job adding one 3-byte file `f`.
    fn one_file_of_3_bytes(
        cfg: crate::EngineConfig,
    ) -> (Arc<Engine>, WriteToken, crate::FilesJobCreated) {
        let e = Arc::new(Engine::open(cfg).unwrap());
        let lib = e.create_library("t").unwrap();
        let (_, draft) = e.create_object(&lib.id).unwrap();
        let ops = vec![crate::ops::RawOp {
            path: Some("f".into()),
            size: Some(3),
            ..Default::default()
        }];
        let request = crate::ops::FilesJobRequest::from_ops(ops);
        let job = e.create_files_job(&draft.token, &request).unwrap();
        (e, draft.token, job)
    }

    /// An upload that finds every upload permit taken waits the idle time, then is `busy`
    /// (503 with `Retry-After`) having read nothing; once a permit frees, the same request goes
    /// through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_waits_for_a_permit_at_most_the_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::EngineConfig::new(dir.path());
        cfg.idle_timeout = std::time::Duration::from_millis(500);
        let (e, t, job) = one_file_of_3_bytes(cfg);
        let body =
            || futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]);
        let all = e
            .uploads
            .clone()
            .acquire_many_owned(UPLOAD_PERMITS as u32)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = e
            .upload(t, job.id, job.jobs[0], Some(3), body())
            .await
            .unwrap_err();
        assert_eq!(err.kind, cairn_core::ErrorKind::Busy, "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let st = e.upload_status(&t, &job.id, &job.jobs[0], 0, 10).unwrap();
        assert_eq!(st.files[0].skip, 0, "nothing was read");
        drop(all);
        let ok = e
            .upload(t, job.id, job.jobs[0], Some(3), body())
            .await
            .unwrap();
        assert!(ok.complete);
    }

    /// A seal asked for with a record read before another seal (a resume, a files finalize)
    /// took the job's chunks into its part finds the job sealed: done, not `corrupt` for the
    /// chunks no longer there (review 30: the upload that sent the last byte then failed its
    /// files job).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seal_that_finds_the_job_sealed_by_another_is_done_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (e, t, job) = one_file_of_3_bytes(crate::EngineConfig::new(dir.path()));
        let stale = e.upload_job(&job.jobs[0]).unwrap();
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]);
        assert!(
            e.upload(t, job.id, job.jobs[0], Some(3), body)
                .await
                .unwrap()
                .complete
        );
        e.seal(&stale, stale.segment_count).unwrap();
        let status = e.files_job(&t, &job.id).unwrap();
        assert!(status.error.is_none(), "{:?}", status.error);
    }

    /// The server stopping after a request's last stated byte arrived, before its body's end
    /// was read, does not turn the finished upload into a 503 "cut off" (review 30).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_after_the_last_byte_leaves_the_upload_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (e, t, job) = one_file_of_3_bytes(crate::EngineConfig::new(dir.path()));
        // All three bytes, then a body that never says it ended.
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))])
            .chain(futures::stream::pending());
        let (e2, uj) = (e.clone(), job.jobs[0]);
        let upload = tokio::spawn(async move { e2.upload(t, job.id, uj, Some(3), body).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        e.stop_uploads(std::time::Duration::from_secs(10)).await;
        let reply = upload.await.unwrap().unwrap();
        assert!(reply.complete);
    }

    #[tokio::test]
    async fn unused_upload_job_locks_do_not_pile_up() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(crate::EngineConfig::new(dir.path())).unwrap();
        let held = UploadJobId::random();
        let guard = e.uj_lock(&held).lock_owned().await;
        for _ in 0..3 * UJ_LOCKS_PRUNE_AT {
            drop(e.uj_lock(&UploadJobId::random()));
        }
        let locks = e.uj_locks.lock();
        assert!(
            locks.len() <= UJ_LOCKS_PRUNE_AT,
            "{} locks kept",
            locks.len()
        );
        assert!(locks.contains_key(&held), "a held lock is never pruned");
        drop(locks);
        // The held lock is still the one handed out for its job.
        assert!(e.uj_lock(&held).try_lock().is_err());
        drop(guard);
    }

    /// Uploads holding every upload permit (slow clients trickling bytes) do not keep a
    /// download's read from the disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_holding_every_permit_do_not_stop_reads() {
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(Engine::open(crate::EngineConfig::new(dir.path())).unwrap());
        let _all = e
            .uploads
            .clone()
            .acquire_many_owned(crate::engine::UPLOAD_PERMITS as u32)
            .await
            .unwrap();
        let read = e.blocking_read(|_| Ok(7));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
        assert_eq!(got.expect("the read was not kept waiting").unwrap(), 7);
    }
}
