//! Incremental content-defined chunking (FastCDC 2020) over bytes pushed in pieces.
//!
//! The `fastcdc` crate chunks a slice. A network upload arrives in pieces, so this wrapper keeps a
//! buffer of at most two maximum-size chunks (allocated whole once a segment outgrows 256 KiB).
//! When it is full, it asks FastCDC for one cut after another while at least a maximum-size
//! chunk's worth of bytes remains after the cursor. A FastCDC cut depends only on the bytes
//! between the chunk's start and the cut (and on the bytes left, but only when fewer than `max`
//! are), so each chunk emitted is exactly the chunk that chunking the whole segment at once would
//! give, and no byte is scanned twice. [`SegmentChunker::finish`] emits the rest.
//!
//! One chunker covers one file segment: chunking restarts at every file boundary, so identical
//! files produce identical chunks whatever part they land in.

use fastcdc::v2020::FastCDC;

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
    /// about 128, and the per-upload buffer stays at 2 MiB. The minimum is half the average (as
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

/// Up to this many buffered bytes, the buffer grows by doubling (see `SegmentChunker::grow_for`).
const GROW_STEPWISE: usize = 256 << 10;

/// Chunks one file segment incrementally. Memory: one buffer of at most `2 * max` bytes.
pub struct SegmentChunker {
    params: ChunkParams,
    buf: Vec<u8>,
}

impl SegmentChunker {
    pub fn new(params: ChunkParams) -> Self {
        Self::with_pending(params, Vec::new())
    }

    /// Resumes a segment whose bytes after the last cut were saved (see [`Self::pending_bytes`]).
    pub fn with_pending(params: ChunkParams, pending: Vec<u8>) -> Self {
        SegmentChunker {
            params,
            buf: pending,
        }
    }

    fn capacity(params: ChunkParams) -> usize {
        2 * params.max as usize
    }

    /// Makes room for `n` more bytes. A small segment's buffer grows as it goes (powers of two,
    /// up to [`GROW_STEPWISE`]); past that, it takes the whole capacity `cap` at once, because
    /// growing a 2 MiB buffer step by step reallocated and copied it several times. Taking it
    /// for every upload instead cost each small request a 2 MiB allocation.
    fn grow_for(&mut self, n: usize, cap: usize) {
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            let to = match need <= GROW_STEPWISE {
                true => need.next_power_of_two(),
                false => cap.max(need),
            };
            self.buf.reserve_exact(to - self.buf.len());
        }
    }

    /// Number of bytes pushed but not yet emitted as a chunk.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The bytes pushed since the last cut: saving them and resuming with
    /// [`Self::with_pending`] continues with exactly the chunks an uninterrupted push gives.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Adds bytes; calls `emit` for every chunk that is now final.
    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let cap = Self::capacity(self.params);
        while !data.is_empty() {
            let n = cap.saturating_sub(self.buf.len()).min(data.len());
            self.grow_for(n, cap);
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= cap {
                self.cut(false, &mut emit)?;
            }
        }
        Ok(())
    }

    /// Ends the segment: emits everything still buffered (the last chunk may be short).
    pub fn finish<E>(&mut self, emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        self.cut(true, emit)
    }

    /// [`Self::finish`], then hands `buffered` the bytes it emitted (everything pushed since
    /// the last cut) before letting them go.
    pub fn finish_then<E>(
        &mut self,
        emit: impl FnMut(&[u8]) -> Result<(), E>,
        buffered: impl FnOnce(&[u8]),
    ) -> Result<(), E> {
        let at = self.emit_cuts(true, emit)?;
        buffered(&self.buf[..at]);
        self.buf.drain(..at);
        Ok(())
    }

    /// Emits chunks from the buffer's start: all of it when `all`, else while at least `max`
    /// bytes remain past the cursor (so every cut is final).
    fn cut<E>(&mut self, all: bool, emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let at = self.emit_cuts(all, emit)?;
        self.buf.drain(..at);
        Ok(())
    }

    /// The emitting half of [`Self::cut`]; returns how many bytes it emitted.
    fn emit_cuts<E>(
        &self,
        all: bool,
        mut emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let p = self.params;
        let keep = if all { 1 } else { p.max as usize };
        let cdc = FastCDC::new(&self.buf, p.min, p.avg, p.max);
        let mut at = 0;
        while self.buf.len() - at >= keep {
            let (_, end) = cdc.cut(at, self.buf.len() - at);
            emit(&self.buf[at..end])?;
            at = end;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkParams {
        ChunkParams {
            min: 64,
            avg: 256,
            max: 1024,
        }
    }

    fn whole(data: &[u8], p: ChunkParams) -> Vec<Vec<u8>> {
        FastCDC::new(data, p.min, p.avg, p.max)
            .map(|c| data[c.offset..c.offset + c.length].to_vec())
            .collect()
    }

    fn pieces(data: &[u8], sizes: &[usize], p: ChunkParams) -> Vec<Vec<u8>> {
        let mut c = SegmentChunker::new(p);
        let mut out = Vec::new();
        let mut rest = data;
        for &s in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = s.clamp(1, rest.len());
            c.push::<()>(&rest[..n], |b| {
                out.push(b.to_vec());
                Ok(())
            })
            .unwrap();
            rest = &rest[n..];
        }
        c.finish::<()>(|b| {
            out.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    proptest! {
        #[test]
        fn incremental_equals_whole(seed in any::<u64>(), len in 0usize..20_000, sizes in proptest::collection::vec(1usize..3000, 1..8)) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let data: Vec<u8> = (0..len).map(|_| rand::Rng::gen(&mut rng)).collect();
            prop_assert_eq!(pieces(&data, &sizes, small()), whole(&data, small()));
        }
    }

    #[test]
    fn empty_segment_emits_nothing() {
        assert!(pieces(&[], &[1], small()).is_empty());
    }
}
