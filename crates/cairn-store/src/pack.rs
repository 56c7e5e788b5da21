//! Pack files: append-only files of chunk records.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header  : magic "CAIRNPAK" (8) | format version u32 | reserved u32           = 16 bytes
//! record  : magic "CREC" (4) | codec u8 | reserved [u8;3] | len u32 | blake3 (32) = 44 bytes
//!           then, for codec 1, the chunk's outboard (see [`crate::outboard`])
//!           then `len` bytes of chunk data
//! ```
//!
//! The outboard sits before the data so that a partial read fetches the header and outboard in
//! one small read and then only the 16 KiB groups it needs. Records written before outboards
//! existed (codec 0) are still read, whole.
//!
//! The format functions here are pure; [`PackFile`] is the thin I/O shell (positional reads and
//! writes, fsync). A record carries its own hash, so a pack can be re-indexed or checked without
//! the index; the index remains the authority on which records are live.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_core::{Digest, Error, Result};

use crate::outboard;

pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPAK";
pub const PACK_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
pub const RECORD_MAGIC: &[u8; 4] = b"CREC";
pub const RECORD_HEADER_LEN: u64 = 44;
/// Codec byte for uncompressed chunk data with no outboard (the byte reserves room for zstd).
pub const CODEC_RAW: u8 = 0;
/// Codec byte for uncompressed chunk data preceded by its outboard.
pub const CODEC_RAW_OUTBOARD: u8 = 1;

/// Identifies a pack; packs are numbered in creation order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PackId(pub u64);

impl PackId {
    pub fn file_name(self) -> String {
        format!("{:016x}.pack", self.0)
    }

    pub fn parse_file_name(name: &str) -> Option<PackId> {
        let hex = name.strip_suffix(".pack")?;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok().map(PackId))?
    }
}

pub fn encode_header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h
}

pub fn check_header(h: &[u8]) -> Result<()> {
    if h.len() < HEADER_LEN as usize || &h[..8] != PACK_MAGIC {
        return Err(Error::corrupt("pack header magic is wrong"));
    }
    let v = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if v != PACK_VERSION {
        return Err(Error::corrupt(format!(
            "pack format version {v} is not supported"
        )));
    }
    Ok(())
}

pub fn encode_record_header(
    hash: &Digest,
    len: u32,
    codec: u8,
) -> [u8; RECORD_HEADER_LEN as usize] {
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    h[..4].copy_from_slice(RECORD_MAGIC);
    h[4] = codec;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..44].copy_from_slice(hash.as_bytes());
    h
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub codec: u8,
    pub len: u32,
    pub hash: Digest,
}

pub fn decode_record_header(h: &[u8]) -> Result<RecordHeader> {
    if h.len() < RECORD_HEADER_LEN as usize || &h[..4] != RECORD_MAGIC {
        return Err(Error::corrupt("pack record magic is wrong"));
    }
    Ok(RecordHeader {
        codec: h[4],
        len: u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")),
        hash: Digest::from_slice(&h[12..44]).expect("32 bytes"),
    })
}

/// Where a chunk's record starts, its data length, and the length of the outboard between
/// the record header and the data (0: none; absent in records written before outboards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLoc {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outboard: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ChunkLoc {
    /// Bytes of the whole record: header, outboard, data.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN + u64::from(self.outboard) + u64::from(self.len)
    }

    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + self.record_len()
    }

    fn data_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN + u64::from(self.outboard)
    }

    /// The bytes a read of `[start, start+len)` of the chunk fetches from the pack.
    pub fn read_cost(&self, start: u64, len: u64) -> u64 {
        match self.partial_span(start, len) {
            Some((from, to)) => RECORD_HEADER_LEN + u64::from(self.outboard) + (to - from),
            None => self.record_len(),
        }
    }

    /// The group-aligned span to read for `[start, start+len)`, when the record has an outboard
    /// and the span is smaller than the chunk; `None` means read the chunk whole.
    fn partial_span(&self, start: u64, len: u64) -> Option<(u64, u64)> {
        if self.outboard == 0 {
            return None;
        }
        let (from, to) = outboard::aligned_span(u64::from(self.len), start, len);
        (from > 0 || to < u64::from(self.len)).then_some((from, to))
    }
}

