//! The engine: libraries, objects, drafts, versions and metadata over one [`Store`].
//!
//! Methods are synchronous (RocksDB and pack I/O are blocking); async callers run them with
//! [`Engine::run`]. Uploads and reads, which stream, have async entry points in `upload.rs` and
//! `read.rs`. Lifecycle changes (open, finalize, delete) take the state lock for writing; upload
//! commits take it for reading, so a draft cannot vanish between an upload's check and its commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cairn_core::record::Record;
use cairn_core::{
    Digest, Error, ErrorKind, LibraryId, NodeId, ObjectId, Result, UploadJobId, VersionHash,
    WriteToken,
};
use cairn_store::{Batch, Store, StoreConfig};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::files::HeadCondition;
use crate::planner::PlanLimits;
use crate::records::*;
use crate::tree::{node_children, DirNode, Entry, MemDir};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub store: StoreConfig,
    pub plan: PlanLimits,
    /// Bytes an upload request receives between intermediate commits. Each commit waits for
    /// an fsync; 8 MiB cost the 8-stream ingest benchmark about 8% of its throughput against
    /// 32 MiB (interleaved runs), and a crash costs a stream at most this much resending.
    pub commit_every: u64,
    /// An upload body that sends nothing for this long is cut off (what arrived is kept), and a
    /// download whose client reads nothing for this long is stopped.
    pub idle_timeout: std::time::Duration,
    /// Pending files a finalize or force completion resolves per committed pass (about 1.4 KB
    /// of memory each while it runs). Small values are for tests.
    pub resolve_batch: usize,
    /// Files jobs one draft may have ([`crate::files::MAX_FILES_JOBS`]; smaller for tests).
    pub max_files_jobs: usize,
}

impl EngineConfig {
    pub fn new(dir: impl Into<std::path::PathBuf>) -> EngineConfig {
        EngineConfig {
            store: StoreConfig::new(dir),
            plan: PlanLimits::default(),
            commit_every: 32 << 20,
            idle_timeout: std::time::Duration::from_secs(60),
            resolve_batch: 50_000,
            max_files_jobs: crate::files::MAX_FILES_JOBS,
        }
    }
}

/// What `/q/{id}` names: an object (its head), a version, or a draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qhit {
    Object(ObjectId),
    Version(VersionHash),
    Draft(WriteToken),
}

impl std::str::FromStr for Qhit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Qhit> {
        if s.starts_with("iq__") {
            Ok(Qhit::Object(s.parse()?))
        } else if s.starts_with("hq__") {
            Ok(Qhit::Version(s.parse()?))
        } else if s.starts_with("tqw__") {
            Ok(Qhit::Draft(s.parse()?))
        } else {
            Err(Error::invalid(format!(
                "{s:?} is not an object id, version hash or write token"
            )))
        }
    }
}

/// See [`Engine::info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QInfo {
    pub object: ObjectId,
    pub library: LibraryId,
    pub version: Option<VersionHash>,
    pub token: Option<WriteToken>,
    /// For a draft: the version it was opened from (`None`: the object had none).
    pub base: Option<VersionHash>,
    pub modified: u64,
}

const ENGINE_KEY_NODE: &[u8] = b"node";
const ENGINE_KEY_EPOCH: &[u8] = b"epoch";
/// Present once `lib_objects` holds every object (see [`index_library_objects`]).
const ENGINE_KEY_LIB_OBJECTS: &[u8] = b"lib_objects_built";

/// The Files Job engine.
pub struct Engine {
    pub(crate) store: Store,
    pub(crate) cfg: EngineConfig,
    pub(crate) node: NodeId,
    /// Incremented at every open: jobs last active in an older epoch report STOPPED.
    pub(crate) epoch: u64,
    pub(crate) state: RwLock<()>,
    pub(crate) uj_locks: Mutex<HashMap<UploadJobId, Arc<tokio::sync::Mutex<()>>>>,
    /// Drafts a force completion is running on: their upload jobs are being sealed one by one,
    /// so a finalize meanwhile would see files half dropped; it is refused instead.
    pub(crate) completing: Mutex<HashSet<WriteToken>>,
    /// Recently read directory nodes.
    nodes: cairn_store::cache::Cache<Digest, DirNode>,
    /// Recently read large directory nodes, indexed for lookups ([`crate::bignode`]).
    large_nodes: cairn_store::cache::Cache<Digest, crate::bignode::NodeIndex>,
    /// Held while a lookup reads or indexes a node known to be large that the cache does not
    /// hold: concurrent lookups in one large directory read and index it once, and at most one
    /// such node beyond the cache is in memory. Small nodes are read without it.
    node_loading: Mutex<()>,
    /// The parts of recently walked trees, by root ([`crate::read::PartSet`]): a tree is
    /// immutable, so a player fetching a version part by part walks it once.
    pub(crate) part_sets: cairn_store::cache::Cache<Digest, crate::read::PartSet>,
    /// The turn to walk a tree for its parts: every directory is decoded whole (large ones
    /// too), so one walk at a time; others wait `idle_timeout`, then are `busy`.
    pub(crate) part_walk: Arc<tokio::sync::Semaphore>,
    /// Digests of nodes found larger than [`crate::bignode::LARGE_NODE`] (at most
    /// [`LARGE_SEEN_MAX`], then forgotten all at once).
    large_seen: Mutex<HashSet<Digest>>,
    /// Recently opened files of finalized content (see [`crate::read::OpenedFiles`]).
    pub(crate) opened: crate::read::OpenedFiles,
    /// Hashes of upload jobs whose requests stopped short of the end, keyed with the offset
    /// they cover, so the next request continues them instead of sealing by re-reading.
    pub(crate) stream_hashes: Mutex<HashMap<UploadJobId, (u64, crate::upload::StreamHashes)>>,
    /// Permits for downloads' reads that wait for the disk on a blocking thread (held only
    /// while one does). At most `STREAM_PERMITS`.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    /// Permits for uploads: one held for an upload's whole life (it may hold a blocking thread
    /// while a commit waits for its fsync, and up to a max-size chunk of frames). Apart from
    /// `streams`, so that uploads, however slow their clients, never keep downloads from the
    /// disk. Together far below tokio's 512 blocking threads.
    pub(crate) uploads: Arc<tokio::sync::Semaphore>,
    /// Renderings of `meta/files/…` running (each may take up to `tree::MAX_RENDER_WEIGHT`);
    /// one more is `busy`.
    renders: tokio::sync::Semaphore,
    /// Decodes of large metadata documents running ([`LARGE_META_READS`]); one more is `busy`.
    large_meta_reads: tokio::sync::Semaphore,
    /// Files listings being walked (`read::LIST_WALKS`), apart from `streams`.
    pub(crate) listings: Arc<tokio::sync::Semaphore>,
    /// Bytes of verified chunks queued for all streaming readers together.
    pub(crate) read_budget: Arc<tokio::sync::Semaphore>,
    /// Set when the server stops: uploads still receiving stop reading and commit what arrived.
    pub(crate) stopping: tokio::sync::watch::Sender<bool>,
}

