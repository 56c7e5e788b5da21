//! The store: chunk writes with dedup and group-committed fsync, verified reads, parts, recovery.
//!
//! Write order for every acknowledgement: chunk bytes are appended to the open pack, the pack is
//! fsynced (one fsync covers every writer waiting at that moment), then one synced RocksDB batch
//! records chunk locations, the pack's committed length, refcounts and the caller's own records.
//! Only then does the caller reply. A crash at any point leaves either a fully indexed change or
//! pack bytes past the committed length, which [`Store::open`] truncates.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::record::Record;
use cairn_core::{Digest, Error, ErrorKind, Result};
use parking_lot::{Mutex, MutexGuard, RwLock};
use serde::{Deserialize, Serialize};

use crate::chunker::ChunkParams;
use crate::flusher::{Flusher, Spare};
use crate::index::{
    Batch, CfKind, Index, CF_CHUNKS, CF_CHUNK_REFS, CF_PACKS, CF_PACK_LEN, CF_PARTS, CF_PART_REFS,
    CF_STORE, STORE_CFS,
};
use crate::pack::{
    encode_record_header, sync_dir, ChunkLoc, PackFile, PackId, CODEC_RAW, CODEC_RAW_OUTBOARD,
    HEADER_LEN, RECORD_HEADER_LEN,
};
use crate::staging::{window_mem, Staging, Window, BLOCK};

/// A chunk as referenced by parts and upload jobs: its hash and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Digest,
    pub len: u32,
}

impl Record for ChunkLoc {
    const NAME: &'static str = "chunk location";
}

/// Per-pack state in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackState {
    /// Sealed: full, fsynced, never written again.
    Sealed,
    /// Repacked away: its live chunks moved; the file is deleted (again, if a crash interrupted).
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackInfo {
    pub state: PackState,
}

impl Record for PackInfo {
    const NAME: &'static str = "pack info";
}

/// An immutable part: the ordered chunks of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub digest: Digest,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl Record for PartRecord {
    const NAME: &'static str = "part";
}

/// blake3 key-derivation context of part digests: keeps them apart from every plain blake3
/// (chunk names, file hashes), so no part id can be mistaken for the hash of some bytes.
pub const PART_DIGEST_CONTEXT: &str = "cairn 2026-11-22 part digest: chunk list v1";

/// The digest that names a part: blake3 (in key-derivation mode) of its chunk list, each chunk as
/// its 32-byte hash then its length (u32 little-endian). Each chunk hash commits to the chunk's
/// bytes, so the digest commits to the part's bytes as firmly as hashing them would, and it costs
/// 36 bytes per chunk to compute instead of a third pass of BLAKE3 over every byte ingested.
/// (Parts sealed before 2026-11-22 keep the blake3 of their bytes; both kinds are only names.)
pub fn part_digest(chunks: &[ChunkRef]) -> Digest {
    let mut h = blake3::Hasher::new_derive_key(PART_DIGEST_CONTEXT);
    for c in chunks {
        h.update(c.hash.as_bytes());
        h.update(&c.len.to_le_bytes());
    }
    h.finalize().into()
}

/// The index key of a part: digest (32) | size (u64 BE).
pub fn part_key(digest: &Digest, size: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(digest.as_bytes());
    k[32..].copy_from_slice(&size.to_be_bytes());
    k
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// A pack is sealed once it reaches this size.
    pub pack_target_size: u64,
    pub chunking: ChunkParams,
    /// Open even when packs the index has data in are missing (their chunks then read as
    /// `corrupt`), so that fsck can name what they held and the versions can be deleted. By
    /// default such a store refuses to open: serving it would hide the loss, and appending to a
    /// re-created pack would make it worse.
    pub allow_missing_packs: bool,
    /// Write packs with `O_DIRECT` (true, the default) or through the page cache (false).
    /// Both fsync before anything is acknowledged. Direct writes spare the kernel's copy into
    /// the page cache: the same ingest for about a quarter less server CPU on the benchmark VM
    /// once the write windows sit on huge pages (docs/performance.md, fifteenth session).
    /// Cached writes can win on a disk that direct requests serve badly; they also leave fresh
    /// uploads in the page cache.
    pub direct_writes: bool,
    /// Bytes of the pack file system kept free for the index: appends stop there with
    /// `no_space` (0: none kept). See [`crate::room`].
    pub min_free: u64,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            pack_target_size: 256 << 20,
            chunking: ChunkParams::default(),
            allow_missing_packs: false,
            direct_writes: true,
            min_free: 128 << 20,
        }
    }
}

/// The open pack and its write buffer ([`crate::staging`]): records reach the file in whole
/// blocks, at the latest when a commit syncs them.
struct Writer {
    pack: Arc<PackFile>,
    staging: Staging,
}

impl Writer {
    fn new(pack: PackFile, len: u64) -> Writer {
        let block = pack.block();
        Writer {
            pack: Arc::new(pack),
            staging: Staging::new(len, block),
        }
    }

    /// The offset the next record gets.
    fn len(&self) -> u64 {
        self.staging.end()
    }

    /// Whether the open pack holds no record yet (records start at the first block after the
    /// header).
    fn is_fresh(&self) -> bool {
        self.len() <= self.staging.block()
    }

    /// Stages `bytes`; windows it fills go to `full`, to be written once the lock is released.
    fn append(&mut self, bytes: &[u8], full: &mut Vec<(Arc<PackFile>, Window)>, spare: &Spare) {
        let pack = &self.pack;
        self.staging.append(bytes, &mut |w| {
            full.push((pack.clone(), w));
            spare.lock().pop().unwrap_or_else(window_mem)
        });
    }

    /// Takes out everything staged (padded to a block) for the caller to write outside the lock;
    /// it is counted in `flusher` like a full window.
    fn take_staged(&mut self, flusher: &Flusher) -> Option<(Arc<PackFile>, Window)> {
        let spare = flusher.spare();
        let w = self
            .staging
            .take(|| spare.lock().pop().unwrap_or_else(window_mem))?;
        Some(flusher.count_one(self.pack.clone(), w))
    }

    /// Writes out everything staged (padded to a block); returns the pack's end after it.
    fn flush(&mut self) -> Result<u64> {
        let pack = &self.pack;
        self.staging.flush(&mut |at, b| pack.write_blocks(at, b))?;
        Ok(self.len())
    }
}

/// The error of every commit after a pack fsync failed.
fn sync_failed(why: &str) -> Error {
    Error::internal(format!(
        "a pack fsync failed ({why}); nothing written since the last one that succeeded is \
         acknowledged: check the disk and restart the server, which recovers from there"
    ))
}

/// The content-addressed chunk store and its index.
pub struct Store {
    cfg: StoreConfig,
    pack_dir: PathBuf,
    index: Index,
    writer: Mutex<Writer>,
    /// Writes the windows the writer fills, off the appenders' threads.
    flusher: Flusher,
    /// Keeps `StoreConfig::min_free` of the disk for the index.
    room: crate::room::Room,
    /// Held by [`Store::commit_adding`] from its check through its write.
    adding: Mutex<()>,
    /// Pack and length known durable; the lock also serialises fsyncs (group commit).
    synced: Mutex<(PackId, u64)>,
    /// Why a pack fsync failed, once one has: from then on nothing more is made durable or
    /// acknowledged until a restart ([`Store::sync_pack`]).
    sync_failed: std::sync::OnceLock<String>,
    /// Makes the step in which gc decides chunks are dead and deletes them exclusive with
    /// commits that bring chunk locations into the index (read: commits; write: gc).
    pub(crate) chunk_commits: RwLock<()>,
    /// Makes the next pack fsync fail (tests).
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
    /// Called by gc once it has decided which chunks are dead, before it deletes them (tests).
    #[cfg(test)]
    pub(crate) gc_decided: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    readers: RwLock<HashMap<PackId, Arc<PackFile>>>,
    /// Packs deleted by repack: never cached again (a reader racing with the repack may still
    /// open the old file once, then retries at the chunk's new location).
    retired: Mutex<HashSet<PackId>>,
    /// Chunks an in-flight write session relies on without holding a reference yet; gc skips them.
    pins: Mutex<HashMap<Digest, u32>>,
    /// Packs holding appends of write sessions not yet committed; repack skips them.
    pack_users: Mutex<HashMap<PackId, u32>>,
    /// Decoded chunk lists of recently read parts.
    part_cache: crate::cache::Cache<[u8; 40], Vec<ChunkRef>>,
    /// Chunk locations of recent streaming reads, so that the next read of the same chunk can
    /// be served on an async thread without an index lookup that might block.
    loc_cache: crate::cache::Cache<Digest, ChunkLoc>,
    /// One gc at a time.
    pub(crate) gc_lock: Mutex<()>,
    /// Held by anything that checks-then-references a part or tree node, and by gc while it
    /// deletes: a thing gc decided is dead cannot be revived in between.
    ref_guard: Mutex<()>,
}