/// An open pack file (I/O shell): positional reads and appends at a caller-tracked offset.
#[derive(Debug)]
pub struct PackFile {
    pub id: PackId,
    pub path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT`, for [`PackFile::write_blocks`] (see
    /// [`crate::staging`] for why); `None` where the file system refuses it (tmpfs), and
    /// dropped if a direct write is refused.
    direct: parking_lot::Mutex<Option<File>>,
    /// Alignment of writes to this file (see [`crate::staging::BLOCK`]).
    block: u64,
}

impl PackFile {
    /// Creates a new pack with its header, durably (file and directory fsynced).
    pub fn create(dir: &Path, id: PackId) -> Result<PackFile> {
        let path = dir.join(id.file_name());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(format!("create pack {}", path.display()), e))?;
        let made = (|| {
            file.write_all_at(&encode_header(), 0)
                .map_err(|e| Error::io("write pack header", e))?;
            sync_log::wrote(&path, 0, HEADER_LEN);
            let sync = sync_log::begin(&path);
            file.sync_all()
                .map_err(|e| Error::io("fsync new pack", e))?;
            sync_dir(dir)?;
            sync_log::end(&path, sync);
            Ok(())
        })();
        if let Err(e) = made {
            // Left behind (the disk full as its header was written), it made every later
            // roll fail on "File exists" until a restart (QA).
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(PackFile::with_file(id, path, file, true))
    }

    /// A pack on an open file; a writable one also gets its direct-write handle and alignment.
    fn with_file(id: PackId, path: PathBuf, file: File, writable: bool) -> PackFile {
        let direct = writable.then(|| open_direct(&path)).flatten();
        let block = write_alignment(direct.as_ref());
        PackFile {
            id,
            path,
            file,
            direct: parking_lot::Mutex::new(direct),
            block,
        }
    }

    /// This pack written through the page cache instead of with `O_DIRECT`
    /// ([`crate::store::StoreConfig::direct_writes`]), in whole 4 KiB blocks: a later write then
    /// never rewrites, in the page cache, a page that holds acknowledged bytes.
    pub fn cached(self) -> PackFile {
        PackFile {
            direct: parking_lot::Mutex::new(None),
            block: crate::staging::BLOCK,
            ..self
        }
    }

    pub fn open(dir: &Path, id: PackId, writable: bool) -> Result<PackFile> {
        let path = dir.join(id.file_name());
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // The index names this pack: its absence is damage, reported like bad bytes.
                    Error::corrupt(format!("pack {} is missing", path.display()))
                } else {
                    Error::io(format!("open pack {}", path.display()), e)
                }
            })?;
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|_| Error::corrupt(format!("pack {} has no header", path.display())))?;
        check_header(&h).map_err(|e| {
            Error::corrupt(format!(
                "pack {}: {} (its chunks read as corrupt; `cairn fsck` names the files)",
                path.display(),
                e.reason
            ))
        })?;
        Ok(PackFile::with_file(id, path, file, writable))
    }

    /// Truncates pack `id` to `len` and fsyncs it, whatever its header holds: recovery drops
    /// an unindexed tail without reading the pack, so one with a damaged header does not stop
    /// the store from opening (its reads then fail, naming it).
    pub fn truncate_file(dir: &Path, id: PackId, len: u64) -> Result<()> {
        let path = dir.join(id.file_name());
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open pack {}", path.display()), e))?;
        truncate_synced(&file, &path, len)
    }

    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| Error::io("stat pack", e))?
            .len())
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? <= HEADER_LEN)
    }

    /// Writes one record at `offset` through the page cache (tests build packs with it; the
    /// store appends through [`crate::staging`]): `outboard` must be [`outboard::hash_with_outboard`]'s for
    /// `data` (empty for small chunks). Returns the offset past the record.
    #[cfg(test)]
    pub fn write_record(
        &self,
        offset: u64,
        hash: &Digest,
        outboard: &[u8],
        data: &[u8],
    ) -> Result<u64> {
        let len = u32::try_from(data.len()).map_err(|_| Error::too_large("chunk over 4 GiB"))?;
        debug_assert_eq!(outboard.len() as u32, outboard::outboard_len(len));
        let codec = match outboard.is_empty() {
            true => CODEC_RAW,
            false => CODEC_RAW_OUTBOARD,
        };
        let mut head = Vec::with_capacity(RECORD_HEADER_LEN as usize + outboard.len());
        head.extend_from_slice(&encode_record_header(hash, len, codec));
        head.extend_from_slice(outboard);
        self.file
            .write_all_at(&head, offset)
            .map_err(|e| Error::io("append to pack", e))?;
        let data_at = offset + head.len() as u64;
        self.file
            .write_all_at(data, data_at)
            .map_err(|e| Error::io("append to pack", e))?;
        let end = data_at + u64::from(len);
        sync_log::wrote(&self.path, offset, end - offset);
        Ok(end)
    }

    /// Writes whole blocks at a block-aligned offset from block-aligned memory (the
    /// [`crate::staging`] window): direct when the file system allows it, else through the page
    /// cache. Durable only after [`PackFile::sync_data`].
    pub fn write_blocks(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let block = self.block;
        debug_assert!(offset.is_multiple_of(block) && (bytes.len() as u64).is_multiple_of(block));
        let mut direct = self.direct.lock();
        if let Some(f) = direct.as_ref() {
            match f.write_all_at(bytes, offset) {
                Ok(()) => {
                    sync_log::wrote(&self.path, offset, bytes.len() as u64);
                    return Ok(());
                }
                // The device wants another alignment: write through the cache.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    tracing::info!(pack = %self.path.display(), "direct write refused; writing through the page cache");
                    *direct = None;
                }
                Err(e) => return Err(Error::io("append to pack", e)),
            }
        }
        drop(direct);
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io("append to pack", e))?;
        sync_log::wrote(&self.path, offset, bytes.len() as u64);
        Ok(())
    }

    /// Reads a chunk and verifies it: header magic, hash and length must match `expect`, and the
    /// data's blake3 must equal the hash. Anything else is `corrupt`, never returned bytes.
    /// The data comes back as a slice of the one buffer read (no copy).
    pub fn read_chunk(&self, loc: &ChunkLoc, expect: &Digest) -> Result<bytes::Bytes> {
        let buf = self
            .read_pooled(loc.offset, loc.record_len(), Wait::Yes)
            .map_err(|e| read_error(e, loc, expect))?;
        let data = buf.slice((loc.data_offset() - loc.offset) as usize..);
        if !header_matches(&buf, loc, expect) || Digest::of(&data) != *expect {
            return Err(fails_check(loc, expect));
        }
        Ok(data)
    }

    /// Reads bytes `[start, start+len)` of a chunk, verified: only the 16 KiB groups covering
    /// them (and the outboard) when the record has an outboard, else the whole chunk.
    pub fn read_chunk_span(
        &self,
        loc: &ChunkLoc,
        expect: &Digest,
        start: u64,
        len: u64,
    ) -> Result<bytes::Bytes> {
        let read = self.read_chunk_span_with(loc, expect, start, len, Wait::Yes);
        read.map(|b| b.expect("a waiting read is never skipped"))
    }

    /// [`PackFile::read_chunk_span`] served from the page cache only: `Ok(None)` when any
    /// byte would have to come from the disk (or the kernel cannot tell), so an async caller
    /// can read here without blocking its thread and go to a blocking thread otherwise.
    pub fn read_chunk_span_cached(
        &self,
        loc: &ChunkLoc,
        expect: &Digest,
        start: u64,
        len: u64,
    ) -> Result<Option<bytes::Bytes>> {
        self.read_chunk_span_with(loc, expect, start, len, Wait::No)
    }

    fn read_chunk_span_with(
        &self,
        loc: &ChunkLoc,
        expect: &Digest,
        start: u64,
        len: u64,
        wait: Wait,
    ) -> Result<Option<bytes::Bytes>> {
        let skipped = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(read_error(e, loc, expect)),
        };
        let Some((from, to)) = loc.partial_span(start, len) else {
            let buf = match self.read_pooled(loc.offset, loc.record_len(), wait) {
                Ok(b) => b,
                Err(e) => return skipped(e),
            };
            let data = buf.slice((loc.data_offset() - loc.offset) as usize..);
            if !header_matches(&buf, loc, expect) || Digest::of(&data) != *expect {
                return Err(fails_check(loc, expect));
            }
            return slice_of(data, start, len, loc, expect).map(Some);
        };
        let mut head = vec![0u8; RECORD_HEADER_LEN as usize + loc.outboard as usize];
        if let Err(e) = read_exact_at(&self.file, &mut head, loc.offset, wait) {
            return skipped(e);
        }
        let span = match self.read_pooled(loc.data_offset() + from, to - from, wait) {
            Ok(b) => b,
            Err(e) => return skipped(e),
        };
        let ob = &head[RECORD_HEADER_LEN as usize..];
        if !header_matches(&head, loc, expect)
            || !outboard::verify_span(expect, u64::from(loc.len), ob, from, &span)
        {
            return Err(fails_check(loc, expect));
        }
        slice_of(span, start - from, len, loc, expect).map(Some)
    }

    /// Reads the whole record and checks its outboard as well as its data (for fsck: a
    /// damaged outboard only shows in partial reads otherwise).
    pub fn check_record(&self, loc: &ChunkLoc, expect: &Digest) -> Result<u64> {
        let checked = self.check_record_with(loc, expect, Wait::Yes);
        checked.map(|n| n.expect("a waiting read is never skipped"))
    }

    /// [`PackFile::check_record`] from the page cache only: `Ok(None)` when any byte of the
    /// record would have to come from the disk.
    pub fn check_record_cached(&self, loc: &ChunkLoc, expect: &Digest) -> Result<Option<u64>> {
        self.check_record_with(loc, expect, Wait::No)
    }

    fn check_record_with(
        &self,
        loc: &ChunkLoc,
        expect: &Digest,
        wait: Wait,
    ) -> Result<Option<u64>> {
        // One read: header, outboard and data are contiguous.
        let buf = match self.read_pooled(loc.offset, loc.record_len(), wait) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(read_error(e, loc, expect)),
        };
        let data = &buf[(loc.data_offset() - loc.offset) as usize..];
        if !header_matches(&buf, loc, expect) || Digest::of(data) != *expect {
            return Err(fails_check(loc, expect));
        }
        let ob = &buf[RECORD_HEADER_LEN as usize..(loc.data_offset() - loc.offset) as usize];
        if loc.outboard > 0 && outboard::hash_with_outboard(data).1 != ob {
            return Err(Error::corrupt(format!(
                "chunk {} in pack {} at offset {} has a damaged outboard",
                expect, loc.pack.0, loc.offset
            )));
        }
        Ok(Some(data.len() as u64))
    }

    fn read_pooled(&self, at: u64, len: u64, wait: Wait) -> std::io::Result<bytes::Bytes> {
        crate::bufpool::read_into(len as usize, |b| read_exact_at(&self.file, b, at, wait))
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn sync_data(&self) -> Result<()> {
        let sync = sync_log::begin(&self.path);
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync pack", e))?;
        sync_log::end(&self.path, sync);
        Ok(())
    }

    pub fn truncate(&self, len: u64) -> Result<()> {
        truncate_synced(&self.file, &self.path, len)
    }
}

fn truncate_synced(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len)
        .map_err(|e| Error::io("truncate pack", e))?;
    let sync = sync_log::begin(path);
    file.sync_all().map_err(|e| Error::io("fsync pack", e))?;
    sync_log::end(path, sync);
    sync_log::truncated(path, len);
    Ok(())
}

/// Fault-injection support for power-loss tests: when `CAIRN_TEST_SYNC_LOG` names a file, every
/// pack write, truncation and fsync is appended to it, in order, as one line:
///
/// ```text
/// W <pack path> <offset> <len>   a write completed
/// B <pack path> <n>              fsync number n started
/// E <pack path> <n>              fsync number n returned
/// T <pack path> <len>            the pack was truncated to len (and fsynced)
/// ```
///
/// A write is durable once an fsync of the same file that *started after it* has returned. After
/// a `kill -9`, a test replays the log and garbles or cuts every byte that was not durable,
/// which is what a power cut may do to them; recovery must then find every acknowledged byte.
/// Unset (production), each call is one relaxed atomic load.
mod sync_log {
    use std::io::Write;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    fn log() -> Option<&'static std::sync::Mutex<std::fs::File>> {
        static LOG: OnceLock<Option<std::sync::Mutex<std::fs::File>>> = OnceLock::new();
        LOG.get_or_init(|| {
            let path = std::env::var_os("CAIRN_TEST_SYNC_LOG")?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("CAIRN_TEST_SYNC_LOG is writable");
            Some(std::sync::Mutex::new(f))
        })
        .as_ref()
    }