/// Blocking threads for downloads' disk reads; more wait for a permit.
pub const STREAM_PERMITS: usize = 128;

/// `meta/files/…` renderings at once.
const RENDERS: usize = 4;

/// A metadata document stored in more bytes than this is a large one (see [`Engine::meta_of`]);
/// a smaller one decodes to a few tens of MB at most.
const LARGE_META: usize = 256 << 10;

/// Large nodes remembered as such (`Engine::large_seen`).
const LARGE_SEEN_MAX: usize = 4096;
/// Large metadata documents decoded at once. Reading a document of a million object entries
/// (10 MB of JSON) took about 310 MB, so [`MAX_META_VALUES`] keeps one read to about a quarter
/// of that, and two at once to about 160 MB.
const LARGE_META_READS: usize = 2;

/// Uploads receiving at once; more wait for a permit.
pub const UPLOAD_PERMITS: usize = 192;

impl Engine {
    pub fn open(cfg: EngineConfig) -> Result<Engine> {
        let store = Store::open(cfg.store.clone(), JOB_CFS)?;
        let idx = store.index();
        let node = match idx.get(CF_ENGINE, ENGINE_KEY_NODE)? {
            Some(b) => NodeId::from_bytes(&b)?,
            None => NodeId::random(),
        };
        let epoch = idx
            .get(CF_ENGINE, ENGINE_KEY_EPOCH)?
            .map_or(0, |b| cairn_store::store::counter_value(&b) as u64)
            + 1;
        let mut b = idx.batch();
        b.put(CF_ENGINE, ENGINE_KEY_NODE, node.as_bytes());
        b.put(CF_ENGINE, ENGINE_KEY_EPOCH, &(epoch as i64).to_le_bytes());
        if idx.get(CF_ENGINE, ENGINE_KEY_LIB_OBJECTS)?.is_none() {
            index_library_objects(idx, &mut b)?;
        }
        store.commit(b)?;
        let engine = Engine {
            store,
            cfg,
            node,
            epoch,
            state: RwLock::new(()),
            uj_locks: Mutex::new(HashMap::new()),
            completing: Mutex::new(HashSet::new()),
            // Decoded nodes take roughly 200 bytes per entry, plus their metadata.
            nodes: cairn_store::cache::Cache::new(32 << 20, crate::tree::node_weight),
            // Keeps indexed nodes of up to 64 MiB (about 300,000 files of one part each).
            large_nodes: cairn_store::cache::Cache::new(128 << 20, |n| n.weight()),
            node_loading: Mutex::new(()),
            part_sets: cairn_store::cache::Cache::new(64 << 20, crate::read::PartSet::weight),
            part_walk: Arc::new(tokio::sync::Semaphore::new(1)),
            large_seen: Mutex::new(HashSet::new()),
            stream_hashes: Mutex::new(HashMap::new()),
            opened: crate::read::OpenedFiles::new(),
            streams: Arc::new(tokio::sync::Semaphore::new(STREAM_PERMITS)),
            uploads: Arc::new(tokio::sync::Semaphore::new(UPLOAD_PERMITS)),
            renders: tokio::sync::Semaphore::new(RENDERS),
            large_meta_reads: tokio::sync::Semaphore::new(LARGE_META_READS),
            listings: Arc::new(tokio::sync::Semaphore::new(crate::read::LIST_WALKS)),
            read_budget: Arc::new(tokio::sync::Semaphore::new(crate::read::READ_BUDGET)),
            stopping: tokio::sync::watch::Sender::new(false),
        };
        engine.seal_received_jobs()?;
        Ok(engine)
    }

