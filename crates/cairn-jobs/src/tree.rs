//! The `files` tree: content-addressed directory nodes, an in-memory editor for files jobs, and
//! the `"."`-keyed JSON view of the reference (§3.5).
//!
//! A directory node lists its entries by name; a subdirectory is referenced by the digest of its
//! node, so unchanged subtrees are shared between versions and an edit rewrites only the nodes on
//! the edited paths. A node's digest is the blake3 of its record encoding.

use std::collections::{BTreeMap, HashMap};

use cairn_core::record::Record;
use cairn_core::{Digest, Error, FilePath, Result, UploadJobId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// A stored directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirNode {
    pub entries: BTreeMap<String, Entry>,
    pub meta: Option<Value>,
    /// Totals of the tree under this node. Absent in nodes written before they were kept
    /// ([`stats_of`] then counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<TreeStats>,
}

/// Totals of the tree under a directory, kept in its node: a copy of a stored directory is
/// one digest however many files it holds, so these are what limits and sizes are checked
/// against without walking the tree (which copies can make exponentially large).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStats {
    /// Files (links included), at any depth.
    pub files: u64,
    /// Of those, files still uploading (`Pending`).
    pub pending: u64,
    /// Their logical bytes.
    pub bytes: u64,
    /// Absent in nodes written before it was kept, and in those above them: counted only when
    /// needed, by [`shape_of`] (storing a tree must not walk what it does not change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
}

/// How many directories a tree holds and how deep and long its paths go: what a move or copy
/// of a stored directory is checked against (the path limits of `cairn_core::path`, the
/// draft's directory limit) without walking it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Directories below, at any depth (not the directory itself).
    pub dirs: u64,
    /// Segments of the deepest path below, relative to the directory (0: it is empty).
    pub depth: u64,
    /// Bytes of the longest path below, relative to the directory.
    pub longest: u64,
}

/// An empty directory's.
impl Default for TreeStats {
    fn default() -> TreeStats {
        TreeStats {
            files: 0,
            pending: 0,
            bytes: 0,
            shape: Some(Shape::default()),
        }
    }
}

impl TreeStats {
    pub fn of_file(f: &FileEntry) -> TreeStats {
        TreeStats {
            files: 1,
            pending: u64::from(matches!(f.content, Content::Pending(_))),
            bytes: f.size,
            shape: Some(Shape::default()),
        }
    }

    /// These totals with entry `name` added, whose own totals are `child` (a directory's, or
    /// a file's from [`TreeStats::of_file`]).
    pub fn with_entry(self, name: &str, child: TreeStats, dir: bool) -> TreeStats {
        let shape = match (self.shape, child.shape) {
            (Some(a), Some(c)) => Some(a.with_entry(name, c, dir)),
            _ => None,
        };
        TreeStats {
            files: self.files.saturating_add(child.files),
            pending: self.pending.saturating_add(child.pending),
            bytes: self.bytes.saturating_add(child.bytes),
            shape,
        }
    }

    /// The shape, for totals that have one (all but those read from old nodes).
    pub fn shape(&self) -> Shape {
        self.shape.unwrap_or_default()
    }
}

impl Shape {
    /// This shape with entry `name` added, whose own shape is `child`.
    pub fn with_entry(self, name: &str, child: Shape, dir: bool) -> Shape {
        let below = match child.depth {
            0 => 0,
            _ => child.longest.saturating_add(1),
        };
        Shape {
            dirs: match dir {
                true => self.dirs.saturating_add(child.dirs).saturating_add(1),
                false => self.dirs,
            },
            depth: self.depth.max(child.depth.saturating_add(1)),
            longest: self.longest.max((name.len() as u64).saturating_add(below)),
        }
    }

    /// Whether what this shape describes fits under `at` within the path limits: every path
    /// below would be at most `MAX_DEPTH` segments and `MAX_PATH_LEN` bytes.
    pub fn fits_under(&self, at: &FilePath) -> bool {
        let (segments, len) = (at.segments().count() as u64, at.as_str().len() as u64);
        let slash = u64::from(len > 0);
        self.depth == 0
            || (segments.saturating_add(self.depth) <= cairn_core::path::MAX_DEPTH as u64
                && len.saturating_add(slash).saturating_add(self.longest)
                    <= cairn_core::path::MAX_PATH_LEN as u64)
    }
}

/// Roughly the memory a clone of `e` takes: a stored directory is a digest, a directory being
/// edited everything loaded under it.
pub fn entry_weight(e: &MemEntry) -> usize {
    match e {
        MemEntry::Stored(_) => 64,
        MemEntry::File(f) => file_weight(f),
        MemEntry::Dir(d) => {
            let entries = d.entries.iter().map(|(k, e)| k.len() + entry_weight(e));
            256 + d.meta.as_ref().map_or(0, value_weight) + entries.sum::<usize>()
        }
    }
}

