//! Reading files of versions and drafts: resolve a path to part slices (or, in a draft, to the
//! chunks an upload job has received), then stream any byte range, verified chunk by chunk.

use std::sync::Arc;

use bytes::Bytes;
use cairn_core::{Digest, Error, ErrorKind, FilePath, LibraryId, Result};
use cairn_store::ChunkRef;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{Engine, QInfo, Qhit};
use crate::files::{parse_link, LinkTarget};
use crate::tree::{lookup_by, Content, Entry, FileEntry, PartSeg, PendingSeg};

/// Bytes of chunks one streaming read may hold that the client has not yet been sent.
const STREAM_BUDGET: u32 = 2 << 20;

/// The same for all streaming reads together, so that many slow readers cannot add up to
/// more memory than this (budget is taken before a chunk is read, and returned once written).
pub(crate) const READ_BUDGET: usize = 64 << 20;

/// How many links a read follows before giving up (loops, long chains).
pub(crate) const MAX_LINK_DEPTH: usize = 8;

/// An opened file: its size, type, and where each slice of its bytes lives.
#[derive(Debug, Clone)]
pub struct FileHandle {
    pub path: FilePath,
    pub size: u64,
    pub mime_type: Option<String>,
    /// A strong validator of the bytes: blake3 over where they live (part digests, offsets,
    /// lengths). Immutable parts make it change exactly when the content can differ.
    pub etag: Digest,
    pieces: Vec<FilePiece>,
}

/// `len` bytes of the file, found at offset `off` of the concatenation of `chunks`.
#[derive(Debug, Clone)]
struct FilePiece {
    len: u64,
    off: u64,
    chunks: Arc<Vec<ChunkRef>>,
    /// Identity of the bytes' source (part digest, or upload job and segment).
    source: [u8; 32],
}

/// Files of finalized content opened recently, with their [`QInfo`], so that the next read of a
/// hot file (a player seeking in it: one request per seek) starts on the async thread instead
/// of sending its index lookups to a blocking thread and back.
///
/// A version never changes, but it can be deleted, and an object id names a different version
/// after each finalize; so every finalize and delete clears the cache, and an open that started
/// before a clear does not insert what it found (`generation`). Drafts are never cached.
pub(crate) struct OpenedFiles {
    cache: cairn_store::cache::Cache<OpenKey, (FileHandle, QInfo)>,
    /// The library of finalized content recently looked up, for routes that name a library.
    libraries: cairn_store::cache::Cache<Qhit, LibraryId>,
    /// Bumped by every clear; guarded together with the inserts so none can slip in between.
    generation: Mutex<u64>,
}

type OpenKey = (Qhit, FilePath, Option<LibraryId>);

impl OpenedFiles {
    pub(crate) fn new() -> OpenedFiles {
        OpenedFiles {
            // A handle weighs a few hundred bytes, and each part it spans its chunk list, which
            // the handle keeps alive even once the part cache has let it go.
            cache: cairn_store::cache::Cache::new(8 << 20, |(h, _)| {
                let chunk = std::mem::size_of::<ChunkRef>();
                let pieces: usize = h.pieces.iter().map(|p| 64 + chunk * p.chunks.len()).sum();
                256 + h.path.as_str().len() + pieces
            }),
            libraries: cairn_store::cache::Cache::new(1 << 20, |_| 128),
            generation: Mutex::new(0),
        }
    }

    /// Runs `find` and remembers its result with `keep` unless a clear came in between.
    fn remember<T>(&self, find: impl FnOnce() -> Result<T>, keep: impl FnOnce(&T)) -> Result<T> {
        let generation = *self.generation.lock();
        let found = find()?;
        let current = self.generation.lock();
        if *current == generation {
            keep(&found);
        }
        Ok(found)
    }

    /// What the content may have changed under: forgets every opened file.
    pub(crate) fn clear(&self) {
        let mut generation = self.generation.lock();
        *generation += 1;
        self.cache.clear();
        self.libraries.clear();
    }
}

fn etag_of(pieces: &[FilePiece]) -> Digest {
    let mut h = blake3::Hasher::new();
    for p in pieces {
        h.update(&p.source)
            .update(&p.off.to_le_bytes())
            .update(&p.len.to_le_bytes());
    }
    h.finalize().into()
}

