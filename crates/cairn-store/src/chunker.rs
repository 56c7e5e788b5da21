//! Incremental content-defined chunking (FastCDC 2020) over bytes pushed in pieces.
//!
//! The `fastcdc` crate finds a cut by scanning one contiguous slice from the chunk's start. A
//! network upload arrives as body frames, and copying them into one buffer to give the crate its
//! slice cost a copy of every byte, a 2 MiB buffer per upload, and a move of the unfinished
//! chunk's bytes to the buffer's front each time it filled. So this module keeps the frames
//! themselves (`Bytes`, shared with the HTTP layer, never copied) and runs FastCDC's scan over them
//! with a state that carries from one frame to the next: the same gear tables and masks (taken from
//! the crate), the same two-bytes-a-step loop, the same rules for the first `min` bytes, the
//! average-size switch and the `max` cut. The tests check it against the crate, cut for cut,
//! including frames split mid-pair and resumed chunkers.
//!
//! A cut depends only on the bytes from the chunk's start to the cut and on how many bytes the
//! segment has left, which the chunker is told up front. So each chunk is emitted as soon as its
//! cut is found, exactly the chunk that chunking the whole segment at once would give, and no byte
//! is scanned twice. A segment of at most `max` bytes is emitted whole by
//! [`SegmentChunker::finish`] (the upload path takes a small file's hash from it there).
//!
//! One chunker covers one file segment: chunking restarts at every file boundary, so identical
//! files produce identical chunks whatever part they land in.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use fastcdc::v2020::{get_gear_with_seed, logarithm2, Normalization, MASKS};

/// FastCDC size parameters, in bytes.
///
/// A store records the parameters it was created with and keeps them (see
/// `Store::open`): the same bytes must always give the same chunks, or dedup across the change
/// would silently stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl cairn_core::record::Record for ChunkParams {
    const NAME: &'static str = "chunking parameters";
}

impl ChunkParams {
    /// The parameters of stores created before they were recorded (64 KiB / 256 KiB / 1 MiB).
    pub const LEGACY: ChunkParams = ChunkParams {
        min: 64 << 10,
        avg: 256 << 10,
        max: 1 << 20,
    };
}

impl Default for ChunkParams {
    /// 128 KiB / 256 KiB / 1 MiB: a 1 MiB edit touches a handful of chunks, a 32 MiB part holds
    /// about 128, and an unfinished chunk holds at most 1 MiB of frames. The minimum is half the average (as
    /// restic's): FastCDC skips the first `min` bytes of every chunk without hashing them, and
    /// going from a quarter to a half cut the server's ingest CPU by about 5%.
    fn default() -> Self {
        ChunkParams {
            min: 128 << 10,
            avg: 256 << 10,
            max: 1 << 20,
        }
    }
}

/// FastCDC 2020's tables and masks for one average size, exactly as `fastcdc::v2020::FastCDC::new`
/// derives them (normalization level 1, seed 0).
struct Gear {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
}

impl Gear {
    fn new(avg: u32) -> Gear {
        let bits = logarithm2(avg);
        let level = Normalization::Level1.bits();
        let (gear, gear_ls) = get_gear_with_seed(0);
        Gear {
            gear,
            gear_ls,
            mask_s: MASKS[(bits + level) as usize],
            mask_l: MASKS[(bits - level) as usize],
        }
    }
}

/// Where FastCDC's scan of the current chunk stands: the next pair of bytes to hash (pair `i`
/// is the chunk's bytes `2i` and `2i + 1`, as `cut_gear` steps) and the gear hash so far.
struct Scan {
    pair: usize,
    hash: u64,
}

/// Chunks one file segment incrementally, without copying its bytes: the chunker keeps the body
/// frames (`Bytes`, shared with the HTTP layer) that hold the current chunk, and emits each
/// chunk as the list of slices it spans.
pub struct SegmentChunker {
    params: ChunkParams,
    gear: Gear,
    /// The bytes since the last cut, in order.
    frames: VecDeque<Bytes>,
    /// Their total length.
    len: usize,
    /// Bytes of the segment not pushed yet.
    left: u64,
    /// A segment of at most `max` bytes is emitted only by `finish`, so that all its bytes are
    /// at hand together there (see [`Self::finish_then`]).
    defer: bool,
    scan: Scan,
}

