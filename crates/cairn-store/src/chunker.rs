//! Incremental content-defined chunking (FastCDC 2020) over bytes pushed in pieces.
//!
//! The `fastcdc` crate chunks a slice. A network upload arrives in pieces, so this wrapper keeps a
//! buffer: once it holds two maximum-size chunks it asks FastCDC for cut points and emits every
//! chunk but the last, whose end may only be the end of the buffer. A FastCDC cut depends only on
//! the bytes between the chunk's start and the cut, so the chunks emitted are exactly those that
//! chunking the whole segment at once would give. [`SegmentChunker::finish`] emits the rest.
//!
//! One chunker covers one file segment: chunking restarts at every file boundary, so identical
//! files produce identical chunks whatever part they land in.

use fastcdc::v2020::FastCDC;

/// FastCDC size parameters, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkParams {
    /// 64 KiB / 256 KiB / 1 MiB: a 1 MiB edit touches a handful of chunks, a 32 MiB part holds
    /// about 128, and the per-upload buffer stays at 2 MiB.
    fn default() -> Self {
        ChunkParams {
            min: 64 << 10,
            avg: 256 << 10,
            max: 1 << 20,
        }
    }
}

/// Chunks one file segment incrementally. Memory: at most `2 * max` bytes plus one push.
pub struct SegmentChunker {
    params: ChunkParams,
    buf: Vec<u8>,
}

impl SegmentChunker {
    pub fn new(params: ChunkParams) -> Self {
        SegmentChunker {
            params,
            buf: Vec::new(),
        }
    }

    /// Resumes a segment whose bytes after the last cut were saved (see [`Self::pending_bytes`]).
    pub fn with_pending(params: ChunkParams, pending: Vec<u8>) -> Self {
        SegmentChunker {
            params,
            buf: pending,
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
        data: &[u8],
        emit: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        // Grow to what is needed, not to the next power of two: with many uploads at once,
        // doubling kept ~4 MiB per upload for a buffer that never holds much over 2 MiB.
        self.buf.reserve_exact(data.len());
        self.buf.extend_from_slice(data);
        if self.buf.len() < 2 * self.params.max as usize {
            return Ok(());
        }
        self.cut(false, emit)
    }

    /// Ends the segment: emits everything still buffered (the last chunk may be short).
    pub fn finish<E>(&mut self, emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        self.cut(true, emit)
    }

    fn cut<E>(&mut self, all: bool, mut emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let p = self.params;
        let cuts: Vec<(usize, usize)> = FastCDC::new(&self.buf, p.min, p.avg, p.max)
            .map(|c| (c.offset, c.length))
            .collect();
        let keep_last = usize::from(!all);
        let mut consumed = 0;
        for &(off, len) in &cuts[..cuts.len() - keep_last] {
            emit(&self.buf[off..off + len])?;
            consumed = off + len;
        }
        self.buf.drain(..consumed);
        Ok(())
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
