//! Pack files: append-only files of chunk records.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! header  : magic "CAIRNPAK" (8) | format version u32 | reserved u32           = 16 bytes
//! record  : magic "CREC" (4) | codec u8 | reserved [u8;3] | len u32 | blake3 (32) = 44 bytes
//!           followed by `len` bytes of chunk data
//! ```
//!
//! The format functions here are pure; [`PackFile`] is the thin I/O shell (positional reads and
//! writes, fsync). A record carries its own hash, so a pack can be re-indexed or checked without
//! the index; the index remains the authority on which records are live.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_core::{Digest, Error, Result};

pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPAK";
pub const PACK_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
pub const RECORD_MAGIC: &[u8; 4] = b"CREC";
pub const RECORD_HEADER_LEN: u64 = 44;
/// Codec byte for uncompressed chunk data (the only codec so far; the byte reserves room for zstd).
pub const CODEC_RAW: u8 = 0;

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

/// Where a chunk's record starts, and its data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLoc {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
}

impl ChunkLoc {
    /// Offset just past the record.
    pub fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN + u64::from(self.len)
    }
}

/// An open pack file (I/O shell): positional reads and appends at a caller-tracked offset.
#[derive(Debug)]
pub struct PackFile {
    pub id: PackId,
    pub path: PathBuf,
    file: File,
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
        file.write_all_at(&encode_header(), 0)
            .map_err(|e| Error::io("write pack header", e))?;
        sync_log::wrote(&path, 0, HEADER_LEN);
        let sync = sync_log::begin(&path);
        file.sync_all()
            .map_err(|e| Error::io("fsync new pack", e))?;
        sync_dir(dir)?;
        sync_log::end(&path, sync);
        Ok(PackFile { id, path, file })
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
        check_header(&h)?;
        Ok(PackFile { id, path, file })
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

    /// Writes one record at `offset`; returns the offset past it.
    pub fn write_record(&self, offset: u64, hash: &Digest, data: &[u8]) -> Result<u64> {
        let len = u32::try_from(data.len()).map_err(|_| Error::too_large("chunk over 4 GiB"))?;
        let header = encode_record_header(hash, len, CODEC_RAW);
        self.file
            .write_all_at(&header, offset)
            .map_err(|e| Error::io("append to pack", e))?;
        self.file
            .write_all_at(data, offset + RECORD_HEADER_LEN)
            .map_err(|e| Error::io("append to pack", e))?;
        sync_log::wrote(&self.path, offset, RECORD_HEADER_LEN + u64::from(len));
        Ok(offset + RECORD_HEADER_LEN + u64::from(len))
    }

    /// Reads a chunk and verifies it: header magic, hash and length must match `expect`, and the
    /// data's blake3 must equal the hash. Anything else is `corrupt`, never returned bytes.
    /// The data comes back as a slice of the one buffer read (no copy).
    pub fn read_chunk(&self, loc: &ChunkLoc, expect: &Digest) -> Result<bytes::Bytes> {
        let want = (RECORD_HEADER_LEN + u64::from(loc.len)) as usize;
        let buf = crate::bufpool::read_into(want, |b| self.file.read_exact_at(b, loc.offset))
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::corrupt(format!(
                        "chunk {} is cut short in pack {}",
                        expect.short(),
                        loc.pack.0
                    ))
                } else {
                    Error::io("read pack", e)
                }
            })?;
        let h = decode_record_header(&buf)?;
        let data = buf.slice(RECORD_HEADER_LEN as usize..);
        if h.hash != *expect
            || h.len != loc.len
            || h.codec != CODEC_RAW
            || Digest::of(&data) != *expect
        {
            return Err(Error::corrupt(format!(
                "chunk {} in pack {} at offset {} fails its blake3 check",
                expect, loc.pack.0, loc.offset
            )));
        }
        Ok(data)
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
        self.file
            .set_len(len)
            .map_err(|e| Error::io("truncate pack", e))?;
        let sync = sync_log::begin(&self.path);
        self.file
            .sync_all()
            .map_err(|e| Error::io("fsync pack", e))?;
        sync_log::end(&self.path, sync);
        sync_log::truncated(&self.path, len);
        Ok(())
    }
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

/// Fsyncs a directory so that a created, renamed or removed entry is durable.
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
        let end = p.write_record(HEADER_LEN, &d, b"hello world").unwrap();
        let loc = ChunkLoc {
            pack: PackId(1),
            offset: HEADER_LEN,
            len: 11,
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
}
