//! Garbage collection: delete parts and chunks whose refcount reached zero, then repack sealed
//! packs that are mostly dead.
//!
//! Deletions run under the store's `ref_guard` (parts) and pin lock (chunks), so nothing that a
//! concurrent upload or finalize is about to reference can disappear. Repacking is crash-safe:
//! live chunks are copied and fsynced first, one batch moves their locations and marks the old
//! pack retired, and only then is the old file deleted (recovery deletes it if a crash came first).

use std::collections::{HashMap, HashSet};

use cairn_core::record::Record;
use cairn_core::{Digest, ErrorKind, Result};
use serde::Serialize;

use crate::index::{CF_CHUNKS, CF_CHUNK_REFS, CF_PACKS, CF_PACK_LEN, CF_PARTS, CF_PART_REFS};
use crate::pack::{ChunkLoc, PackId, HEADER_LEN};
use crate::store::{counter_value, pack_files, PackInfo, PackState, PartRecord, Store};

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be done without changing anything.
    pub dry_run: bool,
    /// Repack a sealed pack when less than this fraction of its bytes is live.
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            repack_below: 0.5,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub parts_deleted: u64,
    pub chunks_deleted: u64,
    pub chunk_bytes_deleted: u64,
    pub packs_repacked: u64,
    pub packs_deleted: u64,
    /// Packs whose dead records were freed in place (hole punching) because the disk had no
    /// room to repack them.
    pub packs_punched: u64,
    pub live_bytes_moved: u64,
    /// Pack file bytes returned to the file system.
    pub disk_bytes_freed: u64,
    /// Chunks left in place because reading them failed verification: evidence for fsck.
    pub corrupt_chunks_kept: u64,
}

/// Reference counts a dry run would have released, by index key: a dry run commits nothing, so
/// its later steps (and a caller's: dead tree nodes release parts) subtract these instead.
pub type Released = HashMap<Box<[u8]>, i64>;

/// What a dry run would have committed, so that its later steps see it.
#[derive(Default)]
struct DryRun {
    parts: Released,
    chunks: Released,
    dead_chunks: HashSet<Digest>,
}

