//! Recycled read buffers for chunk reads.
//!
//! Serving a Range reads every overlapping chunk into memory, verifies it and hands slices of
//! it to the HTTP layer. A fresh `vec![0; n]` per chunk costs a `memset` and cold cache lines
//! on every read (about 8% of a Range-serving server's CPU); reading into a never-initialised
//! buffer was measured slower still, since the kernel's copy then pays the cold lines. A
//! buffer that comes back to a small pool when its last slice is dropped is already
//! initialised and often still in cache.
//!
//! Buffers come in power-of-two classes from 64 KiB to 2 MiB (a class wastes at most half);
//! each class keeps at most [`KEEP_PER_CLASS`] idle buffers, so the pool holds at most about
//! 32 MiB however many reads ran. Larger reads get a plain allocation.

use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;

const MIN_CLASS_SHIFT: u32 = 16;
const CLASSES: usize = 6; // 64 KiB, 128 KiB, ..., 2 MiB
const KEEP_PER_CLASS: usize = 8;

struct Pool {
    classes: [Mutex<Vec<Vec<u8>>>; CLASSES],
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        classes: std::array::from_fn(|_| Mutex::new(Vec::new())),
    })
}

/// The class index and byte size for a request of `len` bytes, if pooled.
fn class_of(len: usize) -> Option<(usize, usize)> {
    let size = len.max(1 << MIN_CLASS_SHIFT).checked_next_power_of_two()?;
    let idx = (size.trailing_zeros() - MIN_CLASS_SHIFT) as usize;
    (idx < CLASSES).then_some((idx, size))
}

/// A buffer of at least `len` initialised bytes; `fill` writes the first `len` of them, then
/// the buffer becomes [`Bytes`] that return it to the pool when the last slice is dropped.
pub fn read_into<E>(len: usize, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<Bytes, E> {
    let Some((idx, size)) = class_of(len) else {
        let mut buf = vec![0u8; len];
        fill(&mut buf)?;
        return Ok(Bytes::from(buf));
    };
    let mut buf = pool().classes[idx]
        .lock()
        .pop()
        .unwrap_or_else(|| vec![0u8; size]);
    // On error `buf` is simply dropped: a failed read is rare, and not worth recycling.
    fill(&mut buf[..len])?;
    Ok(Bytes::from_owner(Pooled { buf, len, idx }))
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    idx: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut free = pool().classes[self.idx].lock();
        if free.len() < KEEP_PER_CLASS {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_chunk_sizes() {
        assert_eq!(class_of(0), Some((0, 64 << 10)));
        assert_eq!(class_of(64 << 10), Some((0, 64 << 10)));
        assert_eq!(class_of((64 << 10) + 1), Some((1, 128 << 10)));
        assert_eq!(class_of((1 << 20) + 44), Some((5, 2 << 20)));
        assert_eq!(class_of(2 << 20), Some((5, 2 << 20)));
        assert_eq!(class_of((2 << 20) + 1), None);
        assert_eq!(class_of(usize::MAX), None);
    }

    #[test]
    fn recycled_buffers_expose_only_what_was_read() {
        for round in 0..3u8 {
            let b = read_into::<()>(1000, |buf| {
                buf.fill(round);
                Ok(())
            })
            .unwrap();
            assert_eq!(b.len(), 1000);
            assert!(b.iter().all(|&x| x == round));
            let tail = b.slice(990..);
            drop(b);
            assert_eq!(&tail[..], &[round; 10]);
        }
        assert!(read_into(10, |_| Err("boom")).is_err());
    }
}