    fn line(args: std::fmt::Arguments<'_>) {
        if let Some(f) = log() {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            // One write(2) per line, so a kill never leaves half a line before a whole one.
            let _ = f.write_all(format!("{args}\n").as_bytes());
        }
    }

    pub fn wrote(path: &Path, offset: u64, len: u64) {
        if log().is_some() {
            line(format_args!("W {} {offset} {len}", path.display()));
        }
    }

    pub fn begin(path: &Path) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if log().is_none() {
            return 0;
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        line(format_args!("B {} {n}", path.display()));
        n
    }

    pub fn end(path: &Path, n: u64) {
        if log().is_some() {
            line(format_args!("E {} {n}", path.display()));
        }
    }

    pub fn truncated(path: &Path, len: u64) {
        if log().is_some() {
            line(format_args!("T {} {len}", path.display()));
        }
    }
}

impl PackFile {
    /// The alignment [`PackFile::write_blocks`] needs.
    pub fn block(&self) -> u64 {
        self.block
    }
}

/// The block appends are padded to: [`crate::staging::BLOCK`] (4 KiB), whatever the device's
/// direct-write alignment (`statx` `STATX_DIOALIGN`, Linux 6.1+) allows below it. A later
/// write must never rewrite a block holding acknowledged bytes, and the unit a device or the
/// page cache rewrites is 4 KiB (a 512-byte logical sector of a drive with 4 KiB physical
/// sectors is written by rewriting the physical one; a page of the cache, after a direct write
/// fell back to it): padding to 512 would leave acknowledged bytes in a block the next commit
/// rewrites (review 30). An alignment over 4 KiB is not met: such a device refuses the direct
/// writes, which then go through the page cache.
fn write_alignment(direct: Option<&File>) -> u64 {
    use crate::staging::BLOCK;
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let Some(f) = direct else { return BLOCK };
    match statx(f, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
        Ok(st) if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN) => {
            let align = u64::from(st.stx_dio_offset_align).max(BLOCK);
            match align.is_power_of_two() && align <= BLOCK {
                true => align,
                false => BLOCK,
            }
        }
        _ => BLOCK,
    }
}

