//! Files jobs on a draft: apply ops to the tree, plan new files onto upload jobs, report status,
//! resume, force completion, finalize files, and finalize the draft into a version.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;

use cairn_core::record::Record;
use cairn_core::{
    Digest, Error, ErrorKind, FilePath, FilesJobId, Result, UploadJobId, VersionHash, WriteToken,
};
use cairn_store::Batch;
use serde::Serialize;

use crate::engine::{Engine, Qhit};
use crate::ops::{FilesJobRequest, Op};
use crate::planner::plan;
use crate::records::*;
use crate::tree::{
    lookup, Content, Entry, FileEntry, Loader, MemDir, MemEntry, PartSeg, PendingSeg,
};

/// Reply to a files-job creation: its id and the upload jobs to send.
#[derive(Debug, Clone, Serialize)]
pub struct FilesJobCreated {
    pub id: FilesJobId,
    pub jobs: Vec<UploadJobId>,
}

/// A files job's status, as `GET …/file_jobs/{fj}` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FilesJobStatus {
    pub id: FilesJobId,
    pub status: JobStatus,
    pub upload_jobs: usize,
    pub upload_jobs_complete: usize,
    pub bytes_total: u64,
    pub bytes_received: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What force completion did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForceReport {
    pub sealed_partial: usize,
    pub files_dropped: Vec<String>,
}

impl Engine {
    /// Applies a files job's ops to the draft and plans its new files. The ops, the plan and the
    /// new tree are stored in one batch before this returns.
    pub fn create_files_job(
        &self,
        token: &WriteToken,
        req: &FilesJobRequest,
    ) -> Result<FilesJobCreated> {
        self.create_files_job_in(token, req, false)
    }

    /// [`Engine::create_files_job`] for a caller confined to the draft's library: a `link` to a
    /// version of another library is refused exactly like one to a version that does not exist,
    /// so the answer tells nothing about other libraries.
    pub fn create_files_job_in(
        &self,
        token: &WriteToken,
        req: &FilesJobRequest,
        confined: bool,
    ) -> Result<FilesJobCreated> {
        let ops = req.validate()?;
        self.store.check_index_room(0)?;
        let _w = self.state.write();
        let mut draft = self.draft(token)?;
        if draft.files_finalized {
            return Err(Error::conflict(format!(
                "files of {token} are already finalized"
            )));
        }
        let most = self.cfg.max_files_jobs;
        if draft.files_jobs.len() >= most {
            return Err(Error::too_large(format!(
                "{token} already has {most} files jobs; finalize it and open a new draft"
            )));
        }
        let loader = |d: &Digest| self.load_node(d);
        let mut tree = MemDir::load(&draft.root, &loader)?;
        let mut cx = OpContext {
            added: Default::default(),
            library: draft.library,
            confined,
            linked: Vec::new(),
            weight: 0,
            placed_links: Vec::new(),
            loaded: Default::default(),
            stats: Default::default(),
            walked: 0,
        };
        for (i, op) in ops.iter().enumerate() {
            self.apply_op(&mut tree, op, &mut cx).map_err(|mut e| {
                e.reason = format!("op {i}: {}", e.reason);
                e
            })?;
        }
        {
            let weight = std::cell::Cell::new(cx.weight);
            let loaded = std::cell::RefCell::new(std::mem::take(&mut cx.loaded));
            let loader = charging_loader(self, &weight, &loaded);
            check_placed_links(&mut tree, &cx.placed_links, &loader)?;
        }
        // The plan comes from the tree as the ops left it: every file still waiting for its
        // first byte (added by this job, or a copy of one) is uploaded, wherever it ended up.
        let mut new_files = Vec::new();
        tree.collect_unplanned(&FilePath::root(), &mut new_files)?;
        let fj = FilesJobId::random();
        let planned = plan(&new_files, self.cfg.plan)?;

        let mut b = self.store.index().batch();
        let mut jobs = Vec::new();
        for job in planned {
            let uj = UploadJobId::random();
            let mut start = 0;
            for (s, seg) in job.segments.iter().enumerate() {
                let pending = PendingSeg {
                    upload_job: uj,
                    segment: s as u32,
                    len: seg.len,
                };
                attach_pending(&mut tree, &seg.path, pending, &loader)?;
                let rec = SegmentRecord {
                    seg: seg.clone(),
                    start,
                };
                b.put_record(CF_UJ_SEGMENTS, &uj_chunk_key(&uj, s as u32), &rec);
                start += seg.len;
            }
            let rec = UploadJobRecord {
                id: uj,
                files_job: fj,
                draft: *token,
                size: job.size(),
                segment_count: job.segments.len() as u32,
                received: 0,
                chunks: 0,
                tail_len: 0,
                sealed: None,
                segment_hashes: Default::default(),
            };
            b.put_record(CF_UPLOAD_JOBS, uj.as_bytes(), &rec);
            jobs.push(uj);
        }
        let job = FilesJobRecord {
            id: fj,
            draft: *token,
            upload_jobs: jobs.clone(),
            status: JobStatus::InProgress,
            epoch: self.epoch,
            error: None,
            created: now(),
        };
        b.put_record(CF_FILES_JOBS, fj.as_bytes(), &job);
        draft.files_jobs.push(fj);
        self.replace_root(b, &mut draft, tree, &cx.linked)?;
        Ok(FilesJobCreated { id: fj, jobs })
    }

    /// Stores `tree` as the draft's new root (in `b`, committed here).
    /// Stores `tree` as the draft's new root. `linked` are part slices taken from the known-file
    /// index: checked again under the ref guard, so gc cannot have collected them meanwhile.
    fn replace_root(
        &self,
        b: Batch<'_>,
        draft: &mut DraftRecord,
        tree: MemDir,
        linked: &[PartSeg],
    ) -> Result<()> {
        self.replace_root_with(b, draft, tree, linked, Default::default())
    }

    /// [`Engine::replace_root`] with nodes already written for it (and their totals), which
    /// `tree` may name.
    fn replace_root_with(
        &self,
        mut b: Batch<'_>,
        draft: &mut DraftRecord,
        tree: MemDir,
        linked: &[PartSeg],
        (mut nodes, mut memo): StoredNodes,
    ) -> Result<()> {
        let (root, stats) = tree.store_with(&mut nodes, &|d| self.load_node(d), &mut memo)?;
        if stats.files > MAX_TREE_FILES {
            return Err(Error::too_large(format!(
                "the draft would hold {} files; the limit is {MAX_TREE_FILES}",
                stats.files
            )));
        }
        let dirs = stats.shape().dirs;
        if dirs > MAX_TREE_DIRS {
            return Err(Error::too_large(format!(
                "the draft would hold {dirs} directories; the limit is {MAX_TREE_DIRS}"
            )));
        }
        let guard = self.store.ref_guard();
        for p in linked {
            if !self.store.index().exists(
                cairn_store::index::CF_PARTS,
                &cairn_store::part_key(&p.digest, p.part_size),
            )? {
                return Err(Error::conflict(
                    "content linked by hash was just garbage-collected; send the files job again",
                ));
            }
        }
        self.put_nodes(&mut b, nodes)?;
        b.add(CF_NODE_REFS, root.as_bytes(), 1);
        b.add(CF_NODE_REFS, draft.root.as_bytes(), -1);
        draft.root = root;
        b.put_record(CF_DRAFTS, &draft.token.to_bytes(), draft);
        self.store.commit_adding(b)?;
        drop(guard);
        Ok(())
    }

