//! The RocksDB index: column families, typed batches, and merge-operator counters.
//!
//! Every value is a versioned CBOR [`Record`] except counters, which are 8-byte little-endian
//! integers combined by RocksDB merge operators: `add` for refcounts (so concurrent uploads can
//! reference the same chunk without a read-modify-write), `max` for a pack's committed length (so
//! two commits landing out of order can never move it backwards).

use std::path::Path;

use cairn_core::record::Record;
use cairn_core::{Error, Result};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, MergeOperands,
    Options, WriteBatch, WriteOptions, DB,
};

/// Chunk hash → [`ChunkLoc`](crate::pack::ChunkLoc).
pub const CF_CHUNKS: &str = "chunks";
/// Chunk hash → refcount (add counter): part records and upload-job chunk lists referencing it.
pub const CF_CHUNK_REFS: &str = "chunk_refs";
/// Part key → [`PartRecord`](crate::PartRecord).
pub const CF_PARTS: &str = "parts";
/// Part key → refcount (add counter): tree nodes and sealed upload jobs referencing it.
pub const CF_PART_REFS: &str = "part_refs";
/// Pack id (u64 BE) → [`PackInfo`](crate::store::PackInfo).
pub const CF_PACKS: &str = "packs";
/// Pack id (u64 BE) → committed length (max counter): recovery truncates past it.
pub const CF_PACK_LEN: &str = "pack_len";

/// Store-wide settings fixed when the store was created (key → record), e.g. the chunking.
pub const CF_STORE: &str = "store";

/// How a column family combines merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfKind {
    Plain,
    /// Signed 64-bit sum.
    Add,
    /// Unsigned 64-bit maximum.
    Max,
}

pub(crate) const STORE_CFS: &[(&str, CfKind)] = &[
    (CF_CHUNKS, CfKind::Plain),
    (CF_CHUNK_REFS, CfKind::Add),
    (CF_PARTS, CfKind::Plain),
    (CF_PART_REFS, CfKind::Add),
    (CF_PACKS, CfKind::Plain),
    (CF_PACK_LEN, CfKind::Max),
    (CF_STORE, CfKind::Plain),
];