impl Engine {
    /// The file [`Engine::open_for_read`] opened last time, if `q` is finalized content and
    /// nothing was finalized or deleted since: no I/O, so it is safe on an async thread.
    pub fn opened(
        &self,
        q: &Qhit,
        path: &FilePath,
        scope: Option<LibraryId>,
    ) -> Option<(FileHandle, QInfo)> {
        let key = (*q, path.clone(), scope);
        self.opened.cache.get(&key).map(|v| (*v).clone())
    }

    /// [`Engine::open_file_in`] and [`Engine::info`] together, remembered for
    /// [`Engine::opened`] unless `q` is a draft.
    pub fn open_for_read(
        &self,
        q: &Qhit,
        path: &FilePath,
        scope: Option<LibraryId>,
    ) -> Result<(FileHandle, QInfo)> {
        // The date first: should the head move between the two reads, the date is then older
        // than the bytes, never newer, so a revalidation by date gets them again (200), never
        // a 304 about other bytes.
        let find = || {
            let info = self.info(q)?;
            Ok((self.open_file_in(q, path, scope)?, info))
        };
        if matches!(q, Qhit::Draft(_)) {
            return find();
        }
        self.opened.remember(find, |found| {
            let key = (*q, path.clone(), scope);
            self.opened.cache.insert(&key, found.clone());
            self.opened.libraries.insert(q, found.1.library);
        })
    }

    /// The library of `q` as [`Engine::remember_info`] or [`Engine::open_for_read`] last found
    /// it, under the same rules as [`Engine::opened`]: no I/O.
    pub fn known_library(&self, q: &Qhit) -> Option<LibraryId> {
        self.opened.libraries.get(q).map(|l| *l)
    }

    /// [`Engine::info`], its library remembered for [`Engine::known_library`] unless `q` is a
    /// draft.
    pub fn remember_info(&self, q: &Qhit) -> Result<QInfo> {
        if matches!(q, Qhit::Draft(_)) {
            return self.info(q);
        }
        self.opened.remember(
            || self.info(q),
            |info| {
                self.opened.libraries.insert(q, info.library);
            },
        )
    }

    /// Opens the file at `path` in what `q` names. In a draft, a file still uploading is an
    /// `incomplete` error.
    pub fn open_file(&self, q: &Qhit, path: &FilePath) -> Result<FileHandle> {
        self.open_file_depth(q, path, None, 0)
    }

    /// [`Engine::open_file`] for a caller confined to library `scope`: a link that leads into
    /// another library's version is `forbidden` rather than followed.
    pub fn open_file_in(
        &self,
        q: &Qhit,
        path: &FilePath,
        scope: Option<LibraryId>,
    ) -> Result<FileHandle> {
        self.open_file_depth(q, path, scope, 0)
    }

    fn open_file_depth(
        &self,
        q: &Qhit,
        path: &FilePath,
        scope: Option<LibraryId>,
        depth: usize,
    ) -> Result<FileHandle> {
        if depth > MAX_LINK_DEPTH {
            return Err(Error::invalid(format!(
                "{path}: more than {MAX_LINK_DEPTH} links to follow"
            )));
        }
        let root = self.tree_root(q)?;
        let entry = match path.is_root() {
            true => None,
            false => lookup_by(&root, path, &|d, name| self.node_entry(d, name))?,
        };
        let file = match entry {
            Some(Entry::File(f)) => f,
            Some(Entry::Dir(_)) => return Err(Error::invalid(format!("{path} is a directory"))),
            None if path.is_root() => return Err(Error::invalid("the root is a directory")),
            None => return Err(Error::not_found(format!("file {path} not found"))),
        };
        let pieces: Vec<FilePiece> = match &file.content {
            Content::Parts(segs) => segs
                .iter()
                .map(|s| self.part_piece(s))
                .collect::<Result<_>>()?,
            Content::Pending(segs) => segs
                .iter()
                .map(|s| self.pending_piece(path, s))
                .collect::<Result<_>>()?,
            Content::Link(target) => return self.follow_link(q, path, &file, target, scope, depth),
        };
        let stored: u64 = pieces.iter().map(|p| p.len).sum();
        if stored != file.size {
            return Err(Error::corrupt(format!(
                "{path}: {stored} bytes stored for a {} byte file",
                file.size
            )));
        }
        // The file's own blake3 when known; otherwise a digest of where its bytes live.
        let etag = file.hash.unwrap_or_else(|| etag_of(&pieces));
        Ok(FileHandle {
            path: path.clone(),
            size: file.size,
            mime_type: file.mime_type,
            etag,
            pieces,
        })
    }