    /// Applies one op. Every directory node the op loads (to edit inside it, or to look a path
    /// up) is charged to the job's memory budget with its copies: a node loaded to be edited
    /// is cloned, and a stored directory copied N times is cloned N times when edited in each.
    fn apply_op(&self, tree: &mut MemDir, op: &Op, cx: &mut OpContext) -> Result<()> {
        let start = cx.weight;
        let weight = std::cell::Cell::new(start);
        let loaded = std::cell::RefCell::new(std::mem::take(&mut cx.loaded));
        let applied = {
            let loader = charging_loader(self, &weight, &loaded);
            self.apply_op_with(tree, op, cx, &loader)
        };
        cx.loaded = loaded.into_inner();
        applied?;
        // The op's copy (if any) charged `cx.weight` itself.
        cx.weight = charge(cx.weight, weight.get() - start)?;
        Ok(())
    }

    fn apply_op_with(
        &self,
        tree: &mut MemDir,
        op: &Op,
        cx: &mut OpContext,
        loader: &crate::tree::Loader<'_>,
    ) -> Result<()> {
        match op {
            Op::AddFile {
                path,
                size,
                mime_type,
                meta,
                hash,
            } => {
                if !cx.added.insert(path.clone()) {
                    return Err(Error::invalid(format!(
                        "{path} is added twice in one files job"
                    )));
                }
                let known = match hash {
                    Some(h) if *size > 0 => self.known_file(&cx.library, h, *size)?,
                    _ => None,
                };
                let content = match known {
                    _ if *size == 0 => Content::Parts(Vec::new()),
                    Some(parts) => {
                        cx.linked.extend_from_slice(&parts);
                        Content::Parts(parts)
                    }
                    None => Content::Pending(Vec::new()),
                };
                let linked = matches!(content, Content::Parts(_));
                let entry = FileEntry {
                    size: *size,
                    mime_type: mime_type.clone(),
                    meta: meta.clone(),
                    content,
                    hash: if *size == 0 {
                        Some(Digest::empty())
                    } else if linked {
                        *hash
                    } else {
                        None
                    },
                    declared: if linked { None } else { *hash },
                };
                tree.insert(path, MemEntry::File(entry), &loader)
            }
            Op::AddDir { path, meta } => {
                tree.mkdir(path, &loader)?;
                if meta.is_some() {
                    set_dir_meta(tree, path, meta.clone(), &loader)?;
                }
                Ok(())
            }
            Op::Del { path } => tree.remove(path, &loader).map(|_| ()),
            Op::Move { from, to } => {
                check_not_into_itself(from, to)?;
                check_not_over_directory(tree, to, &loader)?;
                let entry = tree.remove(from, &loader)?;
                self.check_fits(&entry, from, to, cx)?;
                collect_links(&entry, to, &mut cx.placed_links);
                tree.insert(to, entry, &loader)
            }
            Op::Copy { from, to } => {
                check_not_into_itself(from, to)?;
                check_not_over_directory(tree, to, &loader)?;
                // A copy of a file still uploading shares its pending segments (both resolve to
                // the same part slices); a copy of one added by this job is uploaded on its own.
                let entry = tree
                    .get(from, &loader)?
                    .ok_or_else(|| Error::not_found(format!("{from} does not exist")))?;
                // A copy of a directory edited by this job is a deep copy: what copies may
                // take in memory is bounded per job (copies of stored directories are a
                // digest each; the files they add count against the tree's limit instead).
                cx.weight = charge(cx.weight, crate::tree::entry_weight(entry))?;
                let entry = entry.clone();
                self.check_fits(&entry, from, to, cx)?;
                collect_links(&entry, to, &mut cx.placed_links);
                tree.insert(to, entry, &loader)
            }
            Op::Link {
                path,
                target,
                meta,
                mime_type,
            } => {
                let only = cx.confined.then_some(cx.library);
                let size = self.link_size(tree, target, only, loader)?;
                let entry = FileEntry {
                    size,
                    mime_type: mime_type.clone(),
                    meta: meta.clone(),
                    content: Content::Link(target.clone()),
                    hash: None,
                    declared: None,
                };
                cx.placed_links.push(path.clone());
                tree.insert(path, MemEntry::File(entry), &loader)
            }
            Op::Meta { path, meta } => {
                match tree.get(path, &loader).or_else(nothing_under_a_file)? {
                    Some(MemEntry::File(f)) => {
                        f.meta = Some(meta.clone());
                        Ok(())
                    }
                    Some(_) => set_dir_meta(tree, path, Some(meta.clone()), &loader),
                    None => Err(Error::not_found(format!("{path} does not exist"))),
                }
            }
        }
    }

