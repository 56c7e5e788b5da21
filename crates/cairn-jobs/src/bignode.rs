//! Lookups in large directory nodes without decoding them.
//!
//! A directory node is one CBOR record ([`crate::tree::DirNode`]): a directory of 300,000 files
//! is tens of megabytes stored, and several times that decoded. Decoding it to find one name
//! cost a download about half a second of CPU and the decoded copy's memory, once per lookup
//! and per concurrent reader (a random-read load on such a directory ran at 3 requests a second
//! with 3.5 GB of RSS). So a node stored in more than [`LARGE_NODE`] bytes is instead indexed:
//! one pass over its bytes records where each entry's name and value are, the names are checked
//! to be in order (they are a `BTreeMap`'s), and a lookup is a binary search that decodes the
//! one entry it finds.
//!
//! The CBOR headers are read with `ciborium-ll` (the low-level half of `ciborium`, which wrote
//! the node); this module only walks them. Anything it does not expect (indefinite lengths,
//! which `ciborium` never writes, names out of order, bytes after the record) is `corrupt`.

use cairn_core::record::Record;
use cairn_core::{Digest, Error, Result};
use ciborium_ll::{Decoder, Header};

use crate::tree::{DirNode, Entry};

/// Nodes stored in more than this many bytes are looked up through a [`NodeIndex`].
pub const LARGE_NODE: usize = 1 << 20;

/// A large node's bytes with where each entry is in them.
pub struct NodeIndex {
    raw: Vec<u8>,
    /// By name, ascending: (name start, name length, value start, value end) in `raw`.
    entries: Vec<(u32, u32, u32, u32)>,
}

impl NodeIndex {
    /// Indexes a stored node (its record bytes: format version, then CBOR), named `digest` in
    /// errors.
    pub fn build(raw: Vec<u8>, digest: &Digest) -> Result<NodeIndex> {
        let bad =
            |what: &str| Error::corrupt(format!("directory node {digest} does not index: {what}"));
        if raw.len() > u32::MAX as usize {
            return Err(bad("over 4 GiB"));
        }
        match raw.first() {
            Some(&v) if v == DirNode::VERSION => {}
            _ => return Err(bad("unknown format version")),
        }
        let mut r = Reader { raw: &raw, pos: 1 };
        let mut entries = Vec::new();
        let fields = r.map_len().map_err(|e| bad(&e))?;
        let mut seen = false;
        for _ in 0..fields {
            let key = r.text().map_err(|e| bad(&e))?;
            if key != "entries" {
                r.skip().map_err(|e| bad(&e))?;
                continue;
            }
            if std::mem::replace(&mut seen, true) {
                return Err(bad("two entries maps"));
            }
            let n = r.map_len().map_err(|e| bad(&e))?;
            entries.reserve(n.min(raw.len() / 64));
            let mut last: Option<&[u8]> = None;
            for _ in 0..n {
                let name = r.text().map_err(|e| bad(&e))?;
                let name_at = r.pos - name.len();
                if last.is_some_and(|l| l >= name.as_bytes()) {
                    return Err(bad("entry names out of order"));
                }
                last = Some(&raw[name_at..r.pos]);
                let value = r.pos;
                r.skip().map_err(|e| bad(&e))?;
                entries.push((
                    name_at as u32,
                    name.len() as u32,
                    value as u32,
                    r.pos as u32,
                ));
            }
        }
        if r.pos != raw.len() {
            return Err(bad("bytes after the record"));
        }
        Ok(NodeIndex { raw, entries })
    }

    /// The entry named `name`, decoded; `None` if there is none.
    pub fn get(&self, name: &str, digest: &Digest) -> Result<Option<Entry>> {
        let found = self.entries.binary_search_by(|&(at, len, _, _)| {
            self.raw[at as usize..(at + len) as usize].cmp(name.as_bytes())
        });
        let Ok(i) = found else { return Ok(None) };
        let (_, _, start, end) = self.entries[i];
        let entry =
            ciborium::from_reader(&self.raw[start as usize..end as usize]).map_err(|e| {
                Error::corrupt(format!(
                    "directory node {digest}: entry {name} does not decode: {e}"
                ))
            })?;
        Ok(Some(entry))
    }

    /// Memory it takes, for the cache.
    pub fn weight(&self) -> usize {
        self.raw.len() + self.entries.len() * std::mem::size_of::<(u32, u32, u32, u32)>()
    }
}