    fn follow_link(
        &self,
        q: &Qhit,
        path: &FilePath,
        file: &FileEntry,
        target: &str,
        scope: Option<LibraryId>,
        depth: usize,
    ) -> Result<FileHandle> {
        // A target that is gone is named as the link the client asked for, with where it led.
        let dangling = |e: Error| match e.kind {
            cairn_core::ErrorKind::NotFound => Error::not_found(format!(
                "{path} is a link to {target}, which leads nowhere: {}",
                e.reason
            )),
            _ => e,
        };
        let mut h = match parse_link(target)? {
            LinkTarget::Relative(p) => self
                .open_file_depth(q, &p, scope, depth + 1)
                .map_err(dangling)?,
            LinkTarget::Absolute(v, p) => {
                let there = Qhit::Version(v);
                if let Some(lib) =
                    scope.filter(|&lib| self.info(&there).is_ok_and(|i| i.library != lib))
                {
                    return Err(Error::forbidden(format!(
                        "{path} links to {v}, which is not in library {lib}"
                    )));
                }
                self.open_file_depth(&there, &p, scope, depth + 1)
                    .map_err(dangling)?
            }
        };
        h.path = path.clone();
        h.mime_type = file.mime_type.clone().or(h.mime_type);
        Ok(h)
    }

    fn part_piece(&self, s: &PartSeg) -> Result<FilePiece> {
        let chunks = self
            .store
            .part_chunks(&s.digest, s.part_size)?
            .ok_or_else(|| {
                Error::corrupt(format!("part {} is missing from the index", s.digest))
            })?;
        Ok(FilePiece {
            len: s.len,
            off: s.off,
            chunks,
            source: *s.digest.as_bytes(),
        })
    }

    fn pending_piece(&self, path: &FilePath, s: &PendingSeg) -> Result<FilePiece> {
        let uj = self.upload_job(&s.upload_job)?;
        if let Some(sealed) = uj.sealed.filter(|x| s.segment < x.complete_segments) {
            let seg = PartSeg {
                digest: sealed.digest,
                part_size: sealed.size,
                off: self.uj_segment(&uj.id, s.segment)?.start,
                len: s.len,
            };
            return self.part_piece(&seg);
        }
        if uj.sealed.is_some() || !self.segment_received(&uj, s.segment)? {
            return Err(Error::incomplete(format!(
                "{path} is not complete: upload job {} has {} of {} bytes",
                uj.id, uj.received, uj.size
            )));
        }
        let chunks: Vec<ChunkRef> = self
            .uj_chunks(&uj.id)?
            .into_iter()
            .filter(|(_, c)| c.segment == s.segment)
            .map(|(_, c)| c.chunk)
            .collect();
        let held: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        if held != s.len && self.upload_job(&s.upload_job)?.sealed.is_some() {
            // Sealed between the two reads (the seal moves the chunks into a part): read it
            // as sealed.
            return self.pending_piece(path, s);
        }
        let source =
            *Digest::of(&[&uj.id.as_bytes()[..], &s.segment.to_le_bytes()].concat()).as_bytes();
        Ok(FilePiece {
            len: s.len,
            off: 0,
            chunks: Arc::new(chunks),
            source,
        })
    }

    /// Whether `path` names a file or directory in what `q` names.
    pub fn entry_exists(&self, q: &Qhit, path: &FilePath) -> Result<bool> {
        let root = self.tree_root(q)?;
        Ok(
            path.is_root()
                || lookup_by(&root, path, &|d, name| self.node_entry(d, name))?.is_some(),
        )
    }

    /// Opens a part that the content `q` references, for reading like a file.
    pub fn open_part(&self, q: &Qhit, part: &cairn_core::PartHash) -> Result<FileHandle> {
        self.open_part_of(&*self.part_set(q)?, part)
    }