    /// Refuses to put `entry` (from `from`) at `to` if a path under it would pass the path
    /// limits there. Paths in ops are checked when parsed; what a moved or copied directory
    /// holds is checked here, by its shape (a stored directory's is kept in its node).
    fn check_fits(
        &self,
        entry: &MemEntry,
        from: &FilePath,
        to: &FilePath,
        cx: &mut OpContext,
    ) -> Result<()> {
        let loader = |d: &Digest| self.load_node(d);
        let shape = crate::tree::entry_shape(entry, &loader, &mut cx.stats, &mut cx.walked)?;
        if cx.walked > MAX_JOB_WALK {
            return Err(Error::too_large(format!(
                "the moves and copies of this files job walk more than {MAX_JOB_WALK} entries \
                 of directories it edited; split it over several files jobs"
            )));
        }
        if shape.fits_under(to) {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{from} at {to} would hold paths over the limits of {} segments and {} bytes: its \
             deepest path is {} segments below it and its longest {} bytes",
            cairn_core::path::MAX_DEPTH,
            cairn_core::path::MAX_PATH_LEN,
            shape.depth,
            shape.longest
        )))
    }

    /// The part slices of a finalized file of `library` with this hash and size, if its parts
    /// are all still stored.
    fn known_file(
        &self,
        library: &cairn_core::LibraryId,
        hash: &Digest,
        size: u64,
    ) -> Result<Option<Vec<PartSeg>>> {
        let prefix = file_index_key(library, hash, size);
        for (_, known) in self.known_copies(&prefix)? {
            if self.parts_stored(&known.parts)? {
                return Ok(Some(known.parts));
            }
        }
        Ok(None)
    }

    /// The copies of a file the known-file index holds under `prefix` (library, hash, size):
    /// one per distinct layout of its bytes in parts (QA30: with one entry, the latest layout
    /// replaced the others, and once its draft was deleted and gc'd, the file was not found
    /// although a version still held it). At most [`MAX_KNOWN_COPIES`] are read.
    fn known_copies(&self, prefix: &[u8]) -> Result<Vec<(Box<[u8]>, KnownFile)>> {
        let mut out = Vec::new();
        for r in self
            .store
            .index()
            .scan(CF_FILE_INDEX, prefix)
            .take(MAX_KNOWN_COPIES)
        {
            let (k, v) = r?;
            if let Ok(known) = KnownFile::decode(&v) {
                out.push((k, known));
            }
        }
        Ok(out)
    }

    /// Whether every part of `parts` is still stored.
    fn parts_stored(&self, parts: &[PartSeg]) -> Result<bool> {
        for p in parts {
            if !self.store.index().exists(
                cairn_store::index::CF_PARTS,
                &cairn_store::part_key(&p.digest, p.part_size),
            )? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records, in `b`, that `parts` hold a file of `library` with this hash and size, beside
    /// the copies already known; copies whose parts are gone are dropped meanwhile.
    fn index_known_file(
        &self,
        b: &mut Batch<'_>,
        library: &cairn_core::LibraryId,
        (hash, size, parts): (&Digest, u64, &[PartSeg]),
    ) -> Result<()> {
        let prefix = file_index_key(library, hash, size);
        let mut live = 0;
        for (k, known) in self.known_copies(&prefix)? {
            if known.parts == parts {
                return Ok(());
            }
            match self.parts_stored(&known.parts)? {
                true => live += 1,
                false => b.delete(CF_FILE_INDEX, &k),
            }
        }
        if live < MAX_KNOWN_COPIES / 2 {
            let known = KnownFile {
                parts: parts.to_vec(),
            };
            b.put_record(CF_FILE_INDEX, &known_copy_key(&prefix, parts), &known);
        }
        Ok(())
    }

    /// Checks a link target and returns the size of the file it names.
    fn link_size(
        &self,
        tree: &mut MemDir,
        target: &str,
        only: Option<cairn_core::LibraryId>,
        loader: &Loader<'_>,
    ) -> Result<u64> {
        let missing = || Error::not_found(format!("link target {target} does not exist"));
        // A target that exists but is not a file says so (QA: "does not exist" misled).
        let not_a_file = |what: &str| {
            Error::invalid(format!(
                "link target {target} is {what}; a link leads to a file (link to the file it \
                 leads to)"
            ))
        };
        match parse_link(target)? {
            // A path under a file does not exist (§8: 404), as for a read.
            LinkTarget::Relative(p) => match tree.get(&p, loader).or_else(nothing_under_a_file)? {
                Some(MemEntry::File(f)) if matches!(f.content, Content::Link(_)) => {
                    Err(not_a_file("itself a link"))
                }
                Some(MemEntry::File(f)) => Ok(f.size),
                Some(_) => Err(not_a_file("a directory")),
                None => Err(missing()),
            },
            LinkTarget::Absolute(h, p) => {
                let v = self
                    .version_head(&h)
                    .ok()
                    .filter(|v| only.is_none_or(|lib| v.library == lib))
                    .ok_or_else(missing)?;
                match lookup(&v.root, &p, &loader)? {
                    Some(Entry::File(f)) if matches!(f.content, Content::Link(_)) => {
                        Err(not_a_file("itself a link"))
                    }
                    Some(Entry::File(f)) => Ok(f.size),
                    Some(Entry::Dir(_)) => Err(not_a_file("a directory")),
                    None => Err(missing()),
                }
            }
        }
    }

    pub fn files_job(&self, token: &WriteToken, fj: &FilesJobId) -> Result<FilesJobRecord> {
        let job: FilesJobRecord =
            self.get(CF_FILES_JOBS, fj.as_bytes(), || format!("files job {fj}"))?;
        if job.draft != *token {
            return Err(Error::not_found(format!(
                "files job {fj} not found in {token}"
            )));
        }
        Ok(job)
    }

    pub fn files_jobs(&self, token: &WriteToken) -> Result<Vec<FilesJobStatus>> {
        let draft = self.draft_head(token)?;
        draft
            .files_jobs
            .iter()
            .map(|fj| self.files_job_status(token, fj))
            .collect()
    }

    pub fn files_job_status(&self, token: &WriteToken, fj: &FilesJobId) -> Result<FilesJobStatus> {
        let job = self.files_job(token, fj)?;
        let ujs = job
            .upload_jobs
            .iter()
            .map(|u| self.upload_job(u))
            .collect::<Result<Vec<_>>>()?;
        let complete = ujs.iter().filter(|u| u.is_complete()).count();
        let status = if complete == ujs.len() {
            JobStatus::Completed
        } else if job.error.is_some() {
            JobStatus::Failed
        } else if job.status == JobStatus::Stopped || job.epoch < self.epoch {
            JobStatus::Stopped
        } else {
            JobStatus::InProgress
        };
        Ok(FilesJobStatus {
            id: job.id,
            status,
            upload_jobs: ujs.len(),
            upload_jobs_complete: complete,
            bytes_total: ujs.iter().map(|u| u.size).sum(),
            bytes_received: ujs.iter().map(|u| u.received).sum(),
            error: job.error,
        })
    }

    pub fn upload_job(&self, uj: &UploadJobId) -> Result<UploadJobRecord> {
        self.get(CF_UPLOAD_JOBS, uj.as_bytes(), || format!("upload job {uj}"))
    }

    /// Moves a STOPPED or FAILED job back to IN_PROGRESS. A running job is left as it is;
    /// a completed one is `gone`.
    pub fn resume(&self, token: &WriteToken, fj: &FilesJobId) -> Result<FilesJobStatus> {
        let status = self.files_job_status(token, fj)?;
        if status.status == JobStatus::Completed {
            return Err(Error::gone(format!("files job {fj} is already complete")));
        }
        if let Some((_, (kind, reason))) = self.seal_received(token, Some(fj))?.into_iter().next() {
            return Err(Error::new(kind, reason));
        }
        let _w = self.state.write();
        let mut job = self.files_job(token, fj)?;
        job.error = None;
        job.status = JobStatus::InProgress;
        job.epoch = self.epoch;
        let mut b = self.store.index().batch();
        b.put_record(CF_FILES_JOBS, fj.as_bytes(), &job);
        self.store.commit(b)?;
        self.files_job_status(token, fj)
    }

    /// Seals the upload jobs of the draft (or of its files job `only`) that received all their
    /// bytes but are not sealed: the seal after their last commit failed (a full disk, a read
    /// error), and nothing else would try again before a restart. A seal that fails again is
    /// returned, not raised: it matters only if a file still waits on that job (the file may
    /// have been deleted since), which resolution reports with the seal's error.
    fn seal_received(&self, token: &WriteToken, only: Option<&FilesJobId>) -> Result<FailedSeals> {
        let jobs = match only {
            Some(fj) => vec![*fj],
            None => self.draft_head(token)?.files_jobs,
        };
        let mut failed = FailedSeals::new();
        for fj in jobs {
            for uj in self.files_job(token, &fj)?.upload_jobs {
                let rec = self.upload_job(&uj)?;
                if rec.sealed.is_none() && rec.received == rec.size {
                    tracing::info!(upload_job = %uj, "sealing an upload job whose seal failed");
                    if let Err(e) = self.seal(&rec, rec.segment_count) {
                        tracing::warn!(upload_job = %uj, error = %e, "the seal failed again");
                        failed.insert(uj, (e.kind, e.reason));
                    }
                }
            }
        }
        Ok(failed)
    }

    /// Marks a job FAILED with a reason (after an I/O error during upload).
    pub(crate) fn fail_job(&self, fj: &FilesJobId, reason: &str) {
        let _w = self.state.write();
        if let Ok(Some(mut job)) = self
            .store
            .index()
            .get_record::<FilesJobRecord>(CF_FILES_JOBS, fj.as_bytes())
        {
            job.error = Some(reason.to_string());
            let mut b = self.store.index().batch();
            b.put_record(CF_FILES_JOBS, fj.as_bytes(), &job);
            let _ = self.store.commit(b);
        }
    }

    /// Force completion: seals every incomplete upload job with the segments it fully received,
    /// drops the files it could not complete, and keeps every whole file.
    pub fn force_completion(&self, token: &WriteToken, fj: &FilesJobId) -> Result<ForceReport> {
        let job = self.files_job(token, fj)?;
        let mut report = ForceReport::default();
        let mut guards = Vec::new();
        for uj in &job.upload_jobs {
            let lock = self.uj_lock(uj);
            let guard = lock
                .try_lock_owned()
                .map_err(|_| Error::conflict(format!("upload job {uj} is receiving data")))?;
            guards.push(guard);
        }
        let all_complete = job
            .upload_jobs
            .iter()
            .all(|u| self.upload_job(u).is_ok_and(|r| r.is_complete()));
        // From the first seal to the tree's update, a finalize of this draft is refused.
        if !self.completing.lock().insert(*token) {
            return Err(Error::conflict(format!(
                "another force completion of {token} is running"
            )));
        }
        let _completing = Completing(self, *token);
        if all_complete {
            // Every job sealed: either the uploads finished, or a force completion sealed
            // them and then failed (or the server stopped) before the tree dropped the files
            // cut short. That one is finished now, and what it drops reported.
            report.files_dropped = self.force_resolve(token, fj)?;
            return match report.files_dropped.is_empty() {
                true => Err(Error::gone(format!("files job {fj} is already complete"))),
                false => Ok(report),
            };
        }
        // Each seal's batch goes to the index's log unsynced (a synced write per job made
        // a force completion of 65,536 jobs take minutes); one fsync of the log then covers
        // them all before the tree changes and the client hears of it. After a crash in
        // between, the jobs whose seals were lost are unsealed, and a force completion seals
        // them again. A job whose seal fails (a damaged chunk read back) is left unsealed and
        // the others go on, so that deleting the file waiting on it unblocks the draft.
        let mut failed = Vec::new();
        for uj in &job.upload_jobs {
            let rec = self.upload_job(uj)?;
            if !rec.is_complete() {
                let sealed = self
                    .received_prefix(&rec)
                    .and_then(|complete| self.seal_unsynced(&rec, complete));
                match sealed {
                    Ok(()) => report.sealed_partial += 1,
                    Err(e) => failed.push((*uj, e)),
                }
            }
        }
        self.store.index().sync_log()?;
        report.files_dropped = self.force_resolve(token, fj)?;
        drop(guards);
        match failed.into_iter().next() {
            None => Ok(report),
            Some((uj, e)) => Err(Error::new(
                e.kind,
                format!(
                    "upload job {uj} could not be sealed: {}; the other jobs were (files \
                     dropped: {:?})",
                    e.reason, report.files_dropped
                ),
            )),
        }
    }

    /// A finalize must not run while a force completion seals the draft's jobs (checked under
    /// the state lock, which every seal takes: a seal it could see was made with the draft
    /// marked).
    fn check_not_completing(&self, token: &WriteToken) -> Result<()> {
        match self.completing.lock().contains(token) {
            true => Err(Error::conflict(format!(
                "a force completion of {token} is running; finalize once it has answered"
            ))),
            false => Ok(()),
        }
    }

    /// Finalize files: every upload job must be complete; pending files become part references
    /// and no more files jobs are accepted.
    pub fn finalize_files(&self, token: &WriteToken) -> Result<()> {
        self.store.check_index_room(0)?;
        let failed = self.seal_received(token, None)?;
        let _w = self.state.write();
        self.check_not_completing(token)?;
        if self.draft_head(token)?.files_finalized {
            return Err(Error::not_found(format!(
                "files of {token} are already finalized"
            )));
        }
        self.resolve_strict(token, failed)?;
        let mut draft = self.draft(token)?;
        draft.files_finalized = true;
        let mut b = self.store.index().batch();
        b.put_record(CF_DRAFTS, &token.to_bytes(), &draft);
        self.store.commit_adding(b)
    }

    /// Force completion's resolution of the draft `fj` belongs to: sealed parts replace pending
    /// uploads, and files whose upload was sealed without them are dropped (their paths
    /// returned, also those an earlier, failed force completion of `fj` dropped).
    ///
    /// It runs in committed passes like a finalize's ([`Self::resolve_strict`]), so its
    /// memory does not grow with the files pending. Each pass's dropped paths are saved with
    /// the pass (under [`dropped_key`]), so a pass that fails after earlier ones dropped files
    /// cannot lose their report: the next force completion reports them. The record goes once
    /// the whole resolution has succeeded.
    fn force_resolve(&self, token: &WriteToken, fj: &FilesJobId) -> Result<Vec<String>> {
        let _w = self.state.write();
        let key = dropped_key(fj);
        let index = self.store.index();
        let earlier = index.get_record::<DroppedPaths>(CF_FILES_JOBS, &key)?;
        let had_record = earlier.is_some();
        let mut dropped = earlier.unwrap_or_default();
        let saved =
            self.resolve_passes(token, false, FailedSeals::new(), &mut dropped, Some(&key))?;
        if had_record || saved {
            let mut b = index.batch();
            b.delete(CF_FILES_JOBS, &key);
            self.store.commit(b)?;
        }
        Ok(dropped.paths)
    }

    /// Rewrites the draft tree with sealed parts in place of pending uploads; any file still
    /// uploading, or cut short, is an error (`incomplete`) and nothing changes. The caller holds
    /// the state lock for writing. `failed`: upload jobs whose seal just failed
    /// ([`Self::seal_received`]); a file waiting on one gets that error instead.
    ///
    /// It runs in passes of at most `resolve_batch` files ([`crate::EngineConfig`]), each
    /// committed before the next, so its memory does not grow with the draft (a pending file
    /// costs about 1.4 KB while it is resolved). It first checks, reading only, that every
    /// pending file can be resolved ([`Self::check_resolvable`]), so a finalize that must fail
    /// (a file still uploading) does so before any pass has changed the draft.
    fn resolve_strict(&self, token: &WriteToken, failed: FailedSeals) -> Result<()> {
        self.check_resolvable(&self.draft_head(token)?.root, &failed)?;
        // A strict resolution drops nothing: a file cut short is an error.
        let mut none = DroppedPaths::default();
        self.resolve_passes(token, true, failed, &mut none, None)?;
        Ok(())
    }

    /// The passes of a resolution; the paths dropped are added to `dropped`, and, when `save`
    /// names a key, written under it with each pass that dropped any. True if one was written.
    fn resolve_passes(
        &self,
        token: &WriteToken,
        strict: bool,
        failed: FailedSeals,
        dropped: &mut DroppedPaths,
        save: Option<&[u8]>,
    ) -> Result<bool> {
        let limit = self.cfg.resolve_batch.max(1);
        let mut saved = false;
        // What each stored directory became, kept from pass to pass (see `resolve_dir`): the
        // tree cannot change in between, as the caller holds the state lock throughout.
        let mut resolved = HashMap::new();
        loop {
            let mut out = Resolution {
                failed: failed.clone(),
                limit,
                resolved: std::mem::take(&mut resolved),
                ..Resolution::default()
            };
            let mut draft = self.draft(token)?;
            let loader = |d: &Digest| self.load_node(d);
            let mut tree = MemDir::load(&draft.root, &loader)?;
            let changed = self.resolve_dir(&mut tree, &FilePath::root(), strict, &mut out)?;
            if changed {
                let mut b = self.store.index().batch();
                for (hash, size, parts) in &out.known {
                    self.index_known_file(&mut b, &draft.library, (hash, *size, parts))?;
                }
                let fresh = !out.dropped.is_empty();
                dropped.paths.append(&mut out.dropped);
                if let (Some(key), true) = (save, fresh) {
                    b.put_record(CF_FILES_JOBS, key, &*dropped);
                    saved = true;
                }
                let stored = (out.nodes, out.stats);
                self.replace_root_with(b, &mut draft, tree, &[], stored)?;
            }
            dropped.paths.append(&mut out.dropped);
            if !out.cut_short {
                return Ok(saved);
            }
            resolved = out.resolved;
        }
    }

    /// Walks the stored tree under `root` (each distinct directory with files pending once),
    /// reading only, and fails as a strict [`Self::resolve_dir`] would on the first pending
    /// file that cannot be resolved now.
    fn check_resolvable(&self, root: &Digest, failed: &FailedSeals) -> Result<()> {
        let loader = |d: &Digest| self.load_node(d);
        let mut stats = HashMap::new();
        let mut jobs = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![(*root, FilePath::root())];
        while let Some((d, at)) = todo.pop() {
            if !seen.insert(d) || crate::tree::stats_of(&d, &loader, &mut stats)?.pending == 0 {
                continue;
            }
            let node = self.load_node(&d)?;
            for (name, entry) in &node.entries {
                let path = at.join(name)?;
                let segs = match entry {
                    Entry::Dir(sub) => {
                        todo.push((*sub, path));
                        continue;
                    }
                    Entry::File(FileEntry {
                        content: Content::Pending(segs),
                        size,
                        declared,
                        ..
                    }) => (segs, *size, *declared),
                    Entry::File(_) => continue,
                };
                match self.resolve_pending(segs.0, segs.1, &mut jobs)? {
                    Resolved::Parts(_, hash) if mismatch(segs.2, hash).is_some() => {
                        return Err(not_as_declared(&path, segs.2, hash));
                    }
                    Resolved::Parts(..) => {}
                    Resolved::Dropped => return Err(cut_short(&path)),
                    Resolved::Waiting(uj) => return Err(waiting(&path, uj, failed, &jobs)),
                }
            }
            // Upload-job records can be large (one value per segment): keep few at a time.
            if jobs.len() > 64 {
                jobs.clear();
            }
        }
        Ok(())
    }

    fn resolve_dir(
        &self,
        dir: &mut MemDir,
        at: &FilePath,
        strict: bool,
        out: &mut Resolution,
    ) -> Result<bool> {
        let loader = |d: &Digest| self.load_node(d);
        let mut changed = false;
        for name in dir.names() {
            if out.files >= out.limit {
                out.cut_short = true;
                break;
            }
            let path = at.join(&name)?;
            let entry = dir.entry_mut(&name).expect("listed");
            let segs = match entry {
                // A stored directory with nothing uploading is left as it is, unread.
                MemEntry::Stored(d) if out.stats(d, &loader)?.pending == 0 => continue,
                // Resolved once per distinct directory, however many copies of it the tree
                // holds, and across passes: the result is stored right away and shared by
                // digest. A copy met later follows what its digest became (a pass cut short
                // inside a directory leaves a partly resolved one, which the next pass takes
                // further), and is resolved from where that chain ends. The files dropped are
                // remembered relative to the directory, and reported under each copy.
                MemEntry::Stored(d) => {
                    let was = *d;
                    let prefix = format!("{path}/");
                    let mut now = was;
                    while let Some((next, dropped)) = out.resolved.get(&now) {
                        let here = dropped.iter().map(|rel| format!("{prefix}{rel}"));
                        out.dropped.extend(here.collect::<Vec<_>>());
                        if *next == now {
                            break;
                        }
                        now = *next;
                    }
                    let settled = out.resolved.get(&now).is_some_and(|(next, _)| *next == now);
                    if !settled && out.stats(&now, &loader)?.pending > 0 {
                        let first = out.dropped.len();
                        let mut sub = MemDir::load(&now, &loader)?;
                        let from = now;
                        if self.resolve_dir(&mut sub, &path, strict, out)? {
                            now = sub.store_with(&mut out.nodes, &loader, &mut out.stats)?.0;
                        }
                        let rel = out.dropped[first..]
                            .iter()
                            .map(|p| p.strip_prefix(&prefix).unwrap_or(p).to_string())
                            .collect();
                        // A pass that ended inside it before changing anything says nothing
                        // about it: it must not read as settled.
                        if now != from || !out.cut_short {
                            out.resolved.insert(from, (now, rel));
                        }
                        // What it became is settled for this pass too (its files still
                        // waiting wait on other jobs): a later copy must not load it, as it
                        // is not in the index before the pass commits (review: 404).
                        if now != from && !out.cut_short {
                            out.resolved.entry(now).or_insert((now, Vec::new()));
                        }
                    }
                    if now != was {
                        *entry = MemEntry::Stored(now);
                        changed = true;
                    }
                    continue;
                }
                MemEntry::Dir(sub) => {
                    changed |= self.resolve_dir(sub, &path, strict, out)?;
                    continue;
                }
                MemEntry::File(FileEntry {
                    content: Content::Pending(segs),
                    size,
                    declared,
                    ..
                }) => (segs.clone(), *size, *declared),
                MemEntry::File(_) => continue,
            };
            match self.resolve_pending(&segs.0, segs.1, &mut out.jobs)? {
                Resolved::Parts(_, hash) if mismatch(segs.2, hash).is_some() && strict => {
                    return Err(not_as_declared(&path, segs.2, hash));
                }
                Resolved::Parts(parts, hash) if mismatch(segs.2, hash).is_none() => {
                    if let MemEntry::File(f) = entry {
                        if let Some(h) = hash {
                            out.known.push((h, f.size, parts.clone()));
                        }
                        f.content = Content::Parts(parts);
                        f.hash = hash;
                        f.declared = None;
                    }
                    out.files += 1;
                }
                // Only a force completion's seals cut a file short; one that has not updated the
                // tree yet (it failed, or the server stopped) must finish and report it first.
                Resolved::Dropped if strict => return Err(cut_short(&path)),
                // A force completion drops a file whose bytes are not the ones its add op
                // declared, as it drops one cut short, and reports it.
                Resolved::Dropped | Resolved::Parts(..) => {
                    dir.remove_name(&name);
                    out.dropped.push(path.to_string());
                    out.files += 1;
                }
                Resolved::Waiting(uj) if strict => {
                    return Err(waiting(&path, uj, &out.failed, &out.jobs))
                }
                Resolved::Waiting(_) => continue,
            }
            changed = true;
        }
        Ok(changed)
    }

    /// `jobs` keeps the upload-job records already read: thousands of small files share a few
    /// jobs, and reading (and decoding) a job's record once per file made resolution quadratic.
    fn resolve_pending(
        &self,
        segs: &[PendingSeg],
        file_size: u64,
        jobs: &mut HashMap<UploadJobId, UploadJobRecord>,
    ) -> Result<Resolved> {
        // A segment still uploading outweighs one dropped: while a force completion seals a
        // file's jobs one by one, the file is still waiting, not gone.
        for s in segs {
            let uj = match jobs.entry(s.upload_job) {
                MapEntry::Occupied(e) => e.into_mut(),
                MapEntry::Vacant(e) => e.insert(self.upload_job(&s.upload_job)?),
            };
            if uj.sealed.is_none() {
                return Ok(Resolved::Waiting(s.upload_job));
            }
        }
        let mut parts = Vec::new();
        let mut hashes = Vec::new();
        for s in segs {
            let uj = match jobs.entry(s.upload_job) {
                MapEntry::Occupied(e) => e.into_mut(),
                MapEntry::Vacant(e) => e.insert(self.upload_job(&s.upload_job)?),
            };
            let Some(sealed) = uj.sealed else {
                return Ok(Resolved::Waiting(s.upload_job));
            };
            if s.segment >= sealed.complete_segments {
                return Ok(Resolved::Dropped);
            }
            let seg = self.uj_segment(&uj.id, s.segment)?;
            let off = seg.start;
            let value = uj
                .segment_hashes
                .values
                .get(s.segment as usize)
                .copied()
                .flatten();
            hashes.push(value.map(|v| (seg.seg.off, seg.seg.len, v)));
            parts.push(PartSeg {
                digest: sealed.digest,
                part_size: sealed.size,
                off,
                len: s.len,
            });
        }
        let hash = hashes
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(|h| cairn_core::hash::file_digest(file_size, &h));
        Ok(Resolved::Parts(parts, hash))
    }

    /// Finalizes a draft: resolves its files (all uploads must be complete), writes the version
    /// record, moves the object's head, and drops the draft, in one batch.
    pub fn finalize(&self, token: &WriteToken) -> Result<(VersionHash, VersionRecord)> {
        self.finalize_if(token, &HeadCondition::default())
    }

    /// [`Engine::finalize`] only if the object's newest version is as `cond` requires (checked
    /// in the same critical section as the commit); otherwise `PreconditionFailed` and nothing
    /// changes, the draft included.
    pub fn finalize_if(
        &self,
        token: &WriteToken,
        cond: &HeadCondition,
    ) -> Result<(VersionHash, VersionRecord)> {
        self.finalize_keyed(token, cond, None)
    }

    /// [`Engine::finalize_if`], made safe to retry with `key` (an `Idempotency-Key`): the
    /// version is recorded with the key in the same batch, and a later finalize of the same
    /// draft with the same key, within [`FINALIZED_KEEP_SECS`], is answered with that version
    /// instead of 404 while the version exists. Without a key, or with another, a finalized
    /// draft is 404 as before: a second finalize is not made a success by accident.
    pub fn finalize_keyed(
        &self,
        token: &WriteToken,
        cond: &HeadCondition,
        key: Option<&str>,
    ) -> Result<(VersionHash, VersionRecord)> {
        if let Some(k) = key {
            check_idempotency_key(k)?;
            // First: a retry needs neither room in the index nor its preconditions to hold
            // again (the head is its own version now).
            if let Some(done) = self.finalized_with(token, k)? {
                return Ok(done);
            }
        }
        // A finalize with this key may commit between that look and this one's: 404 looks again.
        match (self.finalize_once(token, cond, key), key) {
            (Err(e), Some(k)) if e.is(ErrorKind::NotFound) => {
                self.finalized_with(token, k)?.ok_or(e)
            }
            (r, _) => r,
        }
    }

    /// The version `token` was finalized into with `key`, if that is recorded, recent and the
    /// version is still there.
    fn finalized_with(
        &self,
        token: &WriteToken,
        key: &str,
    ) -> Result<Option<(VersionHash, VersionRecord)>> {
        let idx = self.store.index();
        let Some(f) = idx.get_record::<FinalizedRecord>(CF_FINALIZED, &token.to_bytes())? else {
            return Ok(None);
        };
        if f.key != key || now().saturating_sub(f.at) > FINALIZED_KEEP_SECS {
            return Ok(None);
        }
        let rec = idx.get_record::<VersionRecord>(CF_VERSIONS, f.hash.digest.as_bytes())?;
        Ok(rec.map(|r| (f.hash, r)))
    }

    /// Records that `token` became `hash` under `key`, and drops this object's records older
    /// than [`FINALIZED_KEEP_SECS`] (each keyed finalize prunes its own object's).
    fn record_finalized(
        &self,
        b: &mut Batch<'_>,
        token: &WriteToken,
        hash: VersionHash,
        key: &str,
    ) -> Result<()> {
        let at = now();
        let prefix = WriteToken::bytes_prefix(&token.object);
        for r in self.store.index().scan(CF_FINALIZED, &prefix) {
            let (k, v) = r?;
            let old = FinalizedRecord::decode(&v)
                .map_or(true, |f| at.saturating_sub(f.at) > FINALIZED_KEEP_SECS);
            if old {
                b.delete(CF_FINALIZED, &k);
            }
        }
        let rec = FinalizedRecord {
            hash,
            key: key.to_string(),
            at,
        };
        b.put_record(CF_FINALIZED, &token.to_bytes(), &rec);
        Ok(())
    }

    fn finalize_once(
        &self,
        token: &WriteToken,
        cond: &HeadCondition,
        key: Option<&str>,
    ) -> Result<(VersionHash, VersionRecord)> {
        self.store.check_index_room(0)?;
        let failed = self.seal_received(token, None)?;
        // One critical section from resolution to commit: no files job can slip in between.
        let _w = self.state.write();
        self.draft_head(token)?;
        self.check_not_completing(token)?;
        cond.check(self.object(&token.object)?.head)?;
        self.resolve_strict(token, failed)?;
        let draft = self.draft(token)?;
        let mut obj = self.object(&token.object)?;
        let seq = obj.last_seq + 1;
        let size = self.tree_size(&draft.root)?;
        let rec = VersionRecord {
            object: obj.id,
            library: obj.library,
            parent: obj.head,
            seq,
            root: draft.root,
            meta: draft.meta.clone(),
            size,
            created: now(),
        };
        let hash = VersionHash {
            digest: Digest::of(&rec.encode()),
            size,
            object: obj.id,
        };
        let mut b = self.store.index().batch();
        let guard = self.store.ref_guard();
        self.drop_draft(&mut b, &draft)?;
        b.put_record(CF_VERSIONS, hash.digest.as_bytes(), &rec);
        b.put(
            CF_HISTORY,
            &history_key(&obj.id, seq),
            hash.digest.as_bytes(),
        );
        if let Some(k) = key {
            self.record_finalized(&mut b, token, hash, k)?;
        }
        obj.head = Some(hash);
        obj.last_seq = seq;
        b.put_record(CF_OBJECTS, obj.id.as_bytes(), &obj);
        self.store.commit_adding(b)?;
        drop(guard);
        // The object id now names the new version.
        self.opened.clear();
        Ok((hash, rec))
    }

    /// Logical bytes of all files under `root`.
    pub fn tree_size(&self, root: &Digest) -> Result<u64> {
        let stats = crate::tree::stats_of(root, &|d| self.load_node(d), &mut HashMap::new())?;
        Ok(stats.bytes)
    }

    /// The version or draft tree root for reading.
    pub fn tree_root(&self, q: &Qhit) -> Result<Digest> {
        self.resolve_root(q)
    }
}

/// Files jobs one draft may have. The draft's record lists them, and every write to the draft
/// decodes and rewrites that record under the engine's write lock: empty jobs made in a loop
/// grew it without bound (review 32).
pub const MAX_FILES_JOBS: usize = 10_000;

/// Longest `Idempotency-Key` accepted (a UUID is 36 characters).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// An idempotency key is 1 to [`MAX_IDEMPOTENCY_KEY`] visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<()> {
    let visible = key.bytes().all(|c| c.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !visible {
        return Err(Error::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(())
}

/// State carried through a files job's ops.
struct OpContext {
    added: std::collections::HashSet<FilePath>,
    library: cairn_core::LibraryId,
    /// Links may only point into `library` (the caller's token is confined to it).
    confined: bool,
    /// Part slices linked from the known-file index (re-checked before commit).
    linked: Vec<PartSeg>,
    /// What this job's copies cloned and its ops loaded ([`MAX_JOB_WEIGHT`]).
    weight: usize,
    /// Where this job's ops put links (made, moved or copied): see [`check_placed_links`].
    placed_links: Vec<FilePath>,
    /// Directory nodes this job loaded: loading one again (each copy of a stored directory
    /// edited inside is a clone of its own) is what is charged.
    loaded: std::collections::HashSet<Digest>,
    /// Totals of the stored directories moved or copied (their shapes: [`Engine::check_fits`]).
    stats: HashMap<Digest, crate::tree::TreeStats>,
    /// Entries of edited directories walked to find their shapes ([`MAX_JOB_WALK`]).
    walked: u64,
}

/// A loader that charges `weight` ([`MAX_JOB_WEIGHT`]) for every node loaded a second time or
/// more: the first load of a node holds what the tree already is, each further one a clone.
fn charging_loader<'a>(
    e: &'a Engine,
    weight: &'a std::cell::Cell<usize>,
    loaded: &'a std::cell::RefCell<std::collections::HashSet<Digest>>,
) -> impl Fn(&Digest) -> Result<std::sync::Arc<crate::tree::DirNode>> + 'a {
    move |d: &Digest| {
        let node = e.load_node(d)?;
        if !loaded.borrow_mut().insert(*d) {
            weight.set(charge(weight.get(), crate::tree::node_weight(&node))?);
        }
        Ok(node)
    }
}

/// The paths of the links in `entry`, placed at `at`: a link file, or those in a directory
/// being edited. A stored directory's links are not walked (it may hold millions of files).
fn collect_links(entry: &MemEntry, at: &FilePath, out: &mut Vec<FilePath>) {
    match entry {
        MemEntry::File(FileEntry {
            content: Content::Link(_),
            ..
        }) => out.push(at.clone()),
        MemEntry::Dir(d) => {
            for name in d.names() {
                if let (Some(e), Ok(path)) = (d.entry(&name), at.join(&name)) {
                    collect_links(e, &path, out);
                }
            }
        }
        MemEntry::File(_) | MemEntry::Stored(_) => {}
    }
}

/// Refuses a files job that leaves a link leading back to itself, or through more links than
/// a read follows: a `link` op checks its target is a file and not a link, but a `move` or
/// `copy` of a link onto its own target (or onto a file other links point at) can still close
/// a loop, which would finalize into files that can never be read. Each link this job placed
/// is followed through relative targets.
fn check_placed_links(tree: &mut MemDir, placed: &[FilePath], loader: &Loader<'_>) -> Result<()> {
    for start in placed {
        let mut chain = vec![start.to_string()];
        let mut cur = start.clone();
        loop {
            // A path under a file leads nowhere (its reads are 404); any other failure to
            // look (the job's memory budget) fails the job rather than skip the check.
            let target = match tree.get(&cur, loader) {
                Ok(Some(MemEntry::File(FileEntry {
                    content: Content::Link(target),
                    ..
                }))) => target.clone(),
                Ok(_) => break,
                Err(e) if e.is(cairn_core::ErrorKind::Conflict) => break,
                Err(e) => return Err(e),
            };
            let next = match parse_link(&target)? {
                LinkTarget::Relative(next) => Some(next),
                // A version's file, which is never a link: the last hop, counted like any.
                LinkTarget::Absolute(..) => None,
            };
            let looped = next
                .as_ref()
                .is_some_and(|n| chain.contains(&n.to_string()));
            chain.push(next.as_ref().map_or(target, ToString::to_string));
            if looped || chain.len() > crate::read::MAX_LINK_DEPTH + 1 {
                return Err(Error::invalid(format!(
                    "{start} would be a link that {} ({})",
                    match looped {
                        true => "leads back to itself",
                        false => "goes through too many links",
                    },
                    chain.join(" → ")
                )));
            }
            match next {
                Some(next) => cur = next,
                None => break,
            }
        }
    }
    Ok(())
}

/// Where the [`DroppedPaths`] of files job `fj` are kept: beside its record, in the same column
/// family (never scanned), under the job's id and a suffix no job id has.
pub fn dropped_key(fj: &FilesJobId) -> Vec<u8> {
    let mut k = fj.as_bytes().to_vec();
    k.extend_from_slice(b"/dropped");
    k
}

/// A lookup that failed because a path went under a file: nothing is there.
fn nothing_under_a_file<T>(e: Error) -> Result<Option<T>> {
    match e.is(cairn_core::ErrorKind::Conflict) {
        true => Ok(None),
        false => Err(e),
    }
}

/// `weight` plus `more`, or `too_large` past [`MAX_JOB_WEIGHT`].
fn charge(weight: usize, more: usize) -> Result<usize> {
    let w = weight.saturating_add(more);
    if w > MAX_JOB_WEIGHT {
        return Err(Error::too_large(format!(
            "this files job would load or copy over {} MiB of directory entries (a copy of \
             a directory the job edited is deep, and editing inside N copies of a directory \
             loads it N times); split it into several files jobs",
            MAX_JOB_WEIGHT >> 20
        )));
    }
    Ok(w)
}

/// Directory nodes written but not yet in the index, with the totals of every node met.
type StoredNodes = (
    Vec<(Digest, crate::tree::DirNode)>,
    HashMap<Digest, crate::tree::TreeStats>,
);

/// Copies of one file (library, hash, size) the known-file index reads; half as many live ones
/// are kept (a file uploaded again and again, packed with other files each time, would
/// otherwise make every lookup of it longer).
const MAX_KNOWN_COPIES: usize = 16;

/// The known-file index key of the copy of a file held by `parts`: the file's key (`prefix`),
/// then 8 bytes naming the layout. Entries written before copies were kept have the bare key.
fn known_copy_key(prefix: &[u8], parts: &[PartSeg]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.digest.as_bytes())
            .update(&p.part_size.to_be_bytes())
            .update(&p.off.to_be_bytes())
            .update(&p.len.to_be_bytes());
    }
    let mut k = prefix.to_vec();
    k.extend_from_slice(&h.finalize().as_bytes()[..8]);
    k
}