impl Store {
    /// Opens (or creates) a store and recovers from any crash; `extra_cfs` are the upper layers'
    /// column families, so their records can share batches with the store's.
    pub fn open(cfg: StoreConfig, extra_cfs: &[(&'static str, CfKind)]) -> Result<Store> {
        let pack_dir = cfg.dir.join("packs");
        std::fs::create_dir_all(&pack_dir).map_err(|e| Error::io("create data dir", e))?;
        let cfs: Vec<_> = STORE_CFS.iter().chain(extra_cfs).copied().collect();
        let index = Index::open(&cfg.dir.join("index"), &cfs)?;
        // Before anything is written to it: an index that has never been opened (no chunking
        // settled, no chunk, no pack; a store from before the chunking record has chunks) must
        // not meet packs holding data, or recovery would delete them all as never indexed.
        let fresh = index.get(CF_STORE, CHUNKING_KEY)?.is_none()
            && index.scan(CF_CHUNKS, &[]).next().is_none()
            && index.scan(CF_PACK_LEN, &[]).next().is_none();
        if fresh {
            refuse_orphaned_packs(&cfg.dir, &pack_dir)?;
        } else {
            refuse_packs_newer_than_index(&cfg.dir, &index, &pack_dir)?;
        }
        let mut cfg = cfg;
        cfg.chunking = settle_chunking(&index, cfg.chunking)?;
        let last = recover_packs(&index, &pack_dir, cfg.allow_missing_packs)?;
        let (pack, len) = open_writer(&index, &pack_dir, last, cfg.pack_target_size)?;
        let pack = writing(pack, cfg.direct_writes);
        let id = pack.id;
        let room = crate::room::Room::new(pack_dir.clone(), cfg.min_free);
        Ok(Store {
            room,
            adding: Mutex::new(()),
            cfg,
            pack_dir,
            index,
            writer: Mutex::new(Writer::new(pack, len)),
            flusher: Flusher::start(),
            synced: Mutex::new((id, len)),
            sync_failed: std::sync::OnceLock::new(),
            chunk_commits: RwLock::new(()),
            #[cfg(test)]
            fail_next_sync: false.into(),
            #[cfg(test)]
            gc_decided: Mutex::new(None),
            readers: RwLock::new(HashMap::new()),
            retired: Mutex::new(HashSet::new()),
            pins: Mutex::new(HashMap::new()),
            pack_users: Mutex::new(HashMap::new()),
            gc_lock: Mutex::new(()),
            part_cache: crate::cache::Cache::new(16 << 20, |c: &Vec<ChunkRef>| {
                64 + c.len() * std::mem::size_of::<ChunkRef>()
            }),
            // An entry is a 32-byte key and a 24-byte location, plus the map's overhead.
            loc_cache: crate::cache::Cache::new(8 << 20, |_| 96),
            ref_guard: Mutex::new(()),
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Refuses (`no_space`) an index write that adds about `bytes`, when it could take the disk
    /// below half of `StoreConfig::min_free`: the rest is for deletes and gc ([`crate::room`]).
    pub fn check_index_room(&self, bytes: u64) -> Result<()> {
        self.room.check_index(bytes, self.unflushed_index_bytes())
    }

    /// What will take room on the disk without asking [`crate::room`] again: the index's
    /// unflushed bytes, and pack windows appended but not written yet (the free space the file
    /// system reports does not count them: 4 uploads went 16 MB past the reserve), at most the
    /// queued windows and the one filling.
    fn unwritten_bytes(&self) -> u64 {
        let windows = self.flusher.backlog() as u64 + 1;
        self.unflushed_index_bytes() + windows * crate::staging::STAGING as u64
    }

    /// Bytes in the index's memtables: written to its log, and to be written to its tables.
    fn unflushed_index_bytes(&self) -> u64 {
        self.index
            .property_values("rocksdb.cur-size-all-mem-tables")
            .sum()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn pack_dir(&self) -> &Path {
        &self.pack_dir
    }

    pub fn chunking(&self) -> ChunkParams {
        self.cfg.chunking
    }

    /// Starts a write session: chunks added to it become durable and referenced at its commit.
    pub fn session(&self) -> WriteSession<'_> {
        WriteSession {
            store: self,
            new: HashMap::new(),
            pinned: Vec::new(),
            refs: Vec::new(),
            healed: Vec::new(),
            verified: HashSet::new(),
            end: None,
            packs: Vec::new(),
            wait_with: None,
        }
    }

    /// Takes the guard that orders check-then-reference against gc's deletions.
    pub fn ref_guard(&self) -> MutexGuard<'_, ()> {
        self.ref_guard.lock()
    }

    fn append(&self, hash: &Digest, outboard: &[u8], data: &[u8]) -> Result<(ChunkLoc, u64)> {
        self.append_as(hash, outboard, &[data], None)
    }

    /// Appends a record; when `user` is given, the pack is registered in it (once) as holding
    /// that session's uncommitted bytes before the bytes are written.
    fn append_as(
        &self,
        hash: &Digest,
        outboard: &[u8],
        data: &[&[u8]],
        user: Option<&mut Vec<PackId>>,
    ) -> Result<(ChunkLoc, u64)> {
        let bytes = RECORD_HEADER_LEN
            + (outboard.len() + data.iter().map(|d| d.len()).sum::<usize>()) as u64;
        self.room.check(bytes, || self.unwritten_bytes())?;
        let mut full = Vec::new();
        let appended = self.append_staged(hash, outboard, data, user, &mut full);
        // The pack writer thread takes the windows this record filled.
        self.flusher.submit(full);
        appended
    }

    fn append_staged(
        &self,
        hash: &Digest,
        outboard: &[u8],
        data: &[&[u8]],
        user: Option<&mut Vec<PackId>>,
        full: &mut Vec<(Arc<PackFile>, Window)>,
    ) -> Result<(ChunkLoc, u64)> {
        let data_len: usize = data.iter().map(|p| p.len()).sum();
        let mut w = self.writer.lock();
        self.flusher.check()?;
        let rec = RECORD_HEADER_LEN + outboard.len() as u64 + data_len as u64;
        if !w.is_fresh() && w.len() + rec > self.cfg.pack_target_size {
            self.roll(&mut w)?;
        }
        if let Some(packs) = user {
            if !packs.contains(&w.pack.id) {
                packs.push(w.pack.id);
                *self.pack_users.lock().entry(w.pack.id).or_default() += 1;
            }
        }
        let len = u32::try_from(data_len).map_err(|_| Error::too_large("chunk over 4 GiB"))?;
        debug_assert_eq!(outboard.len() as u32, crate::outboard::outboard_len(len));
        let codec = match outboard.is_empty() {
            true => CODEC_RAW,
            false => CODEC_RAW_OUTBOARD,
        };
        let loc = ChunkLoc {
            pack: w.pack.id,
            offset: w.len(),
            len,
            outboard: outboard.len() as u32,
        };
        let spare = self.flusher.spare();
        w.append(&encode_record_header(hash, len, codec), full, spare);
        w.append(outboard, full, spare);
        for piece in data {
            w.append(piece, full, spare);
        }
        // Counted before the lock is released, so a sync that flushes after this waits for them.
        self.flusher.count(full);
        Ok((loc, w.len()))
    }

    /// Full windows waiting for the pack writer thread. An appender on an async runtime checks
    /// this before appending more and, when it is long, waits off the runtime with
    /// [`Store::wait_write_backlog`]: that is the back-pressure from the disk to the socket.
    pub fn write_backlog(&self) -> usize {
        self.flusher.backlog()
    }

    /// Whether appending about `bytes` more (records included) could seal the open pack, which
    /// waits for an fsync: an appender on an async runtime makes such an append off the runtime.
    pub fn may_roll(&self, bytes: u64) -> bool {
        let w = self.writer.lock();
        w.len().saturating_add(bytes) > self.cfg.pack_target_size
    }

    /// Blocks until at most `n` full windows wait for the pack writer thread.
    pub fn wait_write_backlog(&self, n: usize) {
        self.flusher.wait_backlog_below(n)
    }

    fn wait_written(&self) -> Result<()> {
        self.flusher.wait_written()
    }

    /// Seals the open pack (fsync, mark sealed) and starts the next one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        w.flush()?;
        self.wait_written()?;
        self.sync_pack(&w.pack)?;
        let old = w.pack.id;
        let next = writing(
            PackFile::create(&self.pack_dir, PackId(old.0 + 1))?,
            self.cfg.direct_writes,
        );
        let mut b = self.index.batch();
        b.put_record(
            CF_PACKS,
            &old.0.to_be_bytes(),
            &PackInfo {
                state: PackState::Sealed,
            },
        );
        b.put(CF_STORE, PACK_HIGH_KEY, &next.id.0.to_be_bytes());
        if let Err(e) = self.index.write(b, true) {
            // Leave no half-made pack behind, or every later roll would fail on it.
            let _ = std::fs::remove_file(&next.path);
            return Err(e);
        }
        *w = Writer::new(next, HEADER_LEN);
        Ok(())
    }

    /// Makes every pack byte up to `(pack, end)` durable. Whoever holds the sync lock fsyncs all
    /// that has been appended so far, so concurrent committers share one fsync.
    pub(crate) fn sync_through(&self, pack: PackId, end: u64) -> Result<()> {
        let mut synced = self.synced.lock();
        if (synced.0, synced.1) >= (pack, end) {
            return Ok(());
        }
        // No I/O under the writer lock: appenders (on the async runtime) never wait for the disk.
        let (file, len, staged) = {
            let mut w = self.writer.lock();
            let staged = w.take_staged(&self.flusher);
            (w.pack.clone(), w.len(), staged)
        };
        if let Some((pack, window)) = staged {
            self.flusher.write_now(pack, window)?;
        }
        self.wait_written()?;
        if file.id > pack {
            // The pack was sealed, and fsynced, by `roll`.
            return Ok(());
        }
        self.sync_pack(&file)?;
        *synced = (file.id, len);
        Ok(())
    }

    /// fsyncs `pack`, unless one has failed before. A failed fsync is never retried: the kernel
    /// reports a write-back error once and may mark the pages it could not write clean, so a
    /// second fsync can succeed while bytes appended before it are lost, and acknowledging them
    /// then would be a lie. The index holds nothing written after the last fsync that
    /// succeeded, so a restart recovers from there (reliability.md).
    fn sync_pack(&self, pack: &PackFile) -> Result<()> {
        if let Some(why) = self.sync_failed.get() {
            return Err(sync_failed(why));
        }
        let synced = pack.sync_data();
        #[cfg(test)]
        let synced = match self
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            true => Err(Error::io(
                "fsync pack",
                std::io::Error::from_raw_os_error(5),
            )),
            false => synced,
        };
        if let Err(e) = &synced {
            let _ = self.sync_failed.set(e.reason.clone());
            tracing::error!(pack = pack.id.0, error = %e, "a pack fsync failed: nothing more is acknowledged until the server restarts");
            return Err(sync_failed(&e.reason));
        }
        synced
    }

    /// Asks the kernel to drop the packs' clean pages from the page cache, so that fsck's reads
    /// check what the disk holds: a copy still cached (hot media, or written through the
    /// cache) would verify although the sectors under it had rotted (review 33). Committed
    /// bytes were fsynced, so their pages are clean and can go; reads refill the cache. Best
    /// effort: a pack that cannot be opened or advised is read as it is.
    pub(crate) fn drop_cached_packs(&self) {
        let Ok(ids) = pack_files(&self.pack_dir) else {
            return;
        };
        for id in ids {
            if let Ok(f) = std::fs::File::open(self.pack_dir.join(id.file_name())) {
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
    }

    /// Pack files on disk that are neither in the index nor the pack being appended to.
    pub fn orphan_packs(&self) -> Result<Vec<String>> {
        // The directory first, the open pack after: a pack rolled to in between is at or
        // above the open one read, never taken for an orphan (review 33: listed first the
        // other way, a roll in between made a false orphan and fsck exit 1).
        let files = pack_files(&self.pack_dir)?;
        let open = self.writer.lock().pack.id;
        let mut out = Vec::new();
        for id in files {
            let key = id.0.to_be_bytes();
            let known = self.index.get(CF_PACK_LEN, &key)?.is_some()
                || self.index.get(CF_PACKS, &key)?.is_some();
            if id < open && !known {
                out.push(id.file_name());
            }
        }
        Ok(out)
    }

    fn pack_reader(&self, id: PackId) -> Result<Arc<PackFile>> {
        if let Some(p) = self.readers.read().get(&id) {
            return Ok(p.clone());
        }
        let p = Arc::new(PackFile::open(&self.pack_dir, id, false)?);
        if !self.retired.lock().contains(&id) {
            self.readers.write().insert(id, p.clone());
        }
        Ok(p)
    }

    pub(crate) fn forget_pack(&self, id: PackId) {
        self.retired.lock().insert(id);
        self.readers.write().remove(&id);
    }

    pub fn chunk_loc(&self, hash: &Digest) -> Result<Option<ChunkLoc>> {
        self.index.get_record(CF_CHUNKS, hash.as_bytes())
    }

    /// Where the index says `chunk` is; an absent or disagreeing entry is damage.
    pub fn locate(&self, chunk: &ChunkRef) -> Result<ChunkLoc> {
        located(chunk, self.chunk_loc(&chunk.hash)?)
    }

    /// Where `chunk` was when a read last looked it up (see [`Store::locate_and_remember`]), with
    /// no I/O. It may be stale after gc moved the chunk: reads verify what they find there.
    pub fn locate_cached(&self, chunk: &ChunkRef) -> Option<ChunkLoc> {
        let loc = *self.loc_cache.get(&chunk.hash)?;
        (loc.len == chunk.len).then_some(loc)
    }

    /// [`Store::locate`], remembered for [`Store::locate_cached`].
    pub fn locate_and_remember(&self, chunk: &ChunkRef) -> Result<ChunkLoc> {
        let loc = self.locate(chunk)?;
        self.loc_cache.insert(&chunk.hash, loc);
        Ok(loc)
    }

    pub(crate) fn forget_location(&self, hash: &Digest) {
        self.loc_cache.remove(hash);
    }

    /// Bytes `[start, start+len)` of the chunk at `loc`, verified: only the 16 KiB groups that
    /// cover them when the chunk has an outboard, else the whole chunk; looked up again once if
    /// gc moved the chunk meanwhile.
    pub fn read_piece(
        &self,
        chunk: &ChunkRef,
        loc: ChunkLoc,
        start: u64,
        len: u64,
    ) -> Result<bytes::Bytes> {
        self.read_located(chunk, loc, |p, l| {
            p.read_chunk_span(l, &chunk.hash, start, len)
        })
    }

    /// [`Store::read_piece`] only if it needs no disk read: `None` otherwise, and also on any
    /// error (the waiting read that follows reports it, after looking the chunk up again).
    pub fn read_piece_cached(
        &self,
        chunk: &ChunkRef,
        loc: ChunkLoc,
        start: u64,
        len: u64,
    ) -> Option<bytes::Bytes> {
        let pack = self.readers.read().get(&loc.pack).cloned()?;
        pack.read_chunk_span_cached(&loc, &chunk.hash, start, len)
            .ok()
            .flatten()
    }

    /// Runs `read` on the chunk's record at `loc`; if that fails, gc may have repacked the
    /// chunk between the lookup and the read, so it looks again once.
    fn read_located<T>(
        &self,
        chunk: &ChunkRef,
        loc: ChunkLoc,
        read: impl Fn(&PackFile, &ChunkLoc) -> Result<T>,
    ) -> Result<T> {
        match self.pack_reader(loc.pack).and_then(|p| read(&p, &loc)) {
            Ok(v) => Ok(v),
            Err(e) => {
                let again = self
                    .chunk_loc(&chunk.hash)?
                    .filter(|l| *l != loc)
                    .ok_or(e)?;
                read(&*self.pack_reader(again.pack)?, &again)
            }
        }
    }

    /// Reads one chunk, verified against its blake3 hash.
    pub fn read_chunk(&self, chunk: &ChunkRef) -> Result<bytes::Bytes> {
        let loc = self.locate(chunk)?;
        self.read_located(chunk, loc, |p, l| p.read_chunk(l, &chunk.hash))
    }

    /// Checks one chunk's record whole, its outboard included; returns its length.
    pub fn check_chunk(&self, chunk: &ChunkRef) -> Result<u64> {
        let loc = self.locate(chunk)?;
        self.read_located(chunk, loc, |p, l| p.check_record(l, &chunk.hash))
    }

    /// [`Store::check_chunk`] if the record is in the page cache, `Ok(None)` if checking it
    /// would wait for the disk.
    pub fn check_chunk_cached(&self, chunk: &ChunkRef) -> Result<Option<u64>> {
        let loc = self.locate(chunk)?;
        self.read_located(chunk, loc, |p, l| p.check_record_cached(l, &chunk.hash))
    }

    pub fn part(&self, digest: &Digest, size: u64) -> Result<Option<PartRecord>> {
        self.index.get_record(CF_PARTS, &part_key(digest, size))
    }

    /// A part's chunk list, decoded once and shared (parts are immutable).
    pub fn part_chunks(&self, digest: &Digest, size: u64) -> Result<Option<Arc<Vec<ChunkRef>>>> {
        let key = part_key(digest, size);
        self.part_cache.get_or_load(&key, || {
            let Some(p) = self.part(digest, size)? else {
                return Ok(None);
            };
            let sum: u64 = p.chunks.iter().map(|c| u64::from(c.len)).sum();
            if sum != size || p.digest != *digest {
                return Err(Error::corrupt(format!(
                    "part {} record lists {sum} bytes of chunks for {size}",
                    digest.short()
                )));
            }
            Ok(Some(p.chunks))
        })
    }

    /// Adds to `batch` a reference to the part made of `chunks`, creating its record (and its
    /// chunk references) when it is new. The caller must hold [`Store::ref_guard`] until the
    /// batch is written.
    pub fn reference_part(
        &self,
        batch: &mut Batch<'_>,
        part: &PartRecord,
        _guard: &MutexGuard<'_, ()>,
    ) -> Result<()> {
        let key = part_key(&part.digest, part.size);
        if !self.index.exists(CF_PARTS, &key)? {
            batch.put_record(CF_PARTS, &key, part);
            for c in &part.chunks {
                batch.add(CF_CHUNK_REFS, c.hash.as_bytes(), 1);
            }
        }
        batch.add(CF_PART_REFS, &key, 1);
        Ok(())
    }

    /// Adds to `batch` the release of one reference to a part (gc frees it at zero).
    pub fn release_part(&self, batch: &mut Batch<'_>, digest: &Digest, size: u64) {
        batch.add(CF_PART_REFS, &part_key(digest, size), -1);
    }

    /// Adds to `batch` the release of chunk references taken by a [`WriteSession`].
    pub fn release_chunks<'c>(
        &self,
        batch: &mut Batch<'_>,
        chunks: impl IntoIterator<Item = &'c ChunkRef>,
    ) {
        for c in chunks {
            batch.add(CF_CHUNK_REFS, c.hash.as_bytes(), -1);
        }
    }

    /// Writes a batch durably.
    pub fn commit(&self, batch: Batch<'_>) -> Result<()> {
        self.index.write(batch, true)
    }

    /// [`Store::commit`] of a batch that adds to the index (metadata, drafts, files jobs,
    /// versions): refused (`no_space`) when its size would take the disk below what is kept
    /// for deletes and gc ([`Store::check_index_room`]).
    pub fn commit_adding(&self, batch: Batch<'_>) -> Result<()> {
        // One at a time: each check sees the log of the write before it.
        let _one = self.adding.lock();
        self.check_index_room(batch.size_in_bytes())?;
        self.index.write(batch, true)
    }

    /// Flushes the index memtables (clean shutdown; not needed for durability).
    pub fn flush(&self) -> Result<()> {
        self.index.flush()
    }

    pub(crate) fn open_pack_id(&self) -> PackId {
        self.writer.lock().pack.id
    }

    /// Seals the open pack now, as if it were full, when `seal(id, len)` says so and it holds
    /// any record; returns whether it did. (gc: a mostly dead open pack can then be repacked.)
    pub(crate) fn seal_open_pack_if(&self, seal: impl FnOnce(PackId, u64) -> bool) -> Result<bool> {
        let mut w = self.writer.lock();
        if w.is_fresh() || !seal(w.pack.id, w.len()) {
            return Ok(false);
        }
        self.roll(&mut w)?;
        Ok(true)
    }

    pub(crate) fn pins(&self) -> MutexGuard<'_, HashMap<Digest, u32>> {
        self.pins.lock()
    }

    /// The open pack and its end, if no write session holds uncommitted appends in it: every
    /// record below that end is then committed or abandoned, and later appends go above it.
    pub(crate) fn quiet_open_pack(&self) -> Option<(PackId, u64)> {
        let w = self.writer.lock();
        let busy = self
            .pack_users
            .lock()
            .get(&w.pack.id)
            .is_some_and(|&n| n > 0);
        (!busy).then(|| (w.pack.id, w.len()))
    }

    /// Packs that hold uncommitted appends of some write session.
    pub(crate) fn packs_in_use(&self) -> HashSet<PackId> {
        self.pack_users
            .lock()
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Appends a verified chunk's data to the open pack (with a fresh outboard), not yet
    /// durable: the caller syncs through the returned end before the index names it.
    pub(crate) fn append_unsynced(&self, hash: &Digest, data: &[u8]) -> Result<(ChunkLoc, u64)> {
        let (_, outboard) = crate::outboard::hash_with_outboard(data);
        self.append(hash, &outboard, data)
    }
}

/// Chunks written (or found) by one upload request, made durable and referenced by [`commit`].
///
/// [`commit`]: WriteSession::commit
pub struct WriteSession<'s> {
    store: &'s Store,
    new: HashMap<Digest, ChunkLoc>,
    pinned: Vec<Digest>,
    refs: Vec<Digest>,
    /// Chunks the index had, but whose stored copy failed its check: written again, and the
    /// index moved to the new copy at commit.
    healed: Vec<Digest>,
    /// Stored chunks this session found intact (and pinned): a chunk repeated within one
    /// upload (zeros, a disk image) is read back once.
    verified: HashSet<Digest>,
    end: Option<(PackId, u64)>,
    /// Packs this session appended to (registered in the store's `pack_users`).
    packs: Vec<PackId>,
    /// Runs a read that waits for the disk (see [`WriteSession::wait_with`]).
    wait_with: Option<Waiter>,
}

/// Runs a closure that may wait for the disk where that stalls nothing else (an async caller
/// hands its thread's other work over first).
pub type Waiter = fn(&mut dyn FnMut());

impl WriteSession<'_> {
    /// Has every disk read this session needs that the page cache cannot serve (checking a
    /// stored copy of a chunk that arrived again) run through `waiter`. Without one, such
    /// reads run on the calling thread.
    pub fn wait_with(&mut self, waiter: Waiter) {
        self.wait_with = Some(waiter);
    }

    /// Stores one chunk unless the store already has it; returns its reference.
    pub fn add_chunk(&mut self, data: &[u8]) -> Result<ChunkRef> {
        self.add_chunk_pieces(&[data])
    }

    /// [`WriteSession::add_chunk`] of a chunk given as the pieces it arrived in, in order (the
    /// chunker's output: slices of request frames, copied once, into the pack's write buffer).
    pub fn add_chunk_pieces(&mut self, data: &[&[u8]]) -> Result<ChunkRef> {
        let len: usize = data.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| Error::too_large("chunk over 4 GiB"))?;
        // One pass yields the name and the outboard (wasted only when the chunk is a duplicate).
        let (hash, outboard) = crate::outboard::hash_with_outboard_pieces(data);
        if !self.new.contains_key(&hash) && !self.stored_intact(&hash, len)? {
            let (loc, end) = self
                .store
                .append_as(&hash, &outboard, data, Some(&mut self.packs))?;
            self.end = self.end.max(Some((loc.pack, end)));
            self.new.insert(hash, loc);
        }
        self.refs.push(hash);
        Ok(ChunkRef { hash, len })
    }

