//! Verified reads of part of a chunk (pure functions, no I/O).
//!
//! A chunk's name is its BLAKE3 hash, and BLAKE3 is a Merkle tree over 1 KiB pieces. Keeping the
//! tree's inner hashes down to 16 KiB groups (an *outboard*, 64 bytes per group) lets a reader
//! check any group-aligned slice of a chunk against the chunk's name without reading the rest:
//! a 1 MiB Range that starts in the middle of a 256 KiB chunk reads the groups it needs, not the
//! whole chunk. Without it, edge chunks made a Range GET read and hash about 1.38× the bytes sent.
//!
//! The outboard is not trusted: every hash pair taken from it is checked against its parent,
//! starting from the chunk's name, so a damaged outboard is a `corrupt` read like damaged data.
//! The tree walk and outboard layout come from `bao-tree` (the crate iroh-blobs uses for the
//! same job); the hashing itself is `blake3`'s.

use bao_tree::blake3;
use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::io::sync::Outboard;
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use cairn_core::Digest;

/// Groups of 2^4 BLAKE3 chunks: 16 KiB of data per 64-byte hash pair (0.4% overhead), the
/// granularity iroh-blobs uses too. Smaller groups cut read amplification further but grow the
/// outboard; larger ones hash more than a Range needs.
const GROUP_LOG: u8 = 4;
/// Bytes per group.
pub const GROUP: u64 = 1024 << GROUP_LOG;

fn block_size() -> BlockSize {
    BlockSize::from_chunk_log(GROUP_LOG)
}

/// Bytes of outboard for a chunk of `len` bytes (0 for a chunk of one group or less).
pub fn outboard_len(len: u32) -> u32 {
    // At most (4 GiB / 16 KiB) * 64 = 16 MiB: fits.
    outboard_len_u64(u64::from(len)) as u32
}

/// The chunk's hash and its post-order outboard (`bao-tree`'s layout), in one pass over `data`.
///
/// This is `PostOrderMemOutboard::create` hashing the groups in place: that one copies each group
/// into a buffer first, which showed as a few percent of an upload's CPU.
pub fn hash_with_outboard(data: &[u8]) -> (Digest, Vec<u8>) {
    hash_with_outboard_pieces(&[data])
}

/// [`hash_with_outboard`] of the concatenation of `pieces` (a chunk as it lies in the request
/// frames it arrived in). Only a group that straddles two pieces is copied, into one group-sized
/// buffer.
pub fn hash_with_outboard_pieces(pieces: &[&[u8]]) -> (Digest, Vec<u8>) {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    if len as u64 <= GROUP {
        let mut h = blake3::Hasher::new();
        for p in pieces {
            h.update(p);
        }
        return (Digest::from(h.finalize()), Vec::new());
    }
    let mut data = Pieces {
        pieces,
        next: 0,
        start: 0,
        scratch: Vec::new(),
    };
    let tree = BaoTree::new(len as u64, block_size());
    let mut ob = Vec::with_capacity(tree.outboard_size() as usize);
    let mut stack: Vec<blake3::Hash> = Vec::with_capacity(16);
    for item in tree.post_order_chunks_iter() {
        match item {
            BaoChunk::Parent { is_root, .. } => {
                let (r, l) = (stack.pop(), stack.pop());
                let (Some(l), Some(r)) = (l, r) else {
                    unreachable!("post-order: a parent comes after its two children")
                };
                ob.extend_from_slice(l.as_bytes());
                ob.extend_from_slice(r.as_bytes());
                stack.push(parent_cv(&l, &r, is_root));
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                let at = start_chunk.to_bytes() as usize;
                stack.push(subtree_cv(start_chunk.0, data.get(at, size), is_root));
            }
        }
    }
    let root = stack.pop().expect("a tree has a root");
    (Digest::from(root), ob)
}