fn decode_i64(v: &[u8]) -> i64 {
    v.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

fn merge_add(_k: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let sum = ops.iter().fold(existing.map_or(0, decode_i64), |a, op| {
        a.wrapping_add(decode_i64(op))
    });
    Some(sum.to_le_bytes().to_vec())
}

fn merge_max(_k: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let max = ops
        .iter()
        .fold(existing.map_or(0, decode_i64) as u64, |a, op| {
            a.max(decode_i64(op) as u64)
        });
    Some(max.to_le_bytes().to_vec())
}

/// A raw key and value read from the index.
pub type KvEntry = (Box<[u8]>, Box<[u8]>);

/// The open RocksDB database with Cairn's column families.
pub struct Index {
    db: DB,
    cf_names: Vec<&'static str>,
    /// RocksDB's info LOG directory; removed after the database closes (declared after `db`).
    _log: Option<LogDir>,
}

/// Bytes of memtables the whole index may hold before RocksDB flushes.
const MEMTABLE_BUDGET: usize = 32 << 20;

/// How an error opening the index says another process holds it (RocksDB's `LOCK` file).
pub const IN_USE: &str = "the index is in use by another process";

/// Whether RocksDB's message says its lock is held: by another process ("While lock file",
/// from `flock`) or by this one. Matched on RocksDB's own phrases, never on a path, which may
/// say anything ("…/blockstorage/…").
fn is_held(rocksdb_message: &str) -> bool {
    ["While lock file", "lock hold by current process"]
        .iter()
        .any(|p| rocksdb_message.contains(p))
}

/// Whether an error (as text) from opening a store is [`IN_USE`].
pub fn is_in_use(message: &str) -> bool {
    message.contains(IN_USE)
}

/// One block cache for every column family. Left to its defaults, RocksDB gives each column
/// family its own 8 MiB cache: with fifteen of them, the server's memory crept up by ~100 MiB
/// under a long upload soak as each filled.
const BLOCK_CACHE: usize = 16 << 20;

/// Where RocksDB keeps one open index's info LOG (see [`Index::open`]):
/// `/dev/shm/cairn-rocksdb-<uid>/<pid>.<n>/`, removed when the index closes. A process that
/// died leaves its directory behind until the next open by the same user removes it; without
/// that, every data directory ever opened (each test's) left ~100 KB of LOG in shared memory.
/// `None` when shared memory cannot be used: then RocksDB keeps the LOG in the index directory.
struct LogDir(std::path::PathBuf);

impl LogDir {
    fn make(index: &Path) -> Option<LogDir> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        // RocksDB names the file after the index's absolute path, `/` made `_`, plus `_LOG`
        // (and `.old.<µs>` when it rolls): past a file name's 255 bytes it could not open the
        // store at all (QA: a 250-character data path).
        let long = std::path::absolute(index).map_or(usize::MAX, |p| p.as_os_str().len());
        if long.saturating_add(32) > 255 {
            return None;
        }
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // The owner of `/proc/self` is this process's user: one directory per user, so a
        // server run as a service user never finds it made by root.
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let base = std::path::PathBuf::from(format!("/dev/shm/cairn-rocksdb-{uid}"));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&base);
        // Ours alone, or not at all: a directory another user made first (the name is
        // predictable) could swap in a link that RocksDB would follow and truncate.
        let meta = std::fs::symlink_metadata(&base).ok()?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return None;
        }
        for entry in std::fs::read_dir(&base).ok()?.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split_once('.'))
                .map(|(p, _)| p);
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        // A full shared memory aborts the process as a full disk did: room for the two files.
        let room = rustix::fs::statvfs(&base).ok()?;
        if room.f_bavail.saturating_mul(room.f_frsize) < 8 << 20 {
            return None;
        }
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("{}.{n}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).ok()?;
        Some(LogDir(dir))
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Values of at least this size are kept in blob files (see [`Index::open`]).
const LARGE_VALUE: u64 = 1 << 20;

impl Index {
    pub fn open(path: &Path, cfs: &[(&'static str, CfKind)]) -> Result<Index> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // RocksDB's info LOG goes to shared memory, not the data disk. Debian's library is built
        // with assertions on: once a write to that LOG failed (the disk full), its next one
        // aborted the process, and every later open of the store aborted too while the disk
        // stayed full (QA). RocksDB will not open without a LOG file, and the C API this crate
        // binds cannot pass it another logger. Warnings only, at most two files of 1 MiB.
        let log = LogDir::make(path);
        match &log {
            Some(dir) => opts.set_db_log_dir(&dir.0),
            None => tracing::warn!(
                "RocksDB's info LOG is kept in the index directory: a shared-memory directory \
                 could not be used (see operations.md, the data directory); on a full disk a \
                 failed write to it can abort the process"
            ),
        }
        opts.set_log_level(rocksdb::LogLevel::Warn);
        opts.set_max_log_file_size(1 << 20);
        opts.set_keep_log_file_num(2);
        // One cap on the memtables of all column families together (each would otherwise take
        // up to 2 x 64 MiB): upload tails are written here, and under many uploads at once the
        // memtables were the largest part of the server's memory.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        // A log file is kept until every column family with data in it has flushed, and the
        // families written rarely flush rarely: six 8 MiB metadata writes left 48 MiB of logs
        // on a nearly full disk (QA). Past this total RocksDB flushes the families holding the
        // oldest log, so the logs stay near the memtables' size.
        opts.set_max_total_wal_size(MEMTABLE_BUDGET as u64);
        let cache = Cache::new_lru_cache(BLOCK_CACHE)
            .map_err(|e| Error::internal(format!("index block cache: {e}")))?;
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let descriptors = cfs.iter().map(|&(name, kind)| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            // Each column family switches to a new memtable at 8 MiB (RocksDB's default, 64
            // MiB, let one family hold twice the whole budget between flushes).
            o.set_write_buffer_size(MEMTABLE_BUDGET / 4);
            match kind {
                // Large values (a directory of 300,000 files is one ~40 MB node) go to blob
                // files: compaction then moves a reference, not the value. Kept in the SSTs,
                // every compaction that met them read, uncompressed, rebuilt and compressed
                // whole blocks of tens of MiB, and those buffers made most of a large
                // finalize's peak memory (heaptrack: 326 of 401 MiB). Blob GC reclaims the
                // space of values deleted or overwritten.
                CfKind::Plain => {
                    o.set_enable_blob_files(true);
                    o.set_min_blob_size(LARGE_VALUE);
                    o.set_enable_blob_gc(true);
                    // Like the SSTs' blocks: a node's CBOR repeats its field names per entry.
                    o.set_blob_compression_type(rocksdb::DBCompressionType::Lz4);
                }
                CfKind::Add => o.set_merge_operator_associative("cairn_add", merge_add),
                CfKind::Max => o.set_merge_operator_associative("cairn_max", merge_max),
            }
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, descriptors).map_err(|e| {
            let held = is_held(e.as_ref());
            let damaged = e.kind() == rocksdb::ErrorKind::Corruption;
            let e = format!("open index {}: {e}", path.display());
            match (held, damaged) {
                (true, _) => Error::conflict(format!("{IN_USE}: {e}")),
                // A damaged RocksDB file: nothing was changed; the index must come back from a
                // backup taken with its packs (operations.md, "Backup and restore").
                (false, true) => Error::corrupt(format!(
                    "{e}. The index is damaged and nothing was changed: restore the data \
                     directory (index and packs of one moment) from a backup"
                )),
                (false, false) => Error::internal(e),
            }
        })?;
        Ok(Index {
            db,
            cf_names: cfs.iter().map(|&(n, _)| n).collect(),
            _log: log,
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is not registered"))
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(db_err)
    }

    pub fn get_record<T: Record>(&self, cf: &str, key: &[u8]) -> Result<Option<T>> {
        self.get(cf, key)?.map(|v| T::decode(&v)).transpose()
    }

    /// A record of type `R` read as `T`, a view of some of its fields ([`Record::decode_view`]).
    pub fn get_view<R: Record, T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
    ) -> Result<Option<T>> {
        self.get(cf, key)?
            .map(|v| R::decode_view::<T>(&v))
            .transpose()
    }

    pub fn exists(&self, cf: &str, key: &[u8]) -> Result<bool> {
        Ok(self.get(cf, key)?.is_some())
    }

    /// Reads a counter (0 when absent).
    pub fn counter(&self, cf: &str, key: &[u8]) -> Result<i64> {
        Ok(self.get(cf, key)?.map_or(0, |v| decode_i64(&v)))
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub fn scan<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<KvEntry>> + 'a {
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(prefix, Direction::Forward))
            .map(|r| r.map_err(db_err))
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }

    /// Entries with `prefix`, starting at key `start` (inclusive), in key order.
    pub fn scan_from<'a>(
        &'a self,
        cf: &str,
        prefix: &'a [u8],
        start: &'a [u8],
    ) -> impl Iterator<Item = Result<KvEntry>> + 'a {
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::From(start, Direction::Forward))
            .map(|r| r.map_err(db_err))
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            index: self,
            wb: WriteBatch::default(),
        }
    }

    /// Makes every batch written so far durable (the log flushed and fsynced): one fsync for
    /// many batches written with `sync: false`.
    pub fn sync_log(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err)
    }

    /// Applies a batch atomically; with `sync` the WAL is fsynced before returning.
    /// RocksDB groups concurrent synced writers into one fsync.
    pub fn write(&self, batch: Batch<'_>, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch.wb, &wo).map_err(db_err)
    }

    /// A RocksDB integer property of every column family that reports it (memory figures).
    pub fn property_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = u64> + 'a {
        self.cf_names.iter().filter_map(move |cf| {
            self.db
                .property_int_value_cf(self.cf(cf), name)
                .ok()
                .flatten()
        })
    }

    pub fn flush(&self) -> Result<()> {
        for name in &self.cf_names {
            self.db.flush_cf(self.cf(name)).map_err(db_err)?;
        }
        Ok(())
    }
}