impl SegmentChunker {
    /// A chunker for a segment of `len` bytes.
    pub fn new(params: ChunkParams, len: u64) -> Self {
        Self::with_pending(params, Vec::new(), len)
    }

    /// Resumes a segment whose bytes after the last cut were saved (see
    /// [`Self::pending_bytes`]); `left` more bytes of the segment are still to come.
    pub fn with_pending(params: ChunkParams, pending: Vec<u8>, left: u64) -> Self {
        let mut c = SegmentChunker {
            params,
            gear: Gear::new(params.avg),
            frames: VecDeque::new(),
            len: 0,
            left: 0,
            defer: false,
            scan: Scan { pair: 0, hash: 0 },
        };
        c.begin(left.saturating_add(pending.len() as u64));
        c.left = left;
        if !pending.is_empty() {
            c.len = pending.len();
            c.frames.push_back(Bytes::from(pending));
        }
        c
    }

    /// Starts the next segment, of `len` bytes, once the last one is finished.
    pub fn begin(&mut self, len: u64) {
        debug_assert!(self.frames.is_empty() && self.left == 0);
        self.left = len;
        self.defer = len <= u64::from(self.params.max);
        self.restart_scan();
    }

    fn restart_scan(&mut self) {
        self.scan = Scan {
            pair: self.params.min as usize / 2,
            hash: 0,
        };
    }

    /// Number of bytes pushed but not yet emitted as a chunk.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// The bytes pushed since the last cut: saving them and resuming with
    /// [`Self::with_pending`] continues with exactly the chunks an uninterrupted push gives.
    pub fn pending_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for f in &self.frames {
            out.extend_from_slice(f);
        }
        out
    }

    /// Adds bytes of the segment (no more than it has left: a caller bug otherwise); calls
    /// `emit` for every chunk that is now final.
    pub fn push<E>(
        &mut self,
        data: Bytes,
        mut emit: impl FnMut(&[&[u8]]) -> Result<(), E>,
    ) -> Result<(), E> {
        assert!(
            data.len() as u64 <= self.left,
            "pushed past the segment's end"
        );
        if data.is_empty() {
            return Ok(());
        }
        self.left -= data.len() as u64;
        self.len += data.len();
        self.frames.push_back(data);
        if self.defer {
            return Ok(());
        }
        while let Some(cut) = self.next_cut(false) {
            self.emit_front(cut, &mut emit)?;
        }
        Ok(())
    }

    /// Ends the segment: emits everything still held (the last chunk may be short).
    pub fn finish<E>(&mut self, emit: impl FnMut(&[&[u8]]) -> Result<(), E>) -> Result<(), E> {
        self.finish_then(emit, |_| ())
    }

    /// [`Self::finish`], then hands `held` the bytes it emitted (everything pushed since the
    /// last cut: for a segment of at most `max` bytes, the whole segment).
    pub fn finish_then<E>(
        &mut self,
        mut emit: impl FnMut(&[&[u8]]) -> Result<(), E>,
        held: impl FnOnce(&[&[u8]]),
    ) -> Result<(), E> {
        assert_eq!(self.left, 0, "finished before the segment's end");
        let frames: Vec<Bytes> = self.frames.iter().cloned().collect();
        while let Some(cut) = self.next_cut(true) {
            self.emit_front(cut, &mut emit)?;
        }
        let slices: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        held(&slices);
        Ok(())
    }

    /// Emits the first `n` bytes held as one chunk and starts scanning the next.
    fn emit_front<E>(
        &mut self,
        n: usize,
        emit: &mut impl FnMut(&[&[u8]]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(self.frames.len());
        let mut need = n;
        for f in &self.frames {
            let take = need.min(f.len());
            pieces.push(&f[..take]);
            need -= take;
            if need == 0 {
                break;
            }
        }
        emit(&pieces)?;
        let mut drop = n;
        while drop > 0 {
            let front = self.frames.front_mut().expect("the chunk's bytes are held");
            if front.len() <= drop {
                drop -= front.len();
                self.frames.pop_front();
            } else {
                front.advance(drop);
                drop = 0;
            }
        }
        self.len -= n;
        self.restart_scan();
        Ok(())
    }

    /// The length of the next chunk, if the bytes held decide it: what `cut_gear` returns for
    /// the rest of the segment, computed as far as the bytes held go. `last`: every byte of the
    /// segment is held (at `finish`).
    fn next_cut(&mut self, last: bool) -> Option<usize> {
        let total = self.len as u64 + self.left;
        if self.len == 0 {
            return None;
        }
        let p = self.params;
        if total <= u64::from(p.min) {
            // A short rest is one chunk, unscanned.
            return last.then_some(self.len);
        }
        let remaining = total.min(u64::from(p.max)) as usize;
        let center = total.min(u64::from(p.avg)) as usize;
        let held_pairs = self.len / 2;
        let g = &self.gear;
        if self.scan.pair < center / 2 {
            let to = (center / 2).min(held_pairs);
            let (m, m_ls) = (g.mask_s, g.mask_s << 1);
            if let Some(cut) = scan(&self.frames, &mut self.scan, to, m_ls, m, g) {
                return Some(cut);
            }
            if self.scan.pair < center / 2 {
                return None;
            }
        }
        let to = (remaining / 2).min(held_pairs);
        let (m, m_ls) = (g.mask_l, g.mask_l << 1);
        if let Some(cut) = scan(&self.frames, &mut self.scan, to, m_ls, m, g) {
            return Some(cut);
        }
        // No match up to the largest chunk (or the segment's end): cut there.
        (self.scan.pair >= remaining / 2 && self.len >= remaining).then_some(remaining)
    }
}