    /// Ids of the objects in `library`, in id order (from `lib_objects`, not a scan of all).
    fn library_object_ids<'a>(
        &'a self,
        library: &'a LibraryId,
    ) -> impl Iterator<Item = Result<ObjectId>> + 'a {
        let prefix = library.as_bytes().len();
        self.store
            .index()
            .scan(CF_LIB_OBJECTS, library.as_bytes())
            .map(move |r| {
                let (k, _) = r?;
                ObjectId::from_bytes(&k[prefix..])
                    .map_err(|e| Error::corrupt(format!("lib_objects key of {library}: {e}")))
            })
    }

    /// Recovery: an upload job whose last byte was committed but which a crash kept from being
    /// sealed is sealed now (no client would send it more bytes).
    fn seal_received_jobs(&self) -> Result<()> {
        for uj in self.scan_records::<UploadJobRecord>(CF_UPLOAD_JOBS, &[])? {
            if uj.sealed.is_none() && uj.received == uj.size {
                tracing::info!(upload_job = %uj.id, "sealing upload job completed before a crash");
                if let Err(err) = self.seal(&uj, uj.segment_count) {
                    // One damaged job must not keep the whole store from opening.
                    tracing::error!(upload_job = %uj.id, error = %err, "cannot seal upload job");
                    self.fail_job(&uj.files_job, &err.reason);
                }
            }
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Runs blocking engine work from async code.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| Error::internal(format!("engine task failed: {e}")))?
    }

    pub(crate) fn get<T: Record>(
        &self,
        cf: &str,
        key: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        self.store
            .index()
            .get_record(cf, key)?
            .ok_or_else(|| Error::not_found(format!("{} not found", what())))
    }

    /// A directory node, decoded once and shared (nodes are content-addressed, so immutable).
    pub(crate) fn load_node(&self, d: &Digest) -> Result<Arc<DirNode>> {
        if let Some(n) = self.nodes.get(d) {
            return Ok(n);
        }
        let node = DirNode::decode(&self.raw_node(d)?)?;
        Ok(self.nodes.insert(d, node))
    }

    /// A directory node's stored bytes, checked against its name.
    fn raw_node(&self, d: &Digest) -> Result<Vec<u8>> {
        let Some(raw) = self.store.index().get(CF_NODES, d.as_bytes())? else {
            return Err(Error::not_found(format!("directory node {d} not found")));
        };
        // Nodes are named by the blake3 of their encoding: check it, like a chunk.
        if Digest::of(&raw) != *d {
            return Err(Error::corrupt(format!(
                "directory node {d} fails its blake3 check"
            )));
        }
        Ok(raw)
    }

    /// The entry `name` of directory node `d`, for a lookup along a path. A node stored in
    /// more than [`crate::bignode::LARGE_NODE`] bytes is not decoded: its index finds the one
    /// entry (see [`crate::bignode`]); smaller ones are decoded and cached as for
    /// [`Engine::load_node`].
    pub(crate) fn node_entry(&self, d: &Digest, name: &str) -> Result<Option<Entry>> {
        let cached = |name: &str| -> Result<Option<Option<Entry>>> {
            if let Some(n) = self.nodes.get(d) {
                return Ok(Some(n.entries.get(name).cloned()));
            }
            match self.large_nodes.get(d) {
                Some(ix) => ix.get(name, d).map(Some),
                None => Ok(None),
            }
        };
        if let Some(found) = cached(name)? {
            return Ok(found);
        }
        // Small nodes are read without the lock; a node found large is remembered, and its
        // later reads (and index builds) take the lock, so concurrent lookups in it hold one
        // copy of its bytes, not one each.
        let known_large = self.large_seen.lock().contains(d);
        let mut one = None;
        if known_large {
            one = Some(self.node_loading.lock());
            if let Some(found) = cached(name)? {
                return Ok(found);
            }
        }
        let raw = self.raw_node(d)?;
        if raw.len() <= crate::bignode::LARGE_NODE {
            let node = self.nodes.insert(d, DirNode::decode(&raw)?);
            return Ok(node.entries.get(name).cloned());
        }
        if !known_large {
            let mut seen = self.large_seen.lock();
            if seen.len() >= LARGE_SEEN_MAX {
                seen.clear();
            }
            seen.insert(*d);
            drop(seen);
            one = Some(self.node_loading.lock());
            if let Some(ix) = self.large_nodes.get(d) {
                return ix.get(name, d);
            }
        }
        let _one = one;
        let ix = crate::bignode::NodeIndex::build(raw, d)?;
        self.large_nodes.insert(d, ix).get(name, d)
    }

    // ---- libraries -------------------------------------------------------------------------

    pub fn create_library(&self, name: &str) -> Result<LibraryRecord> {
        if name.len() > 1024 {
            return Err(Error::too_large("library name over 1024 bytes"));
        }
        let rec = LibraryRecord {
            id: LibraryId::random(),
            name: name.to_string(),
            created: now(),
        };
        let mut b = self.store.index().batch();
        b.put_record(CF_LIBRARIES, rec.id.as_bytes(), &rec);
        self.store.commit_adding(b)?;
        Ok(rec)
    }

    pub fn library(&self, id: &LibraryId) -> Result<LibraryRecord> {
        self.get(CF_LIBRARIES, id.as_bytes(), || format!("library {id}"))
    }

    pub fn libraries(&self) -> Result<Vec<LibraryRecord>> {
        self.scan_records(CF_LIBRARIES, &[])
    }

    /// Deletes an empty library, with its index of known files (hints for dedup that only its
    /// own drafts read). While it holds objects it is a `conflict` and nothing changes:
    /// deleting content is a separate, explicit step (like S3's `BucketNotEmpty`). Checked
    /// and deleted under the state lock, so no object can be created in it meanwhile.
    pub fn delete_library(&self, id: &LibraryId) -> Result<()> {
        let _w = self.state.write();
        self.library(id)?;
        if self.library_object_ids(id).next().transpose()?.is_some() {
            return Err(Error::conflict(format!(
                "library {id} still holds objects; delete them first"
            )));
        }
        let mut b = self.store.index().batch();
        for r in self.store.index().scan(CF_FILE_INDEX, id.as_bytes()) {
            b.delete(CF_FILE_INDEX, &r?.0);
        }
        b.delete(CF_LIBRARIES, id.as_bytes());
        self.store.commit(b)
    }

    pub(crate) fn scan_records<T: Record>(&self, cf: &str, prefix: &[u8]) -> Result<Vec<T>> {
        self.store
            .index()
            .scan(cf, prefix)
            .map(|r| r.and_then(|(_, v)| T::decode(&v)))
            .collect()
    }

    // ---- objects and drafts -----------------------------------------------------------------

    /// Creates an object in `library` and opens an empty draft on it.
    pub fn create_object(&self, library: &LibraryId) -> Result<(ObjectRecord, DraftRecord)> {
        // Under the lock, so that a library being deleted cannot gain an object.
        let _w = self.state.write();
        self.library(library)?;
        let obj = ObjectRecord {
            id: ObjectId::random(),
            library: *library,
            head: None,
            last_seq: 0,
            created: now(),
            head_moved: 0,
        };
        let mut b = self.store.index().batch();
        b.put_record(CF_OBJECTS, obj.id.as_bytes(), &obj);
        b.put(CF_LIB_OBJECTS, &lib_object_key(library, &obj.id), &[]);
        let draft = self.new_draft(&mut b, &obj)?;
        self.store.commit_adding(b)?;
        Ok((obj, draft))
    }

    pub fn object(&self, id: &ObjectId) -> Result<ObjectRecord> {
        self.get(CF_OBJECTS, id.as_bytes(), || format!("object {id}"))
    }

    pub fn objects(&self, library: &LibraryId) -> Result<Vec<ObjectRecord>> {
        self.library(library)?;
        let mut out = Vec::new();
        for id in self.library_object_ids(library) {
            match self.object(&id?) {
                Ok(o) => out.push(o),
                // A stale index entry (which fsck reports and `--repair` removes) must not
                // hide the rest of the library.
                Err(e) if e.kind == ErrorKind::NotFound => {
                    tracing::warn!(%library, error = %e, "library index names a missing object")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// How many objects `library` holds, from its index keys: no object record is decoded.
    pub fn object_count(&self, library: &LibraryId) -> Result<u64> {
        self.library(library)?;
        let mut n = 0;
        for id in self.library_object_ids(library) {
            id?;
            n += 1;
        }
        Ok(n)
    }

    /// Opens a draft on the object's head (or on an empty tree if it has no version yet).
    pub fn open_draft(&self, object: &ObjectId) -> Result<DraftRecord> {
        let _w = self.state.write();
        let obj = self.object(object)?;
        let mut b = self.store.index().batch();
        let draft = self.new_draft(&mut b, &obj)?;
        self.store.commit_adding(b)?;
        Ok(draft)
    }

    fn new_draft(&self, b: &mut Batch<'_>, obj: &ObjectRecord) -> Result<DraftRecord> {
        let (root, meta) = match &obj.head {
            Some(h) => {
                let v = self.version(h)?;
                (v.root, v.meta)
            }
            None => (
                self.ensure_empty_root(b)?,
                Value::Object(Default::default()),
            ),
        };
        b.add(CF_NODE_REFS, root.as_bytes(), 1);
        let token = WriteToken::new(obj.id, self.node);
        let draft = DraftRecord {
            token,
            library: obj.library,
            base: obj.head,
            root,
            meta,
            files_jobs: Vec::new(),
            files_finalized: false,
            created: now(),
        };
        b.put_record(CF_DRAFTS, &token.to_bytes(), &draft);
        Ok(draft)
    }

    fn ensure_empty_root(&self, b: &mut Batch<'_>) -> Result<Digest> {
        let mut nodes = Vec::new();
        let (root, _) = MemDir::default().store(&mut nodes, &|d| self.load_node(d))?;
        let _g = self.store.ref_guard();
        self.put_nodes(b, nodes)?;
        Ok(root)
    }

    pub fn draft(&self, token: &WriteToken) -> Result<DraftRecord> {
        self.get(CF_DRAFTS, &token.to_bytes(), || {
            format!("write token {token}")
        })
    }

    /// The draft without its metadata ([`DraftHead`]).
    pub fn draft_head(&self, token: &WriteToken) -> Result<DraftHead> {
        self.store
            .index()
            .get_view::<DraftRecord, DraftHead>(CF_DRAFTS, &token.to_bytes())?
            .ok_or_else(|| Error::not_found(format!("write token {token} not found")))
    }

    /// Discards a draft: its upload jobs, received chunks and tree references are released.
    pub fn delete_draft(&self, token: &WriteToken) -> Result<()> {
        self.delete_draft_if(token, &HeadCondition::default())
    }

    /// [`Engine::delete_draft`] if `cond` holds for the draft, which has no entity-tag
    /// ([`HeadCondition::check_untagged`]); an unknown draft is 404 first.
    pub fn delete_draft_if(&self, token: &WriteToken, cond: &HeadCondition) -> Result<()> {
        let _w = self.state.write();
        let draft = self.draft(token)?;
        cond.check_untagged(&format!("draft {token}"))?;
        let mut b = self.store.index().batch();
        self.drop_draft(&mut b, &draft)?;
        b.add(CF_NODE_REFS, draft.root.as_bytes(), -1);
        self.store.commit(b)
    }

    /// Adds to `b` the deletion of a draft's records and the release of what its jobs hold
    /// (not its root reference: finalize hands that over to the version).
    pub(crate) fn drop_draft(&self, b: &mut Batch<'_>, draft: &DraftRecord) -> Result<()> {
        for fj in &draft.files_jobs {
            let Some(job) = self
                .store
                .index()
                .get_record::<FilesJobRecord>(CF_FILES_JOBS, fj.as_bytes())?
            else {
                continue;
            };
            for uj in &job.upload_jobs {
                self.drop_upload_job(b, uj)?;
            }
            b.delete(CF_FILES_JOBS, fj.as_bytes());
            b.delete(CF_FILES_JOBS, &crate::files::dropped_key(fj));
        }
        b.delete(CF_DRAFTS, &draft.token.to_bytes());
        Ok(())
    }

    fn drop_upload_job(&self, b: &mut Batch<'_>, uj: &UploadJobId) -> Result<()> {
        let Some(rec) = self
            .store
            .index()
            .get_record::<UploadJobRecord>(CF_UPLOAD_JOBS, uj.as_bytes())?
        else {
            return Ok(());
        };
        let chunks = self.uj_chunks(uj)?;
        self.store
            .release_chunks(b, chunks.iter().map(|(_, c)| &c.chunk));
        for (k, _) in &chunks {
            b.delete(CF_UJ_CHUNKS, k);
        }
        if let Some(s) = rec.sealed.filter(|s| s.size > 0) {
            self.store.release_part(b, &s.digest, s.size);
        }
        for r in self.store.index().scan(CF_UJ_SEGMENTS, uj.as_bytes()) {
            b.delete(CF_UJ_SEGMENTS, &r?.0);
        }
        b.delete(CF_UJ_TAIL, uj.as_bytes());
        b.delete(CF_UPLOAD_JOBS, uj.as_bytes());
        self.stream_hashes.lock().remove(uj);
        Ok(())
    }

    /// Segment `i` of an upload job's plan.
    pub(crate) fn uj_segment(&self, uj: &UploadJobId, i: u32) -> Result<SegmentRecord> {
        self.get(CF_UJ_SEGMENTS, &uj_chunk_key(uj, i), || {
            format!("segment {i} of upload job {uj}")
        })
    }

    /// Up to `limit` segments of an upload job from index `start`.
    pub(crate) fn uj_segments(
        &self,
        uj: &UploadJobId,
        start: u32,
        limit: usize,
    ) -> Result<Vec<SegmentRecord>> {
        let from = uj_chunk_key(uj, start);
        self.store
            .index()
            .scan_from(CF_UJ_SEGMENTS, uj.as_bytes(), &from)
            .take(limit)
            .map(|r| r.and_then(|(_, v)| SegmentRecord::decode(&v)))
            .collect()
    }

    /// Whether segment `i` of the job has been fully received.
    pub(crate) fn segment_received(&self, rec: &UploadJobRecord, i: u32) -> Result<bool> {
        Ok(rec.received >= self.uj_segment(&rec.id, i)?.end())
    }

    /// How many leading segments of the job are fully received.
    pub(crate) fn received_prefix(&self, rec: &UploadJobRecord) -> Result<u32> {
        let (mut lo, mut hi) = (0, rec.segment_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.segment_received(rec, mid)? {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The segment containing stream offset `pos` (the count if `pos` is at the end).
    pub(crate) fn segment_at(&self, rec: &UploadJobRecord, pos: u64) -> Result<u32> {
        let (mut lo, mut hi) = (0, rec.segment_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.uj_segment(&rec.id, mid)?.end() <= pos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    pub(crate) fn uj_chunks(&self, uj: &UploadJobId) -> Result<Vec<(Box<[u8]>, UjChunk)>> {
        let prefix = uj.as_bytes();
        self.store
            .index()
            .scan(CF_UJ_CHUNKS, prefix)
            .map(|r| r.and_then(|(k, v)| Ok((k, UjChunk::decode(&v)?))))
            .collect()
    }

    /// Stores new directory nodes in `b`: a node not yet in the index is written and takes a
    /// reference on each child it names. The caller holds the store's ref guard.
    pub(crate) fn put_nodes(&self, b: &mut Batch<'_>, nodes: Vec<(Digest, DirNode)>) -> Result<()> {
        let mut written = HashSet::new();
        // One merge operand per part, not per file slice: thousands of small files share a
        // part, and an operand each took tens of MiB of batch and memtable for a large directory.
        let mut part_refs: HashMap<[u8; 40], i64> = HashMap::new();
        for (d, node) in nodes {
            if written.contains(&d) || self.store.index().exists(CF_NODES, d.as_bytes())? {
                continue;
            }
            let (dirs, parts) = node_children(&node);
            for child in dirs {
                b.add(CF_NODE_REFS, child.as_bytes(), 1);
            }
            for p in parts {
                *part_refs
                    .entry(cairn_store::part_key(&p.digest, p.part_size))
                    .or_default() += 1;
            }
            b.put_record(CF_NODES, d.as_bytes(), &node);
            written.insert(d);
        }
        for (key, n) in part_refs {
            b.add(cairn_store::store::part_refs_cf(), &key, n);
        }
        Ok(())
    }

    // ---- versions ---------------------------------------------------------------------------

    pub fn version(&self, h: &VersionHash) -> Result<VersionRecord> {
        let v: VersionRecord =
            self.get(CF_VERSIONS, h.digest.as_bytes(), || format!("version {h}"))?;
        if v.object != h.object || v.size != h.size {
            return Err(Error::not_found(format!("version {h} not found")));
        }
        Ok(v)
    }

    /// The version without its metadata ([`VersionHead`]), checked like [`Engine::version`].
    pub fn version_head(&self, h: &VersionHash) -> Result<VersionHead> {
        let v = self
            .store
            .index()
            .get_view::<VersionRecord, VersionHead>(CF_VERSIONS, h.digest.as_bytes())?
            .filter(|v| v.object == h.object && v.size == h.size)
            .ok_or_else(|| Error::not_found(format!("version {h} not found")))?;
        Ok(v)
    }

    /// The object's versions, newest first.
    pub fn versions(&self, object: &ObjectId) -> Result<Vec<VersionHash>> {
        self.object(object)?;
        let mut out = Vec::new();
        for r in self.store.index().scan(CF_HISTORY, object.as_bytes()) {
            let (_, v) = r?;
            let digest = Digest::from_slice(&v)
                .ok_or_else(|| Error::corrupt("history entry is not a digest"))?;
            let rec = self
                .store
                .index()
                .get_view::<VersionRecord, VersionHead>(CF_VERSIONS, &v)?
                .ok_or_else(|| Error::not_found(format!("version {digest} not found")))?;
            out.push(VersionHash {
                digest,
                size: rec.size,
                object: *object,
            });
        }
        Ok(out)
    }

    /// Deletes one version (its unique bytes become garbage for gc). If it was the head, the
    /// newest remaining version becomes the head.
    pub fn delete_version(&self, h: &VersionHash) -> Result<()> {
        self.delete_version_if(h, &HeadCondition::default())
    }

    /// [`Engine::delete_version`] if `cond` holds for it (its entity-tag is its hash); an
    /// unknown version is 404 first.
    pub fn delete_version_if(&self, h: &VersionHash, cond: &HeadCondition) -> Result<()> {
        let _w = self.state.write();
        let v = self.version_head(h)?;
        cond.check_version(*h)?;
        let mut obj = self.object(&v.object)?;
        let mut b = self.store.index().batch();
        b.delete(CF_VERSIONS, h.digest.as_bytes());
        b.delete(CF_HISTORY, &history_key(&v.object, v.seq));
        b.add(CF_NODE_REFS, v.root.as_bytes(), -1);
        if obj.head == Some(*h) {
            obj.head = self.versions(&v.object)?.into_iter().find(|x| x != h);
            obj.head_moved = now();
            b.put_record(CF_OBJECTS, obj.id.as_bytes(), &obj);
        }
        self.store.commit(b)?;
        self.opened.clear();
        Ok(())
    }

    /// Deletes an object with all its versions and drafts, in one batch.
    pub fn delete_object(&self, id: &ObjectId) -> Result<()> {
        self.delete_object_if(id, &HeadCondition::default())
    }

    /// [`Engine::delete_object`] if `cond` holds for its newest version, checked under the same
    /// lock as the delete (as a finalize's); an unknown object is 404 first.
    pub fn delete_object_if(&self, id: &ObjectId, cond: &HeadCondition) -> Result<()> {
        let _w = self.state.write();
        let obj = self.object(id)?;
        cond.check(obj.head)?;
        let mut b = self.store.index().batch();
        for r in self.store.index().scan(CF_HISTORY, id.as_bytes()) {
            let (k, digest) = r?;
            let v = self
                .store
                .index()
                .get_view::<VersionRecord, VersionHead>(CF_VERSIONS, &digest)?
                .ok_or_else(|| Error::not_found(format!("version of {id} not found")))?;
            b.delete(CF_VERSIONS, &digest);
            b.delete(CF_HISTORY, &k);
            b.add(CF_NODE_REFS, v.root.as_bytes(), -1);
        }
        // Draft keys begin with their object's id: only this object's drafts are read.
        let prefix = WriteToken::bytes_prefix(&obj.id);
        let drafts: Vec<DraftRecord> = self.scan_records(CF_DRAFTS, &prefix)?;
        for d in drafts.iter().filter(|d| d.token.object == obj.id) {
            self.drop_draft(&mut b, d)?;
            b.add(CF_NODE_REFS, d.root.as_bytes(), -1);
        }
        for r in self.store.index().scan(CF_FINALIZED, &prefix) {
            b.delete(CF_FINALIZED, &r?.0);
        }
        b.delete(CF_OBJECTS, id.as_bytes());
        b.delete(CF_LIB_OBJECTS, &lib_object_key(&obj.library, id));
        self.store.commit(b)?;
        self.opened.clear();
        Ok(())
    }

    /// The metadata that `qhit` names. A document stored in more than [`LARGE_META`] bytes is
    /// decoded only with one of the [`LARGE_META_READS`] permits (else `busy`): decoded, it
    /// takes tens of times its stored size.
    pub fn meta_of(&self, q: &Qhit) -> Result<Value> {
        let (cf, key, version, name) = match q {
            Qhit::Draft(t) => (
                CF_DRAFTS,
                t.to_bytes().to_vec(),
                None,
                format!("write token {t}"),
            ),
            Qhit::Version(h) => (
                CF_VERSIONS,
                h.digest.as_bytes().to_vec(),
                Some(*h),
                format!("version {h}"),
            ),
            Qhit::Object(o) => {
                let h = self.head_hash(o)?;
                (
                    CF_VERSIONS,
                    h.digest.as_bytes().to_vec(),
                    Some(h),
                    format!("version {h}"),
                )
            }
        };
        let bytes = self
            .store
            .index()
            .get(cf, &key)?
            .ok_or_else(|| Error::not_found(format!("{name} not found")))?;
        let _large = match bytes.len() > LARGE_META {
            true => Some(self.large_meta_reads.try_acquire().map_err(|_| {
                Error::busy("other reads of large metadata documents are running; retry")
            })?),
            false => None,
        };
        match version {
            None => Ok(DraftRecord::decode(&bytes)?.meta),
            Some(h) => {
                let v = VersionRecord::decode(&bytes)?;
                if v.object != h.object || v.size != h.size {
                    return Err(Error::not_found(format!("version {h} not found")));
                }
                Ok(v.meta)
            }
        }
    }

    /// The root of `q`'s files tree, read without decoding its metadata ([`Engine::meta_of`]).
    pub fn resolve_root(&self, q: &Qhit) -> Result<Digest> {
        match q {
            Qhit::Draft(t) => Ok(self.draft_head(t)?.root),
            Qhit::Version(h) => Ok(self.version_head(h)?.root),
            Qhit::Object(o) => Ok(self.version_head(&self.head_hash(o)?)?.root),
        }
    }

    /// The object's newest version (`not_found` before its first finalize).
    fn head_hash(&self, o: &ObjectId) -> Result<VersionHash> {
        self.object(o)?
            .head
            .ok_or_else(|| Error::not_found(format!("object {o} has no finalized version")))
    }

    /// What `q` is: its object, library, version (if finalized), write token (if a draft), and
    /// when its content was last changed (seconds since the epoch).
    pub fn info(&self, q: &Qhit) -> Result<QInfo> {
        match q {
            Qhit::Draft(t) => {
                let d = self.draft_head(t)?;
                Ok(QInfo {
                    object: t.object,
                    library: d.library,
                    version: None,
                    token: Some(*t),
                    base: d.base,
                    modified: d.created,
                })
            }
            Qhit::Version(h) => {
                let v = self.version_head(h)?;
                Ok(QInfo {
                    object: v.object,
                    library: v.library,
                    version: Some(*h),
                    token: None,
                    base: None,
                    modified: v.created,
                })
            }
            Qhit::Object(o) => {
                let obj = self.object(o)?;
                let h = obj.head.ok_or_else(|| {
                    Error::not_found(format!("object {o} has no finalized version"))
                })?;
                let v = self.version_head(&h)?;
                Ok(QInfo {
                    object: *o,
                    library: v.library,
                    version: Some(h),
                    token: None,
                    base: None,
                    // The head may be an older version again (its head deleted): the files
                    // changed then, not when that version was made.
                    modified: v.created.max(obj.head_moved),
                })
            }
        }
    }

    /// The `files` tree as JSON (reference §3.5).
    pub fn files_json(&self, q: &Qhit) -> Result<Value> {
        let root = self.resolve_root(q)?;
        crate::tree::render(&root, &|d| self.load_node(d), &|d, n| self.node_entry(d, n))
    }

    /// [`Engine::files_json`] written to `out` as JSON text while the tree is walked
    /// ([`crate::tree::render_to`]).
    pub fn files_json_to(&self, q: &Qhit, out: &mut dyn std::io::Write) -> Result<()> {
        let root = self.resolve_root(q)?;
        let entry = |d: &Digest, n: &str| self.node_entry(d, n);
        crate::tree::render_to(&root, (&|d| self.load_node(d), &entry), out)
    }

    // ---- metadata ---------------------------------------------------------------------------

    /// Reads the metadata subtree at `path` (`/`-separated keys); `files` is the files tree.
    pub fn meta_get(&self, q: &Qhit, path: &str) -> Result<Value> {
        self.meta_get_at(q, &meta_keys(path)?)
    }

    /// [`Engine::meta_get`] at a path already split into keys (a key may hold a `/`).
    pub fn meta_get_at(&self, q: &Qhit, keys: &[String]) -> Result<Value> {
        check_meta_keys(keys)?;
        let path = keys.join("/");
        if keys.first().map(String::as_str) == Some("files") {
            // Tree names up to the first "." key, then keys inside the rendered entry.
            let split = keys.iter().position(|k| k == ".").unwrap_or(keys.len());
            let root = self.resolve_root(q)?;
            // A path into the attributes needs only the entry's own: never its children.
            let attributes_only = split < keys.len();
            let _one = self.renders.try_acquire().map_err(|_| {
                Error::busy("other metadata renderings of files trees are running; retry")
            })?;
            let loader = |d: &Digest| self.load_node(d);
            let one = |d: &Digest, n: &str| self.node_entry(d, n);
            let entry = crate::tree::render_entry(
                &root,
                &keys[1..split],
                (&loader, &one),
                attributes_only,
            )?;
            return entry
                .and_then(|v| walk(&v, &keys[split..]).cloned())
                .ok_or_else(|| Error::not_found(format!("metadata {path} not found")));
        }
        let meta = self.meta_of(q)?;
        walk(&meta, keys)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("metadata {path} not found")))
    }

    /// Replaces (`merge = false`) or merges into the draft's metadata at `path`.
    pub fn meta_set(
        &self,
        token: &WriteToken,
        path: &str,
        value: Value,
        merge: bool,
    ) -> Result<()> {
        self.meta_set_at(token, &meta_keys(path)?, value, merge)
    }

    /// [`Engine::meta_set`] at a path already split into keys.
    pub fn meta_set_at(
        &self,
        token: &WriteToken,
        keys: &[String],
        value: Value,
        merge: bool,
    ) -> Result<()> {
        check_meta_keys(keys)?;
        guard_files(keys)?;
        if keys.is_empty() {
            // The root is an object, and never holds a `files` of its own: that name is the
            // files tree's, which `GET …/meta/files` renders.
            let Some(root) = value.as_object() else {
                return Err(Error::invalid("the metadata root must be a JSON object"));
            };
            if root.contains_key("files") {
                return Err(Error::invalid(FILES_GUARD));
            }
        }
        // Only what is written can deepen the document (a merge adds members at the value's
        // own depth), so only it is measured.
        let depth = keys.len() + nesting(&value);
        if depth > MAX_META_DEPTH {
            return Err(Error::invalid(format!(
                "the metadata would be nested {depth} levels deep, over {MAX_META_DEPTH}: the \
                 deepest one JSON body can carry, so that the whole document can always be \
                 written back"
            )));
        }
        self.edit_meta(token, |meta| {
            let slot = slot_mut(meta, keys)?;
            match (merge, &mut *slot, value) {
                (true, Value::Object(dst), Value::Object(src)) => dst.extend(src),
                (_, slot, v) => *slot = v,
            }
            Ok(())
        })
    }

    pub fn meta_delete(&self, token: &WriteToken, path: &str) -> Result<()> {
        self.meta_delete_at(token, &meta_keys(path)?)
    }

    /// [`Engine::meta_delete`] at a path already split into keys.
    pub fn meta_delete_at(&self, token: &WriteToken, keys: &[String]) -> Result<()> {
        check_meta_keys(keys)?;
        guard_files(keys)?;
        self.edit_meta(token, |meta| {
            let Some((last, parents)) = keys.split_last() else {
                *meta = Value::Object(Default::default());
                return Ok(());
            };
            let removed = walk_mut(meta, parents)
                .and_then(|p| p.as_object_mut())
                .and_then(|o| o.remove(last));
            removed
                .map(|_| ())
                .ok_or_else(|| Error::not_found(format!("metadata {} not found", keys.join("/"))))
        })
    }

    fn edit_meta(
        &self,
        token: &WriteToken,
        f: impl FnOnce(&mut Value) -> Result<()>,
    ) -> Result<()> {
        self.store.check_index_room(0)?;
        let _w = self.state.write();
        let mut draft = self.draft(token)?;
        // A document over the value limit (written before it existed) may still shrink.
        let before = count_values(&draft.meta, usize::MAX);
        f(&mut draft.meta)?;
        if draft.meta.to_string().len() > MAX_META_BYTES {
            return Err(Error::too_large(format!(
                "metadata over {MAX_META_BYTES} bytes"
            )));
        }
        if count_values(&draft.meta, MAX_META_VALUES) > MAX_META_VALUES
            && count_values(&draft.meta, usize::MAX) > before
        {
            return Err(Error::too_large(format!(
                "metadata of more than {MAX_META_VALUES} JSON values"
            )));
        }
        let mut b = self.store.index().batch();
        b.put_record(CF_DRAFTS, &token.to_bytes(), &draft);
        self.store.commit_adding(b)
    }
}

/// Largest metadata document per object (16 MiB).
pub const MAX_META_BYTES: usize = 16 << 20;

/// Most JSON values in a metadata document: what a document takes decoded grows with its
/// values (7 million numbers are 14 MB of text and took a read 460 MB), and every read of the
/// metadata decodes it whole.
pub const MAX_META_VALUES: usize = 1 << 18;

/// Deepest nesting of a metadata document: a request body is parsed with serde_json's
/// recursion limit (128 arrays or objects deep, so 127 at most), and a value stored at a path of
/// keys is that many levels deeper; without this bound, `GET …/meta` could return a document
/// that `PUT …/meta` refuses.
pub const MAX_META_DEPTH: usize = 127;

/// How many arrays and objects deep `v` is (a scalar is 0).
fn nesting(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|c| (c, d + 1))),
            _ => continue,
        }
        deepest = deepest.max(d + 1);
    }
    deepest
}

/// The values in `v` (itself included), counting stops once past `limit`.
fn count_values(v: &Value, limit: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        if n > limit {
            break;
        }
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    n
}

const FILES_GUARD: &str = "the files tree changes only through files jobs";

/// `files` at the top of the metadata is the files tree: no metadata write reaches it.
fn guard_files(keys: &[String]) -> Result<()> {
    match keys.first().map(String::as_str) {
        Some("files") => Err(Error::invalid(FILES_GUARD)),
        _ => Ok(()),
    }
}

/// `path` split at its slashes; empty keys are dropped (`a//b` is `a/b`, `` is the root).
fn meta_keys(path: &str) -> Result<Vec<String>> {
    let keys: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    check_meta_keys(&keys)?;
    Ok(keys)
}

fn check_meta_keys(keys: &[String]) -> Result<()> {
    if keys.len() > 64 || keys.iter().any(|k| k.len() > 1024) {
        return Err(Error::invalid("metadata path too deep or too long"));
    }
    Ok(())
}

fn walk<'v>(v: &'v Value, keys: &[String]) -> Option<&'v Value> {
    keys.iter().try_fold(v, |v, k| v.get(k.as_str()))
}