/// Opens `path` for direct writes, or `None` where the file system does not support them.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

/// Fsyncs a directory so that a created, renamed or removed entry is durable.
/// Whether a read may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    /// Page cache only: anything else is a `WouldBlock` error.
    No,
}

/// Set once the kernel or file system refuses `RWF_NOWAIT`; cached reads are then skipped.
static NOWAIT_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether cached reads work here (false once the kernel or file system refused one).
#[cfg(test)]
pub(crate) fn nowait_supported() -> bool {
    !NOWAIT_UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fills `buf` from `offset`; with [`Wait::No`], through `preadv2(RWF_NOWAIT)`, which fails
/// with `EAGAIN` rather than wait for the disk. A short cached read (part of the range not in
/// the page cache, or the end of the file) is reported as `WouldBlock` too: the waiting read
/// that follows tells the two apart.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, wait: Wait) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    let would_block = || std::io::Error::from(std::io::ErrorKind::WouldBlock);
    if wait == Wait::Yes {
        return file.read_exact_at(buf, offset);
    }
    if NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(would_block());
    }
    let flags = rustix::io::ReadWriteFlags::NOWAIT;
    match rustix::io::preadv2(file, &mut [std::io::IoSliceMut::new(buf)], offset, flags) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Err(would_block()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
            NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
            Err(would_block())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a record header read at `loc` is the record the index describes.
fn header_matches(buf: &[u8], loc: &ChunkLoc, expect: &Digest) -> bool {
    let Ok(h) = decode_record_header(buf) else {
        return false;
    };
    let codec_ok = match h.codec {
        CODEC_RAW => loc.outboard == 0,
        CODEC_RAW_OUTBOARD => loc.outboard > 0 && loc.outboard == outboard::outboard_len(h.len),
        _ => false,
    };
    h.hash == *expect && h.len == loc.len && codec_ok
}

fn fails_check(loc: &ChunkLoc, expect: &Digest) -> Error {
    Error::corrupt(format!(
        "chunk {} in pack {} at offset {} fails its blake3 check",
        expect, loc.pack.0, loc.offset
    ))
}

fn read_error(e: std::io::Error, loc: &ChunkLoc, expect: &Digest) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::corrupt(format!(
            "chunk {} is cut short in pack {}",
            expect.short(),
            loc.pack.0
        ))
    } else {
        Error::io("read pack", e)
    }
}