/// Roughly the memory a decoded node takes (the node cache's weight).
pub fn node_weight(n: &DirNode) -> usize {
    let entries = n.entries.iter().map(|(k, e)| {
        let file = match e {
            Entry::File(f) => file_weight(f),
            Entry::Dir(_) => 200,
        };
        k.len() + file
    });
    256 + n.meta.as_ref().map_or(0, value_weight) + entries.sum::<usize>()
}

/// Roughly the memory a file entry takes: its metadata and its content's list (a 1 TiB file
/// still uploading lists 32,768 segments).
fn file_weight(f: &FileEntry) -> usize {
    let content = match &f.content {
        Content::Parts(p) => p.len() * std::mem::size_of::<PartSeg>(),
        Content::Pending(p) => p.len() * std::mem::size_of::<PendingSeg>(),
        Content::Link(t) => t.len(),
    };
    200 + content + f.meta.as_ref().map_or(0, value_weight)
}

/// Roughly the memory a JSON value takes.
pub fn value_weight(v: &Value) -> usize {
    32 + match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(value_weight).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + value_weight(v)).sum(),
        _ => 0,
    }
}

/// Totals of the stored tree under `digest`: read from its node, or counted (once per distinct
/// node, through `memo`) for nodes written before nodes kept them.
pub fn stats_of(
    digest: &Digest,
    loader: &Loader<'_>,
    memo: &mut std::collections::HashMap<Digest, TreeStats>,
) -> Result<TreeStats> {
    if let Some(s) = memo.get(digest) {
        return Ok(*s);
    }
    let node = loader(digest)?;
    let stats = match node.stats {
        Some(s) => s,
        None => {
            let mut total = TreeStats::default();
            for (name, e) in &node.entries {
                total = match e {
                    Entry::Dir(d) => total.with_entry(name, stats_of(d, loader, memo)?, true),
                    Entry::File(f) => total.with_entry(name, TreeStats::of_file(f), false),
                };
            }
            total
        }
    };
    memo.insert(*digest, stats);
    Ok(stats)
}

/// The shape of the stored tree under `digest`: kept in its node, or counted (once per
/// distinct node, through `memo`) for nodes written before shapes were kept.
pub fn shape_of(
    digest: &Digest,
    loader: &Loader<'_>,
    memo: &mut HashMap<Digest, TreeStats>,
) -> Result<Shape> {
    let stats = stats_of(digest, loader, memo)?;
    if let Some(shape) = stats.shape {
        return Ok(shape);
    }
    let mut shape = Shape::default();
    for (name, e) in &loader(digest)?.entries {
        shape = match e {
            Entry::Dir(d) => shape.with_entry(name, shape_of(d, loader, memo)?, true),
            Entry::File(_) => shape.with_entry(name, Shape::default(), false),
        };
    }
    memo.insert(
        *digest,
        TreeStats {
            shape: Some(shape),
            ..stats
        },
    );
    Ok(shape)
}

/// The shape of `entry` (a file's is empty). What this job loaded or made is walked, counting
/// each entry visited in `walked` (which the caller bounds); a stored directory's shape comes
/// from its node. A tree being edited is never deeper than the path limit (every op that puts
/// something somewhere checks it), so this recursion is bounded.
pub fn entry_shape(
    entry: &MemEntry,
    loader: &Loader<'_>,
    memo: &mut HashMap<Digest, TreeStats>,
    walked: &mut u64,
) -> Result<Shape> {
    match entry {
        MemEntry::File(_) => Ok(Shape::default()),
        MemEntry::Stored(d) => shape_of(d, loader, memo),
        MemEntry::Dir(m) => {
            let mut shape = Shape::default();
            for (name, e) in &m.entries {
                *walked = walked.saturating_add(1);
                let child = entry_shape(e, loader, memo, walked)?;
                shape = shape.with_entry(name, child, !matches!(e, MemEntry::File(_)));
            }
            Ok(shape)
        }
    }
}

impl Record for DirNode {
    const NAME: &'static str = "directory node";
}