/// Reads consecutive spans of the concatenation of `pieces`, in increasing order.
struct Pieces<'a> {
    pieces: &'a [&'a [u8]],
    /// The first piece that may hold bytes not read yet, and its offset in the concatenation.
    next: usize,
    start: usize,
    scratch: Vec<u8>,
}

impl Pieces<'_> {
    /// Bytes `at..at + n` (with `at` at or past every span read before): a slice of one piece,
    /// or a copy when they straddle pieces.
    fn get(&mut self, at: usize, n: usize) -> &[u8] {
        while self.start + self.pieces[self.next].len() <= at {
            self.start += self.pieces[self.next].len();
            self.next += 1;
        }
        let (p, off) = (self.pieces[self.next], at - self.start);
        if off + n <= p.len() {
            return &p[off..off + n];
        }
        self.scratch.clear();
        let (mut i, mut off) = (self.next, off);
        while self.scratch.len() < n {
            let p = self.pieces[i];
            let take = (n - self.scratch.len()).min(p.len() - off);
            self.scratch.extend_from_slice(&p[off..off + take]);
            (i, off) = (i + 1, 0);
        }
        &self.scratch
    }
}

/// The smallest group-aligned span `[from, to)` of a `size`-byte chunk that covers
/// `[start, start + len)`; `to` is clamped to `size`.
pub fn aligned_span(size: u64, start: u64, len: u64) -> (u64, u64) {
    let from = start / GROUP * GROUP;
    let to = start
        .saturating_add(len)
        .div_ceil(GROUP)
        .saturating_mul(GROUP);
    (from, to.min(size))
}

/// Whether `data`, found at offset `from` of a `size`-byte chunk named `root`, is exactly those
/// bytes of it. `ob` is the chunk's outboard (as read; it is checked too). `from` must be
/// group-aligned and `data` must end on a group boundary or at `size`.
pub fn verify_span(root: &Digest, size: u64, ob: &[u8], from: u64, data: &[u8]) -> bool {
    let to = from + data.len() as u64;
    let aligned = from.is_multiple_of(GROUP) && (to.is_multiple_of(GROUP) || to == size);
    if !aligned || to > size || from >= to || ob.len() as u64 != outboard_len_u64(size) {
        return false;
    }
    let tree = BaoTree::new(size, block_size());
    let ob = PostOrderMemOutboard {
        root: blake3::Hash::from(*root.as_bytes()),
        tree,
        data: ob,
    };
    let ranges = ChunkRanges::from(ChunkNum::full_chunks(from)..ChunkNum::chunks(to));
    // Hashes still to be matched, the next one on top: starts with the chunk's name.
    let mut expect = vec![ob.root];
    for item in tree.ranges_pre_order_chunks_iter_ref(&ranges, 0) {
        let Some(want) = expect.pop() else {
            return false;
        };
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let Ok(Some((l, r))) = ob.load(node) else {
                    return false;
                };
                if parent_cv(&l, &r, is_root) != want {
                    return false;
                }
                if right {
                    expect.push(r);
                }
                if left {
                    expect.push(l);
                }
            }
            BaoChunk::Leaf {
                start_chunk,
                size: n,
                is_root,
                ..
            } => {
                let at = start_chunk.to_bytes();
                let Some(piece) = at
                    .checked_sub(from)
                    .and_then(|s| data.get(s as usize..s as usize + n))
                else {
                    return false;
                };
                if subtree_cv(start_chunk.0, piece, is_root) != want {
                    return false;
                }
            }
        }
    }
    expect.is_empty()
}

fn outboard_len_u64(size: u64) -> u64 {
    (size.div_ceil(GROUP).max(1) - 1) * 64
}