    /// Whether the store holds `hash` intact, in which case this session references that copy
    /// (pinned against gc). The copy is read back and verified first: bytes a client sent are
    /// acknowledged, so they must never be deduplicated onto a copy that cannot be read (a
    /// flipped bit on disk, a lost pack). A copy that fails is replaced by the new one, which
    /// heals every file that shares the chunk.
    /// Only a copy that is `corrupt` (damaged, or in a lost pack) is replaced; any other error
    /// (a failed read) fails the request, which the client retries.
    fn stored_intact(&mut self, hash: &Digest, len: u32) -> Result<bool> {
        if self.verified.contains(hash) {
            return Ok(true); // checked (and pinned) at its first occurrence in this session
        }
        if !self.pin_if_stored(hash)? {
            return Ok(false);
        }
        match self.check_stored(&ChunkRef { hash: *hash, len }) {
            Ok(_) => {
                self.verified.insert(*hash);
                Ok(true)
            }
            Err(e) if e.kind == ErrorKind::Corrupt => {
                tracing::warn!(chunk = %hash.short(), error = %e, "a stored chunk failed its check; storing the copy just received");
                self.healed.push(*hash);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks the stored copy of `chunk`: from the page cache where it can, else through the
    /// session's waiter.
    fn check_stored(&self, chunk: &ChunkRef) -> Result<u64> {
        let Some(waiter) = self.wait_with else {
            return self.store.check_chunk(chunk);
        };
        if let Some(n) = self.store.check_chunk_cached(chunk)? {
            return Ok(n);
        }
        let mut checked = None;
        waiter(&mut || checked = Some(self.store.check_chunk(chunk)));
        checked.unwrap_or_else(|| Err(Error::internal("a waiter did not run its read")))
    }

    /// Pins `hash` and reports whether the index has it (atomically with respect to gc).
    fn pin_if_stored(&mut self, hash: &Digest) -> Result<bool> {
        let mut pins = self.store.pins();
        if !self.store.index.exists(CF_CHUNKS, hash.as_bytes())? {
            return Ok(false);
        }
        *pins.entry(*hash).or_default() += 1;
        self.pinned.push(*hash);
        Ok(true)
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Makes the session's chunks durable, then writes `batch` (the caller's records) together
    /// with the chunk locations and one reference per chunk added.
    pub fn commit(mut self, mut batch: Batch<'_>) -> Result<()> {
        if let Some((pack, end)) = self.end {
            self.store.sync_through(pack, end)?;
        }
        for (hash, loc) in &self.new {
            batch.put_record(CF_CHUNKS, hash.as_bytes(), loc);
            batch.max(CF_PACK_LEN, &loc.pack.0.to_be_bytes(), loc.end());
        }
        for hash in &self.refs {
            batch.add(CF_CHUNK_REFS, hash.as_bytes(), 1);
        }
        // Not while gc decides and deletes dead chunks: a chunk this session wrote itself is
        // not pinned, and another copy of it may be dead (review 30: gc's delete, committed
        // after this, took this session's location and reference with it).
        let no_gc = self.store.chunk_commits.read();
        self.store.commit(batch)?;
        drop(no_gc);
        for hash in &self.healed {
            self.store.forget_location(hash);
        }
        self.refs.clear();
        Ok(())
    }
}

impl Drop for WriteSession<'_> {
    fn drop(&mut self) {
        let mut users = self.store.pack_users.lock();
        for id in self.packs.drain(..) {
            if let Some(n) = users.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    users.remove(&id);
                }
            }
        }
        drop(users);
        let mut pins = self.store.pins();
        for h in self.pinned.drain(..) {
            if let Some(n) = pins.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&h);
                }
            }
        }
    }
}

