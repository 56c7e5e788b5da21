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
    /// What a scan with `mask` needs (the first byte of a pair is checked against `mask << 1`,
    /// as `cut_gear` does).
    fn keys(&self, mask: u64) -> Keys<'_> {
        Keys {
            gear: &self.gear,
            gear_ls: &self.gear_ls,
            mask_ls: mask << 1,
            mask,
        }
    }

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
            if let Some(cut) = scan(&self.frames, &mut self.scan, to, &g.keys(g.mask_s)) {
                return Some(cut);
            }
            if self.scan.pair < center / 2 {
                return None;
            }
        }
        let to = (remaining / 2).min(held_pairs);
        if let Some(cut) = scan(&self.frames, &mut self.scan, to, &g.keys(g.mask_l)) {
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
fn scan(frames: &VecDeque<Bytes>, scan: &mut Scan, to: usize, k: &Keys) -> Option<usize> {
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
            if let Some(at) = k.scan(&f[a - fo..2 * stop - fo], &mut hash) {
                return Some(a + at);
            }
            scan.pair = stop;
        } else {
            // The pair's first byte ends this frame; its second starts the next.
            if let Some(x) = k.step(&mut hash, &[f[a - fo], frames[fi + 1][0]]) {
                return Some(a + x);
            }
            scan.pair += 1;
        }
        scan.hash = hash;
    }
    scan.hash = hash;
    None
}

/// What one pair step of the gear scan needs.
struct Keys<'g> {
    gear: &'g [u64; 256],
    gear_ls: &'g [u64; 256],
    mask_ls: u64,
    mask: u64,
}

/// How many lanes [`Keys::scan_lanes`] interleaves: on a 256 MiB micro-benchmark, one lane
/// chunked in 93 ms, two in 79, three in 73 and four in 107 (out of registers).
const LANES: usize = 3;

/// Below this many pairs a slice is scanned in one lane: the other lanes' warm-up (32 pairs
/// each) would not pay for itself. At least `32 * LANES`.
const LANES_MIN_PAIRS: usize = 1024;

impl Keys<'_> {
    /// Steps the pairs of `bytes` (an even number of bytes) from `hash`: the offset of the
    /// first match, or `None` with `hash` updated past the last pair.
    fn scan(&self, bytes: &[u8], hash: &mut u64) -> Option<usize> {
        if bytes.len() / 2 >= LANES_MIN_PAIRS {
            self.scan_lanes::<LANES>(bytes, hash)
        } else {
            self.scan_one_lane(bytes, hash)
        }
    }

    /// One pair step: on a match, which of the two bytes matched.
    #[inline(always)]
    fn step(&self, h: &mut u64, pair: &[u8]) -> Option<usize> {
        *h = (*h << 2).wrapping_add(self.gear_ls[pair[0] as usize]);
        if *h & self.mask_ls == 0 {
            return Some(0);
        }
        *h = h.wrapping_add(self.gear[pair[1] as usize]);
        if *h & self.mask == 0 {
            return Some(1);
        }
        None
    }

    fn scan_one_lane(&self, bytes: &[u8], hash: &mut u64) -> Option<usize> {
        let mut h = *hash;
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            if let Some(b) = self.step(&mut h, pair) {
                return Some(2 * i + b);
            }
        }
        *hash = h;
        None
    }

    /// The same scan as [`Self::scan_one_lane`], run as `N` interleaved lanes over `N` parts
    /// of `bytes`, which puts `N` steps in flight on the one-step-at-a-time hash chain. It
    /// gives the same answer: the gear hash shifts every byte out after 64 more bytes, so a
    /// lane's hash, started from 0 on the 64 bytes before its part, equals the hash one scan
    /// reaches there; and a match in one part counts only once the parts before it have none.
    ///
    /// Never inlined: inlined into its caller (as it was in the server binary, though not in
    /// the tests' build), its lanes' state no longer fits in registers, and reloading it from
    /// the stack on every step lengthens the hash chain the lanes are there to overlap.
    #[inline(never)]
    fn scan_lanes<const N: usize>(&self, bytes: &[u8], hash: &mut u64) -> Option<usize> {
        let pairs = bytes.len() / 2;
        // Lanes 1.. take `per` pairs each; lane 0 takes the rest (at least `per`).
        let per = pairs / N;
        let start = |l: usize| if l == 0 { 0 } else { pairs - (N - l) * per };
        let end = |l: usize| if l + 1 == N { pairs } else { start(l + 1) };
        let mut h = [0u64; N];
        h[0] = *hash;
        for (l, hl) in h.iter_mut().enumerate().skip(1) {
            let s = 2 * start(l);
            for pair in bytes[s - 64..s].chunks_exact(2) {
                *hl = (*hl << 2)
                    .wrapping_add(self.gear_ls[pair[0] as usize])
                    .wrapping_add(self.gear[pair[1] as usize]);
            }
        }
        let part = |l: usize| &bytes[2 * start(l)..2 * (start(l) + per)];
        let parts: [&[u8]; N] = std::array::from_fn(part);
        for i in 0..per {
            for l in 0..N {
                let at = 2 * i;
                if let Some(x) = self.step(&mut h[l], &parts[l][at..at + 2]) {
                    // The parts before this one decide whether this match is the first.
                    for (e, he) in h.iter_mut().enumerate().take(l) {
                        let from = 2 * (start(e) + i + 1);
                        if let Some(y) = self.scan_one_lane(&bytes[from..2 * end(e)], he) {
                            return Some(from + y);
                        }
                    }
                    return Some(2 * start(l) + at + x);
                }
            }
        }
        let from = 2 * per;
        if let Some(y) = self.scan_one_lane(&bytes[from..2 * end(0)], &mut h[0]) {
            return Some(from + y);
        }
        *hash = h[N - 1];
        None
    }
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

        /// Parameters large enough that the scanned stretches take the interleaved lanes.
        #[test]
        fn incremental_equals_whole_through_the_lanes(
            seed in any::<u64>(),
            len in 0usize..300_000,
            sizes in proptest::collection::vec(1usize..40_000, 1..8),
            resume_at in proptest::option::of(0usize..20),
        ) {
            let medium = ChunkParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let data: Vec<u8> = (0..len).map(|_| rand::Rng::gen(&mut rng)).collect();
            prop_assert_eq!(pieces(&data, &sizes, medium, resume_at), whole(&data, medium));
        }

        /// Any number of lanes finds the match one lane finds, and ends on its hash.
        #[test]
        fn lanes_scan_like_one_lane(
            seed in any::<u64>(),
            pairs in 128usize..3000,
            start in any::<u64>(),
            bits in 4usize..18,
        ) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let data: Vec<u8> = (0..2 * pairs).map(|_| rand::Rng::gen(&mut rng)).collect();
            let g = Gear::new(1 << 10);
            let k = g.keys(MASKS[bits]);
            let one = { let mut h = start; (k.scan_one_lane(&data, &mut h), h) };
            let two = { let mut h = start; (k.scan_lanes::<2>(&data, &mut h), h) };
            let three = { let mut h = start; (k.scan_lanes::<3>(&data, &mut h), h) };
            let four = { let mut h = start; (k.scan_lanes::<4>(&data, &mut h), h) };
            prop_assert_eq!(one.0, two.0);
            prop_assert_eq!(one.0, three.0);
            prop_assert_eq!(one.0, four.0);
            if one.0.is_none() {
                prop_assert_eq!(one.1, two.1);
                prop_assert_eq!(one.1, three.1);
                prop_assert_eq!(one.1, four.1);
            }
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
