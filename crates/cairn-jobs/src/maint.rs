//! Operator functions over the whole engine: gc (tree nodes first, then the store's parts,
//! chunks and packs) and fsck (the store's checks plus the references the engine holds, and
//! the files and versions that damaged chunks belong to).

use std::collections::{HashMap, HashSet};

use cairn_core::record::Record;
use cairn_core::{Digest, ErrorKind, Result};
use cairn_store::fsck::ExternalRefs;
use cairn_store::{part_key, FsckReport, GcOptions, GcReport, Released};
use serde::Serialize;

use crate::engine::Engine;
use crate::records::*;
use crate::tree::{node_children, Content, DirNode, Entry};

#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineGcReport {
    pub nodes_deleted: u64,
    #[serde(flatten)]
    pub store: GcReport,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineFsckReport {
    #[serde(flatten)]
    pub store: FsckReport,
    pub nodes_checked: u64,
    /// Files whose bytes are damaged, as `<version hash or write token>:<path>`.
    pub damaged_files: Vec<String>,
    /// Index records that do not decode, as `<column family>/<key hex>: <reason>`. They are
    /// reported and skipped, never rewritten or deleted.
    pub corrupt_records: Vec<String>,
    /// Entries of the library→object index (`lib_objects`) that disagree with the object
    /// records: missing, or naming no such object. The index is derived from the records, so
    /// `--repair` rewrites them; listed here only when left as found.
    pub library_index: Vec<String>,
    /// Links that lead nowhere, as `<version hash or write token>:<path> -> <target> (why)`:
    /// their target version was deleted, or has no such file. Not damage (nothing stored is
    /// wrong, and `is_clean` ignores them), but a file of a version that no longer reads.
    pub dangling_links: Vec<String>,
    /// Why `--repair` changed nothing, when it refused to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_skipped: Option<String>,
}

impl EngineFsckReport {
    pub fn is_clean(&self) -> bool {
        self.store.is_clean()
            && self.damaged_files.is_empty()
            && self.corrupt_records.is_empty()
            && self.library_index.is_empty()
    }
}