const CHUNKING_KEY: &[u8] = b"chunking";

/// A new, empty index next to pack files that hold data: the index was deleted, lost, or
/// replaced by one from elsewhere. Refused, because recovery would delete every such pack as
/// never indexed. (The record that settles the chunking is written on a store's first open,
/// before its first pack exists, so a store's own first crash never gets here.)
fn refuse_orphaned_packs(dir: &Path, pack_dir: &Path) -> Result<()> {
    let mut held = (0usize, 0u64);
    for id in pack_files(pack_dir)? {
        let len = std::fs::metadata(pack_dir.join(id.file_name()))
            .map_err(|e| Error::io("stat pack", e))?
            .len();
        if len > HEADER_LEN {
            held = (held.0 + 1, held.1 + len);
        }
    }
    match held {
        (0, _) => Ok(()),
        (n, bytes) => Err(Error::corrupt(format!(
            "the index in {} is new or empty, but {} holds {n} pack files with data ({bytes} \
             bytes): the index was lost or replaced. Cairn will not open this store (recovery \
             would discard those packs as never indexed); restore the index from the backup \
             the packs belong to",
            dir.join("index").display(),
            pack_dir.display()
        ))),
    }
}

/// The highest pack id this store has created (`CF_STORE`), recorded in the batch that starts
/// using a new pack; a pack is created just before, so a crash can leave at most the next id on
/// disk unrecorded.
const PACK_HIGH_KEY: &[u8] = b"pack_high";

