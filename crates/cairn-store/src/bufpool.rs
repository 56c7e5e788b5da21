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
//! usually still holds its lines. From one shared pool, a buffer last written on the other CPU
//! had its lines pulled across before the read could overwrite them. On the 2-CPU bench
//! machine the per-CPU pools served 1 MiB Range reads 8–11% faster when the host ran both CPUs
//! on one core complex, and about 15% faster when it ran them on two, where a line takes
//! ~350 ns to cross (docs/performance.md). A read whose own pool is empty takes a buffer from
//! another pool before it allocates one.
//!
//! Buffers come in power-of-two classes from 64 KiB to 2 MiB (a class wastes at most half).
//! The pools together keep at most [`KEEP_PER_CLASS`] idle buffers per class, so they hold at
//! most about 32 MiB however many reads ran and however many CPUs there are: beyond
//! [`KEEP_PER_CLASS`] CPUs, several share a pool. Larger reads get a plain allocation.

use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::Mutex;

const MIN_CLASS_SHIFT: u32 = 16;
const CLASSES: usize = 6; // 64 KiB, 128 KiB, ..., 2 MiB
const KEEP_PER_CLASS: usize = 8;

/// One CPU's idle buffers, per class; aligned so two CPUs' locks never share a cache line.
#[repr(align(128))]
struct Slot([Mutex<Vec<Vec<u8>>>; CLASSES]);

struct Pool {
    slots: Vec<Slot>,
    /// Idle buffers each slot keeps per class.
    keep: usize,
}

impl Pool {
    /// Pools for `cpus` CPUs: one slot each, up to [`KEEP_PER_CLASS`] slots.
    fn new(cpus: usize) -> Pool {
        let n = cpus.clamp(1, KEEP_PER_CLASS);
        Pool {
            slots: (0..n)
                .map(|_| Slot(std::array::from_fn(|_| Mutex::new(Vec::new()))))
                .collect(),
            keep: KEEP_PER_CLASS / n,
        }
    }

    fn slot_of(&self, cpu: usize) -> usize {
        cpu % self.slots.len()
    }

    /// An idle buffer of class `idx`: from `cpu`'s slot if it has one, else from any other
    /// slot not busy right now.
    fn take(&self, cpu: usize, idx: usize) -> Option<Vec<u8>> {
        let home = self.slot_of(cpu);
        if let Some(buf) = self.slots[home].0[idx].lock().pop() {
            return Some(buf);
        }
        let n = self.slots.len();
        (1..n).find_map(|i| self.slots[(home + i) % n].0[idx].try_lock()?.pop())
    }

    /// Keeps `buf` in `cpu`'s slot if that has room; drops it otherwise.
    fn give(&self, cpu: usize, idx: usize, buf: Vec<u8>) {
        let mut free = self.slots[self.slot_of(cpu)].0[idx].lock();
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn idle(&self, idx: usize) -> usize {
        self.slots.iter().map(|s| s.0[idx].lock().len()).sum()
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

fn this_cpu() -> usize {
    rustix::thread::sched_getcpu()
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
    read_into_pool(pool(), len, fill)
}

fn read_into_pool<E>(
    pool: &'static Pool,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Bytes, E> {
    let Some((idx, size)) = class_of(len) else {
        let mut buf = vec![0u8; len];
        fill(&mut buf)?;
        return Ok(Bytes::from(buf));
    };
    let mut buf = pool
        .take(this_cpu(), idx)
        .unwrap_or_else(|| vec![0u8; size]);
    // On error `buf` is simply dropped: a failed read is rare, and not worth recycling.
    fill(&mut buf[..len])?;
    Ok(Bytes::from_owner(Pooled {
        buf,
        len,
        idx,
        pool,
    }))
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    idx: usize,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool
            .give(this_cpu(), self.idx, std::mem::take(&mut self.buf));
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
    fn the_pools_keep_at_most_eight_idle_buffers_per_class_whatever_the_cpus() {
        for cpus in [1, 2, 3, 8, 9, 64] {
            let p = Pool::new(cpus);
            // Returned on every CPU id, including ids past the count.
            for cpu in 0..3 * cpus + 2 {
                for _ in 0..3 {
                    p.give(cpu, 2, vec![0; 256 << 10]);
                }
            }
            let idle = p.idle(2);
            assert!(
                idle <= KEEP_PER_CLASS,
                "{cpus} CPUs: {idle} idle buffers kept"
            );
            assert!(
                idle >= KEEP_PER_CLASS.min(cpus) / 2,
                "{cpus} CPUs: only {idle} kept"
            );
            assert_eq!(p.idle(3), 0, "classes are apart");
        }
    }

    #[test]
    fn a_buffer_goes_back_to_the_cpu_that_drops_it_and_is_found_from_any_cpu() {
        let p = Pool::new(2);
        p.give(1, 0, vec![7; 64 << 10]);
        assert_eq!(p.slots[0].0[0].lock().len(), 0);
        assert_eq!(p.slots[1].0[0].lock().len(), 1);
        // CPU 0's slot is empty: the buffer comes from CPU 1's rather than a new allocation.
        assert_eq!(p.take(0, 0).map(|b| b[0]), Some(7));
        assert!(p.take(0, 0).is_none());
        // Ids past the count share slots.
        p.give(5, 0, vec![9; 64 << 10]);
        assert_eq!(p.take(3, 0).map(|b| b[0]), Some(9));
    }

    #[test]
    fn a_private_pool_recycles_what_its_bytes_return() {
        let p: &'static Pool = Box::leak(Box::new(Pool::new(1)));
        let b = read_into_pool::<()>(p, 100_000, |buf| {
            buf.fill(3);
            Ok(())
        })
        .unwrap();
        assert_eq!(b.len(), 100_000);
        assert_eq!(p.idle(1), 0);
        let tail = b.slice(99_990..);
        drop(b);
        assert_eq!(p.idle(1), 0, "a slice still holds it");
        drop(tail);
        assert_eq!(p.idle(1), 1);
    }
}