/// `len` bytes at `start` of verified `data`; a range outside it means the part record and
/// the chunk disagree, which is damage.
fn slice_of(
    data: bytes::Bytes,
    start: u64,
    len: u64,
    loc: &ChunkLoc,
    expect: &Digest,
) -> Result<bytes::Bytes> {
    let end = start.checked_add(len).filter(|&e| e <= data.len() as u64);
    match end {
        Some(end) => Ok(data.slice(start as usize..end as usize)),
        None => Err(Error::corrupt(format!(
            "chunk {} in pack {} is shorter than the range read from it",
            expect.short(),
            loc.pack.0
        ))),
    }
}

/// Frees the disk blocks under each of `spans` of the pack file at `path`, keeping its length
/// (`fallocate` hole punching): reads there see zeros. Only whole file-system blocks inside a
/// span are freed, so a record beside one keeps its bytes. It needs no free space, which is why
/// gc uses it on a full disk. `Ok(false)` where the file system cannot punch holes.
pub fn punch_holes(path: &Path, spans: &[(u64, u64)]) -> Result<bool> {
    use rustix::fs::{fallocate, FallocateFlags};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("open {} to free dead records", path.display()), e))?;
    let block = std::os::unix::fs::MetadataExt::blksize(
        &file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?,
    )
    .max(512);
    for &(from, to) in spans {
        let (start, end) = (from.next_multiple_of(block), to / block * block);
        if end <= start {
            continue;
        }
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match fallocate(&file, mode, start, end - start) {
            Ok(()) => {}
            Err(e)
                if [
                    rustix::io::Errno::OPNOTSUPP,
                    rustix::io::Errno::NOSYS,
                    rustix::io::Errno::INVAL,
                ]
                .contains(&e) =>
            {
                return Ok(false)
            }
            Err(e) => {
                return Err(Error::io(
                    format!("free dead records of {}", path.display()),
                    e.into(),
                ))
            }
        }
    }
    Ok(true)
}