/// The highest pack id the index knows of: its record of created packs, or (for a store from
/// before that record) the packs it has sealed, retired or committed data in; and whether the
/// record was there.
fn known_pack_high(index: &Index) -> Result<(u64, bool)> {
    let recorded = index
        .get(CF_STORE, PACK_HIGH_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map(u64::from_be_bytes);
    let mut high = recorded.unwrap_or(0);
    for cf in [CF_PACKS, CF_PACK_LEN] {
        for r in index.scan(cf, &[]) {
            let (k, _) = r?;
            if let Ok(id) = <[u8; 8]>::try_from(&k[..]) {
                high = high.max(u64::from_be_bytes(id));
            }
        }
    }
    Ok((high, recorded.is_some()))
}

/// Packs holding data above the highest the index recorded creating: the index is older than
/// the packs (restored from an earlier backup, or copied without them). Refused, because
/// recovery would delete those packs as never indexed and truncate the older ones to the lengths
/// the old index knew, destroying what the right index still needs.
///
/// A pack is recorded (`pack_high`) before anything is appended to it, so a crash leaves at
/// most a header-only pack above the record. A store from before the record gets one pack of
/// grace above the highest it knows: its open pack may hold uncommitted bytes.
fn refuse_packs_newer_than_index(dir: &Path, index: &Index, pack_dir: &Path) -> Result<()> {
    let (high, recorded) = known_pack_high(index)?;
    let allowed = high.saturating_add(u64::from(!recorded));
    let mut newer = Vec::new();
    for id in pack_files(pack_dir)? {
        if id.0 <= allowed {
            continue;
        }
        let len = std::fs::metadata(pack_dir.join(id.file_name()))
            .map_err(|e| Error::io("stat pack", e))?
            .len();
        if len > HEADER_LEN {
            newer.push(id.file_name());
        }
    }
    if newer.is_empty() {
        return Ok(());
    }
    Err(Error::corrupt(format!(
        "the index in {} knows packs up to number {high}, but {} also holds {} with data: the \
         index is older than the packs (restored from an earlier backup?). Cairn will not open \
         this store (recovery would discard data the right index needs); restore the index from \
         the backup the packs belong to, or, to keep this index and lose what those packs hold, \
         move them out of the directory",
        dir.join("index").display(),
        pack_dir.display(),
        newer.join(", ")
    )))
}

/// The chunking parameters of this store: those it recorded; for a store that holds chunks but
/// recorded none (created before they were recorded), [`ChunkParams::LEGACY`]; for a new store,
/// `configured`. Whatever is chosen is recorded, so it never changes afterwards.
fn settle_chunking(index: &Index, configured: ChunkParams) -> Result<ChunkParams> {
    const KEY: &[u8] = CHUNKING_KEY;
    if let Some(p) = index.get_record::<ChunkParams>(CF_STORE, KEY)? {
        if p != configured {
            tracing::info!(
                ?p,
                ?configured,
                "keeping the chunking this store was created with"
            );
        }
        return Ok(p);
    }
    let has_chunks = index.scan(CF_CHUNKS, &[]).next().is_some();
    let p = if has_chunks {
        ChunkParams::LEGACY
    } else {
        configured
    };
    let mut b = index.batch();
    b.put_record(CF_STORE, KEY, &p);
    index.write(b, true)?;
    Ok(p)
}

/// Lists pack ids present on disk.
pub(crate) fn pack_files(dir: &Path) -> Result<Vec<PackId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list packs", e))? {
        let entry = entry.map_err(|e| Error::io("list packs", e))?;
        if let Some(id) = entry.file_name().to_str().and_then(PackId::parse_file_name) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// What recovery does to one pack file, decided before anything is done.
enum PackFix {
    /// Bytes past the index's committed length: appended before a crash, never acknowledged.
    /// With `keep`, copied aside first (see [`PackFix::Keep`]).
    Truncate {
        id: PackId,
        actual: u64,
        len: u64,
        keep: bool,
    },
    /// A retired pack, or one the index has nothing in.
    Remove { id: PackId, retired: bool, len: u64 },
    /// A pack with data that the index has nothing in (or has retired), while packs the index
    /// does name are missing: the index and the packs are not of one moment (a copy taken file
    /// by file), and this pack may hold the only copy of chunks gc had moved into a missing
    /// one. Moved aside, never deleted.
    Keep { id: PackId, len: u64 },
}

/// Where recovery sets aside what it must not delete ([`PackFix::Keep`]), inside the pack
/// directory. Not `lost+found`: that name is e2fsck's when `packs/` is a mount point.
pub const KEPT_DIR: &str = "kept";

/// Crash recovery: deletes retired and never-indexed packs, truncates unindexed tails.
/// Returns the highest pack id still present.
///
/// Plan, then apply: every pack is checked first, so a store that is refused (a pack shorter
/// than the index says) is refused before any file has changed.
fn recover_packs(index: &Index, dir: &Path, allow_missing: bool) -> Result<Option<PackId>> {
    let missing = missing_packs(index, dir, allow_missing)?;
    let mut last = missing;
    let mut plan = Vec::new();
    for id in pack_files(dir)? {
        let key = id.0.to_be_bytes();
        let info: Option<PackInfo> = index.get_record(CF_PACKS, &key)?;
        let committed = index
            .get(CF_PACK_LEN, &key)?
            .map(|v| u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8])));
        let actual = std::fs::metadata(dir.join(id.file_name()))
            .map_err(|e| Error::io("stat pack", e))?
            .len();
        let retired = matches!(
            info,
            Some(PackInfo {
                state: PackState::Retired
            })
        );
        match committed {
            Some(len) if !retired => {
                if actual < len {
                    return Err(Error::corrupt(format!(
                        "pack {} is {actual} bytes, the index says {len}: bytes it acknowledged \
                         are gone (a damaged disk, or packs copied before the index; restore the \
                         index and packs of one moment). No pack file was changed",
                        id.0
                    )));
                }
                if actual > len {
                    // With packs missing, a long tail may be chunks gc moved here after the
                    // index was copied: kept. Padding (under a block) never holds a record.
                    let keep = missing.is_some() && actual - len >= BLOCK;
                    plan.push(PackFix::Truncate {
                        id,
                        actual,
                        len,
                        keep,
                    });
                }
                last = last.max(Some(id));
            }
            _ if actual > HEADER_LEN && missing.is_some() => {
                // Counted, so that no new pack takes its number while it is set aside.
                last = last.max(Some(id));
                plan.push(PackFix::Keep { id, len: actual })
            }
            _ => plan.push(PackFix::Remove {
                id,
                retired,
                len: actual,
            }),
        }
    }
    let mut changed = false;
    for fix in plan {
        changed |= apply_pack_fix(index, dir, fix)?;
    }
    if changed {
        sync_dir(dir)?;
    }
    forget_vanished_retired_packs(index, dir)?;
    report_kept(dir);
    Ok(last)
}

/// Warns, at every open, while recovery's set-aside files are there: nothing else looks at
/// them, and they are the operator's to restore or delete (operations.md).
fn report_kept(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join(KEPT_DIR)) else {
        return;
    };
    let sizes: Vec<u64> = entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .collect();
    if !sizes.is_empty() {
        tracing::warn!(
            files = sizes.len(),
            bytes = sizes.iter().sum::<u64>(),
            dir = %dir.join(KEPT_DIR).display(),
            "recovery set pack data aside here (index and packs not of one moment); restore \
             the index of their moment to use it, or delete it"
        );
    }
}

/// A path in [`KEPT_DIR`] (created, and made durable, if needed) named `name`, or `name.2`,
/// `name.3`… if taken.
fn kept_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let aside = dir.join(KEPT_DIR);
    if !aside.exists() {
        std::fs::create_dir_all(&aside).map_err(|e| Error::io("create packs/kept", e))?;
        sync_dir(dir)?;
    }
    let mut to = aside.join(name);
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = aside.join(format!("{name}.{n}"));
    }
    Ok(to)
}

/// Copies `pack`'s bytes from `from` to its end into a new file `to`, synced.
fn copy_tail(pack: &Path, from: u64, to: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let io = |e| Error::io("copy a pack tail to packs/kept", e);
    let mut src = std::fs::File::open(pack).map_err(io)?;
    src.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut dst = std::fs::File::create_new(to).map_err(io)?;
    std::io::copy(&mut src, &mut dst).map_err(io)?;
    dst.sync_all().map_err(io)?;
    sync_dir(to.parent().unwrap_or(pack))
}

/// Applies one [`PackFix`]; true if the directory changed.
fn apply_pack_fix(index: &Index, dir: &Path, fix: PackFix) -> Result<bool> {
    match fix {
        PackFix::Truncate {
            id,
            actual,
            len,
            keep,
        } => {
            if keep {
                let to = kept_path(dir, &format!("{}.tail-{len}", id.file_name()))?;
                tracing::warn!(
                    pack = id.0,
                    actual,
                    len,
                    to = %to.display(),
                    "packs the index names are missing: this pack's unindexed tail is copied \
                     aside before it is truncated"
                );
                copy_tail(&dir.join(id.file_name()), len, &to)?;
            }
            // Padding after the last commit (less than a block) is routine.
            match actual - len < BLOCK {
                true => tracing::debug!(pack = id.0, actual, len, "dropping pack padding"),
                false => tracing::warn!(pack = id.0, actual, len, "truncating unindexed pack tail"),
            }
            PackFile::truncate_file(dir, id, len)?;
            Ok(false)
        }
        PackFix::Remove { id, retired, len } => {
            match retired || len <= HEADER_LEN {
                true => tracing::info!(pack = id.0, retired, "removing pack with no indexed chunks"),
                false => tracing::warn!(
                    pack = id.0,
                    len,
                    "removing pack with no indexed chunks (appended before a crash, never acknowledged)"
                ),
            }
            std::fs::remove_file(dir.join(id.file_name()))
                .map_err(|e| Error::io("remove pack", e))?;
            if retired {
                let key = id.0.to_be_bytes();
                let mut b = index.batch();
                b.delete(CF_PACKS, &key);
                b.delete(CF_PACK_LEN, &key);
                index.write(b, true)?;
            }
            Ok(true)
        }
        PackFix::Keep { id, len } => {
            let to = kept_path(dir, &id.file_name())?;
            tracing::warn!(
                pack = id.0,
                len,
                to = %to.display(),
                "a pack holds data the index has nothing in while packs the index names are \
                 missing (index and packs not copied at one moment?): moved aside, not deleted"
            );
            std::fs::rename(dir.join(id.file_name()), &to)
                .map_err(|e| Error::io("move pack to packs/kept", e))?;
            sync_dir(&dir.join(KEPT_DIR))?;
            Ok(true)
        }
    }
}

