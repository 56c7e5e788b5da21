//! The open pack's write buffer: records are gathered here and reach the file only as whole,
//! aligned blocks, so the file can be written with `O_DIRECT` (`StoreConfig::direct_writes`),
//! and so that, either way, no write touches a block that holds committed bytes.
//!
//! Why direct can pay: copying chunk bytes into the page cache is CPU the server does not
//! spend written direct (1–3 s of system time per 2 GiB on the earlier benchmark host, against
//! 0.1 s; about a quarter of the server's ingest CPU on the current one). A direct write needs
//! its offset, length and memory aligned; this buffer provides all three, on huge pages
//! ([`WindowMem`]).
//!
//! The rules, all pure bookkeeping (the caller does the I/O: it writes the windows handed out and
//! the bytes `flush` passes to its `write` callback):
//! - The window starts at a block-aligned file offset and holds [`STAGING`] bytes.
//! - A full window is written as is. [`Staging::flush`] (before an fsync) writes what is
//!   staged padded with zeros to a whole block, and the next record starts on the next block.
//!   So a block that holds acknowledged bytes is never written again: a power cut during a later
//!   write cannot tear it. The padding is less than one block per flush; it is dead space that no
//!   chunk location points at, and gc's repack reclaims it with the rest.
//! - A full window is handed out ([`Window`]) with fresh memory put in its place, so the store
//!   can write it without holding its writer lock (appenders go on filling the next window
//!   while the disk takes the last one).
//! - A failed flush leaves the window as it was: the next flush tries it again, and nothing
//!   staged is acknowledged before a flush succeeds.
//! - A sync can instead [`Staging::take`] the staged bytes out, padded the same way, and write
//!   them without holding the store's writer lock; the store keeps a taken window whose write
//!   failed and writes it again before its next fsync (as it does for full windows).

use cairn_core::Result;

/// The largest block a pack write is aligned to, and the alignment of the window's memory:
/// enough for `O_DIRECT` on devices with 512-byte or 4 KiB logical blocks. Writes are aligned to
/// the file's own direct-I/O alignment when the kernel reports it (`statx` `STATX_DIOALIGN`,
/// 512 bytes on most devices), else to this.
pub const BLOCK: u64 = 4096;

/// Bytes written at a time once the window is full.
pub const STAGING: usize = 4 << 20;

/// `n` rounded up to a multiple of `block` (a power of two).
pub fn align_up(n: u64, block: u64) -> u64 {
    n.div_ceil(block) * block
}

/// Window memory taken out of [`Staging`], to be written at [`Window::at`]: a full window, or
/// what a sync takes out ([`Staging::take`]).
pub struct Window {
    mem: WindowMem,
    base: usize,
    at: u64,
    /// Bytes to write: [`STAGING`], or fewer (a whole number of blocks) for a taken window.
    len: usize,
    /// Its place in the order the store handed windows out (set by the store's flusher).
    seq: u64,
}

impl Window {
    /// The file offset of the window's first byte (a multiple of the file's block).
    pub fn at(&self) -> u64 {
        self.at
    }

    /// The bytes to write: block-aligned memory, a whole number of blocks.
    pub fn bytes(&self) -> &[u8] {
        &self.mem[self.base..self.base + self.len]
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// The memory, for the next window.
    pub fn into_mem(self) -> WindowMem {
        self.mem
    }
}

/// Memory for a window, mapped on its own and advised to the kernel for transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`; the kernel's default `madvise` mode gives them only to memory
/// that asks).
///
/// Why: on the benchmark VM, direct writes from huge-page windows reached the disk in half as
/// many requests (about 1,600 instead of 3,000 per 2 GiB) and ingested 2–2.5× faster (376–545
/// against 182–195 MiB/s), for no more CPU (docs/performance.md, fifteenth session). Where huge
/// pages are not available (turned off, or memory too fragmented) this is ordinary memory.
/// An empty `WindowMem` (the default) stands in while a window's memory is handed out.
#[derive(Default)]
pub struct WindowMem(Option<memmap2::MmapMut>);

/// Huge-page size the window is placed on (x86-64 and aarch64 with 4 KiB pages).
const HUGE: usize = 2 << 20;

impl WindowMem {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }
}