    /// Opens `part` for reading like a file, if `set` (a content's parts) holds it.
    pub fn open_part_of(&self, set: &PartSet, part: &cairn_core::PartHash) -> Result<FileHandle> {
        if !set.contains(part) {
            return Err(Error::not_found(format!(
                "part {part} not found in this content"
            )));
        }
        let seg = PartSeg {
            digest: part.digest,
            part_size: part.size,
            off: 0,
            len: part.size,
        };
        let piece = self.part_piece(&seg)?;
        let path = FilePath::parse(&part.to_string())?;
        Ok(FileHandle {
            path,
            size: part.size,
            mime_type: None,
            etag: etag_of(std::slice::from_ref(&piece)),
            pieces: vec![piece],
        })
    }

    /// The parts the files of `q` reference, in walk order, each once.
    pub fn parts(&self, q: &Qhit) -> Result<Vec<cairn_core::PartHash>> {
        Ok(self.part_set(q)?.list().to_vec())
    }

    /// Whether the files of `q` reference `part`.
    pub fn has_part(&self, q: &Qhit, part: &cairn_core::PartHash) -> Result<bool> {
        Ok(self.part_set(q)?.contains(part))
    }

    /// The parts of `q`'s tree, for the async part routes: remembered by root, else walked on
    /// a blocking thread, one walk at a time. The walk's turn is waited for here, on the async
    /// side, at most `idle_timeout` (then `busy`): waiting on a blocking thread tied up one of
    /// tokio's threads per waiting request (review 34).
    pub async fn part_set_of(self: &Arc<Self>, q: Qhit) -> Result<Arc<PartSet>> {
        let root = self.run(move |e| e.tree_root(&q)).await?;
        if let Some(set) = self.part_sets.get(&root) {
            return Ok(set);
        }
        let turn = tokio::time::timeout(
            self.cfg.idle_timeout,
            self.part_walk.clone().acquire_owned(),
        )
        .await;
        let Ok(Ok(turn)) = turn else {
            return Err(walk_busy());
        };
        self.run(move |e| {
            let _turn = turn;
            e.walk_part_set(&root)
        })
        .await
    }

    /// [`Engine::part_set_of`] for a caller on a blocking thread: a walk running for another
    /// request is `busy` at once.
    fn part_set(&self, q: &Qhit) -> Result<Arc<PartSet>> {
        let root = self.tree_root(q)?;
        if let Some(set) = self.part_sets.get(&root) {
            return Ok(set);
        }
        let Ok(_turn) = self.part_walk.try_acquire() else {
            return Err(walk_busy());
        };
        self.walk_part_set(&root)
    }

    /// Walks the tree at `root` for its parts (the caller holds the walk's turn) and remembers
    /// them, unless another walk just did.
    fn walk_part_set(&self, root: &Digest) -> Result<Arc<PartSet>> {
        if let Some(set) = self.part_sets.get(root) {
            return Ok(set);
        }
        let mut out = Parts::default();
        self.collect_parts(root, &mut out, 0)?;
        Ok(self.part_sets.insert(root, PartSet::new(out.list)))
    }

    /// Adds the parts under `node` not yet in `out`. A directory met again (copies share their
    /// node) adds nothing new, so it is walked once: copies of copies cannot make this walk
    /// exponentially long (review).
    fn collect_parts(&self, node: &Digest, out: &mut Parts, depth: usize) -> Result<()> {
        if depth > cairn_core::path::MAX_DEPTH {
            return Err(Error::corrupt(
                "directory nesting exceeds the path depth limit",
            ));
        }
        if !out.dirs.insert(*node) {
            return Ok(());
        }
        for e in self.load_node(node)?.entries.values() {
            match e {
                Entry::Dir(d) => self.collect_parts(d, out, depth + 1)?,
                Entry::File(FileEntry {
                    content: Content::Parts(segs),
                    ..
                }) => {
                    for s in segs {
                        let p = cairn_core::PartHash {
                            digest: s.digest,
                            size: s.part_size,
                        };
                        if out.seen.insert(p) {
                            out.list.push(p);
                        }
                    }
                }
                Entry::File(_) => {}
            }
        }
        Ok(())
    }