/// Most files a draft's tree may hold, at any depth (copies of a directory included: a copy of
/// a stored directory is one digest, however many files it holds).
pub const MAX_TREE_FILES: u64 = 10_000_000;

/// Most directories a draft's tree may hold, at any depth: a copy of a stored directory is one
/// digest, so copies of copies could otherwise make a tree of exponentially many directories
/// for every walk of all its paths (the parts list, fsck) to go through.
pub const MAX_TREE_DIRS: u64 = 10_000_000;

/// Most entries of directories a files job edited that its moves and copies may walk to check
/// the path limits under their targets ([`Engine::check_fits`]).
const MAX_JOB_WALK: u64 = 50_000_000;

/// Most memory one files job's ops may load and clone: directory nodes loaded to look up or
/// edit paths, and copies (a copy of a directory this job edited is deep).
const MAX_JOB_WEIGHT: usize = 256 << 20;

/// Marks a draft as being force-completed ([`Engine::force_completion`]) until dropped.
struct Completing<'a>(&'a Engine, WriteToken);

impl Drop for Completing<'_> {
    fn drop(&mut self) {
        self.0.completing.lock().remove(&self.1);
    }
}

/// Upload jobs whose seal failed: the error's kind and reason.
type FailedSeals = HashMap<UploadJobId, (cairn_core::ErrorKind, String)>;