impl std::ops::Deref for WindowMem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for WindowMem {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

/// Memory for a window: `STAGING + HUGE` bytes, so that a window of `STAGING` aligned to a
/// huge page fits inside wherever the mapping lands. Only the window's pages are ever touched.
pub fn window_mem() -> WindowMem {
    let map = memmap2::MmapMut::map_anon(STAGING + HUGE).expect("map memory for a write window");
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    WindowMem(Some(map))
}

fn aligned_base(mem: &[u8]) -> usize {
    mem.as_ptr().align_offset(HUGE)
}

/// A block-aligned window onto the end of the open pack.
pub struct Staging {
    /// See [`window_mem`].
    mem: WindowMem,
    /// Index in `mem` where the aligned window starts.
    base: usize,
    /// File offset of the window's first byte (a multiple of `block`).
    at: u64,
    /// Bytes staged in the window.
    filled: usize,
    /// Alignment of the file's writes: a power of two dividing [`BLOCK`].
    block: u64,
}

impl Staging {
    /// An empty window whose first byte goes to file offset `align_up(end, block)`; every
    /// write it hands out is aligned to `block` (a power of two dividing [`BLOCK`]).
    pub fn new(end: u64, block: u64) -> Staging {
        assert!(block.is_power_of_two() && BLOCK.is_multiple_of(block));
        let mem = window_mem();
        let base = aligned_base(&mem);
        Staging {
            mem,
            base,
            at: align_up(end, block),
            filled: 0,
            block,
        }
    }

    /// The alignment of this file's writes.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// The file offset the next appended byte will have.
    pub fn end(&self) -> u64 {
        self.at + self.filled as u64
    }

    /// Whether bytes are staged that have not been written.
    pub fn is_dirty(&self) -> bool {
        self.filled > 0
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.mem[self.base..self.base + STAGING]
    }