/// Bytes the file system has allocated to the file at `path` (0 if it cannot be read).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_record_round_trip() {
        check_header(&encode_header()).unwrap();
        let d = Digest::of(b"x");
        let h = encode_record_header(&d, 7, CODEC_RAW);
        assert_eq!(
            decode_record_header(&h).unwrap(),
            RecordHeader {
                codec: 0,
                len: 7,
                hash: d
            }
        );
        let mut bad = encode_header();
        bad[0] ^= 1;
        assert!(check_header(&bad).is_err());
    }

    #[test]
    fn pack_names() {
        assert_eq!(PackId(255).file_name(), "00000000000000ff.pack");
        assert_eq!(
            PackId::parse_file_name("00000000000000ff.pack"),
            Some(PackId(255))
        );
        assert_eq!(PackId::parse_file_name("ff.pack"), None);
    }

    #[test]
    fn flipped_byte_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = PackFile::create(dir.path(), PackId(1)).unwrap();
        let d = Digest::of(b"hello world");
        let end = p.write_record(HEADER_LEN, &d, &[], b"hello world").unwrap();
        let loc = ChunkLoc {
            pack: PackId(1),
            offset: HEADER_LEN,
            len: 11,
            outboard: 0,
        };
        assert_eq!(loc.end(), end);
        assert_eq!(&p.read_chunk(&loc, &d).unwrap()[..], b"hello world");
        p.file
            .write_all_at(b"J", HEADER_LEN + RECORD_HEADER_LEN)
            .unwrap();
        assert_eq!(
            p.read_chunk(&loc, &d).unwrap_err().kind,
            cairn_core::ErrorKind::Corrupt
        );
    }

    #[test]
    fn partial_reads_fetch_and_verify_only_their_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = PackFile::create(dir.path(), PackId(1)).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let (d, ob) = outboard::hash_with_outboard(&data);
        let end = p.write_record(HEADER_LEN, &d, &ob, &data).unwrap();
        let loc = ChunkLoc {
            pack: PackId(1),
            offset: HEADER_LEN,
            len: data.len() as u32,
            outboard: ob.len() as u32,
        };
        assert_eq!(loc.end(), end);
        assert_eq!(
            loc.read_cost(40_000, 100),
            RECORD_HEADER_LEN + 64 * 6 + 16_384
        );
        assert_eq!(loc.read_cost(0, 100_000), loc.record_len());
        assert_eq!(&p.read_chunk(&loc, &d).unwrap()[..], &data[..]);
        let got = p.read_chunk_span(&loc, &d, 40_000, 30_000).unwrap();
        assert_eq!(&got[..], &data[40_000..70_000]);

        // Damage in a group the span does not cover goes unseen by it, but not by a whole read;
        // damage inside it is caught.
        let data_at = loc.data_offset();
        p.file
            .write_all_at(&[data[99_000] ^ 1], data_at + 99_000)
            .unwrap();
        assert_eq!(
            &p.read_chunk_span(&loc, &d, 0, 100).unwrap()[..],
            &data[..100]
        );
        let corrupt =
            |r: Result<bytes::Bytes>| r.unwrap_err().kind == cairn_core::ErrorKind::Corrupt;
        assert!(corrupt(p.read_chunk(&loc, &d)));
        assert!(corrupt(p.read_chunk_span(&loc, &d, 99_500, 10)));
        p.file
            .write_all_at(&[data[99_000]], data_at + 99_000)
            .unwrap();

        // A damaged outboard fails the partial reads that use it, and fsck's check.
        assert_eq!(p.check_record(&loc, &d).unwrap(), 100_000);
        p.file
            .write_all_at(&[ob[0] ^ 1], HEADER_LEN + RECORD_HEADER_LEN)
            .unwrap();
        assert!(corrupt(
            p.check_record(&loc, &d).map(|_| bytes::Bytes::new())
        ));
        assert!(corrupt(p.read_chunk_span(&loc, &d, 0, 100)));
        assert_eq!(&p.read_chunk(&loc, &d).unwrap()[..], &data[..]);

        // The index and the record must agree on the outboard.
        let lying = ChunkLoc { outboard: 0, ..loc };
        assert!(corrupt(p.read_chunk(&lying, &d)));
    }

    #[test]
    fn chunk_locations_written_before_outboards_still_decode() {
        use cairn_core::record::Record;
        #[derive(serde::Serialize, serde::Deserialize)]
        struct OldChunkLoc {
            pack: PackId,
            offset: u64,
            len: u32,
        }
        impl Record for OldChunkLoc {
            const NAME: &'static str = "chunk location";
        }
        let old = OldChunkLoc {
            pack: PackId(3),
            offset: 16,
            len: 9,
        }
        .encode();
        let loc = ChunkLoc::decode(&old).unwrap();
        assert_eq!(
            (loc.pack, loc.offset, loc.len, loc.outboard),
            (PackId(3), 16, 9, 0)
        );
        // And a location without an outboard is written exactly as before.
        assert_eq!(loc.encode(), old);
    }
}