/// What resolving a draft's pending files produced.
#[derive(Default)]
struct Resolution {
    dropped: Vec<String>,
    /// See [`Engine::resolve_strict`].
    failed: FailedSeals,
    /// Files whose hash is now known: (hash, size, part slices) for the known-file index.
    known: Vec<(Digest, u64, Vec<PartSeg>)>,
    /// Upload-job records read so far (see `resolve_pending`).
    jobs: HashMap<UploadJobId, UploadJobRecord>,
    /// Totals of the stored directories met and written (see [`crate::tree::stats_of`]).
    stats: HashMap<Digest, crate::tree::TreeStats>,
    /// Stored directories resolved so far: what each became (itself when nothing changed),
    /// and the paths of the files it dropped, relative to it.
    resolved: HashMap<Digest, (Digest, Vec<String>)>,
    /// Nodes of the directories resolved so far, not yet in the index.
    nodes: Vec<(Digest, crate::tree::DirNode)>,
    /// Files resolved (made parts or dropped) in this pass, and how many it may resolve.
    files: usize,
    limit: usize,
    /// The pass stopped at `resolve_batch` files ([`crate::EngineConfig`]); another follows.
    cut_short: bool,
}

impl Resolution {
    fn stats(&mut self, d: &Digest, loader: &Loader<'_>) -> Result<crate::tree::TreeStats> {
        crate::tree::stats_of(d, loader, &mut self.stats)
    }
}