impl DirNode {
    pub fn digest(&self) -> Digest {
        Digest::of(&self.encode())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    Dir(Digest),
    File(FileEntry),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub mime_type: Option<String>,
    pub meta: Option<Value>,
    pub content: Content,
    /// The file's blake3, once its upload is sealed and resolved (absent while pending, for
    /// links, and when the part layout cannot give it without re-reading).
    #[serde(default)]
    pub hash: Option<Digest>,
    /// The blake3 the add op declared for a file still uploading (`Pending`). A resolution
    /// that computes another one from the bytes received refuses the file (see
    /// `Engine::resolve_dir`): what was uploaded is not the file the client planned, for
    /// instance one rewritten while it was being sent. Dropped once the file is resolved, and
    /// absent from stored nodes that never had one, so their encoding (and digest) is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<Digest>,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Content {
    /// Sealed: the file is the concatenation of these part slices (empty for a 0-byte file).
    Parts(Vec<PartSeg>),
    /// Still uploading (only in drafts): one entry per upload-job segment, in file order.
    Pending(Vec<PendingSeg>),
    /// A link: `./files/<path>` (same version or draft) or `/qfab/hq__…/files/<path>`.
    Link(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSeg {
    pub digest: Digest,
    pub part_size: u64,
    pub off: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSeg {
    pub upload_job: UploadJobId,
    pub segment: u32,
    pub len: u64,
}

/// Loads a stored node by digest.
pub type Loader<'a> = dyn Fn(&Digest) -> Result<std::sync::Arc<DirNode>> + 'a;

/// A directory being edited: entries are loaded from the store only when an edit descends into them.
#[derive(Debug, Clone, Default)]
pub struct MemDir {
    entries: BTreeMap<String, MemEntry>,
    meta: Option<Value>,
}

#[derive(Debug, Clone)]
pub enum MemEntry {
    Stored(Digest),
    Dir(MemDir),
    File(FileEntry),
}

impl MemDir {
    pub fn load(digest: &Digest, loader: &Loader<'_>) -> Result<MemDir> {
        let mem = |e: Entry| match e {
            Entry::Dir(d) => MemEntry::Stored(d),
            Entry::File(f) => MemEntry::File(f),
        };
        // A node no one else holds (one too large for the node cache) is taken apart rather
        // than copied: a directory of 300,000 files would otherwise be in memory twice.
        match std::sync::Arc::try_unwrap(loader(digest)?) {
            Ok(node) => Ok(MemDir {
                entries: node.entries.into_iter().map(|(k, e)| (k, mem(e))).collect(),
                meta: node.meta,
            }),
            Err(node) => Ok(MemDir {
                entries: (node.entries.iter())
                    .map(|(k, e)| (k.clone(), mem(e.clone())))
                    .collect(),
                meta: node.meta.clone(),
            }),
        }
    }

    /// Descends to the directory at `path`, loading nodes; creates missing ones if `create`.
    fn dir_mut(
        &mut self,
        path: &FilePath,
        create: bool,
        loader: &Loader<'_>,
    ) -> Result<&mut MemDir> {
        let mut dir = self;
        for seg in path.segments() {
            if !dir.entries.contains_key(seg) {
                if !create {
                    return Err(Error::not_found(format!("directory {path} does not exist")));
                }
                dir.entries
                    .insert(seg.to_string(), MemEntry::Dir(MemDir::default()));
            }
            let entry = dir.entries.get_mut(seg).expect("present");
            if let MemEntry::Stored(d) = entry {
                *entry = MemEntry::Dir(MemDir::load(d, loader)?);
            }
            dir = match entry {
                MemEntry::Dir(d) => d,
                _ => {
                    return Err(Error::conflict(format!(
                        "{path}: {seg} is a file, not a directory"
                    )))
                }
            };
        }
        Ok(dir)
    }

    /// Finds the entry at `path` (loading nodes on the way), if any.
    pub fn get(&mut self, path: &FilePath, loader: &Loader<'_>) -> Result<Option<&mut MemEntry>> {
        let Some(parent) = path.parent() else {
            return Err(Error::invalid("the root has no entry"));
        };
        let name = path.file_name().expect("non-root path has a name");
        match self.dir_mut(&parent, false, loader) {
            Ok(dir) => Ok(dir.entries.get_mut(name)),
            Err(e) if e.is(cairn_core::ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Puts `entry` at `path`, creating parent directories. Replacing a file is allowed;
    /// replacing a directory with a file (or the reverse) is a conflict.
    pub fn insert(&mut self, path: &FilePath, entry: MemEntry, loader: &Loader<'_>) -> Result<()> {
        let parent = path
            .parent()
            .ok_or_else(|| Error::invalid("cannot replace the root"))?;
        let name = path.file_name().expect("non-root path has a name");
        let dir = self.dir_mut(&parent, true, loader)?;
        let new_is_dir = !matches!(entry, MemEntry::File(_));
        match dir.entries.get(name) {
            Some(MemEntry::File(_)) if new_is_dir => Err(Error::conflict(format!(
                "{path} is a file, not a directory"
            ))),
            Some(MemEntry::Stored(_) | MemEntry::Dir(_)) if !new_is_dir => Err(Error::conflict(
                format!("{path} is a directory, not a file"),
            )),
            _ => {
                dir.entries.insert(name.to_string(), entry);
                Ok(())
            }
        }
    }

    /// Creates a directory (and its parents) if missing.
    pub fn mkdir(&mut self, path: &FilePath, loader: &Loader<'_>) -> Result<()> {
        self.dir_mut(path, true, loader).map(|_| ())
    }

    /// Removes and returns the entry at `path`.
    pub fn remove(&mut self, path: &FilePath, loader: &Loader<'_>) -> Result<MemEntry> {
        let parent = path
            .parent()
            .ok_or_else(|| Error::invalid("cannot remove the root"))?;
        let name = path.file_name().expect("non-root path has a name");
        let missing = || Error::not_found(format!("{path} does not exist"));
        let dir = match self.dir_mut(&parent, false, loader) {
            Err(e) if e.is(cairn_core::ErrorKind::NotFound) => return Err(missing()),
            other => other?,
        };
        dir.entries.remove(name).ok_or_else(missing)
    }

    /// Names of the entries, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn entry(&self, name: &str) -> Option<&MemEntry> {
        self.entries.get(name)
    }

    pub fn entry_mut(&mut self, name: &str) -> Option<&mut MemEntry> {
        self.entries.get_mut(name)
    }

    pub fn remove_name(&mut self, name: &str) -> Option<MemEntry> {
        self.entries.remove(name)
    }

    /// Files under this directory (only its loaded part: stored nodes never hold them) that
    /// wait for their first upload: non-empty and `Pending` with no segment attached yet.
    pub fn collect_unplanned(
        &self,
        at: &FilePath,
        out: &mut Vec<crate::planner::PlanFile>,
    ) -> Result<()> {
        for (name, e) in &self.entries {
            match e {
                MemEntry::Dir(d) => d.collect_unplanned(&at.join(name)?, out)?,
                MemEntry::File(FileEntry {
                    size,
                    content: Content::Pending(segs),
                    ..
                }) if segs.is_empty() && *size > 0 => {
                    out.push(crate::planner::PlanFile {
                        path: at.join(name)?,
                        size: *size,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn set_meta(&mut self, meta: Option<Value>) {
        self.meta = meta;
    }

    /// Writes the edited tree as nodes (children before parents); returns the root digest and
    /// the tree's totals. Unchanged subtrees keep their digest and are not re-emitted (their
    /// totals are read from their nodes).
    pub fn store(
        self,
        out: &mut Vec<(Digest, DirNode)>,
        loader: &Loader<'_>,
    ) -> Result<(Digest, TreeStats)> {
        self.store_with(out, loader, &mut Default::default())
    }

    /// [`MemDir::store`] with the totals of nodes already met (or written, and not yet in the
    /// index) in `memo`, which this adds to.
    pub fn store_with(
        self,
        out: &mut Vec<(Digest, DirNode)>,
        loader: &Loader<'_>,
        memo: &mut std::collections::HashMap<Digest, TreeStats>,
    ) -> Result<(Digest, TreeStats)> {
        let mut stats = TreeStats::default();
        let mut entries = BTreeMap::new();
        for (k, e) in self.entries {
            let (e, s) = match e {
                MemEntry::Stored(d) => (Entry::Dir(d), stats_of(&d, loader, memo)?),
                MemEntry::Dir(d) => {
                    let (d, s) = d.store_with(out, loader, memo)?;
                    (Entry::Dir(d), s)
                }
                MemEntry::File(f) => {
                    let s = TreeStats::of_file(&f);
                    (Entry::File(f), s)
                }
            };
            stats = stats.with_entry(&k, s, matches!(e, Entry::Dir(_)));
            entries.insert(k, e);
        }
        let node = DirNode {
            entries,
            meta: self.meta,
            stats: Some(stats),
        };
        let digest = node.digest();
        memo.insert(digest, stats);
        out.push((digest, node));
        Ok((digest, stats))
    }
}

/// What a node references: child directory nodes, and part slices of its files.
pub fn node_children(node: &DirNode) -> (Vec<Digest>, Vec<PartSeg>) {
    let mut dirs = Vec::new();
    let mut parts = Vec::new();
    for e in node.entries.values() {
        match e {
            Entry::Dir(d) => dirs.push(*d),
            Entry::File(FileEntry {
                content: Content::Parts(p),
                ..
            }) => parts.extend_from_slice(p),
            Entry::File(_) => {}
        }
    }
    (dirs, parts)
}

/// Finds the entry at `path` under `root` (the root itself is a directory, returned as `None`
/// inside `Ok(Some(..))` is not possible, so callers check `path.is_root()` first).
pub fn lookup(root: &Digest, path: &FilePath, loader: &Loader<'_>) -> Result<Option<Entry>> {
    lookup_by(root, path, &|d, name| {
        Ok(loader(d)?.entries.get(name).cloned())
    })
}

/// [`lookup`] with `entry` giving one entry of a node (by digest and name), so that a node
/// need not be decoded whole to find it ([`crate::bignode`]).
pub fn lookup_by(
    root: &Digest,
    path: &FilePath,
    entry: &dyn Fn(&Digest, &str) -> Result<Option<Entry>>,
) -> Result<Option<Entry>> {
    let mut current = Entry::Dir(*root);
    for seg in path.segments() {
        let Entry::Dir(d) = current else {
            return Ok(None);
        };
        match entry(&d, seg)? {
            Some(e) => current = e,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

/// Renders the tree under `root` as the reference's `files` JSON: every node has a `"."` key
/// with its attributes; a file's `parts` are indices into the version's segment list, numbered
/// in walk order (names sorted).
pub fn render(root: &Digest, loader: &Loader<'_>, entry: &EntryOf<'_>) -> Result<Value> {
    let mut next_segment = 0u64;
    let mut unbounded = usize::MAX;
    let at = Walk::new(root, loader, entry);
    render_dir(root, &at, &mut next_segment, 0, &mut unbounded)
}

/// One entry of a node, by the node's digest and the entry's name, without decoding a large
/// node whole (`Engine::node_entry`, [`crate::bignode`]).
pub type EntryOf<'a> = dyn Fn(&Digest, &str) -> Result<Option<Entry>> + 'a;

/// What a rendering walks: the tree's root (for the links that lead within it), its nodes, and
/// the sizes of the link targets already followed.
struct Walk<'a, 'b> {
    root: &'a Digest,
    loader: &'a Loader<'b>,
    entry: &'a EntryOf<'b>,
    /// Shown size by link target: links to one file (many copies of a directory of links)
    /// are followed once (`None`: each keeps the size it was made with). Bounded: cleared
    /// when full.
    sizes: std::cell::RefCell<HashMap<String, Option<u64>>>,
}

/// Link targets a rendering remembers the size of (about 100 bytes each).
const LINK_MEMO: usize = 1 << 16;

impl<'a, 'b> Walk<'a, 'b> {
    fn new(root: &'a Digest, loader: &'a Loader<'b>, entry: &'a EntryOf<'b>) -> Self {
        Walk {
            root,
            loader,
            entry,
            sizes: Default::default(),
        }
    }

    /// The size a listing shows for `f`. A link made with `./files/…` records its target's
    /// size when it is made, but the target can be replaced afterwards (in the same draft, or
    /// in a later version, which keeps the link), and a download serves what the link leads
    /// to now: a listing follows the link the same way, so a client that plans its ranged
    /// reads from the listing (the official JS client does) asks for the bytes it will be
    /// served. A link to a version (`/qfab/hq__…`) names immutable bytes, so its recorded
    /// size stays right; a link that leads nowhere (or round, or too far) keeps its own.
    fn shown_size(&self, f: &FileEntry) -> Result<u64> {
        let Content::Link(first) = &f.content else {
            return Ok(f.size);
        };
        // Remembered by target: what the target gives, or that each link keeps its own size
        // (two links to a deleted file, made when it had different sizes, list theirs: QA30).
        let known = self.sizes.borrow().get(first).copied();
        let shown = match known {
            Some(shown) => shown,
            None => {
                let shown = self.follow(first)?;
                let mut sizes = self.sizes.borrow_mut();
                if sizes.len() >= LINK_MEMO {
                    sizes.clear();
                }
                sizes.insert(first.clone(), shown);
                shown
            }
        };
        Ok(shown.unwrap_or(f.size))
    }

    /// [`Self::shown_size`] of a link leading to `first`, hop by hop, as many hops as a
    /// download follows (`read::MAX_LINK_DEPTH`: the entry reached by the last hop must be a
    /// file): `None` when the link keeps the size it was made with.
    fn follow(&self, first: &str) -> Result<Option<u64>> {
        let mut target = first.to_string();
        let mut size = None;
        for _ in 0..crate::read::MAX_LINK_DEPTH {
            let Ok(crate::files::LinkTarget::Relative(path)) = crate::files::parse_link(&target)
            else {
                return Ok(size);
            };
            match lookup_by(self.root, &path, self.entry)? {
                Some(Entry::File(g)) => match g.content {
                    Content::Link(next) => (target, size) = (next, Some(g.size)),
                    _ => return Ok(Some(g.size)),
                },
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}

const MAX_RENDER_DEPTH: usize = 300;

/// Renders the entry at `path` (the root when empty) exactly as it appears inside [`render`],
/// `parts` numbering included, without rendering the rest of the tree: only the segments of
/// the entries before it are counted. With `attributes_only`, a directory is rendered with its
/// `"."` attributes and none of its entries. `None` if there is no such entry.
///
/// The value is built in memory, so a directory's rendering is bounded: more than
/// [`MAX_RENDERED_FILES`] files, or more than [`MAX_RENDER_WEIGHT`] of rendered values (its
/// files' metadata counts), is `too_large`.
pub fn render_entry(
    root: &Digest,
    path: &[String],
    (loader, entry): (&Loader<'_>, &EntryOf<'_>),
    attributes_only: bool,
) -> Result<Option<Value>> {
    let mut next = 0u64;
    let mut dir = *root;
    // A directory's own attributes hold no `parts` numbers: nothing before it needs counting.
    let numbered = !attributes_only || names_a_file(root, path, loader)?;
    let mut counted = HashMap::new();
    for (depth, name) in path.iter().enumerate() {
        let node = loader(&dir)?;
        for entry in node
            .entries
            .range::<String, _>(..name.clone())
            .map(|(_, e)| e)
            .filter(|_| numbered)
        {
            next += count_segments(entry, loader, depth, &mut counted)?;
        }
        match node.entries.get(name) {
            Some(Entry::Dir(d)) => dir = *d,
            Some(Entry::File(f)) if depth + 1 == path.len() => {
                let size = Walk::new(root, loader, entry).shown_size(f)?;
                return Ok(Some(json!({".": render_file(f, size, &mut next)})));
            }
            _ => return Ok(None),
        }
    }
    if attributes_only {
        let node = loader(&dir)?;
        return Ok(Some(json!({".": dir_attributes(&node)})));
    }
    let files = stats_of(&dir, loader, &mut Default::default())?.files;
    if files > MAX_RENDERED_FILES {
        return Err(too_large_to_render(format!("holds {files} files")));
    }
    let mut budget = MAX_RENDER_WEIGHT;
    let at = Walk::new(root, loader, entry);
    render_dir(&dir, &at, &mut next, path.len(), &mut budget).map(Some)
}

/// Whether `path` (names under `root`) is a file.
fn names_a_file(root: &Digest, path: &[String], loader: &Loader<'_>) -> Result<bool> {
    let mut dir = *root;
    for (depth, name) in path.iter().enumerate() {
        match loader(&dir)?.entries.get(name) {
            Some(Entry::Dir(d)) => dir = *d,
            Some(Entry::File(_)) => return Ok(depth + 1 == path.len()),
            None => return Ok(false),
        }
    }
    Ok(false)
}

/// Most files a directory's metadata rendering ([`render_entry`]) holds in memory.
pub const MAX_RENDERED_FILES: u64 = 100_000;

/// Most memory (estimated) one metadata rendering ([`render_entry`]) may take.
pub const MAX_RENDER_WEIGHT: usize = 64 << 20;

fn too_large_to_render(what: String) -> Error {
    Error::too_large(format!(
        "this directory {what}, too much to render as one metadata value; list it with \
         files_list, which streams, or read its attributes (…/./…)"
    ))
}

/// A directory's `"."` attributes.
fn dir_attributes(node: &DirNode) -> Value {
    let mut dot = json!({"type": "directory"});
    if let Some(m) = &node.meta {
        dot["meta"] = m.clone();
    }
    dot
}

/// How many `parts` indices an entry takes in walk order. `counted` remembers each directory's
/// count by digest, so copies of one directory (cheap to make, many files each) are walked
/// once.
fn count_segments(
    entry: &Entry,
    loader: &Loader<'_>,
    depth: usize,
    counted: &mut HashMap<Digest, u64>,
) -> Result<u64> {
    match entry {
        Entry::File(FileEntry {
            content: Content::Parts(segs),
            ..
        }) => Ok(segs.len() as u64),
        Entry::File(_) => Ok(0),
        Entry::Dir(_) if depth > MAX_RENDER_DEPTH => Err(Error::corrupt(
            "directory nesting exceeds the path depth limit",
        )),
        Entry::Dir(d) => {
            if let Some(n) = counted.get(d) {
                return Ok(*n);
            }
            let mut n = 0;
            for e in loader(d)?.entries.values() {
                n += count_segments(e, loader, depth + 1, counted)?;
            }
            counted.insert(*d, n);
            Ok(n)
        }
    }
}

/// Renders a directory; `budget` is the memory (estimated) the rendering may still take.
fn render_dir(
    digest: &Digest,
    at: &Walk<'_, '_>,
    next: &mut u64,
    depth: usize,
    budget: &mut usize,
) -> Result<Value> {
    if depth > MAX_RENDER_DEPTH {
        return Err(Error::corrupt(
            "directory nesting exceeds the path depth limit",
        ));
    }
    let node = (at.loader)(digest)?;
    let mut map = Map::new();
    // The directory's own attributes (its metadata cloned); its entries are charged below.
    let took = 4 * node.meta.as_ref().map_or(0, value_weight) + 1024;
    *budget = budget
        .checked_sub(took)
        .ok_or_else(|| too_large_to_render("takes too much memory".into()))?;
    map.insert(".".into(), dir_attributes(&node));
    for (name, entry) in &node.entries {
        let v = match entry {
            Entry::Dir(d) => render_dir(d, at, next, depth + 1, budget)?,
            Entry::File(f) => json!({".": render_file(f, at.shown_size(f)?, next)}),
        };
        // A rendered value takes several times what `value_weight` counts (maps, keys and
        // allocations: about 3.5 KiB for a file with no metadata). A directory charged itself
        // and its entries inside: only its name counts here.
        let took = match entry {
            Entry::Dir(_) => 4 * name.len(),
            Entry::File(_) => 4 * (value_weight(&v) + name.len()) + 1024,
        };
        *budget = budget
            .checked_sub(took)
            .ok_or_else(|| too_large_to_render("takes too much memory".into()))?;
        map.insert(name.clone(), v);
    }
    Ok(Value::Object(map))
}

/// [`render`] written out as JSON text while the walk goes, byte for byte what
/// `render(..)?.to_string()` gives, holding only the directories on the walk's current path:
/// the listing of a million files never exists in memory whole.
pub fn render_to(
    root: &Digest,
    (loader, entry): (&Loader<'_>, &EntryOf<'_>),
    out: &mut dyn std::io::Write,
) -> Result<()> {
    let mut next = 0u64;
    write_dir(root, &Walk::new(root, loader, entry), &mut next, 0, out)
}

fn write_dir(
    digest: &Digest,
    at: &Walk<'_, '_>,
    next: &mut u64,
    depth: usize,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    if depth > MAX_RENDER_DEPTH {
        return Err(Error::corrupt(
            "directory nesting exceeds the path depth limit",
        ));
    }
    let node = (at.loader)(digest)?;
    let mut dot = json!({"type": "directory"});
    if let Some(m) = &node.meta {
        dot["meta"] = m.clone();
    }
    // A JSON object's keys come out sorted (serde_json's map), so "." goes among the names,
    // after any that sort before it ("-a", "!"); an entry named "." would have replaced it.
    let mut dot = Some(dot);
    let mut sep = "{";
    let mut key = |out: &mut dyn std::io::Write, name: &str| -> Result<()> {
        out.write_all(sep.as_bytes()).map_err(write_error)?;
        sep = ",";
        serde_json::to_writer(&mut *out, name).map_err(json_error)?;
        out.write_all(b":").map_err(write_error)
    };
    for (name, entry) in &node.entries {
        if name.as_str() == "." {
            dot = None;
        }
        if name.as_str() > "." {
            if let Some(d) = dot.take() {
                key(out, ".")?;
                serde_json::to_writer(&mut *out, &d).map_err(json_error)?;
            }
        }
        key(out, name)?;
        match entry {
            Entry::Dir(d) => write_dir(d, at, next, depth + 1, out)?,
            Entry::File(f) => {
                let dot = render_file(f, at.shown_size(f)?, next);
                serde_json::to_writer(&mut *out, &json!({ ".": dot })).map_err(json_error)?
            }
        }
    }
    if let Some(d) = dot.take() {
        key(out, ".")?;
        serde_json::to_writer(&mut *out, &d).map_err(json_error)?;
    }
    out.write_all(b"}").map_err(write_error)
}

fn write_error(e: std::io::Error) -> Error {
    Error::io("write the files listing", e)
}

fn json_error(e: serde_json::Error) -> Error {
    match e.io_error_kind() {
        Some(kind) => write_error(kind.into()),
        None => Error::internal(format!("files listing: {e}")),
    }
}

/// A file's `"."` attributes; `size` is the one to show ([`Walk::shown_size`]).
fn render_file(f: &FileEntry, size: u64, next: &mut u64) -> Value {
    let mut dot = json!({"size": size, "encryption": {"scheme": "none"}});
    if let Some(m) = &f.mime_type {
        dot["mime_type"] = json!(m);
    }
    if let Some(m) = &f.meta {
        dot["meta"] = m.clone();
    }
    if let Some(h) = &f.hash {
        dot["hash"] = json!(h.to_hex());
    }
    match &f.content {
        Content::Parts(segs) => {
            let idx: Vec<u64> = (0..segs.len() as u64).map(|i| *next + i).collect();
            *next += segs.len() as u64;
            dot["parts"] = json!(idx);
        }
        Content::Pending(_) => dot["pending"] = json!(true),
        Content::Link(target) => dot["link"] = json!(target),
    }
    dot
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries found through `loader`, as the engine's node lookups find them.
    fn entry_of<'a>(
        loader: &'a impl Fn(&Digest) -> Result<std::sync::Arc<DirNode>>,
    ) -> impl Fn(&Digest, &str) -> Result<Option<Entry>> + 'a {
        move |d, n| Ok(loader(d)?.entries.get(n).cloned())
    }
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn file(size: u64) -> MemEntry {
        let seg = PartSeg {
            digest: Digest::of(b"p"),
            part_size: 100,
            off: 0,
            len: size,
        };
        MemEntry::File(FileEntry {
            size,
            mime_type: None,
            meta: None,
            content: Content::Parts(vec![seg]),
            hash: None,
            declared: None,
        })
    }

    fn p(s: &str) -> FilePath {
        FilePath::parse(s).unwrap()
    }

    /// A loader over nodes kept in memory.
    fn load_from(
        store: &Mutex<HashMap<Digest, DirNode>>,
        d: &Digest,
    ) -> Result<std::sync::Arc<DirNode>> {
        store
            .lock()
            .unwrap()
            .get(d)
            .cloned()
            .map(std::sync::Arc::new)
            .ok_or_else(|| Error::not_found("node"))
    }

    #[test]
    fn edits_share_unchanged_subtrees_and_render() {
        let store: Mutex<HashMap<Digest, DirNode>> = Mutex::new(HashMap::new());
        let loader = |d: &Digest| load_from(&store, d);
        let mut t = MemDir::default();
        t.insert(&p("a/x"), file(1), &loader).unwrap();
        t.insert(&p("b/y"), file(2), &loader).unwrap();
        let mut out = Vec::new();
        let (root1, _) = t.store(&mut out, &loader).unwrap();
        assert_eq!(out.len(), 3);
        store.lock().unwrap().extend(out);

        let mut t2 = MemDir::load(&root1, &loader).unwrap();
        t2.insert(&p("b/z"), file(3), &loader).unwrap();
        let mut out2 = Vec::new();
        let (root2, _) = t2.store(&mut out2, &loader).unwrap();
        assert_eq!(
            out2.len(),
            2,
            "only b and the root are rewritten; a is shared"
        );
        store.lock().unwrap().extend(out2);

        let v = render(&root2, &loader, &entry_of(&loader)).unwrap();
        assert_eq!(v["."]["type"], "directory");
        assert_eq!(v["a"]["x"]["."]["parts"], json!([0]));
        assert_eq!(v["b"]["z"]["."]["parts"], json!([2]));
        assert_eq!(v["b"]["y"]["."]["size"], 2);
        assert!(lookup(&root2, &p("b/z"), &loader).unwrap().is_some());
        // A single entry renders exactly as it does inside the whole tree.
        for path in [vec![], vec!["a"], vec!["b"], vec!["b", "z"], vec!["b", "y"]] {
            let keys: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            let whole = path.iter().fold(&v, |v, k| &v[*k]);
            assert_eq!(
                render_entry(&root2, &keys, (&loader, &entry_of(&loader)), false)
                    .unwrap()
                    .as_ref(),
                Some(whole),
                "{path:?}"
            );
            // Attributes only: a file's are its whole rendering, `parts` numbers included; a
            // directory's are its "." alone.
            let attrs = render_entry(&root2, &keys, (&loader, &entry_of(&loader)), true)
                .unwrap()
                .unwrap();
            match whole["."]["type"].as_str() {
                Some("directory") => assert_eq!(attrs, json!({".": whole["."]}), "{path:?}"),
                _ => assert_eq!(&attrs, whole, "{path:?}"),
            }
        }
        assert_eq!(
            render_entry(
                &root2,
                &["nope".to_string()],
                (&loader, &entry_of(&loader)),
                false
            )
            .unwrap(),
            None
        );
        assert!(lookup(&root2, &p("a/x/q"), &loader).unwrap().is_none());
    }

    #[test]
    fn the_streamed_listing_is_byte_for_byte_the_rendered_one() {
        let store: Mutex<HashMap<Digest, DirNode>> = Mutex::new(HashMap::new());
        let loader = |d: &Digest| load_from(&store, d);
        let mut t = MemDir::default();
        // Names that sort before "." ('!', ' ', '-', '+', '*'), need escaping, or are not ASCII.
        let names = [
            "-a", "!b", " c", "+d", "*e", "z", "q\"uote", "é/ü", "-dir/-x", "-dir/y", "m/n/o/p",
        ];
        for (i, n) in names.iter().enumerate() {
            let mut f = file(i as u64 + 1);
            if let MemEntry::File(fe) = &mut f {
                if i % 2 == 0 {
                    fe.mime_type = Some("video/mp4".into());
                    fe.meta = Some(json!({"k": [i, "v\u{1}"]}));
                }
            }
            t.insert(&p(n), f, &loader).unwrap();
        }
        let mut out = Vec::new();
        let (root, _) = t.store(&mut out, &loader).unwrap();
        store.lock().unwrap().extend(out);
        let whole = render(&root, &loader, &entry_of(&loader))
            .unwrap()
            .to_string();
        let mut streamed = Vec::new();
        render_to(&root, (&loader, &entry_of(&loader)), &mut streamed).unwrap();
        assert_eq!(String::from_utf8(streamed).unwrap(), whole);
        assert!(whole.starts_with(r#"{" c":"#), "{whole}");

        // A writer that fails (the client went away) ends the walk with an error.
        let mut short = [0u8; 40];
        let err = render_to(&root, (&loader, &entry_of(&loader)), &mut &mut short[..]).unwrap_err();
        assert!(err.reason.contains("files listing"), "{err}");
    }

    #[test]
    fn file_and_directory_conflicts() {
        let loader =
            |_: &Digest| -> Result<std::sync::Arc<DirNode>> { Err(Error::not_found("none")) };
        let mut t = MemDir::default();
        t.insert(&p("a/x"), file(1), &loader).unwrap();
        assert!(t
            .insert(&p("a/x/y"), file(1), &loader)
            .unwrap_err()
            .is(cairn_core::ErrorKind::Conflict));
        assert!(t
            .insert(&p("a"), file(1), &loader)
            .unwrap_err()
            .is(cairn_core::ErrorKind::Conflict));
        assert!(t
            .remove(&p("nope/x"), &loader)
            .unwrap_err()
            .is(cairn_core::ErrorKind::NotFound));
        t.remove(&p("a"), &loader).unwrap();
    }
}
