//! Consistency check: every index entry resolves, every chunk verifies, refcounts add up.
//!
//! The store knows the references parts hold on chunks; references held by the upper layers
//! (upload jobs on chunks, tree nodes and upload jobs on parts) are passed in by the caller.

use std::collections::{BTreeMap, HashMap};

use cairn_core::record::Record;
use cairn_core::{Digest, ErrorKind, Result};
use serde::Serialize;

use crate::index::{CF_CHUNKS, CF_CHUNK_REFS, CF_PARTS, CF_PART_REFS};
use crate::pack::ChunkLoc;
use crate::store::{counter_value, part_key, ChunkRef, PartRecord, Store};

#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub parts_checked: u64,
    /// Chunks whose bytes fail their blake3 check (or cannot be read).
    pub corrupt_chunks: Vec<Digest>,
    /// Chunks referenced by a part but absent from the index: (part key hex, chunk).
    pub missing_chunks: Vec<(String, Digest)>,
    /// Parts whose chunks are corrupt or missing, as part keys (hex).
    pub damaged_parts: Vec<String>,
    /// The damaged parts whose own record is unreadable or disagrees with its key: damage to
    /// the index itself, unlike a corrupt chunk's bytes.
    #[serde(skip)]
    pub unreadable_parts: Vec<String>,
    /// Human descriptions of refcounts that do not match the references found.
    pub refcount_mismatches: Vec<String>,
    /// Counter corrections (column family, key, correct value) that `--repair` applies.
    #[serde(skip)]
    pub refcount_fixes: Vec<(&'static str, Vec<u8>, i64)>,
    /// Counters corrected by a repair run.
    pub repaired: u64,
    /// Pack files on disk that the index does not know (neither committed to nor the pack
    /// being appended to): left behind by a crash that recovery did not clean up.
    pub orphan_packs: Vec<String>,
}

impl Store {
    /// Sets every mismatched counter to the count of references found (one batch).
    pub fn apply_refcount_fixes(&self, report: &mut FsckReport) -> Result<()> {
        let mut b = self.index().batch();
        for (cf, key, value) in &report.refcount_fixes {
            b.delete(cf, key);
            b.add(cf, key, *value);
        }
        if !b.is_empty() {
            self.commit(b)?;
        }
        report.repaired = report.refcount_fixes.len() as u64;
        Ok(())
    }
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt_chunks.is_empty()
            && self.missing_chunks.is_empty()
            && self.damaged_parts.is_empty()
            && self.refcount_mismatches.is_empty()
            && self.orphan_packs.is_empty()
    }
}

/// References held outside the store, counted by the caller.
#[derive(Debug, Default)]
pub struct ExternalRefs {
    pub chunks: HashMap<Digest, i64>,
    /// Keyed by [`part_key`](crate::part_key).
    pub parts: HashMap<Vec<u8>, i64>,
}

impl Store {
    /// Runs with gc excluded, so the counts compared are one consistent picture.
    pub fn fsck(&self, external: &ExternalRefs) -> Result<FsckReport> {
        let _no_gc = self.gc_lock.lock();
        self.fsck_unlocked(external)
    }

    /// Excludes gc until the guard is dropped (for callers that check and then repair).
    pub fn gc_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.gc_lock.lock()
    }

    /// [`Store::fsck`] for a caller holding [`Store::gc_guard`].
    pub fn fsck_unlocked(&self, external: &ExternalRefs) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        self.verify_chunks(&mut report)?;
        let mut chunk_refs = external.chunks.clone();
        self.check_parts(&mut report, &mut chunk_refs)?;
        let chunk_refs: HashMap<Vec<u8>, i64> = chunk_refs
            .into_iter()
            .map(|(d, n)| (d.as_bytes().to_vec(), n))
            .collect();
        self.compare_refs(CF_CHUNK_REFS, "chunk", &chunk_refs, &mut report)?;
        self.compare_refs(CF_PART_REFS, "part", &external.parts, &mut report)?;
        report.orphan_packs = self.orphan_packs()?;
        Ok(report)
    }

    fn verify_chunks(&self, report: &mut FsckReport) -> Result<()> {
        self.drop_cached_packs();
        for entry in self.index().scan(CF_CHUNKS, &[]) {
            let (k, v) = entry?;
            let hash = Digest::from_slice(&k).unwrap_or_default();
            let loc = match ChunkLoc::decode(&v) {
                Ok(l) => l,
                Err(_) => {
                    report.corrupt_chunks.push(hash);
                    continue;
                }
            };
            report.chunks_checked += 1;
            match self.check_chunk(&ChunkRef { hash, len: loc.len }) {
                Ok(n) => report.bytes_checked += n,
                Err(e) if e.kind == ErrorKind::Corrupt => report.corrupt_chunks.push(hash),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn check_parts(
        &self,
        report: &mut FsckReport,
        chunk_refs: &mut HashMap<Digest, i64>,
    ) -> Result<()> {
        // A set: a part's chunks were each looked up in the list (parts × corrupt chunks).
        let corrupt: std::collections::HashSet<Digest> =
            report.corrupt_chunks.iter().copied().collect();
        for entry in self.index().scan(CF_PARTS, &[]) {
            let (k, v) = entry?;
            let key_hex = hex(&k);
            report.parts_checked += 1;
            let part = match PartRecord::decode(&v) {
                Ok(p) => p,
                Err(_) => {
                    report.unreadable_parts.push(key_hex.clone());
                    report.damaged_parts.push(key_hex);
                    continue;
                }
            };
            let sum: u64 = part.chunks.iter().map(|c| u64::from(c.len)).sum();
            let mut damaged = k[..] != part_key(&part.digest, sum)[..];
            if damaged {
                report.unreadable_parts.push(key_hex.clone());
            }
            for c in &part.chunks {
                *chunk_refs.entry(c.hash).or_default() += 1;
                if !self.index().exists(CF_CHUNKS, c.hash.as_bytes())? {
                    report.missing_chunks.push((key_hex.clone(), c.hash));
                    damaged = true;
                }
                damaged |= corrupt.contains(&c.hash);
            }
            if damaged {
                report.damaged_parts.push(key_hex);
            }
        }
        Ok(())
    }

    fn compare_refs(
        &self,
        cf: &'static str,
        what: &str,
        expected: &HashMap<Vec<u8>, i64>,
        report: &mut FsckReport,
    ) -> Result<()> {
        let mut stored: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for entry in self.index().scan(cf, &[]) {
            let (k, v) = entry?;
            stored.insert(k.to_vec(), counter_value(&v));
        }
        for (k, &want) in expected {
            let have = stored.remove(k).unwrap_or(0);
            if have != want {
                report.refcount_mismatches.push(format!(
                    "{what} {}: refcount {have}, references {want}",
                    hex(k)
                ));
                report.refcount_fixes.push((cf, k.clone(), want));
            }
        }
        for (k, have) in stored {
            if have != 0 {
                report
                    .refcount_mismatches
                    .push(format!("{what} {}: refcount {have}, references 0", hex(&k)));
                report.refcount_fixes.push((cf, k, 0));
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