/// Hashes pairs `scan.pair..to` of the chunk held in `frames` (all of them held), as
/// `fastcdc::v2020::cut_gear` does: returns the cut (the chunk's length) at the first match.
/// The inner loop runs over one frame's slice; a pair split between two frames is stepped
/// on its own.
fn scan(
    frames: &VecDeque<Bytes>,
    scan: &mut Scan,
    to: usize,
    mask_ls: u64,
    mask: u64,
    g: &Gear,
) -> Option<usize> {
    let (gear, gear_ls) = (&*g.gear, &*g.gear_ls);
    let (mut fi, mut fo) = (0usize, 0usize);
    let mut hash = scan.hash;
    while scan.pair < to {
        let a = 2 * scan.pair;
        while fo + frames[fi].len() <= a {
            fo += frames[fi].len();
            fi += 1;
        }
        let f = &frames[fi][..];
        if a + 1 < fo + f.len() {
            // Pairs wholly inside this frame.
            let stop = to.min((fo + f.len()) / 2);
            let mut i = scan.pair;
            while i < stop {
                let at = 2 * i - fo;
                hash = (hash << 2).wrapping_add(gear_ls[f[at] as usize]);
                if hash & mask_ls == 0 {
                    return Some(2 * i);
                }
                hash = hash.wrapping_add(gear[f[at + 1] as usize]);
                if hash & mask == 0 {
                    return Some(2 * i + 1);
                }
                i += 1;
            }
            scan.pair = i;
        } else {
            // The pair's first byte ends this frame; its second starts the next.
            let (b0, b1) = (f[a - fo], frames[fi + 1][0]);
            hash = (hash << 2).wrapping_add(gear_ls[b0 as usize]);
            if hash & mask_ls == 0 {
                return Some(a);
            }
            hash = hash.wrapping_add(gear[b1 as usize]);
            if hash & mask == 0 {
                return Some(a + 1);
            }
            scan.pair += 1;
        }
        scan.hash = hash;
    }
    scan.hash = hash;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastcdc::v2020::FastCDC;
    use proptest::prelude::*;

    fn small() -> ChunkParams {
        ChunkParams {
            min: 64,
            avg: 256,
            max: 1024,
        }
    }

    /// The reference: the `fastcdc` crate chunking the whole segment at once.
    fn whole(data: &[u8], p: ChunkParams) -> Vec<Vec<u8>> {
        FastCDC::new(data, p.min, p.avg, p.max)
            .map(|c| data[c.offset..c.offset + c.length].to_vec())
            .collect()
    }

    fn collect(out: &mut Vec<Vec<u8>>) -> impl FnMut(&[&[u8]]) -> Result<(), ()> + '_ {
        |pieces| {
            out.push(pieces.concat());
            Ok(())
        }
    }

    /// Pushes `data` in frames of the given sizes (cycled); when `resume_at` is given, the
    /// chunker is dropped after that many frames and a new one resumes from its pending bytes.
    fn pieces(
        data: &[u8],
        sizes: &[usize],
        p: ChunkParams,
        resume_at: Option<usize>,
    ) -> Vec<Vec<u8>> {
        let mut c = SegmentChunker::new(p, data.len() as u64);
        let mut out = Vec::new();
        let mut rest = data;
        for (k, &s) in sizes.iter().cycle().enumerate() {
            if rest.is_empty() {
                break;
            }
            if Some(k) == resume_at {
                c = SegmentChunker::with_pending(p, c.pending_bytes(), rest.len() as u64);
            }
            let n = s.clamp(1, rest.len());
            c.push(Bytes::copy_from_slice(&rest[..n]), collect(&mut out))
                .unwrap();
            rest = &rest[n..];
        }
        c.finish(collect(&mut out)).unwrap();
        out
    }

    proptest! {
        #[test]
        fn incremental_equals_whole(
            seed in any::<u64>(),
            len in 0usize..20_000,
            sizes in proptest::collection::vec(1usize..3000, 1..8),
            resume_at in proptest::option::of(0usize..40),
        ) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let data: Vec<u8> = (0..len).map(|_| rand::Rng::gen(&mut rng)).collect();
            prop_assert_eq!(pieces(&data, &sizes, small(), resume_at), whole(&data, small()));
        }

        /// Low-entropy data (runs of a few byte values) hits the maximum-size and short-tail
        /// cases far more often than random bytes do.
        #[test]
        fn incremental_equals_whole_on_repetitive_data(
            seed in any::<u64>(),
            len in 0usize..20_000,
            sizes in proptest::collection::vec(1usize..700, 1..8),
        ) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let data: Vec<u8> = (0..len).map(|i| if rand::Rng::gen_ratio(&mut rng, 1, 50) { (i % 7) as u8 } else { 0 }).collect();
            prop_assert_eq!(pieces(&data, &sizes, small(), None), whole(&data, small()));
        }
    }

    #[test]
    fn the_default_parameters_cut_like_the_crate() {
        let p = ChunkParams::default();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let data: Vec<u8> = (0..6 << 20).map(|_| rand::Rng::gen(&mut rng)).collect();
        let want = whole(&data, p);
        assert!(want.len() > 10, "{} chunks", want.len());
        assert_eq!(pieces(&data, &[65_536, 1, 100_000, 7], p, Some(5)), want);
    }

    #[test]
    fn empty_segment_emits_nothing() {
        assert!(pieces(&[], &[1], small(), None).is_empty());
    }

    #[test]
    fn a_small_segment_is_emitted_whole_at_finish() {
        let data = vec![3u8; 1000];
        let mut c = SegmentChunker::new(small(), data.len() as u64);
        c.push(
            Bytes::copy_from_slice(&data[..600]),
            |_| -> Result<(), ()> { panic!("nothing is emitted before finish") },
        )
        .unwrap();
        c.push(
            Bytes::copy_from_slice(&data[600..]),
            |_| -> Result<(), ()> { panic!("nothing is emitted before finish") },
        )
        .unwrap();
        let mut held = 0;
        c.finish_then(
            |_| Ok::<_, ()>(()),
            |h| held = h.iter().map(|p| p.len()).sum(),
        )
        .unwrap();
        assert_eq!(held, 1000);
    }
}
