//! Pure range planning over a list of chunk lengths: which chunks a byte range touches, and
//! which slice of each. Used for file reads, part reads and HTTP Range requests.

use cairn_core::{Error, Result};

/// One slice of one chunk: `len` bytes starting `start` bytes into chunk `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub index: usize,
    pub start: u64,
    pub len: u64,
}

/// Plans the read of `[offset, offset+len)` over chunks of the given lengths.
/// An empty range plans nothing; a range past the end is `invalid`.
pub fn plan(lens: &[u64], offset: u64, len: u64) -> Result<Vec<Piece>> {
    let total: u64 = lens.iter().sum();
    let end = offset
        .checked_add(len)
        .filter(|&e| e <= total)
        .ok_or_else(|| {
            Error::invalid(format!(
                "range {offset}+{len} is outside the {total} bytes available"
            ))
        })?;
    let mut pieces = Vec::new();
    if len == 0 {
        return Ok(pieces);
    }
    let mut chunk_start = 0u64;
    for (index, &l) in lens.iter().enumerate() {
        let chunk_end = chunk_start + l;
        if l > 0 && chunk_end > offset && chunk_start < end {
            let start = offset.max(chunk_start) - chunk_start;
            let stop = end.min(chunk_end) - chunk_start;
            pieces.push(Piece {
                index,
                start,
                len: stop - start,
            });
        }
        if chunk_end >= end {
            break;
        }
        chunk_start = chunk_end;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(chunks: &[Vec<u8>], offset: u64, len: u64) -> Vec<u8> {
        let lens: Vec<u64> = chunks.iter().map(|c| c.len() as u64).collect();
        let mut out = Vec::new();
        for p in plan(&lens, offset, len).unwrap() {
            assert!(p.len > 0, "no empty pieces");
            out.extend_from_slice(&chunks[p.index][p.start as usize..(p.start + p.len) as usize]);
        }
        out
    }

    proptest! {
        /// Any range over any chunking reads exactly what slicing the plain concatenation gives.
        #[test]
        fn matches_plain_copy(lens in proptest::collection::vec(0usize..50, 0..20), a in any::<u64>(), b in any::<u64>()) {
            let mut next = 0u8;
            let chunks: Vec<Vec<u8>> = lens.iter().map(|&l| (0..l).map(|_| { next = next.wrapping_add(1); next }).collect()).collect();
            let flat: Vec<u8> = chunks.concat();
            let total = flat.len() as u64;
            let (x, y) = if total == 0 { (0, 0) } else { (a % (total + 1), b % (total + 1)) };
            let (off, end) = (x.min(y), x.max(y));
            prop_assert_eq!(apply(&chunks, off, end - off), flat[off as usize..end as usize].to_vec());
        }
    }

    #[test]
    fn out_of_bounds_and_overflow_are_invalid() {
        assert!(plan(&[10, 10], 15, 6).is_err());
        assert!(plan(&[10], u64::MAX, 2).is_err());
        assert!(plan(&[10], 10, 0).unwrap().is_empty());
        assert_eq!(
            plan(&[10, 0, 10], 10, 1).unwrap(),
            vec![Piece {
                index: 2,
                start: 0,
                len: 1
            }]
        );
    }
}