fn walk_mut<'v>(v: &'v mut Value, keys: &[String]) -> Option<&'v mut Value> {
    keys.iter().try_fold(v, |v, k| v.get_mut(k.as_str()))
}

/// The slot at `keys`, creating objects on the way.
fn slot_mut<'v>(v: &'v mut Value, keys: &[String]) -> Result<&'v mut Value> {
    let mut cur = v;
    for k in keys {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        cur = cur
            .as_object_mut()
            .expect("object")
            .entry(k.clone())
            .or_insert(Value::Null);
    }
    Ok(cur)
}

/// Fills `lib_objects` from every object's record, for a store made before that index existed
/// (or whose marker is missing), and marks it built, all in `b`.
fn index_library_objects(idx: &cairn_store::Index, b: &mut Batch<'_>) -> Result<()> {
    for r in idx.scan(CF_OBJECTS, &[]) {
        let obj = ObjectRecord::decode(&r?.1)?;
        b.put(CF_LIB_OBJECTS, &lib_object_key(&obj.library, &obj.id), &[]);
    }
    b.put(CF_ENGINE, ENGINE_KEY_LIB_OBJECTS, &[1]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads of documents stored in more than `LARGE_META` bytes decode at most
    /// `LARGE_META_READS` at a time: one more is `busy` at once and changes nothing; small
    /// documents are never held back; a permit given back serves the next read.
    #[test]
    fn large_metadata_reads_are_limited_and_small_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let lib = e.create_library("t").unwrap();
        let (_, large) = e.create_object(&lib.id).unwrap();
        let (_, small) = e.create_object(&lib.id).unwrap();
        let text = "x".repeat(LARGE_META + 1);
        e.meta_set(&large.token, "big", serde_json::json!(text), false)
            .unwrap();
        e.meta_set(&small.token, "a", serde_json::json!(1), false)
            .unwrap();
        let (large, small) = (Qhit::Draft(large.token), Qhit::Draft(small.token));

        let held: Vec<_> = (0..LARGE_META_READS)
            .map(|_| e.large_meta_reads.try_acquire().unwrap())
            .collect();
        let err = e.meta_of(&large).unwrap_err();
        assert!(err.is(cairn_core::ErrorKind::Busy), "{err}");
        assert_eq!(e.meta_of(&small).unwrap()["a"], 1);
        drop(held);
        assert_eq!(e.meta_of(&large).unwrap()["big"], serde_json::json!(text));
        assert_eq!(
            e.large_meta_reads.available_permits(),
            LARGE_META_READS,
            "every read gives its permit back"
        );
    }

    /// Lookups in a directory stored in more than `LARGE_NODE` bytes go through its index and
    /// find every file, decoding no node of it; a name it lacks is not found.
    #[test]
    fn files_in_a_large_directory_are_found_through_its_index() {
        use crate::ops::{FilesJobRequest, RawOp};
        use cairn_core::FilePath;
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let lib = e.create_library("t").unwrap();
        let (_, draft) = e.create_object(&lib.id).unwrap();
        let ops = (0..12_000)
            .map(|i| RawOp {
                path: Some(format!("big/file-{i:05}")),
                size: Some(0),
                ..RawOp::default()
            })
            .collect();
        e.create_files_job(&draft.token, &FilesJobRequest::from_ops(ops))
            .unwrap();
        let (v, _) = e.finalize(&draft.token).unwrap();
        let q = Qhit::Version(v);
        let root = e.tree_root(&q).unwrap();
        let Some(Entry::Dir(big)) = e.load_node(&root).unwrap().entries.get("big").cloned() else {
            panic!("no directory big");
        };
        assert!(e.raw_node(&big).unwrap().len() > crate::bignode::LARGE_NODE);
        e.nodes.clear();
        for i in [0, 1, 5_999, 11_999] {
            let path = FilePath::parse(&format!("big/file-{i:05}")).unwrap();
            assert_eq!(e.open_file(&q, &path).unwrap().size, 0, "{path}");
        }
        assert!(e.nodes.get(&big).is_none(), "not decoded");
        assert!(e.large_nodes.get(&big).is_some(), "indexed");
        let missing = FilePath::parse("big/file-12000").unwrap();
        let err = e.open_file(&q, &missing).expect_err("no such file");
        assert!(err.is(cairn_core::ErrorKind::NotFound), "{err}");
    }

    /// A tree is walked for its parts one walk at a time (a walk decodes every directory
    /// whole): on the async routes another waits `idle_timeout` for its turn (not on a blocking
    /// thread), then is `busy`; a blocking caller is `busy` at once. The parts found are
    /// remembered by the tree's root, so the next request for them walks nothing and waits for
    /// no walk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn part_walks_run_one_at_a_time_and_are_remembered() {
        use crate::ops::{FilesJobRequest, RawOp};
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EngineConfig::new(dir.path());
        cfg.idle_timeout = std::time::Duration::from_millis(300);
        let e = Arc::new(Engine::open(cfg).unwrap());
        let lib = e.create_library("t").unwrap();
        let (_, draft) = e.create_object(&lib.id).unwrap();
        let ops = (0..3)
            .map(|i| RawOp {
                path: Some(format!("d{i}/f")),
                size: Some(0),
                ..RawOp::default()
            })
            .collect();
        e.create_files_job(&draft.token, &FilesJobRequest::from_ops(ops))
            .unwrap();
        let (v, _) = e.finalize(&draft.token).unwrap();
        let q = Qhit::Version(v);
        let walking = e.part_walk.clone().try_acquire_owned().unwrap();
        let started = std::time::Instant::now();
        let err = e
            .part_set_of(q)
            .await
            .err()
            .expect("another walk has the turn");
        assert!(err.is(cairn_core::ErrorKind::Busy), "{err}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        let err = e.parts(&q).expect_err("busy at once on a blocking thread");
        assert!(err.is(cairn_core::ErrorKind::Busy), "{err}");
        drop(walking);
        assert!(e.part_set_of(q).await.unwrap().list().is_empty());
        let _walking = e.part_walk.clone().try_acquire_owned().unwrap();
        assert_eq!(e.parts(&q).unwrap(), vec![], "remembered, not walked again");
        assert!(e.part_set_of(q).await.unwrap().list().is_empty());
    }
}