    /// Reads bytes `[offset, offset+len)` of the file into `sink`, piece by piece, each verified
    /// (the blocking counterpart of [`Engine::read_stream`], for callers on a blocking thread).
    pub fn read_file(
        &self,
        h: &FileHandle,
        offset: u64,
        len: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        for step in Steps::new(h.clone(), offset, len) {
            let Step { chunk, start, len } = step?;
            let loc = self.store.locate(&chunk)?;
            sink(&self.store.read_piece(&chunk, loc, start, len)?)?;
        }
        Ok(())
    }

    /// Streams a byte range of an opened file, one verified chunk piece per item, with
    /// back-pressure: each piece is read when the consumer asks for the next one, after taking
    /// its bytes from a per-stream ([`STREAM_BUDGET`]) and a global ([`READ_BUDGET`]) budget
    /// that it keeps until the consumer drops it. Dropping the stream stops the read.
    ///
    /// A piece whose location is remembered and whose bytes are in the page cache is read and
    /// verified right here on the async thread (`preadv2(RWF_NOWAIT)`), which is the common
    /// case for media being watched: handing every piece to a blocking thread cost a fifth of
    /// Range throughput in wake-ups. Anything that may wait for the disk (an index lookup, bytes
    /// not cached) goes to a blocking thread, at most [`crate::engine::STREAM_PERMITS`] at once.
    pub fn read_stream(
        self: &Arc<Self>,
        h: FileHandle,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let steps = Steps::new(h, offset, len);
        let me = self.clone();
        let budget = Arc::new(Semaphore::new(STREAM_BUDGET as usize));
        futures::stream::unfold(Some(steps), move |state| {
            let (me, budget) = (me.clone(), budget.clone());
            async move {
                let mut steps = state?;
                let read = match steps.next()? {
                    Ok(step) => {
                        let hash = step.chunk.hash;
                        match me.read_step(step, &budget).await {
                            Err(e) if e.kind == ErrorKind::Corrupt => {
                                Err(me.gone_or(e, hash).await)
                            }
                            read => read,
                        }
                    }
                    Err(e) => Err(e),
                };
                // The stream ends after its first error.
                let next = read.is_ok().then_some(steps);
                Some((read, next))
            }
        })
    }

    /// A read that failed its check because its chunk is no longer stored: the content being
    /// read was deleted and gc collected it meanwhile (a live version's chunks cannot go, so
    /// otherwise the index is damaged). Said as such, not as damaged data (`corrupt`), which
    /// the log would report as a disk fault.
    async fn gone_or(self: &Arc<Self>, e: Error, hash: Digest) -> Error {
        let gone = self
            .blocking_read(move |en| Ok(en.store.chunk_loc(&hash)?.is_none()))
            .await;
        match gone {
            Ok(true) => Error::not_found(format!(
                "chunk {hash} is no longer stored: the content being read was deleted and \
                 collected by gc meanwhile (if it was not deleted, the index is damaged: run \
                 cairn fsck)"
            )),
            _ => e,
        }
    }

    async fn read_step(self: &Arc<Self>, step: Step, budget: &Arc<Semaphore>) -> Result<Bytes> {
        let Step { chunk, start, len } = step;
        let loc = match self.store.locate_cached(&chunk) {
            Some(loc) => loc,
            None => {
                self.blocking_read(move |e| e.store.locate_and_remember(&chunk))
                    .await?
            }
        };
        // Budget is taken before the read, so what streaming holds never exceeds it.
        let n = u32::try_from(loc.read_cost(start, len))
            .unwrap_or(u32::MAX)
            .clamp(1, STREAM_BUDGET);
        let idle = self.cfg.idle_timeout;
        // Waiting on this stream's own budget means its client stopped reading; waiting on the
        // shared one means other readers hold it all.
        let own = take_budget(budget, n, idle)
            .await?
            .map_err(|_| Error::invalid("reader stalled"))?;
        let shared = take_budget(&self.read_budget, n, idle)
            .await?
            .map_err(|_| {
                Error::busy("other downloads hold the server's whole read budget; retry")
            })?;
        let held = [own, shared];
        let data = match self.store.read_piece_cached(&chunk, loc, start, len) {
            Some(data) => data,
            None => {
                self.blocking_read(move |e| {
                    let loc = e.store.locate_and_remember(&chunk)?;
                    e.store.read_piece(&chunk, loc, start, len)
                })
                .await?
            }
        };
        Ok(Bytes::from_owner(Budgeted {
            data,
            _permits: held,
        }))
    }