/// Packs the index has committed data in whose files are gone: an error, unless `allow` (then a
/// warning, and the highest such id, so that the next pack is created above it rather than
/// re-created empty under its name).
fn missing_packs(index: &Index, dir: &Path, allow: bool) -> Result<Option<PackId>> {
    let mut missing = Vec::new();
    for r in index.scan(CF_PACK_LEN, &[]) {
        let (k, _) = r?;
        let Ok(id) = k[..]
            .try_into()
            .map(|b: [u8; 8]| PackId(u64::from_be_bytes(b)))
        else {
            continue;
        };
        let retired = matches!(
            index.get_record::<PackInfo>(CF_PACKS, &k)?,
            Some(PackInfo {
                state: PackState::Retired
            })
        );
        if !retired && !dir.join(id.file_name()).exists() {
            missing.push(id);
        }
    }
    if !missing.is_empty() {
        missing = still_indexed(index, missing)?;
    }
    let Some(&highest) = missing.last() else {
        return Ok(None);
    };
    let names: Vec<String> = missing.iter().map(|id| id.file_name()).collect();
    if !allow {
        return Err(Error::corrupt(format!(
            "{} holds data the index has committed but is missing from {}: restore it from a \
             backup, or start with allow_missing_packs (CAIRN_ALLOW_MISSING_PACKS=1) to serve \
             the rest and let `cairn fsck` name the files it held",
            names.join(", "),
            dir.display()
        )));
    }
    tracing::warn!(packs = %names.join(","), "packs are missing; their chunks read as corrupt");
    Ok(Some(highest))
}

/// Of the `missing` packs, those that some chunk location still points into. The others held
/// only chunks since deleted (gc after the damaged versions went) or healed (stored again by a
/// later upload): their entries are dropped, so the store opens normally again. An undecodable
/// location could point anywhere: then nothing is dropped.
fn still_indexed(index: &Index, missing: Vec<PackId>) -> Result<Vec<PackId>> {
    let mut pointed = HashSet::new();
    for r in index.scan(CF_CHUNKS, &[]) {
        let (_, v) = r?;
        match ChunkLoc::decode(&v) {
            Ok(loc) => pointed.insert(loc.pack),
            Err(_) => return Ok(missing),
        };
    }
    let (kept, gone): (Vec<PackId>, Vec<PackId>) =
        missing.into_iter().partition(|id| pointed.contains(id));
    if !gone.is_empty() {
        let mut b = index.batch();
        for id in &gone {
            tracing::info!(
                pack = id.0,
                "a lost pack no longer holds any indexed chunk: forgotten"
            );
            b.delete(CF_PACKS, &id.0.to_be_bytes());
            b.delete(CF_PACK_LEN, &id.0.to_be_bytes());
        }
        index.write(b, true)?;
    }
    Ok(kept)
}

/// A crash after a repacked pack's file was deleted but before its index entries were: drop them.
fn forget_vanished_retired_packs(index: &Index, dir: &Path) -> Result<()> {
    let mut b = index.batch();
    for r in index.scan(CF_PACKS, &[]) {
        let (k, v) = r?;
        let retired = PackInfo::decode(&v)?.state == PackState::Retired;
        let id = k[..]
            .try_into()
            .map(|b: [u8; 8]| PackId(u64::from_be_bytes(b)));
        if let (true, Ok(id)) = (retired, id) {
            if !dir.join(id.file_name()).exists() {
                b.delete(CF_PACKS, &k);
                b.delete(CF_PACK_LEN, &k);
            }
        }
    }
    if !b.is_empty() {
        index.write(b, true)?;
    }
    Ok(())
}

/// Reopens the newest pack for appending if it is unsealed and has room; otherwise creates one.
/// The open pack as the store writes it ([`StoreConfig::direct_writes`]).
fn writing(pack: PackFile, direct: bool) -> PackFile {
    match direct {
        true => pack,
        false => pack.cached(),
    }
}

fn open_writer(
    index: &Index,
    dir: &Path,
    last: Option<PackId>,
    target: u64,
) -> Result<(PackFile, u64)> {
    if let Some(id) = last {
        let sealed = index
            .get_record::<PackInfo>(CF_PACKS, &id.0.to_be_bytes())?
            .is_some();
        let exists = dir.join(id.file_name()).exists();
        if exists && !sealed {
            let pack = match PackFile::open(dir, id, true) {
                Ok(pack) => Some(pack),
                // A damaged header: the pack is not appended to again. Sealed as it is, its
                // chunks read as corrupt and fsck names the files, as for a sealed one.
                Err(e) if e.kind == cairn_core::ErrorKind::Corrupt => {
                    tracing::warn!(pack = id.0, error = %e, "the open pack's header is damaged: sealed as it is");
                    None
                }
                Err(e) => return Err(e),
            };
            if let Some(pack) = pack {
                let len = pack.len()?;
                if len >= target {
                    pack.sync_data()?;
                } else {
                    // Recorded for stores from before `pack_high`: a pack reopened with nothing
                    // committed yet must not look newer than the index after the next crash.
                    if known_pack_high(index)?.0 < id.0 {
                        let mut b = index.batch();
                        b.put(CF_STORE, PACK_HIGH_KEY, &id.0.to_be_bytes());
                        index.write(b, true)?;
                    }
                    return Ok((pack, len));
                }
            }
            let mut b = index.batch();
            b.put_record(
                CF_PACKS,
                &id.0.to_be_bytes(),
                &PackInfo {
                    state: PackState::Sealed,
                },
            );
            index.write(b, true)?;
        }
    }
    let next = PackId(last.map_or(1, |id| id.0 + 1));
    let max_known = index
        .scan(CF_PACKS, &[])
        .filter_map(|r| r.ok())
        .filter_map(|(k, _)| k[..].try_into().ok().map(u64::from_be_bytes))
        .max();
    let next = PackId(next.0.max(max_known.map_or(0, |m| m + 1)));
    let pack = PackFile::create(dir, next)?;
    let mut b = index.batch();
    b.put(CF_STORE, PACK_HIGH_KEY, &next.0.to_be_bytes());
    index.write(b, true)?;
    Ok((pack, HEADER_LEN))
}

#[cfg(test)]
mod chunking_tests {
    use super::*;

    fn open(dir: &Path, chunking: ChunkParams) -> Store {
        let mut cfg = StoreConfig::new(dir);
        cfg.chunking = chunking;
        Store::open(cfg, &[]).unwrap()
    }

    const OTHER: ChunkParams = ChunkParams {
        min: 1 << 10,
        avg: 4 << 10,
        max: 16 << 10,
    };

    #[test]
    fn a_store_keeps_the_chunking_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(open(dir.path(), OTHER).chunking(), OTHER);
        assert_eq!(
            open(dir.path(), ChunkParams::default()).chunking(),
            OTHER,
            "a later configuration does not change it"
        );
    }

    #[test]
    fn a_store_with_chunks_but_no_record_gets_the_legacy_chunking() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), ChunkParams::default());
            let mut s = store.session();
            s.add_chunk(b"bytes chunked before the parameters were recorded")
                .unwrap();
            s.commit(store.index().batch()).unwrap();
            let mut b = store.index().batch();
            b.delete(CF_STORE, b"chunking");
            store.index().write(b, true).unwrap();
        }
        assert_eq!(
            open(dir.path(), ChunkParams::default()).chunking(),
            ChunkParams::LEGACY
        );
        assert_eq!(
            open(dir.path(), OTHER).chunking(),
            ChunkParams::LEGACY,
            "and keeps it"
        );
    }
}

#[cfg(test)]
mod padding_tests {
    use super::*;

    /// Each commit pads the open pack to a whole 4 KiB block, with direct writes as through the
    /// page cache: no later write rewrites a block (a page, a drive's physical sector) holding
    /// committed bytes, even where the device would take 512-byte direct writes (review 30).
    /// The chunks read back after the store is reopened.
    #[test]
    fn commits_pad_to_whole_4_kib_blocks() {
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = || StoreConfig {
                direct_writes: direct,
                ..StoreConfig::new(dir.path())
            };
            let store = Store::open(cfg(), &[]).unwrap();
            let (block, pack) = {
                let w = store.writer.lock();
                (w.staging.block(), w.pack.clone())
            };
            assert_eq!(block, BLOCK, "direct {direct}");
            let mut chunks = Vec::new();
            for i in 0..10u8 {
                let mut s = store.session();
                chunks.push(s.add_chunk(&[i; 100]).unwrap());
                s.commit(store.index().batch()).unwrap();
            }
            let record = crate::staging::align_up(RECORD_HEADER_LEN + 100, block);
            assert_eq!(pack.len().unwrap(), block + 10 * record, "block {block}");
            drop((store, pack));
            let store = Store::open(cfg(), &[]).unwrap();
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(
                    store.read_chunk(c).unwrap(),
                    vec![i as u8; 100],
                    "direct {direct}"
                );
            }
        }
    }
}

#[cfg(test)]
mod part_digest_tests {
    use super::*;

    fn chunk(bytes: &[u8]) -> ChunkRef {
        ChunkRef {
            hash: Digest::of(bytes),
            len: bytes.len() as u32,
        }
    }