fn db_err(e: rocksdb::Error) -> Error {
    let s = e.to_string();
    if e.kind() == rocksdb::ErrorKind::Corruption {
        Error::corrupt(format!("index: {s}"))
    } else if s.contains("No space left") {
        Error::new(cairn_core::ErrorKind::NoSpace, format!("index: {s}"))
    } else {
        Error::internal(format!("index: {s}"))
    }
}

/// A set of changes applied atomically by [`Index::write`].
pub struct Batch<'a> {
    index: &'a Index,
    wb: WriteBatch,
}

impl Batch<'_> {
    /// Bytes the batch will take in the index's log.
    pub fn size_in_bytes(&self) -> u64 {
        self.wb.size_in_bytes() as u64
    }

    pub fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.wb.put_cf(self.index.cf(cf), key, value);
    }

    pub fn put_record<T: Record>(&mut self, cf: &str, key: &[u8], value: &T) {
        self.put(cf, key, &value.encode());
    }

    pub fn delete(&mut self, cf: &str, key: &[u8]) {
        self.wb.delete_cf(self.index.cf(cf), key);
    }

    /// Adds `delta` to an `Add` counter.
    pub fn add(&mut self, cf: &str, key: &[u8], delta: i64) {
        self.wb
            .merge_cf(self.index.cf(cf), key, delta.to_le_bytes());
    }

    /// Raises a `Max` counter to at least `value`.
    pub fn max(&mut self, cf: &str, key: &[u8], value: u64) {
        self.wb
            .merge_cf(self.index.cf(cf), key, value.to_le_bytes());
    }

    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RocksDB's info LOG is written outside the index directory, and its directory goes when
    /// the index closes (each data directory ever opened used to leave one behind).
    #[test]
    fn the_info_log_is_kept_apart_and_removed_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), &[("t", CfKind::Plain)]).unwrap();
        let names = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .map(|r| {
                    r.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let Some(log) = index._log.as_ref().map(|l| l.0.clone()) else {
            return; // no shared memory here: RocksDB keeps it in the index directory
        };
        assert!(!names(dir.path()).iter().any(|n| n.contains("LOG")));
        assert!(names(&log).iter().any(|n| n.ends_with("LOG")), "{log:?}");
        drop(index);
        assert!(!log.exists(), "{log:?} left behind");
    }

    /// A long index path opens (its LOG name would pass a file name's 255 bytes in shared
    /// memory: the LOG is then kept in the index directory).
    #[test]
    fn a_long_index_path_opens() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("x".repeat(230)).join("index");
        let index = Index::open(&long, &[("t", CfKind::Plain)]).unwrap();
        assert!(index._log.is_none());
        assert!(long.join("LOG").exists());
    }

    /// A damaged table file stops the open as `corrupt` (QA: it said `internal`), with the
    /// operator's next step, and changes nothing.
    #[test]
    fn a_damaged_table_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = [("t", CfKind::Plain)];
        {
            let index = Index::open(dir.path(), &cfs).unwrap();
            let mut b = index.batch();
            for i in 0u32..2000 {
                b.put("t", &i.to_be_bytes(), &[7u8; 64]);
            }
            index.write(b, true).unwrap();
            index.flush().unwrap();
        }
        let sst = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "sst"))
            .unwrap();
        let mut raw = std::fs::read(&sst).unwrap();
        // The block index and properties, near the end: read when the table is opened.
        let end = raw.len() - 60;
        for b in &mut raw[end - 400..end] {
            *b ^= 0x5a;
        }
        std::fs::write(&sst, &raw).unwrap();
        let Err(e) = Index::open(dir.path(), &cfs) else {
            panic!("a damaged table file was opened");
        };
        assert_eq!(e.kind, cairn_core::ErrorKind::Corrupt, "{e}");
        assert_eq!(std::fs::read(&sst).unwrap(), raw, "nothing changed");
    }
}