    /// The `files` listing of `q` as JSON text, streamed: rendered on a blocking thread while
    /// the tree is walked ([`Engine::files_json_to`]), in pieces of [`LIST_PIECE`] bytes with
    /// at most [`LIST_AHEAD`] waiting for the consumer. Memory holds the directories on the
    /// walk's current path and those pieces, never the whole listing. The walk stops when the
    /// stream is dropped, or ends with an error when the consumer takes nothing for
    /// `idle_timeout`. At most [`LIST_WALKS`] walks run at once (their own permits, so
    /// listings never wait for uploads, nor uploads for listings). The same bytes as
    /// `files_json(q)?.to_string()`; a walk that ends any other way than whole (an error, a
    /// panic) ends the stream with an error, never as if the listing were complete.
    pub fn files_json_stream(
        self: &Arc<Self>,
        q: Qhit,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Option<Bytes>>>(LIST_AHEAD);
        let me = self.clone();
        tokio::spawn(async move {
            let idle = me.cfg.idle_timeout;
            // Walks held by slow readers may keep every permit for long: wait no longer than
            // a download waits for read budget, then answer busy (retry shortly).
            let permit = match tokio::time::timeout(idle, me.listings.clone().acquire_owned()).await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return,
                Err(_) => {
                    let busy = Error::busy(format!(
                        "{LIST_WALKS} listings are being walked for other requests; try again"
                    ));
                    let _ = tx.send(Err(busy)).await;
                    return;
                }
            };
            let rt = tokio::runtime::Handle::current();
            let walk = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut w = PieceWriter {
                    buf: Vec::with_capacity(LIST_PIECE),
                    tx: &tx,
                    rt: &rt,
                    idle,
                };
                let done = me.files_json_to(&q, &mut w).and_then(|()| w.send_piece());
                // The end marker, or the error; both wait no longer than a piece would, and
                // there is nobody to tell if the consumer is gone.
                let last = match done {
                    Ok(()) => Ok(None),
                    Err(e) => Err(e),
                };
                let _ = rt.block_on(tokio::time::timeout(idle, tx.send(last)));
            });
            let _ = walk.await;
        });
        futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(Ok(Some(piece))) => Some((Ok(piece), Some(rx))),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some((Err(e), None)),
                None => Some((Err(Error::internal("the files listing ended early")), None)),
            }
        })
    }

    /// Runs a read that may wait for the disk on a blocking thread; a permit bounds how many
    /// such threads streaming can hold, so `Engine::run` always has threads left.
    pub(crate) async fn blocking_read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .streams
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("stream permits closed"))?;
        self.run(f).await
    }
}

/// Bytes of listing text sent at a time by [`Engine::files_json_stream`].
const LIST_PIECE: usize = 64 << 10;

/// Pieces of listing text that may wait for the consumer.
const LIST_AHEAD: usize = 4;

/// Listings walked at once; more wait for one to end (each ends within `idle_timeout` of its
/// consumer stalling).
pub const LIST_WALKS: usize = 32;

/// Collects listing text and hands it to the stream's consumer a piece at a time, waiting (on
/// its blocking thread) while the consumer is [`LIST_AHEAD`] pieces behind.
struct PieceWriter<'a> {
    buf: Vec<u8>,
    tx: &'a tokio::sync::mpsc::Sender<Result<Option<Bytes>>>,
    rt: &'a tokio::runtime::Handle,
    idle: std::time::Duration,
}

impl PieceWriter<'_> {
    fn send_piece(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(LIST_PIECE),
        ));
        let sent = self.rt.block_on(tokio::time::timeout(
            self.idle,
            self.tx.send(Ok(Some(piece))),
        ));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::invalid("the listing's reader went away")),
            Err(_) => Err(Error::invalid("reader stalled")),
        }
    }
}

impl std::io::Write for PieceWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= LIST_PIECE {
            self.send_piece()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.reason))?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Takes `n` bytes of `budget`, waiting at most `idle` for them: a stream whose consumer