/// The error of a strict resolution for a file a force completion cut short without finishing.
fn cut_short(path: &FilePath) -> Error {
    Error::incomplete(format!(
        "{path} was cut short by a force completion that did not finish; run force_completion \
         of its files job again, which drops and reports it"
    ))
}

/// The blake3 computed from a file's bytes, when its add op declared another. Files whose
/// hash the part layout cannot give (a `part_size` that is not a power of two) are not checked.
fn mismatch(declared: Option<Digest>, computed: Option<Digest>) -> Option<Digest> {
    match (declared, computed) {
        (Some(d), Some(c)) if d != c => Some(c),
        _ => None,
    }
}

/// The error of a strict resolution for a file whose bytes are not the ones declared.
fn not_as_declared(path: &FilePath, declared: Option<Digest>, computed: Option<Digest>) -> Error {
    let hex = |d: Option<Digest>| d.map(|d| d.to_hex()).unwrap_or_default();
    Error::bad_digest(format!(
        "{path}: the bytes received hash to blake3 {}, not the {} its add op declared (was the \
         file changed while it was uploaded?); delete it and add it again in a new files job",
        hex(computed),
        hex(declared)
    ))
}

/// The error of a strict resolution for a file waiting on upload job `uj`.
fn waiting(
    path: &FilePath,
    uj: UploadJobId,
    failed: &FailedSeals,
    jobs: &HashMap<UploadJobId, UploadJobRecord>,
) -> Error {
    if let Some((kind, reason)) = failed.get(&uj) {
        return Error::new(
            *kind,
            format!("{path}: its upload job {uj} could not be sealed: {reason}"),
        );
    }
    // A file whose own bytes all arrived still waits for the rest of its job.
    let (got, of) = jobs.get(&uj).map_or((0, 0), |r| (r.received, r.size));
    Error::incomplete(format!(
        "{path} is not complete until its upload job {uj} is: {got} of {of} bytes received"
    ))
}