fn subtree_cv(start_chunk: u64, data: &[u8], is_root: bool) -> blake3::Hash {
    use blake3::hazmat::HasherExt;
    if is_root {
        return blake3::hash(data);
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(start_chunk * 1024);
    h.update(data);
    blake3::Hash::from(h.finalize_non_root())
}

fn parent_cv(l: &blake3::Hash, r: &blake3::Hash, is_root: bool) -> blake3::Hash {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, Mode};
    if is_root {
        merge_subtrees_root(l.as_bytes(), r.as_bytes(), Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(
            l.as_bytes(),
            r.as_bytes(),
            Mode::Hash,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_hash_is_blake3_and_the_outboard_has_the_documented_size() {
        for len in [0, 1, 16 << 10, (16 << 10) + 1, 100_000, 1 << 20] {
            let d = data(len);
            let (h, ob) = hash_with_outboard(&d);
            assert_eq!(h, Digest::of(&d), "len {len}");
            assert_eq!(ob.len() as u32, outboard_len(len as u32), "len {len}");
            if len as u64 > GROUP {
                // Exactly the layout bao-tree reads (verify_span uses its `load`).
                let theirs = PostOrderMemOutboard::create(&d, block_size());
                assert_eq!(ob, theirs.data, "len {len}");
            }
        }
        assert_eq!(outboard_len(256 << 10), 15 * 64);
    }

    #[test]
    fn every_aligned_span_verifies_and_any_damage_is_caught() {
        let len = 200_000u64; // 12 full groups and a partial one
        let d = data(len as usize);
        let (h, ob) = hash_with_outboard(&d);
        for (start, n) in [
            (0, 1),
            (5, 40_000),
            (16_384, 16_384),
            (150_000, 50_000),
            (199_999, 1),
        ] {
            let (from, to) = aligned_span(len, start, n);
            assert!(from <= start && start + n <= to && to <= len);
            let span = &d[from as usize..to as usize];
            assert!(verify_span(&h, len, &ob, from, span), "{start}+{n}");
            for i in [0, span.len() / 2, span.len() - 1] {
                let mut bad = span.to_vec();
                bad[i] ^= 1;
                assert!(
                    !verify_span(&h, len, &ob, from, &bad),
                    "data flip {start}+{n} @{i}"
                );
            }
            assert!(!verify_span(&Digest::of(b"x"), len, &ob, from, span));
        }
        // Reading the whole chunk walks every hash pair: any flip in the outboard is caught.
        for i in (0..ob.len()).step_by(7) {
            let mut bad_ob = ob.clone();
            bad_ob[i] ^= 0x80;
            assert!(!verify_span(&h, len, &bad_ob, 0, &d), "outboard flip @{i}");
        }
    }

    #[test]
    fn pieces_hash_like_their_concatenation() {
        for len in [1usize, 16 << 10, (16 << 10) + 1, 100_000, 300_000] {
            let d = data(len);
            let want = hash_with_outboard(&d);
            for cuts in [
                vec![1],
                vec![16 << 10],
                vec![5000, 11_384, 1],
                vec![65_536, 7],
            ] {
                let mut pieces = Vec::new();
                let mut rest = &d[..];
                for &c in cuts.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let n = c.min(rest.len());
                    pieces.push(&rest[..n]);
                    rest = &rest[n..];
                    if pieces.len() > 400 {
                        pieces.push(rest);
                        break;
                    }
                }
                assert_eq!(
                    hash_with_outboard_pieces(&pieces),
                    want,
                    "len {len} cuts {cuts:?}"
                );
            }
        }
    }

    #[test]
    fn misaligned_or_truncated_spans_are_refused() {
        let d = data(100_000);
        let (h, ob) = hash_with_outboard(&d);
        assert!(!verify_span(&h, 100_000, &ob, 1, &d[1..16_384]));
        assert!(!verify_span(&h, 100_000, &ob, 0, &d[..16_000]));
        assert!(!verify_span(&h, 100_000, &ob[..64], 0, &d[..16_384]));
        assert!(!verify_span(&h, 100_000, &ob, 0, &[]));
        assert!(verify_span(&h, 100_000, &ob, 0, &d));
    }
}