    /// Stages `data`. Every window it fills is handed to `full`, which returns memory for the
    /// next window (from [`window_mem`], or a written window's [`Window::into_mem`]).
    pub fn append(&mut self, mut data: &[u8], full: &mut impl FnMut(Window) -> WindowMem) {
        while !data.is_empty() {
            let n = (STAGING - self.filled).min(data.len());
            let from = self.filled;
            self.window()[from..from + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == STAGING {
                let window = Window {
                    mem: std::mem::take(&mut self.mem),
                    base: self.base,
                    at: self.at,
                    len: STAGING,
                    seq: 0,
                };
                self.mem = full(window);
                debug_assert_eq!(self.mem.len(), STAGING + HUGE);
                self.base = aligned_base(&self.mem);
                self.at += STAGING as u64;
                self.filled = 0;
            }
        }
    }

    /// Takes out everything staged, zero-padded to whole blocks, as a window for the caller to
    /// write (outside its lock); `fresh` gives memory for the next window. The next byte starts
    /// a new block. `None` when nothing is staged.
    pub fn take(&mut self, fresh: impl FnOnce() -> WindowMem) -> Option<Window> {
        if self.filled == 0 {
            return None;
        }
        let padded = align_up(self.filled as u64, self.block) as usize;
        let filled = self.filled;
        self.window()[filled..padded].fill(0);
        let window = Window {
            mem: std::mem::replace(&mut self.mem, fresh()),
            base: self.base,
            at: self.at,
            len: padded,
            seq: 0,
        };
        debug_assert_eq!(self.mem.len(), STAGING + HUGE);
        self.base = aligned_base(&self.mem);
        self.at += padded as u64;
        self.filled = 0;
        Some(window)
    }

    /// Writes everything staged, zero-padded to whole blocks; the next byte starts a new block.
    pub fn flush(&mut self, write: &mut impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let padded = align_up(self.filled as u64, self.block) as usize;
        let (at, filled) = (self.at, self.filled);
        let window = self.window();
        window[filled..padded].fill(0);
        write(at, &window[..padded])?;
        self.at += padded as u64;
        self.filled = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::Error;
    use proptest::prelude::*;

    /// A file image built from the writes, checking each is aligned and never touches a block
    /// written before (acknowledged blocks are never rewritten).
    #[derive(Default)]
    struct Sink {
        file: Vec<u8>,
        fail_next: bool,
        block: u64,
    }

    impl Sink {
        /// Writes a full window and gives its memory back for the next one.
        fn take(&mut self, w: Window) -> WindowMem {
            self.write(w.at(), w.bytes()).unwrap();
            w.into_mem()
        }

        fn write(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
            if std::mem::take(&mut self.fail_next) {
                return Err(Error::internal("disk full"));
            }
            assert_eq!(at % self.block, 0, "offset {at} unaligned");
            assert_eq!(bytes.len() as u64 % self.block, 0, "length unaligned");
            assert_eq!(
                bytes.as_ptr() as usize % BLOCK as usize,
                0,
                "memory unaligned"
            );
            assert!(
                at as usize >= self.file.len(),
                "block at {at} written twice"
            );
            self.file.resize(at as usize, 0);
            self.file.extend_from_slice(bytes);
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever the record sizes and flush points, every record lands at the offset `end()`
        /// announced for it, and nothing is rewritten.
        #[test]
        fn records_land_where_announced(
            start in 0u64..10_000,
            small_block in any::<bool>(),
            records in proptest::collection::vec((1usize..3 * STAGING / 2, 0u8..3), 1..12),
        ) {
            let block = if small_block { 512 } else { BLOCK };
            let mut s = Staging::new(start, block);
            let mut sink = Sink { block, ..Sink::default() };
            let mut placed = Vec::new();
            for (i, &(len, flush)) in records.iter().enumerate() {
                let rec = vec![i as u8 + 1; len];
                placed.push((s.end(), rec.clone()));
                s.append(&rec, &mut |w| sink.take(w));
                // 1: flushed in place; 2: taken out and written by the caller.
                if flush == 1 {
                    s.flush(&mut |a, b| sink.write(a, b)).unwrap();
                    prop_assert_eq!(s.end() % block, 0);
                } else if flush == 2 {
                    let before = s.end();
                    if let Some(w) = s.take(window_mem) {
                        prop_assert_eq!(w.at() + w.bytes().len() as u64, s.end());
                        prop_assert!(w.at() < before && before <= s.end());
                        sink.write(w.at(), w.bytes()).unwrap();
                    }
                    prop_assert_eq!(s.end() % block, 0);
                }
            }
            s.flush(&mut |a, b| sink.write(a, b)).unwrap();
            for (at, rec) in placed {
                prop_assert!(at >= align_up(start, block));
                prop_assert_eq!(&sink.file[at as usize..at as usize + rec.len()], &rec[..]);
            }
        }
    }

    #[test]
    fn a_failed_flush_is_retried_and_loses_nothing() {
        let mut s = Staging::new(0, BLOCK);
        let mut sink = Sink {
            block: BLOCK,
            ..Sink::default()
        };
        let first = vec![1u8; STAGING];
        s.append(&first, &mut |w| sink.take(w));
        assert_eq!(s.end(), STAGING as u64, "the full window was handed out");
        let second = vec![2u8; 100];
        s.append(&second, &mut |w| sink.take(w));
        sink.fail_next = true;
        assert!(s.flush(&mut |a, b| sink.write(a, b)).is_err());
        assert_eq!(s.end(), STAGING as u64 + 100, "still staged");
        s.flush(&mut |a, b| sink.write(a, b)).unwrap();
        assert_eq!(&sink.file[..STAGING], &first[..]);
        assert_eq!(&sink.file[STAGING..STAGING + 100], &second[..]);
        assert_eq!(s.end(), STAGING as u64 + BLOCK);
    }

    #[test]
    fn an_empty_flush_writes_nothing_and_pads_nothing() {
        let mut s = Staging::new(BLOCK, 512);
        s.flush(&mut |_, _| panic!("nothing to write")).unwrap();
        assert!(s.take(|| panic!("no memory needed")).is_none());
        assert_eq!(s.end(), BLOCK);
    }
}