/// A position in a record's bytes, read one CBOR header at a time.
struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn header(&mut self) -> std::result::Result<Header, String> {
        let mut d = Decoder::from(&self.raw[self.pos..]);
        let h = d
            .pull()
            .map_err(|e| format!("bad CBOR at byte {}: {e:?}", self.pos))?;
        self.pos += d.offset();
        Ok(h)
    }

    /// Skips `n` bytes of string content.
    fn advance(&mut self, n: usize) -> std::result::Result<usize, String> {
        let start = self.pos;
        match start.checked_add(n).filter(|&end| end <= self.raw.len()) {
            Some(end) => {
                self.pos = end;
                Ok(start)
            }
            None => Err(format!("a string at byte {start} runs past the end")),
        }
    }

    fn map_len(&mut self) -> std::result::Result<usize, String> {
        match self.header()? {
            Header::Map(Some(n)) => Ok(n),
            h => Err(format!("expected a map, found {h:?}")),
        }
    }

    fn text(&mut self) -> std::result::Result<&'a str, String> {
        match self.header()? {
            Header::Text(Some(n)) => {
                let start = self.advance(n)?;
                std::str::from_utf8(&self.raw[start..self.pos]).map_err(|e| e.to_string())
            }
            h => Err(format!("expected a name, found {h:?}")),
        }
    }

    /// Skips one whole item (with everything nested in it), without recursion.
    fn skip(&mut self) -> std::result::Result<(), String> {
        let mut items: u64 = 1;
        while items > 0 {
            items -= 1;
            let nested = match self.header()? {
                Header::Positive(_) | Header::Negative(_) | Header::Float(_) => 0,
                Header::Simple(_) => 0,
                Header::Tag(_) => 1,
                Header::Bytes(Some(n)) | Header::Text(Some(n)) => {
                    self.advance(n)?;
                    0
                }
                Header::Array(Some(n)) => n as u64,
                Header::Map(Some(n)) => (n as u64).saturating_mul(2),
                h => return Err(format!("unexpected {h:?}")),
            };
            // Every nested item takes at least one byte: more than are left is corrupt, and
            // stops a forged length from looping for long.
            items = items.saturating_add(nested);
            if items > (self.raw.len() - self.pos) as u64 {
                return Err("more items than bytes left".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, FileEntry, PartSeg};
    use proptest::prelude::*;

    fn file(size: u64, meta: Option<serde_json::Value>) -> Entry {
        Entry::File(FileEntry {
            size,
            mime_type: size.is_multiple_of(2).then(|| "video/mp4".into()),
            meta,
            content: Content::Parts(vec![PartSeg {
                digest: Digest::of(&size.to_le_bytes()),
                part_size: size * 3,
                off: size,
                len: size,
            }]),
            hash: Some(Digest::of(b"h")),
            declared: size.is_multiple_of(3).then(|| Digest::of(b"declared")),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every name of a node is found with the entry the full decode gives, and names it
        /// does not hold are not found.
        #[test]
        fn lookups_agree_with_the_full_decode(
            names in proptest::collection::btree_set("[a-zé0-9._ -]{1,12}", 0..60),
            probes in proptest::collection::vec("[a-zé0-9._ -]{1,12}", 0..20),
            deep in any::<bool>(),
        ) {
            let mut node = DirNode::default();
            for (i, n) in names.iter().enumerate() {
                let meta = deep.then(|| serde_json::json!({"a": [1, -2, 3.5, {"b": null, "c": "x"}]}));
                let e = match i % 3 {
                    0 => Entry::Dir(Digest::of(n.as_bytes())),
                    _ => file(i as u64, meta),
                };
                node.entries.insert(n.clone(), e);
            }
            node.meta = deep.then(|| serde_json::json!({"k": [true, false]}));
            let raw = node.encode();
            let d = Digest::of(&raw);
            let idx = NodeIndex::build(raw, &d).unwrap();
            for (n, e) in &node.entries {
                prop_assert_eq!(idx.get(n, &d).unwrap(), Some(e.clone()));
            }
            for p in &probes {
                prop_assert_eq!(idx.get(p, &d).unwrap(), node.entries.get(p).cloned());
            }
        }

        /// Damaged bytes are an error or a lookup, never a panic.
        #[test]
        fn damaged_nodes_do_not_panic(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let mut node = DirNode::default();
            for i in 0..8u64 {
                node.entries.insert(format!("f{i}"), file(i, None));
            }
            let mut raw = node.encode();
            if flip < raw.len() {
                raw[flip] ^= 1 << bit;
            }
            raw.truncate(cut.max(1));
            let d = Digest::of(&raw);
            if let Ok(idx) = NodeIndex::build(raw, &d) {
                let _ = idx.get("f3", &d);
            }
        }
    }

    #[test]
    fn names_out_of_order_are_corrupt() {
        let mut node = DirNode::default();
        node.entries.insert("a".into(), file(1, None));
        node.entries.insert("b".into(), file(2, None));
        let mut raw = node.encode();
        let a = raw.windows(2).position(|w| w == b"\x61a").unwrap();
        let b = raw.windows(2).position(|w| w == b"\x61b").unwrap();
        raw.swap(a + 1, b + 1);
        let err = NodeIndex::build(raw, &Digest::of(b"x")).err().unwrap();
        assert!(err.reason.contains("out of order"), "{err}");
    }
}