/// Space figures for operators.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineStats {
    pub objects: u64,
    pub versions: u64,
    /// Sum of the sizes of every live version (what users see stored).
    pub logical_bytes: u64,
    /// Distinct chunk bytes (what the store keeps).
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes`.
    pub dedup_ratio: f64,
    pub packs: u64,
    pub pack_bytes: u64,
    /// Indexed chunk bytes over pack bytes: how much of the packs is live.
    pub live_ratio: f64,
    /// Memory the index (RocksDB) holds in memtables, and in open table readers.
    pub index_memtable_bytes: u64,
    pub index_table_reader_bytes: u64,
    pub index_block_cache_bytes: u64,
}

impl Engine {
    pub fn stats(&self) -> Result<EngineStats> {
        let store = self.store.stats()?;
        // One version's head at a time, without its metadata (which may decode to hundreds
        // of megabytes: review 33).
        let (mut versions, mut logical) = (0u64, 0u64);
        for r in self.store.index().scan(CF_VERSIONS, &[]) {
            let head = VersionRecord::decode_view::<VersionHead>(&r?.1)?;
            versions += 1;
            logical += head.size;
        }
        let objects = self.store.index().scan(CF_OBJECTS, &[]).count() as u64;
        Ok(EngineStats {
            objects,
            versions,
            logical_bytes: logical,
            stored_bytes: store.chunk_bytes,
            dedup_ratio: if store.chunk_bytes == 0 {
                1.0
            } else {
                logical as f64 / store.chunk_bytes as f64
            },
            packs: store.packs,
            pack_bytes: store.pack_bytes,
            live_ratio: if store.pack_bytes == 0 {
                1.0
            } else {
                store.chunk_bytes as f64 / store.pack_bytes as f64
            },
            index_memtable_bytes: self
                .store
                .index()
                .property_values("rocksdb.cur-size-all-mem-tables")
                .sum(),
            index_table_reader_bytes: self
                .store
                .index()
                .property_values("rocksdb.estimate-table-readers-mem")
                .sum(),
            // The cache is shared: every column family reports the same figure.
            index_block_cache_bytes: self
                .store
                .index()
                .property_values("rocksdb.block-cache-usage")
                .max()
                .unwrap_or(0),
        })
    }

    pub fn gc(&self, opts: &GcOptions) -> Result<EngineGcReport> {
        let (nodes_deleted, parts) = self.gc_nodes(opts.dry_run)?;
        let store = self.store.gc_after(opts, parts)?;
        Ok(EngineGcReport {
            nodes_deleted,
            store,
        })
    }

    /// Deletes nodes nobody references, releasing their children, until none is left. A dry
    /// run commits nothing: it keeps what it would have released (of nodes, to find the next
    /// round's; of parts, returned for the store's own dry run) and subtracts it instead.
    fn gc_nodes(&self, dry_run: bool) -> Result<(u64, Released)> {
        let _w = self.state.write();
        let guard = self.store.ref_guard();
        let mut deleted = 0;
        let mut seen = HashSet::new();
        let (mut nodes, mut parts) = (Released::new(), Released::new());
        loop {
            let mut b = self.store.index().batch();
            let mut round = 0;
            for r in self.store.index().scan(CF_NODE_REFS, &[]) {
                let (k, v) = r?;
                let count = cairn_store::store::counter_value(&v) - nodes.get(&k).unwrap_or(&0);
                if count > 0 || !seen.insert(k.to_vec()) {
                    continue;
                }
                if let Some(raw) = self.store.index().get(CF_NODES, &k)? {
                    // A damaged node is kept, and so is what it names: its references cannot
                    // be trusted to release the right things, and fsck names it (a flipped
                    // byte inside a name still decodes).
                    let sound = Digest::of(&raw).as_bytes()[..] == k[..];
                    let Some(node) = sound.then(|| DirNode::decode(&raw).ok()).flatten() else {
                        tracing::warn!(node = %hex(&k), "gc keeps a damaged directory node");
                        continue;
                    };
                    let (dirs, children) = node_children(&node);
                    for d in dirs {
                        b.add(CF_NODE_REFS, d.as_bytes(), -1);
                        if dry_run {
                            *nodes.entry(d.as_bytes()[..].into()).or_default() += 1;
                        }
                    }
                    for p in children {
                        self.store.release_part(&mut b, &p.digest, p.part_size);
                        if dry_run {
                            let key = part_key(&p.digest, p.part_size);
                            *parts.entry(key[..].into()).or_default() += 1;
                        }
                    }
                }
                b.delete(CF_NODES, &k);
                b.delete(CF_NODE_REFS, &k);
                round += 1;
            }
            deleted += round;
            if round == 0 {
                break;
            }
            if !dry_run {
                self.store.commit(b)?;
            }
        }
        drop(guard);
        Ok((deleted, parts))
    }

    /// Checks everything. Holds the state lock for writing, so upload commits wait and the
    /// counts compared are a consistent picture (an operator command, not a hot path).
    pub fn fsck(&self) -> Result<EngineFsckReport> {
        self.fsck_with(false)
    }

    /// [`Engine::fsck`] that also corrects every refcount that disagrees with the references
    /// found (damaged bytes cannot be repaired: they stay reported).
    pub fn fsck_repair(&self) -> Result<EngineFsckReport> {
        self.fsck_with(true)
    }

    /// Whether a node's kept totals (`stats`) disagree with its entries and its children's
    /// totals: a description if they do.
    fn check_node_stats(
        &self,
        node: &DirNode,
        memo: &mut HashMap<Digest, crate::tree::TreeStats>,
    ) -> Option<String> {
        let kept = node.stats?;
        let loader = |d: &Digest| self.load_node(d);
        let mut total = crate::tree::TreeStats::default();
        for (name, e) in &node.entries {
            total = match e {
                // A child that cannot be read is listed on its own.
                Entry::Dir(d) => {
                    total.with_entry(name, crate::tree::stats_of(d, &loader, memo).ok()?, true)
                }
                Entry::File(f) => total.with_entry(name, crate::tree::TreeStats::of_file(f), false),
            };
        }
        // A shape is compared where both have one: nodes written before shapes were kept (and
        // those above them) have none, and a node above such a node may have been given one.
        if kept.shape.is_none() || total.shape.is_none() {
            total.shape = kept.shape;
        }
        (total != kept).then(|| format!("its totals say {kept:?}, its entries add up to {total:?}"))
    }

    fn fsck_with(&self, repair: bool) -> Result<EngineFsckReport> {
        let _w = self.state.write();
        let _no_gc = self.store.gc_guard();
        let mut ext = ExternalRefs::default();
        let mut node_refs: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut nodes_checked = 0;
        let mut bad = Vec::new();
        let mut stats_memo = HashMap::new();
        // Streamed, not collected: a store may hold millions of nodes. A node is named by the
        // blake3 of its stored bytes (not of a re-encoding, which could drop fields a newer
        // version wrote).
        for r in self.store.index().scan(CF_NODES, &[]) {
            let (k, raw) = r?;
            nodes_checked += 1;
            if Digest::of(&raw).as_bytes()[..] != k[..] {
                bad.push(format!("{CF_NODES}/{}: fails its blake3 check", hex(&k)));
                continue;
            }
            let node = match DirNode::decode(&raw) {
                Ok(n) => n,
                Err(e) => {
                    bad.push(format!("{CF_NODES}/{}: {}", hex(&k), e.reason));
                    continue;
                }
            };
            if let Some(bad_totals) = self.check_node_stats(&node, &mut stats_memo) {
                bad.push(format!("{CF_NODES}/{}: {bad_totals}", hex(&k)));
            }
            let (dirs, parts) = node_children(&node);
            for d in dirs {
                *node_refs.entry(d.as_bytes().to_vec()).or_default() += 1;
            }
            for p in parts {
                *ext.parts
                    .entry(part_key(&p.digest, p.part_size).to_vec())
                    .or_default() += 1;
            }
        }
        // Heads only: every version's and draft's metadata decoded at once could take gigabytes.
        let versions: Vec<(Vec<u8>, VersionHead)> =
            self.scan_tolerant_view::<VersionRecord, _>(CF_VERSIONS, &mut bad)?;
        let drafts: Vec<DraftHead> = self
            .scan_tolerant_view::<DraftRecord, _>(CF_DRAFTS, &mut bad)?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        for (_, v) in &versions {
            *node_refs.entry(v.root.as_bytes().to_vec()).or_default() += 1;
        }
        for d in &drafts {
            *node_refs.entry(d.root.as_bytes().to_vec()).or_default() += 1;
        }
        for (_, uj) in self.scan_tolerant::<UploadJobRecord>(CF_UPLOAD_JOBS, &mut bad)? {
            if let Some(s) = uj.sealed.filter(|s| s.size > 0) {
                *ext.parts
                    .entry(part_key(&s.digest, s.size).to_vec())
                    .or_default() += 1;
            }
        }
        for (_, c) in self.scan_tolerant::<UjChunk>(CF_UJ_CHUNKS, &mut bad)? {
            *ext.chunks.entry(c.chunk.hash).or_default() += 1;
        }
        let library_index = self.check_library_index(repair, &mut bad)?;
        let mut store = self.store.fsck_unlocked(&ext)?;
        self.compare_node_refs(&node_refs, &mut store)?;
        // Counting references through damaged records could lower a live chunk's count to zero
        // and let gc delete it: repair only an index whose records all read back. (Chunks whose
        // bytes are corrupt do not stop it: their references are counted from sound records.)
        let damage = !bad.is_empty()
            || !store.unreadable_parts.is_empty()
            || !store.missing_chunks.is_empty();
        let mut repair_skipped = None;
        if repair && damage {
            repair_skipped = Some(
                "refcounts not repaired: index records are damaged or missing (corrupt_records, \
                 missing_chunks or unreadable parts above); restore the index from a backup first"
                    .to_string(),
            );
        } else if repair {
            self.store.apply_refcount_fixes(&mut store)?;
            // What remains cannot be fixed by counting (a referenced node that is missing).
            store.refcount_mismatches.retain(|m| m.ends_with("missing"));
        }
        let damaged = Damage {
            parts: store.damaged_parts.iter().cloned().collect(),
            whole: store
                .unreadable_parts
                .iter()
                .cloned()
                .chain(store.missing_chunks.iter().map(|(part, _)| part.clone()))
                .collect(),
            chunks: store.corrupt_chunks.iter().copied().collect(),
        };
        let mut found = Found::default();
        for (k, v) in &versions {
            let hash = cairn_core::VersionHash {
                digest: Digest::from_slice(k).unwrap_or_default(),
                size: v.size,
                object: v.object,
            };
            let tree = Tree {
                q: crate::engine::Qhit::Version(hash),
                owner: &hash.to_string(),
            };
            self.damaged_in(&tree, &v.root, "", &damaged, &mut found)?;
        }
        for d in &drafts {
            let tree = Tree {
                q: crate::engine::Qhit::Draft(d.token),
                owner: &d.token.to_string(),
            };
            self.damaged_in(&tree, &d.root, "", &damaged, &mut found)?;
        }
        let Found {
            damaged_files,
            dangling_links,
        } = found;
        Ok(EngineFsckReport {
            store,
            nodes_checked,
            damaged_files,
            corrupt_records: bad,
            library_index,
            dangling_links,
            repair_skipped,
        })
    }

    /// Whether the bytes of `seg` (in the part whose key is `key`) are damaged: the part's record
    /// is, or one of the chunks under the segment's own bytes. A part packs many small files,
    /// and one corrupt chunk damages only the files whose bytes it holds.
    fn segment_damaged(&self, seg: &crate::tree::PartSeg, key: &str, damaged: &Damage) -> bool {
        if !damaged.parts.contains(key) {
            return false;
        }
        if damaged.whole.contains(key) {
            return true;
        }
        let Ok(Some(chunks)) = self.store.part_chunks(&seg.digest, seg.part_size) else {
            return true;
        };
        let (from, to) = (seg.off, seg.off.saturating_add(seg.len));
        let mut at = 0u64;
        chunks.iter().any(|c| {
            let (start, end) = (at, at + u64::from(c.len));
            at = end;
            start < to && from < end && damaged.chunks.contains(&c.hash)
        })
    }

    /// Compares `lib_objects` with the object records (whose undecodable ones go to `bad`);
    /// returns the disagreements, or, with `repair`, rewrites them and returns none.
    fn check_library_index(&self, repair: bool, bad: &mut Vec<String>) -> Result<Vec<String>> {
        let mut want: HashSet<Vec<u8>> = self
            .scan_tolerant::<ObjectRecord>(CF_OBJECTS, bad)?
            .into_iter()
            .map(|(_, o)| lib_object_key(&o.library, &o.id))
            .collect();
        let idx = self.store.index();
        let mut b = idx.batch();
        let mut found = Vec::new();
        for r in idx.scan(CF_LIB_OBJECTS, &[]) {
            let (k, _) = r?;
            if !want.remove(&k[..]) {
                found.push(format!(
                    "{CF_LIB_OBJECTS}/{}: names no such object",
                    hex(&k)
                ));
                b.delete(CF_LIB_OBJECTS, &k);
            }
        }
        for k in want {
            found.push(format!(
                "{CF_LIB_OBJECTS}/{}: missing for its object",
                hex(&k)
            ));
            b.put(CF_LIB_OBJECTS, &k, &[]);
        }
        if repair && !found.is_empty() {
            self.store.commit(b)?;
            found.clear();
        }
        Ok(found)
    }

    /// Every record of `cf` with its key; those that do not decode are listed in `bad`.
    fn scan_tolerant<T: Record>(
        &self,
        cf: &str,
        bad: &mut Vec<String>,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        self.scan_tolerant_view::<T, T>(cf, bad)
    }

    /// [`Engine::scan_tolerant`] decoding each record of type `T` as the view `V`.
    fn scan_tolerant_view<T: Record, V: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        bad: &mut Vec<String>,
    ) -> Result<Vec<(Vec<u8>, V)>> {
        let mut out = Vec::new();
        for r in self.store.index().scan(cf, &[]) {
            let (k, v) = r?;
            match T::decode_view::<V>(&v) {
                Ok(t) => out.push((k.to_vec(), t)),
                Err(e) => bad.push(format!("{cf}/{}: {}", hex(&k), e.reason)),
            }
        }
        Ok(out)
    }

    fn compare_node_refs(
        &self,
        expected: &HashMap<Vec<u8>, i64>,
        report: &mut FsckReport,
    ) -> Result<()> {
        let mut stored: HashMap<Vec<u8>, i64> = HashMap::new();
        for r in self.store.index().scan(CF_NODE_REFS, &[]) {
            let (k, v) = r?;
            stored.insert(k.to_vec(), cairn_store::store::counter_value(&v));
        }
        for (k, &want) in expected {
            let have = stored.remove(k).unwrap_or(0);
            if have != want {
                let d = Digest::from_slice(k).unwrap_or_default();
                report
                    .refcount_mismatches
                    .push(format!("node {d}: refcount {have}, references {want}"));
                report.refcount_fixes.push((CF_NODE_REFS, k.clone(), want));
            }
            if !self.store.index().exists(CF_NODES, k)? {
                report.refcount_mismatches.push(format!(
                    "node {} is referenced but missing",
                    Digest::from_slice(k).unwrap_or_default()
                ));
            }
        }
        for (k, have) in stored {
            if have != 0 {
                let d = Digest::from_slice(&k).unwrap_or_default();
                report
                    .refcount_mismatches
                    .push(format!("node {d}: refcount {have}, references 0"));
                report.refcount_fixes.push((CF_NODE_REFS, k, 0));
            }
        }
        Ok(())
    }

    /// Walks the directory `node` (at `at` in `tree`): files whose parts are damaged or gone,
    /// and links that lead nowhere.
    fn damaged_in(
        &self,
        tree: &Tree<'_>,
        node: &Digest,
        at: &str,
        damaged: &Damage,
        out: &mut Found,
    ) -> Result<()> {
        let owner = tree.owner;
        let node = match self.load_node(node) {
            Ok(n) => n,
            Err(e) if matches!(e.kind, ErrorKind::Corrupt | ErrorKind::NotFound) => {
                out.damaged_files.push(format!(
                    "{owner}:{at}/ (directory unreadable: {})",
                    e.reason
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for (name, e) in &node.entries {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}/{name}")
            };
            match e {
                Entry::Dir(d) => self.damaged_in(tree, d, &path, damaged, out)?,
                Entry::File(f) => {
                    if let Content::Link(target) = &f.content {
                        if let Some(why) = self.link_leads_nowhere(&tree.q, &path) {
                            out.dangling_links
                                .push(format!("{owner}:{path} -> {target} ({why})"));
                        }
                    }
                    let Content::Parts(segs) = &f.content else {
                        continue;
                    };
                    let mut hit = false;
                    for s in segs {
                        let key = part_key(&s.digest, s.part_size);
                        hit |= !self
                            .store
                            .index()
                            .exists(cairn_store::index::CF_PARTS, &key)?
                            || self.segment_damaged(s, &hex(&key), damaged);
                    }
                    if hit {
                        out.damaged_files.push(format!("{owner}:{path}"));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Why the link at `path` of `q` reads nothing, following it as a read does (chains,
    /// cycles and the depth limit included), or `None` if it opens. A target that only cannot
    /// be read yet (an unfinished upload) is not dangling.
    fn link_leads_nowhere(&self, q: &crate::engine::Qhit, path: &str) -> Option<String> {
        let path = match cairn_core::FilePath::parse(path) {
            Ok(p) => p,
            Err(e) => return Some(e.to_string()),
        };
        match self.open_file_in(q, &path, None) {
            Err(e)
                if matches!(
                    e.kind,
                    ErrorKind::NotFound | ErrorKind::Invalid | ErrorKind::Corrupt
                ) =>
            {
                Some(e.reason)
            }
            _ => None,
        }
    }
}

/// A version's or draft's tree being checked: what names it for reads, and in reports.
struct Tree<'a> {
    q: crate::engine::Qhit,
    owner: &'a str,
}

/// What the store check found damaged, as `damaged_in` asks about it.
struct Damage {
    /// Part keys (hex) with any damage.
    parts: HashSet<String>,
    /// Of those, the parts damaged as a whole: their record, or a chunk missing from the index.
    whole: HashSet<String>,
    /// Chunks whose bytes fail their check.
    chunks: HashSet<Digest>,
}

/// What the walk of the trees found.
#[derive(Default)]
struct Found {
    damaged_files: Vec<String>,
    dangling_links: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