    #[test]
    fn a_part_digest_names_its_chunk_list_and_nothing_else() {
        let (a, b) = (chunk(b"alpha"), chunk(b"beta"));
        let ab = part_digest(&[a, b]);
        assert_eq!(ab, part_digest(&[a, b]), "deterministic");
        assert_ne!(ab, part_digest(&[b, a]), "order matters");
        assert_ne!(ab, part_digest(&[a]), "every chunk counts");
        let mut longer = b;
        longer.len += 1;
        assert_ne!(ab, part_digest(&[a, longer]), "lengths count");
        // Never the plain blake3 of the bytes, nor of the list's own encoding.
        assert_ne!(ab, Digest::of(b"alphabeta"));
        let mut list = Vec::new();
        for c in [a, b] {
            list.extend_from_slice(c.hash.as_bytes());
            list.extend_from_slice(&c.len.to_le_bytes());
        }
        assert_ne!(ab, Digest::of(&list));
        // Pinned: a change of the encoding would rename every new part.
        assert_eq!(
            ab.to_hex(),
            "1e576255ebabe7a49967831af3694a7017dc95d9003a401a3669e20a76da0de7"
        );
    }
}

/// Space figures of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    pub chunks: u64,
    /// Bytes of chunk data indexed (each distinct chunk once).
    pub chunk_bytes: u64,
    pub parts: u64,
    pub packs: u64,
    /// Bytes pack files hold on disk, headers and dead records included: each file's length, or
    /// its allocated blocks when fewer (gc punched holes in it on a full disk).
    pub pack_bytes: u64,
}

impl Store {
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats::default();
        for r in self.index.scan(CF_CHUNKS, &[]) {
            let (_, v) = r?;
            s.chunks += 1;
            s.chunk_bytes += u64::from(ChunkLoc::decode(&v)?.len);
        }
        s.parts = self.index.scan(CF_PARTS, &[]).count() as u64;
        for id in pack_files(&self.pack_dir)? {
            s.packs += 1;
            let path = self.pack_dir.join(id.file_name());
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            s.pack_bytes += len.min(crate::pack::allocated_bytes(&path));
        }
        Ok(s)
    }
}

/// Refcount keys for parts, re-exported for the upper layers' fsck.
pub fn part_refs_cf() -> &'static str {
    CF_PART_REFS
}

/// Reads a counter value stored by a merge operator.
pub fn counter_value(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

/// Checks an index entry for `chunk`: an absent or disagreeing one is damage.
fn located(chunk: &ChunkRef, loc: Option<ChunkLoc>) -> Result<ChunkLoc> {
    let loc = loc
        .ok_or_else(|| Error::corrupt(format!("chunk {} is missing from the index", chunk.hash)))?;
    if loc.len != chunk.len {
        return Err(Error::corrupt(format!(
            "chunk {} has length {} in the index, {} in its part",
            chunk.hash, loc.len, chunk.len
        )));
    }
    Ok(loc)
}

#[cfg(test)]
mod lost_file_tests {
    use super::*;
    use std::io::Write;

    fn open(dir: &Path, allow_missing_packs: bool) -> Result<Store> {
        let mut cfg = StoreConfig::new(dir);
        cfg.allow_missing_packs = allow_missing_packs;
        Store::open(cfg, &[])
    }

    /// A store with one committed chunk; returns it and its pack's path and length.
    fn one_chunk(dir: &Path) -> (ChunkRef, PathBuf, u64) {
        let store = open(dir, false).unwrap();
        let mut s = store.session();
        let c = s.add_chunk(&[7u8; 5000]).unwrap();
        s.commit(store.index().batch()).unwrap();
        let pack = store.open_pack_id();
        let path = dir.join("packs").join(pack.file_name());
        (c, path.clone(), std::fs::metadata(path).unwrap().len())
    }

    #[test]
    fn a_lost_index_is_refused_and_the_packs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pack, len) = one_chunk(dir.path());
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        for _ in 0..2 {
            let err = open(dir.path(), false).err().expect("refused");
            assert_eq!(err.kind, cairn_core::ErrorKind::Corrupt, "{err}");
            assert!(err.reason.contains("index"), "{err}");
            assert_eq!(std::fs::metadata(&pack).unwrap().len(), len, "pack kept");
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    fn pack_lengths(dir: &Path) -> Vec<(PackId, u64)> {
        let packs = dir.join("packs");
        let ids = pack_files(&packs).unwrap();
        let len = |id: &PackId| std::fs::metadata(packs.join(id.file_name())).unwrap().len();
        ids.iter().map(|id| (*id, len(id))).collect()
    }

    /// An index restored from a backup taken before later packs were written is refused, and
    /// nothing is deleted or truncated; with its own index back, the store opens and reads all.
    /// Also when the later writes made just one new pack, numbered next after the index's
    /// (QA: that one used to be deleted as a crash's leftover).
    #[test]
    fn an_index_older_than_its_packs_is_refused_and_the_packs_are_kept() {
        for later in [2, 6] {
            index_older_than_its_packs(later);
        }
    }

    fn index_older_than_its_packs(later_chunks: u8) {
        let dir = tempfile::tempdir().unwrap();
        let open_small = || {
            let mut cfg = StoreConfig::new(dir.path());
            cfg.pack_target_size = 64 << 10;
            Store::open(cfg, &[])
        };
        let (first, _, _) = one_chunk(dir.path());
        let (index, old, new) = (
            dir.path().join("index"),
            dir.path().join("index-old"),
            dir.path().join("index-new"),
        );
        copy_dir(&index, &old);
        let store = open_small().unwrap();
        let mut later = Vec::new();
        for i in 0..later_chunks {
            let mut s = store.session();
            later.push(s.add_chunk(&vec![i; 40 << 10]).unwrap());
            s.commit(store.index().batch()).unwrap();
        }
        drop(store);
        let packs = pack_lengths(dir.path());
        assert!(packs.len() >= 2, "the later chunks rolled packs: {packs:?}");

        std::fs::rename(&index, &new).unwrap();
        copy_dir(&old, &index);
        for _ in 0..2 {
            let err = open_small().err().expect("refused");
            assert_eq!(err.kind, cairn_core::ErrorKind::Corrupt, "{err}");
            assert!(err.reason.contains("older than the packs"), "{err}");
            assert_eq!(
                pack_lengths(dir.path()),
                packs,
                "nothing deleted or truncated"
            );
        }

        std::fs::remove_dir_all(&index).unwrap();
        std::fs::rename(&new, &index).unwrap();
        let store = open_small().unwrap();
        for c in std::iter::once(&first).chain(&later) {
            store.read_chunk(c).unwrap();
        }
    }

    /// Packs and an index not of one moment (QA: a copy that took `packs/` before `index/`,
    /// checked with `fsck --data`): the index names a pack that is missing, and has nothing
    /// in an older pack that holds data (gc had moved its chunks into the missing one). That
    /// pack may hold the only copy of those chunks, so it is moved to `packs/kept`, never
    /// deleted; and a store refused for a short pack is refused before any file changes.
    #[test]
    fn packs_not_of_their_index_s_moment_are_kept_or_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let open_small = |allow: bool| {
            let mut cfg = StoreConfig::new(dir.path());
            cfg.pack_target_size = 64 << 10;
            cfg.allow_missing_packs = allow;
            Store::open(cfg, &[])
        };
        let store = open_small(false).unwrap();
        for i in 0..5u8 {
            let mut s = store.session();
            s.add_chunk(&vec![i; 40 << 10]).unwrap();
            s.commit(store.index().batch()).unwrap();
        }
        drop(store);
        let packs = pack_lengths(dir.path());
        assert!(packs.len() >= 4, "{packs:?}");
        let (first, second, last) = (packs[0], packs[1], packs[packs.len() - 1]);
        let path = |id: PackId| dir.path().join("packs").join(id.file_name());
        // The index forgets the first pack (as if repacked), the newest pack file is gone, and
        // the second is shorter than the index says.
        let store = open_small(false).unwrap();
        let mut b = store.index().batch();
        b.delete(CF_PACKS, &first.0 .0.to_be_bytes());
        b.delete(CF_PACK_LEN, &first.0 .0.to_be_bytes());
        store.index().write(b, true).unwrap();
        drop(store);
        std::fs::remove_file(path(last.0)).unwrap();
        let short = std::fs::OpenOptions::new()
            .write(true)
            .open(path(second.0))
            .unwrap();
        short.set_len(second.1 - 4096).unwrap();
        let before = pack_lengths(dir.path());
        let first_len = before[0].1;

        let err = open_small(true).err().expect("a short pack is refused");
        assert_eq!(err.kind, cairn_core::ErrorKind::Corrupt, "{err}");
        assert_eq!(pack_lengths(dir.path()), before, "nothing deleted first");

        short.set_len(second.1).unwrap();
        // And past what the index committed, the second pack holds more (chunks gc moved there
        // after the index was copied, say): copied aside before the tail is truncated.
        let tail = vec![0xABu8; 8192];
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(second.0))
            .unwrap()
            .write_all(&tail)
            .unwrap();
        drop(open_small(true).expect("opens with the missing pack allowed"));
        let kept_dir = dir.path().join("packs").join(KEPT_DIR);
        let kept_tail: Vec<_> = std::fs::read_dir(&kept_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".tail-"))
            .collect();
        assert_eq!(kept_tail.len(), 1, "{kept_tail:?}");
        assert!(std::fs::read(&kept_tail[0]).unwrap().ends_with(&tail));
        let kept = dir
            .path()
            .join("packs")
            .join(KEPT_DIR)
            .join(first.0.file_name());
        assert_eq!(
            std::fs::metadata(&kept).map(|m| m.len()).ok(),
            Some(first_len),
            "the pack the index forgot is kept whole in packs/kept"
        );
        assert!(!path(first.0).exists());
        assert!(
            open_small(false).is_err(),
            "the missing pack is still refused"
        );
    }

    #[test]
    fn a_new_store_and_one_whose_first_pack_holds_only_its_header_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), false).unwrap());
        drop(open(dir.path(), false).unwrap());
        // A crash after the first pack was created but before anything was committed to it.
        let (_, pack, _) = one_chunk(dir.path());
        std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&pack)
            .unwrap()
            .set_len(HEADER_LEN)
            .unwrap();
        drop(open(dir.path(), false).unwrap());
    }

    #[test]
    fn a_missing_pack_is_refused_unless_allowed_and_never_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let (c, pack, _) = one_chunk(dir.path());
        std::fs::remove_file(&pack).unwrap();
        let err = open(dir.path(), false).err().expect("refused");
        assert_eq!(err.kind, cairn_core::ErrorKind::Corrupt, "{err}");
        assert!(
            err.reason
                .contains(pack.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        assert!(!pack.exists(), "not recreated");

        let store = open(dir.path(), true).unwrap();
        assert!(!pack.exists(), "the next pack is a new one");
        let read = store.read_chunk(&c).expect_err("a lost chunk is an error");
        assert_eq!(read.kind, cairn_core::ErrorKind::Corrupt, "{read}");
        let mut s = store.session();
        let fresh = s.add_chunk(&[8u8; 3000]).unwrap();
        s.commit(store.index().batch()).unwrap();
        drop(store);
        let store = open(dir.path(), true).unwrap();
        assert_eq!(store.read_chunk(&fresh).unwrap(), vec![8u8; 3000]);
        drop(store);
        assert!(
            open(dir.path(), false).is_err(),
            "still missing, still refused"
        );

        // The lost chunk sent again is stored anew (healed): nothing points into the lost pack
        // any more, its entries are dropped, and the store opens without the override.
        let store = open(dir.path(), true).unwrap();
        let mut s = store.session();
        assert_eq!(s.add_chunk(&[7u8; 5000]).unwrap(), c);
        s.commit(store.index().batch()).unwrap();
        drop(store);
        let store = open(dir.path(), false).expect("opens once nothing is lost");
        assert_eq!(store.read_chunk(&c).unwrap(), vec![7u8; 5000]);
        assert_eq!(store.read_chunk(&fresh).unwrap(), vec![8u8; 3000]);
    }
}