enum Resolved {
    /// The file's part slices, and its blake3 when the segment hashes combine.
    Parts(Vec<PartSeg>, Option<Digest>),
    Dropped,
    Waiting(UploadJobId),
}

/// A parsed link target.
pub(crate) enum LinkTarget {
    Relative(FilePath),
    Absolute(VersionHash, FilePath),
}

pub(crate) fn parse_link(target: &str) -> Result<LinkTarget> {
    if let Some(rest) = target.strip_prefix("./files/") {
        return Ok(LinkTarget::Relative(FilePath::parse(rest)?));
    }
    if let Some(rest) = target.strip_prefix("/qfab/") {
        if let Some((hash, path)) = rest.split_once("/files/") {
            return Ok(LinkTarget::Absolute(hash.parse()?, FilePath::parse(path)?));
        }
    }
    Err(Error::invalid(format!(
        "link target {target:?} is not ./files/<path> or /qfab/hq__…/files/<path>"
    )))
}

fn attach_pending(
    tree: &mut MemDir,
    path: &FilePath,
    seg: PendingSeg,
    loader: &crate::tree::Loader<'_>,
) -> Result<()> {
    match tree.get(path, loader)? {
        Some(MemEntry::File(FileEntry {
            content: Content::Pending(segs),
            ..
        })) => {
            segs.push(seg);
            Ok(())
        }
        _ => Err(Error::internal(format!(
            "planned file {path} is missing from the tree"
        ))),
    }
}

