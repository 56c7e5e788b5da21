//! Recycled read buffers for chunk reads.
//!
//! Serving a Range reads every overlapping chunk into memory, verifies it and hands slices of
//! it to the HTTP layer. A fresh `vec![0; n]` per chunk costs a `memset` and cold cache lines
//! on every read (about 8% of a Range-serving server's CPU); reading into a never-initialised
//! buffer was measured slower still, since the kernel's copy then pays the cold lines. A
//! buffer that comes back to a small pool when its last slice is dropped is already
//! initialised and often still in cache.
//!
//! There is one pool per CPU: a buffer goes back to the pool of the CPU that drops it (which
//! just copied it into a socket) and is taken by the next read on that CPU, whose cache
//! still holds its lines. From one shared pool, a buffer last written on the other CPU had its
//! lines pulled across before the read could overwrite them. On the 2-CPU bench machine the
//! per-CPU pools served 1 MiB Range reads about 10% faster when the host ran both CPUs on one
//! core complex, and 14% faster when it ran them on two, where a line takes ~350 ns to cross
//! (docs/performance.md).
//!
//! Buffers come in power-of-two classes from 64 KiB to 2 MiB (a class wastes at most half);
//! the pools together keep at most [`KEEP_PER_CLASS`] idle buffers per class (at least one
//! per CPU), so they hold about 32 MiB however many reads ran (4 MiB per CPU beyond eight
//! CPUs). Larger reads get a plain allocation.

use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;

const MIN_CLASS_SHIFT: u32 = 16;
const CLASSES: usize = 6; // 64 KiB, 128 KiB, ..., 2 MiB
const KEEP_PER_CLASS: usize = 8;

struct Pool {
    /// Per CPU (modulo their count), per class: idle buffers.
    cpus: Vec<[Mutex<Vec<Vec<u8>>>; CLASSES]>,
    /// Idle buffers each CPU's pool keeps per class.
    keep: usize,
}

impl Pool {
    /// The class `idx` of the pool of the CPU this thread runs on now.
    fn here(&self, idx: usize) -> &Mutex<Vec<Vec<u8>>> {
        &self.cpus[rustix::thread::sched_getcpu() % self.cpus.len()][idx]
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(1024);
        Pool {
            cpus: (0..n)
                .map(|_| std::array::from_fn(|_| Mutex::new(Vec::new())))
                .collect(),
            keep: (KEEP_PER_CLASS / n).max(1),
        }
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
    let mut buf = pool()
        .here(idx)
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
        let pool = pool();
        let mut free = pool.here(self.idx).lock();
        if free.len() < pool.keep {
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

    #[test]
    fn the_pools_keep_a_bounded_number_of_idle_buffers() {
        let len = (512 << 10) - 3;
        let (idx, _) = class_of(len).unwrap();
        let held: Vec<Bytes> = (0..40)
            .map(|i| {
                read_into::<()>(len, |b| {
                    b.fill(i);
                    Ok(())
                })
                .unwrap()
            })
            .collect();
        assert!(held.iter().enumerate().all(|(i, b)| b[len - 1] == i as u8));
        drop(held);
        let p = pool();
        let idle: usize = p.cpus.iter().map(|c| c[idx].lock().len()).sum();
        assert!(idle >= 1, "nothing was kept");
        assert!(idle <= p.keep * p.cpus.len(), "{idle} idle buffers kept");
        assert!(p.keep * p.cpus.len() <= KEEP_PER_CLASS.max(p.cpus.len()));
    }
}