impl Store {
    /// Runs one garbage collection pass.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        self.gc_after(opts, Released::new())
    }

    /// [`Store::gc`] after a caller's own dry run, which would have released `parts` (part key
    /// → references): a dry run then reports the parts, chunks and packs those would free too.
    pub fn gc_after(&self, opts: &GcOptions, parts: Released) -> Result<GcReport> {
        let _one = self.gc_lock.lock();
        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        let mut dry = DryRun {
            parts,
            ..DryRun::default()
        };
        self.gc_parts(opts, &mut report, &mut dry)?;
        self.gc_chunks(opts, &mut report, &mut dry)?;
        self.repack(opts, &mut report, &dry)?;
        Ok(report)
    }

    /// Keys of the counter family `cf` at or below zero once `released` is taken off.
    fn dead_keys(&self, cf: &str, released: &Released) -> Result<Vec<Box<[u8]>>> {
        let mut dead = Vec::new();
        for entry in self.index().scan(cf, &[]) {
            let (k, v) = entry?;
            if counter_value(&v) - released.get(&k).copied().unwrap_or(0) <= 0 {
                dead.push(k);
            }
        }
        Ok(dead)
    }

    /// A counter now, less what a dry run has released of it.
    fn count_after(&self, cf: &str, key: &[u8], released: &Released) -> Result<i64> {
        Ok(self.index().counter(cf, key)? - released.get(key).copied().unwrap_or(0))
    }

    fn gc_parts(&self, opts: &GcOptions, report: &mut GcReport, dry: &mut DryRun) -> Result<()> {
        let guard = self.ref_guard();
        let mut batch = self.index().batch();
        for (n, key) in self
            .dead_keys(CF_PART_REFS, &dry.parts)?
            .into_iter()
            .enumerate()
        {
            // Committed in slices: one batch for a large delete would be tens of megabytes of
            // log and memtable, taking the index's reserved room (review 33).
            if n > 0 && n % GC_SLICE == 0 && !opts.dry_run && !batch.is_empty() {
                self.commit(std::mem::replace(&mut batch, self.index().batch()))?;
            }
            if self.count_after(CF_PART_REFS, &key, &dry.parts)? > 0 {
                continue;
            }
            if let Some(part) = self.index().get_record::<PartRecord>(CF_PARTS, &key)? {
                self.release_chunks(&mut batch, &part.chunks);
                if opts.dry_run {
                    for c in &part.chunks {
                        *dry.chunks.entry(c.hash.as_bytes()[..].into()).or_default() += 1;
                    }
                }
            }
            batch.delete(CF_PARTS, &key);
            batch.delete(CF_PART_REFS, &key);
            report.parts_deleted += 1;
        }
        if !opts.dry_run && !batch.is_empty() {
            self.commit(batch)?;
        }
        drop(guard);
        Ok(())
    }

    fn gc_chunks(&self, opts: &GcOptions, report: &mut GcReport, dry: &mut DryRun) -> Result<()> {
        let dead = self.dead_keys(CF_CHUNK_REFS, &dry.chunks)?;
        // In slices, each decided and committed under the locks on its own: the batch stays
        // small (the index's reserved room), and uploads, which take the pin lock on the async
        // threads, wait for one slice at most, not for the whole delete (review 33).
        for slice in dead.chunks(GC_SLICE) {
            self.gc_chunk_slice(slice, opts, report, dry)?;
        }
        Ok(())
    }

    fn gc_chunk_slice(
        &self,
        dead: &[Box<[u8]>],
        opts: &GcOptions,
        report: &mut GcReport,
        dry: &mut DryRun,
    ) -> Result<()> {
        let pins = self.pins();
        // From each count read to the deletes' commit, no session commits a chunk location
        // (`WriteSession::commit`): one that wrote its own copy of a dead chunk would otherwise
        // have its location and reference deleted with the dead copy's.
        let no_commits = self.chunk_commits.write();
        let mut batch = self.index().batch();
        let mut forget = Vec::new();
        for key in dead {
            let digest = Digest::from_slice(key);
            let pinned = digest.is_some_and(|d| pins.contains_key(&d));
            if pinned || self.count_after(CF_CHUNK_REFS, key, &dry.chunks)? > 0 {
                continue;
            }
            if let (true, Some(d)) = (opts.dry_run, digest) {
                dry.dead_chunks.insert(d);
            }
            if let Some(loc) = self.index().get_record::<ChunkLoc>(CF_CHUNKS, key)? {
                report.chunk_bytes_deleted += u64::from(loc.len);
            }
            batch.delete(CF_CHUNKS, key);
            batch.delete(CF_CHUNK_REFS, key);
            if let (false, Some(d)) = (opts.dry_run, Digest::from_slice(key)) {
                forget.push(d);
            }
            report.chunks_deleted += 1;
        }
        #[cfg(test)]
        if let Some(decided) = self.gc_decided.lock().take() {
            decided();
        }
        if !opts.dry_run && !batch.is_empty() {
            self.commit(batch)?;
        }
        // After the commit: a read that looked a location up meanwhile cached it again.
        for d in &forget {
            self.forget_location(d);
        }
        drop(no_commits);
        drop(pins);
        Ok(())
    }

    /// Live record bytes per pack, from the chunk index, less the chunks a dry run found dead.
    /// Only sums: the chunks themselves are listed for the packs gc then works on
    /// ([`Store::live_in`]), not for the whole store (review 33: every chunk location in memory,
    /// about 0.9 GB a TiB stored).
    fn live_sums(&self, dead: &HashSet<Digest>) -> Result<HashMap<PackId, u64>> {
        let mut sums: HashMap<PackId, u64> = HashMap::new();
        for entry in self.index().scan(CF_CHUNKS, &[]) {
            let (k, v) = entry?;
            let loc = ChunkLoc::decode(&v)?;
            let hash = Digest::from_slice(&k)
                .ok_or_else(|| cairn_core::Error::corrupt("chunk key is not 32 bytes"))?;
            if !dead.contains(&hash) {
                *sums.entry(loc.pack).or_default() += loc.record_len();
            }
        }
        Ok(sums)
    }

    /// The live chunks of `packs`, from a scan taken now. Between [`Store::live_sums`] and this
    /// scan a sealed pack not in use only loses locations (gc, a heal moving one out), never
    /// gains one: appends go to the open pack.
    fn live_in(
        &self,
        packs: &HashSet<PackId>,
        dead: &HashSet<Digest>,
    ) -> Result<HashMap<PackId, Vec<(Digest, ChunkLoc)>>> {
        let mut live: HashMap<PackId, Vec<(Digest, ChunkLoc)>> = HashMap::new();
        if packs.is_empty() {
            return Ok(live);
        }
        for entry in self.index().scan(CF_CHUNKS, &[]) {
            let (k, v) = entry?;
            let loc = ChunkLoc::decode(&v)?;
            if !packs.contains(&loc.pack) {
                continue;
            }
            let hash = Digest::from_slice(&k)
                .ok_or_else(|| cairn_core::Error::corrupt("chunk key is not 32 bytes"))?;
            if !dead.contains(&hash) {
                live.entry(loc.pack).or_default().push((hash, loc));
            }
        }
        Ok(live)
    }

    fn repack(&self, opts: &GcOptions, report: &mut GcReport, dry: &DryRun) -> Result<()> {
        // Packs with a write session's uncommitted chunks are skipped: those chunks are not in
        // the index yet and would look dead. Sealed packs get no new appends, so a pack not in
        // use now stays so, and the scan below (taken after this) sees all its live chunks.
        // The open pack is read first: one that an upload fills and seals while the scan runs
        // is at or above it, so it is never judged by a scan taken while it was still filling.
        let mut open = self.open_pack_id();
        let mut in_use = self.packs_in_use();
        let mut live = self.live_sums(&dry.dead_chunks)?;
        // A mostly dead open pack is sealed first, so that deleting something and running gc
        // frees its bytes now rather than once the pack has filled up. Sealing it may race
        // with commits into it, so the in-use set and the scan are taken again, in that order.
        let seal_open = |id: PackId, len: u64| {
            !in_use.contains(&id) && mostly_dead(live_bytes(&live, id), len, opts)
        };
        // Without room to write, dead records are freed where they are instead (see
        // [`Store::punch_dead`]): from the first refused write on, for every pack.
        let mut no_room = false;
        if opts.dry_run {
            let open = self.open_pack_id();
            let len = pack_len(self, open);
            if seal_open(open, len) {
                report.packs_repacked += 1;
                let held = on_disk(self, open);
                report.disk_bytes_freed += held.saturating_sub(live_bytes(&live, open));
            }
        } else {
            match self.seal_open_pack_if(seal_open) {
                Ok(true) => {
                    open = self.open_pack_id();
                    in_use = self.packs_in_use();
                    live = self.live_sums(&dry.dead_chunks)?;
                }
                Ok(false) => {}
                Err(e) if e.kind == ErrorKind::NoSpace => {
                    no_room = true;
                    self.punch_open_pack(report)?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut chosen = Vec::new();
        for id in pack_files(self.pack_dir())? {
            let sealed = matches!(
                self.index()
                    .get_record::<PackInfo>(CF_PACKS, &id.0.to_be_bytes())?,
                Some(PackInfo {
                    state: PackState::Sealed
                })
            );
            if id >= open || !sealed || in_use.contains(&id) {
                continue;
            }
            let size = pack_len(self, id);
            if mostly_dead(live_bytes(&live, id), size, opts) {
                chosen.push((id, size));
            }
        }
        let chunks_of = match opts.dry_run {
            true => HashMap::new(),
            false => self.live_in(
                &chosen.iter().map(|&(id, _)| id).collect(),
                &dry.dead_chunks,
            )?,
        };
        for (id, size) in chosen {
            let chunks = chunks_of.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            let live_now = match opts.dry_run {
                true => live_bytes(&live, id),
                false => chunks.iter().map(|(_, l)| l.record_len()).sum(),
            };
            if opts.dry_run {
                report.packs_repacked += 1;
                report.disk_bytes_freed += on_disk(self, id).saturating_sub(live_now);
                continue;
            }
            // Without room for its live bytes (and a margin for the index), repacking would
            // fill the disk part-way and fail: it is not tried.
            no_room |= !chunks.is_empty()
                && crate::room::free_bytes(self.pack_dir())
                    < live_now + ROOM_MARGIN + self.config().min_free;
            // A pack with nothing live is deleted without writing anything, room or not.
            if !no_room || chunks.is_empty() {
                match self.repack_one(id, chunks, report) {
                    Err(e) if e.kind == ErrorKind::NoSpace => no_room = true,
                    r => {
                        r?;
                        continue;
                    }
                }
            }
            self.punch_dead(id, chunks, size, report)?;
        }
        if no_room {
            tracing::warn!(
                packs = report.packs_punched,
                freed = report.disk_bytes_freed,
                "gc found no room to repack: dead records were freed in place; run gc again \
                 once there is room, to repack those packs"
            );
        }
        Ok(())
    }

    /// Frees the disk blocks of `pack`'s dead records below `end` (those outside `live`, its
    /// live records) without writing anything: hole punching, for a disk too full to repack
    /// (copying the live records out needs room first). The pack keeps its length and its live
    /// records their places; a later gc with room repacks it as usual.
    fn punch_dead(
        &self,
        pack: PackId,
        live: &[(Digest, ChunkLoc)],
        end: u64,
        report: &mut GcReport,
    ) -> Result<()> {
        let path = self.pack_dir().join(pack.file_name());
        if !path.exists() {
            return Ok(()); // repacked after all: its deletion went through, its index entry not
        }
        let before = crate::pack::allocated_bytes(&path);
        let mut records: Vec<(u64, u64)> = live.iter().map(|(_, l)| (l.offset, l.end())).collect();
        records.sort_unstable();
        // A pack that cannot be punched is left as it is, and gc goes on with the others.
        match crate::pack::punch_holes(&path, &dead_spans(&records, HEADER_LEN, end)) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    pack = pack.0,
                    "this file system cannot free dead records in place"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(pack = pack.0, error = %e, "dead records not freed in place");
                return Ok(());
            }
        }
        // Counted when blocks came free (a pack punched by an earlier gc frees none).
        let freed = before.saturating_sub(crate::pack::allocated_bytes(&path));
        if freed > 0 {
            report.packs_punched += 1;
            report.disk_bytes_freed += freed;
        }
        Ok(())
    }

    /// [`Store::punch_dead`] for the open pack, when sealing it found no room. Only while no
    /// upload holds uncommitted records in it, and only below its end then: every record there
    /// is committed (so the scan, taken after, sees the live ones) or abandoned, and appends
    /// made meanwhile go above it.
    fn punch_open_pack(&self, report: &mut GcReport) -> Result<()> {
        let Some((open, end)) = self.quiet_open_pack() else {
            return Ok(());
        };
        let live = self.live_in(&HashSet::from([open]), &HashSet::new())?;
        let chunks = live.get(&open).map(Vec::as_slice).unwrap_or(&[]);
        self.punch_dead(open, chunks, end, report)
    }

    fn repack_one(
        &self,
        id: PackId,
        chunks: &[(Digest, ChunkLoc)],
        report: &mut GcReport,
    ) -> Result<()> {
        let read = |hash: &Digest, loc: &ChunkLoc| {
            self.read_chunk(&crate::ChunkRef {
                hash: *hash,
                len: loc.len,
            })
        };
        // Every live chunk is verified before any is copied: a corrupt one keeps the pack for
        // fsck, and nothing was copied for nothing.
        for (hash, loc) in chunks {
            match read(hash, loc) {
                Ok(_) => {}
                Err(e) if e.kind == cairn_core::ErrorKind::Corrupt => {
                    tracing::warn!(pack = id.0, chunk = %hash, "corrupt chunk: pack kept for fsck");
                    report.corrupt_chunks_kept += 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        // Copied back to back and made durable by one fsync before the index names them: one
        // sync (and one pad to a 4 KiB block) per record left small records a block each, so
        // the copy was mostly padding and every later gc repacked it again (review 33).
        let mut batch = self.index().batch();
        let mut last = None;
        for (hash, loc) in chunks {
            let data = match read(hash, loc) {
                Ok(d) => d,
                // Damaged since the first read: kept for fsck all the same. The copies made so
                // far are dead bytes of the open pack, named by no index entry.
                Err(e) if e.kind == cairn_core::ErrorKind::Corrupt => {
                    tracing::warn!(pack = id.0, chunk = %hash, "corrupt chunk: pack kept for fsck");
                    report.corrupt_chunks_kept += 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let (new, end) = self.append_unsynced(hash, &data)?;
            batch.put_record(CF_CHUNKS, hash.as_bytes(), &new);
            batch.max(CF_PACK_LEN, &new.pack.0.to_be_bytes(), new.end());
            report.live_bytes_moved += u64::from(loc.len);
            last = last.max(Some((new.pack, end)));
        }
        if let Some((pack, end)) = last {
            self.sync_through(pack, end)?;
        }
        let key = id.0.to_be_bytes();
        batch.put_record(
            CF_PACKS,
            &key,
            &PackInfo {
                state: PackState::Retired,
            },
        );
        self.commit(batch)?;
        for (hash, _) in chunks {
            self.forget_location(hash);
        }
        self.forget_pack(id);
        let path = self.pack_dir().join(id.file_name());
        let held = on_disk(self, id);
        std::fs::remove_file(&path)
            .map_err(|e| cairn_core::Error::io("remove repacked pack", e))?;
        crate::pack::sync_dir(self.pack_dir())?;
        let mut done = self.index().batch();
        done.delete(CF_PACKS, &key);
        done.delete(CF_PACK_LEN, &key);
        self.commit(done)?;
        let moved: u64 = chunks.iter().map(|(_, l)| l.record_len()).sum();
        report.packs_deleted += 1;
        report.packs_repacked += 1;
        report.disk_bytes_freed += held.saturating_sub(moved);
        Ok(())
    }
}

/// Dead parts or chunks gc deletes per index batch (and, for chunks, per hold of the pin and
/// commit locks): a few hundred kilobytes of log each.
const GC_SLICE: usize = 4096;

/// Free room gc wants beyond a pack's live bytes before it repacks it: for the index's writes
/// and the open pack's alignment.
const ROOM_MARGIN: u64 = 64 << 20;

/// The parts of `[from, to)` that no record of `records` (sorted `(start, end)` spans) covers.
fn dead_spans(records: &[(u64, u64)], from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut dead = Vec::new();
    let mut at = from;
    for &(start, end) in records {
        if start.min(to) > at {
            dead.push((at, start.min(to)));
        }
        at = at.max(end);
    }
    if at < to {
        dead.push((at, to));
    }
    dead
}

/// Record bytes of `pack` that the chunk index still names.
fn live_bytes(live: &HashMap<PackId, u64>, pack: PackId) -> u64 {
    live.get(&pack).copied().unwrap_or(0)
}

/// Whether a pack of `size` bytes with `live_bytes` of live records is worth repacking.
fn mostly_dead(live_bytes: u64, size: u64, opts: &GcOptions) -> bool {
    (live_bytes as f64) < opts.repack_below * (size.saturating_sub(HEADER_LEN) as f64)
}

/// Bytes a pack holds on disk: its length, or its allocated blocks when fewer (a pack gc
/// punched holes in), so that repacking a punched pack is not counted as freeing its length.
fn on_disk(store: &Store, id: PackId) -> u64 {
    let path = store.pack_dir().join(id.file_name());
    pack_len(store, id).min(crate::pack::allocated_bytes(&path))
}

fn pack_len(store: &Store, id: PackId) -> u64 {
    std::fs::metadata(store.pack_dir().join(id.file_name()))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::dead_spans;

    #[test]
    fn dead_spans_are_the_gaps_between_records_below_the_end() {
        assert_eq!(dead_spans(&[], 16, 100), vec![(16, 100)]);
        assert_eq!(
            dead_spans(&[(16, 30), (40, 50), (50, 60), (90, 120)], 16, 100),
            vec![(30, 40), (60, 90)]
        );
        assert_eq!(dead_spans(&[(20, 30)], 16, 25), vec![(16, 20)]);
        assert_eq!(dead_spans(&[(16, 100)], 16, 100), vec![]);
        assert_eq!(dead_spans(&[(200, 300)], 16, 100), vec![(16, 100)]);
    }
}
