//! The free space kept on the pack file system for the index.
//!
//! RocksDB needs room to append to its log, flush memtables and compact, and a failed log
//! write puts it in an error state that refuses every later index write (deletes, gc,
//! metadata, new drafts) until the process restarts (Debian's RocksDB has no `Resume()` in its
//! C API); a start after `kill -9` on a full disk could not open the index either (QA). So
//! pack appends stop at `min_free` bytes free, with a `no_space` error, and the index always
//! has that much: deleting and gc then free space on a disk the uploads filled.
//!
//! `statvfs` is cheap (a few microseconds) but not free: it is called again after a quarter of
//! the room seen above `min_free` has been appended (from 1 to 4 MiB: at 500 MiB/s, about 125
//! calls a second), and at least every [`LOOK_EVERY`]: the index and other programs take room
//! too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use cairn_core::{Error, ErrorKind, Result};

/// Least and most appended between two looks at the file system's free space.
const MIN_STEP: u64 = 1 << 20;
const MAX_STEP: u64 = 4 << 20;

/// Longest time between two looks while appends go on (QA: a file outside Cairn and the
/// index's own logs took the room while the pacing by bytes waited for 39 MB of appends).
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) struct Room {
    dir: PathBuf,
    min_free: u64,
    /// Bytes asked for so far, and the count at which to look again.
    asked: AtomicU64,
    next_look: AtomicU64,
    /// When the last look was, in milliseconds since `born`.
    looked_ms: AtomicU64,
    born: std::time::Instant,
}

impl Room {
    pub(crate) fn new(dir: PathBuf, min_free: u64) -> Room {
        Room {
            dir,
            min_free,
            asked: AtomicU64::new(0),
            next_look: AtomicU64::new(0),
            looked_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
        }
    }

    /// Whether `bytes` more may be appended (an error if that would leave under `min_free`).
    /// `pending` gives what the index holds unflushed (asked only when the file system is
    /// looked at): it takes room of its own once flushed, so it counts as taken (QA: metadata
    /// written just before, flushed after the uploads, took the disk to 30 KB).
    pub(crate) fn check(&self, bytes: u64, pending: impl FnOnce() -> u64) -> Result<()> {
        if self.min_free == 0 {
            return Ok(());
        }
        let asked = self.asked.fetch_add(bytes, Relaxed) + bytes;
        let now_ms = self.born.elapsed().as_millis() as u64;
        let recent = now_ms < self.looked_ms.load(Relaxed) + LOOK_EVERY.as_millis() as u64;
        if asked < self.next_look.load(Relaxed) && recent {
            return Ok(());
        }
        self.looked_ms.store(now_ms, Relaxed);
        let (free, pending) = (free_bytes(&self.dir), pending());
        match next_look(asked, free.saturating_sub(pending), self.min_free, bytes) {
            Some(next) => {
                self.next_look.store(next, Relaxed);
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "{free} bytes free on the data disk, {pending} of them soon taken by the \
                     index's unflushed writes, and {} kept for the index (min_free_space): \
                     delete what is not needed and run gc, or make room",
                    self.min_free
                ),
            )),
        }
    }
}

impl Room {
    /// Whether an index write that adds about `bytes` (metadata, drafts, files jobs,
    /// finalizes) may go on, with `pending` bytes in the index's memtables (to be flushed): it
    /// takes `bytes` in the index's log now and as much again once flushed, and what it leaves
    /// must stay above half of `min_free`, for the writes that free space (deletes, gc). Such
    /// writes of one engine are checked one at a time (metadata under its state lock), so each
    /// sees the log of the last.
    pub(crate) fn check_index(&self, bytes: u64, pending: u64) -> Result<()> {
        let keep = self.min_free / 2;
        let free = match keep {
            0 => return Ok(()),
            _ => free_bytes(&self.dir),
        };
        let need = keep
            .saturating_add(pending)
            .saturating_add(bytes.saturating_mul(2));
        if free >= need {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "{free} bytes free on the data disk: the index's {pending} unflushed bytes and \
                 this write's {bytes} (counted twice: its log, then its tables) would leave less \
                 than the {keep} kept for deletes and gc (half of min_free_space): delete what \
                 is not needed and run gc, or make room"
            ),
        ))
    }
}

/// When to look again after `asked` bytes, with `free` bytes free: `None` if `bytes` would
/// leave under `min_free` (look again at the next request).
fn next_look(asked: u64, free: u64, min_free: u64, bytes: u64) -> Option<u64> {
    let spare = free.checked_sub(min_free)?.checked_sub(bytes)?;
    Some(asked.saturating_add((spare / 4).clamp(MIN_STEP, MAX_STEP)))
}

/// Bytes an unprivileged writer may still use on the file system of `dir`; unlimited if the
/// file system does not say (a FUSE one without `statfs`): then writes go on until the disk
/// itself refuses, as before there was a reserve, rather than never.
pub(crate) fn free_bytes(dir: &std::path::Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::next_look;

    #[test]
    fn looks_again_sooner_near_the_limit_and_refuses_past_it() {
        const MIB: u64 = 1 << 20;
        // Much spare: next look after 4 MiB at most.
        assert_eq!(next_look(0, 1152 * MIB, 128 * MIB, 0), Some(4 * MIB));
        assert_eq!(next_look(0, 136 * MIB, 128 * MIB, 0), Some(2 * MIB));
        // Little spare: every MiB.
        assert_eq!(next_look(10, 130 * MIB, 128 * MIB, MIB), Some(10 + MIB));
        // An append that would cross the limit is refused, as is any under it.
        assert_eq!(next_look(0, 129 * MIB, 128 * MIB, 2 * MIB), None);
        assert_eq!(next_look(0, 100 * MIB, 128 * MIB, 0), None);
    }
}