/// takes nothing for that long ends with an error.
async fn take_budget(
    budget: &Arc<Semaphore>,
    n: u32,
    idle: std::time::Duration,
) -> Result<std::result::Result<OwnedSemaphorePermit, tokio::time::error::Elapsed>> {
    match tokio::time::timeout(idle, budget.clone().acquire_many_owned(n)).await {
        Ok(Ok(p)) => Ok(Ok(p)),
        Ok(Err(_)) => Err(Error::internal("stream budget closed")),
        Err(elapsed) => Ok(Err(elapsed)),
    }
}

/// One chunk's share of a read: bytes `[start, start+len)` of `chunk`.
struct Step {
    chunk: ChunkRef,
    start: u64,
    len: u64,
}

/// The steps of reading `[offset, offset+len)` of a file, planned one file piece (one part's
/// slice) at a time, so a read of a huge file never plans all its chunks at once.
struct Steps {
    h: FileHandle,
    /// Each overlapping file piece with the range within it: (piece index, from, to).
    todo: std::collections::VecDeque<(usize, u64, u64)>,
    current: std::vec::IntoIter<Step>,
    error: Option<Error>,
}

impl Steps {
    fn new(h: FileHandle, offset: u64, len: u64) -> Steps {
        let mut todo = std::collections::VecDeque::new();
        let mut error = None;
        match offset.checked_add(len).filter(|&e| e <= h.size) {
            None => {
                error = Some(Error::invalid(format!(
                    "range {offset}+{len} is outside {} ({} bytes)",
                    h.path, h.size
                )))
            }
            Some(end) => {
                let mut piece_start = 0u64;
                for (i, p) in h.pieces.iter().enumerate() {
                    let piece_end = piece_start + p.len;
                    if piece_end > offset && piece_start < end {
                        let from = offset.max(piece_start) - piece_start;
                        todo.push_back((i, from, end.min(piece_end) - piece_start));
                    }
                    piece_start = piece_end;
                }
            }
        }
        Steps {
            h,
            todo,
            current: Vec::new().into_iter(),
            error,
        }
    }
}

impl Iterator for Steps {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Result<Step>> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        loop {
            if let Some(step) = self.current.next() {
                return Some(Ok(step));
            }
            let (i, from, to) = self.todo.pop_front()?;
            let p = &self.h.pieces[i];
            let lens: Vec<u64> = p.chunks.iter().map(|c| u64::from(c.len)).collect();
            match cairn_store::range::plan(&lens, p.off + from, to - from) {
                Ok(plan) => {
                    let steps: Vec<Step> = plan
                        .into_iter()
                        .map(|x| Step {
                            chunk: p.chunks[x.index],
                            start: x.start,
                            len: x.len,
                        })
                        .collect();
                    self.current = steps.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Bytes that hold their share of the read budgets while they are alive.
struct Budgeted {
    data: Bytes,
    _permits: [OwnedSemaphorePermit; 2],
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// The parts of a tree in walk order, each once, and the directories already walked.
#[derive(Default)]
struct Parts {
    list: Vec<cairn_core::PartHash>,
    seen: std::collections::HashSet<cairn_core::PartHash>,
    dirs: std::collections::HashSet<Digest>,
}

/// The parts a tree's files reference: in walk order, each once, with their positions sorted
/// by hash for lookups (44 bytes a part, so that the cache keeps trees of up to about 760,000
/// parts: a hash set beside the list took 120, and no tree over 140,000 parts was kept).
pub struct PartSet {
    list: Vec<cairn_core::PartHash>,
    sorted: Vec<u32>,
}

impl PartSet {
    fn new(list: Vec<cairn_core::PartHash>) -> PartSet {
        let mut sorted: Vec<u32> = (0..list.len() as u32).collect();
        sorted.sort_unstable_by_key(|&i| list[i as usize]);
        PartSet { list, sorted }
    }

    /// The parts, in walk order.
    pub fn list(&self) -> &[cairn_core::PartHash] {
        &self.list
    }

    pub fn contains(&self, part: &cairn_core::PartHash) -> bool {
        self.sorted
            .binary_search_by(|&i| self.list[i as usize].cmp(part))
            .is_ok()
    }

    /// Bytes held: a part hash in the list and its position in the sorted index.
    pub fn weight(&self) -> usize {
        self.list.len() * (std::mem::size_of::<cairn_core::PartHash>() + 4)
    }
}

fn walk_busy() -> Error {
    Error::busy("another request is walking a tree for its parts; try again")
}