fn set_dir_meta(
    tree: &mut MemDir,
    path: &FilePath,
    meta: Option<serde_json::Value>,
    loader: &crate::tree::Loader<'_>,
) -> Result<()> {
    match tree.get(path, loader)? {
        Some(MemEntry::Stored(d)) => {
            let mut dir = MemDir::load(&d.clone(), loader)?;
            dir.set_meta(meta);
            *tree.get(path, loader)?.expect("present") = MemEntry::Dir(dir);
            Ok(())
        }
        Some(MemEntry::Dir(dir)) => {
            dir.set_meta(meta);
            Ok(())
        }
        _ => Err(Error::not_found(format!("directory {path} does not exist"))),
    }
}

/// Moving or copying onto an existing directory would silently drop its contents.
fn check_not_over_directory(
    tree: &mut MemDir,
    to: &FilePath,
    loader: &crate::tree::Loader<'_>,
) -> Result<()> {
    match tree.get(to, loader)? {
        Some(MemEntry::Dir(_) | MemEntry::Stored(_)) => Err(Error::conflict(format!(
            "{to} is an existing directory; delete it first"
        ))),
        _ => Ok(()),
    }
}

fn check_not_into_itself(from: &FilePath, to: &FilePath) -> Result<()> {
    if to.starts_with(from) {
        return Err(Error::invalid(format!(
            "cannot move or copy {from} into itself ({to})"
        )));
    }
    Ok(())
}

/// Which versions a tag list names: any at all (`*`), or these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versions {
    Any,
    These(Vec<VersionHash>),
}

impl Versions {
    fn contain(&self, head: Option<VersionHash>) -> bool {
        match (self, head) {
            (_, None) => false,
            (Versions::Any, Some(_)) => true,
            (Versions::These(list), Some(h)) => list.contains(&h),
        }
    }
}

/// What a finalize requires of the object's newest version (its head), as HTTP's `If-Match` and
/// `If-None-Match` say it: with neither, the last finalize wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadCondition {
    /// The head must be one of these (`*`: there must be a head).
    pub if_match: Option<Versions>,
    /// The head must not be one of these (`*`: there must be no version yet).
    pub if_none_match: Option<Versions>,
}

impl HeadCondition {
    pub fn check(&self, head: Option<VersionHash>) -> Result<()> {
        let shown = || head.map_or("no version".to_string(), |h| h.to_string());
        if self.if_match.as_ref().is_some_and(|v| !v.contain(head)) {
            return Err(Error::precondition_failed(format!(
                "If-Match does not hold: the object's newest version is {}",
                shown()
            )));
        }
        if self.if_none_match.as_ref().is_some_and(|v| v.contain(head)) {
            return Err(Error::precondition_failed(format!(
                "If-None-Match does not hold: the object's newest version is {}",
                shown()
            )));
        }
        Ok(())
    }
    /// The condition on something that exists and has no entity-tag (a draft): `If-Match: *`
    /// holds and any tag does not; `If-None-Match: *` does not hold and any tag does.
    pub fn check_untagged(&self, what: &str) -> Result<()> {
        if matches!(self.if_match, Some(Versions::These(_))) {
            return Err(Error::precondition_failed(format!(
                "If-Match does not hold: {what} has no entity-tag"
            )));
        }
        if matches!(self.if_none_match, Some(Versions::Any)) {
            return Err(Error::precondition_failed(format!(
                "If-None-Match: * does not hold: {what} exists"
            )));
        }
        Ok(())
    }

    /// The condition on one version, whose entity-tag is its own hash.
    pub fn check_version(&self, h: VersionHash) -> Result<()> {
        if self.if_match.as_ref().is_some_and(|v| !v.contain(Some(h))) {
            return Err(Error::precondition_failed(format!(
                "If-Match does not hold for version {h}"
            )));
        }
        if self
            .if_none_match
            .as_ref()
            .is_some_and(|v| v.contain(Some(h)))
        {
            return Err(Error::precondition_failed(format!(
                "If-None-Match does not hold for version {h}"
            )));
        }
        Ok(())
    }
}