#[cfg(test)]
mod dedup_tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn store_chunk(store: &Store, data: &[u8]) -> ChunkRef {
        let mut s = store.session();
        let c = s.add_chunk(data).unwrap();
        s.commit(store.index().batch()).unwrap();
        c
    }

    fn pack_len(store: &Store, id: PackId) -> u64 {
        std::fs::metadata(store.pack_dir().join(id.file_name()))
            .unwrap()
            .len()
    }

    #[test]
    fn an_intact_duplicate_is_referenced_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
        let data = vec![3u8; 70_000];
        let c = store_chunk(&store, &data);
        let loc = store.locate(&c).unwrap();
        let before = pack_len(&store, loc.pack);
        assert_eq!(store_chunk(&store, &data), c);
        assert_eq!(store.locate(&c).unwrap(), loc);
        assert_eq!(pack_len(&store, loc.pack), before, "nothing appended");
    }

    static WAITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn counting_waiter(read: &mut dyn FnMut()) {
        WAITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        read();
    }

    /// The check of a stored copy reads the disk only through the session's waiter (an upload
    /// hands its runtime thread over first), and only when the page cache cannot serve it.
    #[test]
    fn a_duplicate_not_in_the_page_cache_is_checked_through_the_waiter() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        // Direct writes: the record's pages are then only what the checks read in, which
        // `fadvise(DONTNEED)` below evicts (pages the writes themselves put in the page cache
        // were not always dropped by it here).
        let cfg = StoreConfig {
            direct_writes: true,
            ..StoreConfig::new(dir.path())
        };
        let store = Store::open(cfg, &[]).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let c = store_chunk(&store, &data);
        let loc = store.locate(&c).unwrap();
        let path = store.pack_dir().join(loc.pack.file_name());
        let pack = std::fs::File::open(&path).unwrap();
        pack.sync_all().unwrap();
        // tmpfs keeps every page in memory: nothing there ever waits for a disk.
        let in_memory = rustix::fs::fstatfs(&pack).unwrap().f_type == 0x0102_1994;
        let add_again = || {
            let before = WAITS.load(SeqCst);
            let mut s = store.session();
            s.wait_with(counting_waiter);
            assert_eq!(s.add_chunk(&data).unwrap(), c);
            s.commit(store.index().batch()).unwrap();
            assert_eq!(store.locate(&c).unwrap(), loc, "deduplicated");
            WAITS.load(SeqCst) - before
        };
        // A read the kernel starts for a refused `RWF_NOWAIT` read can finish before it looks
        // again, so an evicted record is not always a wait: try a few times.
        let mut waited = 0;
        for _ in 0..5 {
            rustix::fs::fadvise(&pack, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            let w = add_again();
            assert!(w <= 1, "{w} waits for one chunk");
            waited += w;
            let again = add_again();
            if !crate::pack::nowait_supported() {
                // No cached reads here (some overlay and network file systems): every check
                // goes through the waiter, which is all this test can see.
                assert_eq!((w, again), (1, 1));
                return;
            }
            assert_eq!(again, 0, "cached now: no wait");
        }
        assert_eq!(
            waited > 0,
            !in_memory,
            "an evicted record is read through the waiter"
        );
    }

    /// Bytes received again are never deduplicated onto a stored copy that fails its check:
    /// they are stored, and every reference to the chunk reads them from then on.
    #[test]
    fn a_duplicate_of_a_damaged_chunk_is_stored_again_and_heals_it() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (c, loc) = {
            let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
            let c = store_chunk(&store, &data);
            (c, store.locate(&c).unwrap())
        };
        let pack = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("packs").join(loc.pack.file_name()))
            .unwrap();
        let at = loc.end() - 1000;
        let mut byte = [0u8];
        pack.read_exact_at(&mut byte, at).unwrap();
        pack.write_all_at(&[byte[0] ^ 0xff], at).unwrap();

        let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
        let err = store.read_chunk(&c).expect_err("damaged");
        assert_eq!(err.kind, cairn_core::ErrorKind::Corrupt, "{err}");
        assert_eq!(store_chunk(&store, &data), c);
        assert_ne!(
            store.locate(&c).unwrap(),
            loc,
            "the index names the new copy"
        );
        assert_eq!(&store.read_chunk(&c).unwrap()[..], &data[..]);
        drop(store);
        let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
        assert_eq!(&store.read_chunk(&c).unwrap()[..], &data[..], "durably");
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// After a pack fsync fails, nothing more is acknowledged, though the next fsync would
    /// succeed: the kernel may have dropped the bytes the failed one was to make durable. A
    /// restart recovers from the last fsync that succeeded (review 30).
    #[test]
    fn after_a_failed_pack_fsync_no_commit_succeeds_until_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
        let mut s = store.session();
        let kept = s.add_chunk(b"before").unwrap();
        s.commit(store.index().batch()).unwrap();
        store
            .fail_next_sync
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut s = store.session();
        let lost = s.add_chunk(b"during").unwrap();
        let err = s.commit(store.index().batch()).unwrap_err();
        assert!(err.reason.contains("a pack fsync failed"), "{err}");
        let mut s = store.session();
        s.add_chunk(b"after").unwrap();
        let again = s.commit(store.index().batch()).unwrap_err();
        assert!(again.reason.contains("restart the server"), "{again}");
        drop(store);
        let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
        assert_eq!(&store.read_chunk(&kept).unwrap()[..], b"before");
        assert!(store.read_chunk(&lost).is_err(), "never acknowledged");
        let mut s = store.session();
        let now = s.add_chunk(b"after a restart").unwrap();
        s.commit(store.index().batch()).unwrap();
        assert_eq!(&store.read_chunk(&now).unwrap()[..], b"after a restart");
    }

    /// A session that wrote its own copy of a chunk commits while gc decides that another copy
    /// of it, released meanwhile, is dead: the session's commit waits for gc's deletes, so its
    /// location and reference are not deleted with the dead copy's (review 30).
    #[test]
    fn gc_does_not_delete_a_chunk_a_session_commits_while_gc_decides() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path()), &[]).unwrap();
        let mut slow = store.session();
        let chunk = slow.add_chunk(b"shared bytes").unwrap();
        // Another session stores the same bytes, commits, and its reference is released.
        let mut other = store.session();
        other.add_chunk(b"shared bytes").unwrap();
        other.commit(store.index().batch()).unwrap();
        let mut b = store.index().batch();
        b.add(CF_CHUNK_REFS, chunk.hash.as_bytes(), -1);
        store.commit(b).unwrap();

        let (decided_tx, decided_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        *store.gc_decided.lock() = Some(Box::new(move || {
            decided_tx.send(()).unwrap();
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
        }));
        std::thread::scope(|scope| {
            let gc = scope.spawn(|| store.gc(&crate::gc::GcOptions::default()));
            decided_rx.recv().unwrap();
            let commit = scope.spawn(|| slow.commit(store.index().batch()));
            // Time for the commit to go through, were it not held back.
            std::thread::sleep(Duration::from_millis(300));
            go_tx.send(()).unwrap();
            gc.join().unwrap().unwrap();
            commit.join().unwrap().unwrap();
        });
        assert_eq!(
            store
                .index()
                .counter(CF_CHUNK_REFS, chunk.hash.as_bytes())
                .unwrap(),
            1
        );
        assert_eq!(&store.read_chunk(&chunk).unwrap()[..], b"shared bytes");
    }
}
