//! The pack writer thread: full write windows ([`crate::staging`]) reach the disk off the
//! appender's thread.
//!
//! An upload's CPU work (hashing, chunking, copying into the window) runs on the async runtime's
//! threads, where a 4 MiB direct write (a few milliseconds of waiting on the disk) would stall
//! every other request of that thread. So a filled window is queued here and one thread writes
//! windows in order while the appenders go on. Nothing here is a durability promise: bytes are
//! durable only after [`Flusher::wait_written`] and the fsync that follows it, which is what a
//! commit does.
//!
//! Back-pressure: the queue holds at most what the appenders put in before they check
//! [`Flusher::backlog`]; an appender that finds it long waits (off the runtime) with
//! [`Flusher::wait_backlog_below`], so a slow disk slows uploads instead of growing memory.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use cairn_core::Result;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::pack::PackFile;
use crate::staging::Window;

/// Window memory written and ready for reuse (at most [`SPARE`] are kept).
pub(crate) type Spare = Mutex<Vec<crate::staging::WindowMem>>;

/// Window memories kept for reuse: enough for the windows a sync takes out besides the full ones,
/// so that steady uploading allocates none.
const SPARE: usize = 4;

/// How often refused appends have failed windows written again (see [`Flusher::check`]).
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Full windows handed out by the pack's writer and not yet written.
#[derive(Default)]
struct Queue {
    /// Sequence numbers handed out so far (the next window gets this one).
    issued: u64,
    /// Windows counted by [`Flusher::count`] and not yet written (queued or being written),
    /// by sequence number: a sync waits only for those counted before it, so uploads that go
    /// on appending cannot keep it waiting.
    outstanding: BTreeSet<u64>,
    queued: VecDeque<(Arc<PackFile>, Window)>,
    /// Windows whose write failed, in order: written again before the next fsync.
    failed: Vec<(Arc<PackFile>, Window)>,
    /// A waiter has taken `failed` out to write it again (outside this lock); other waiters
    /// wait for its outcome rather than see an empty list and go on to fsync.
    retrying: bool,
    /// Why the last write of a window failed, and when `failed` was last written again: while
    /// windows wait to be written again, appends are refused (see [`Flusher::check`]).
    last_failure: Option<(cairn_core::ErrorKind, String)>,
    last_retry: Option<std::time::Instant>,
    /// An append was refused: the writer thread writes `failed` again when the last try is a
    /// second old.
    retry_wanted: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a window is queued or the flusher closes.
    work: Condvar,
    /// Signalled when a window has been written (or has failed).
    written: Condvar,
    spare: Spare,
    /// Whether `failed` may hold windows: read without the lock by every append.
    any_failed: std::sync::atomic::AtomicBool,
}

/// One writer thread for full windows; stopped (after writing what is queued) on drop.
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start() -> Flusher {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            written: Condvar::new(),
            spare: Mutex::new(Vec::new()),
            any_failed: std::sync::atomic::AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-pack-writer".into())
            .spawn(move || worker.run())
            .expect("spawn the pack writer thread");
        Flusher {
            shared,
            thread: Some(thread),
        }
    }

    pub(crate) fn spare(&self) -> &Spare {
        &self.shared.spare
    }

    /// Counts windows as handed out, numbering them in order. Called under the pack writer's
    /// lock, before it is released, so that a sync that flushes after this also waits for them.
    pub(crate) fn count(&self, windows: &mut [(Arc<PackFile>, Window)]) {
        if windows.is_empty() {
            return;
        }
        let mut q = self.shared.queue.lock();
        for (_, w) in windows {
            w.set_seq(q.issued);
            let seq = q.issued;
            q.outstanding.insert(seq);
            q.issued += 1;
        }
    }

    /// [`Flusher::count`] for one window (what a sync takes out of the write buffer).
    pub(crate) fn count_one(&self, pack: Arc<PackFile>, w: Window) -> (Arc<PackFile>, Window) {
        let mut one = [(pack, w)];
        self.count(&mut one);
        let [one] = one;
        one
    }

    /// Queues windows already counted with [`Flusher::count`].
    pub(crate) fn submit(&self, full: Vec<(Arc<PackFile>, Window)>) {
        if full.is_empty() {
            return;
        }
        self.shared.queue.lock().queued.extend(full);
        self.shared.work.notify_one();
    }

    /// Writes a window already counted with [`Flusher::count`] on this thread (a sync writing
    /// what it took out of the staging window). If the write fails, the window is kept and
    /// written again by the next [`Flusher::wait_written`].
    pub(crate) fn write_now(&self, pack: Arc<PackFile>, w: Window) -> Result<()> {
        let outcome = pack.write_blocks(w.at(), w.bytes());
        self.shared.done(pack, w, &outcome);
        outcome
    }

    /// Windows queued and not yet being written.
    pub(crate) fn backlog(&self) -> usize {
        self.shared.queue.lock().queued.len()
    }

    /// Blocks until at most `n` windows are queued.
    pub(crate) fn wait_backlog_below(&self, n: usize) {
        let mut q = self.shared.queue.lock();
        while q.queued.len() > n {
            self.shared.written.wait(&mut q);
        }
    }

    /// Waits until every window counted before this call is written, writing again any that
    /// failed; the error of a window that fails again is returned (and the window kept for the
    /// next try).
    pub(crate) fn wait_written(&self) -> Result<()> {
        let mut q = self.shared.queue.lock();
        let mark = q.issued;
        while q.outstanding.first().is_some_and(|&s| s < mark) {
            self.shared.written.wait(&mut q);
        }
        loop {
            if q.retrying {
                self.shared.written.wait(&mut q);
                continue;
            }
            if q.failed.is_empty() {
                return Ok(());
            }
            self.shared.retry_failed(&mut q)?;
        }
    }

    /// Whether more may be appended: refused while windows whose write failed wait to be
    /// written again. Without this, every upload retried against a full disk staged its bytes
    /// afresh and kept them (QA: 4 MiB of memory per refused request, with no bound but the
    /// pack's size), and once space was freed they were all written, filling it again. A
    /// refused append says why the write failed and asks the writer thread to try the failed
    /// windows again (at most once a second), so appends go on within about a second of room
    /// being made. Called under the pack writer's lock on whichever thread appends, so it does
    /// no I/O itself.
    pub(crate) fn check(&self) -> Result<()> {
        if !self
            .shared
            .any_failed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let mut q = self.shared.queue.lock();
        if q.failed.is_empty() && !q.retrying {
            return Ok(());
        }
        if !q.retrying {
            q.retry_wanted = true;
            self.shared.work.notify_one();
        }
        let (kind, why) = q.last_failure.clone().unwrap_or((
            cairn_core::ErrorKind::Internal,
            "a pack write failed".into(),
        ));
        Err(cairn_core::Error::new(
            kind,
            format!("{why} (an earlier pack write failed and waits to be written again)"),
        ))
    }
}

/// Writes failed windows again, in order, up to the first that fails again; returns those left
/// (that one and the rest) with the outcome.
fn retry(failed: Vec<(Arc<PackFile>, Window)>) -> (Vec<(Arc<PackFile>, Window)>, Result<()>) {
    let mut windows = failed.into_iter();
    while let Some((pack, w)) = windows.next() {
        if let Err(e) = pack.write_blocks(w.at(), w.bytes()) {
            let left = std::iter::once((pack, w)).chain(windows).collect();
            return (left, Err(e));
        }
    }
    (Vec::new(), Ok(()))
}

impl Shared {
    /// Writes the failed windows again (taken out, written without the lock, so appenders and
    /// the writer thread go on: a failing disk can take seconds per write); those that fail
    /// again are put back in front of any newer failures.
    fn retry_failed(&self, q: &mut MutexGuard<'_, Queue>) -> Result<()> {
        let failed = std::mem::take(&mut q.failed);
        q.retrying = true;
        let (left, outcome) = MutexGuard::unlocked(q, || retry(failed));
        let newer = std::mem::replace(&mut q.failed, left);
        q.failed.extend(newer);
        q.retrying = false;
        let any = !q.failed.is_empty();
        self.any_failed
            .store(any, std::sync::atomic::Ordering::Release);
        q.last_retry = Some(std::time::Instant::now());
        if let Err(e) = &outcome {
            q.last_failure = Some((e.kind, e.reason.clone()));
        }
        self.written.notify_all();
        outcome
    }

    fn run(&self) {
        let mut q = self.queue.lock();
        loop {
            let Some((pack, w)) = q.queued.pop_front() else {
                if q.closed {
                    return;
                }
                if q.retry_wanted && !q.retrying && !q.failed.is_empty() {
                    let since = q.last_retry.map_or(RETRY_EVERY, |t| t.elapsed());
                    if since >= RETRY_EVERY {
                        q.retry_wanted = false;
                        // Its outcome is kept for the next refusal (and the next sync).
                        let _ = self.retry_failed(&mut q);
                    } else {
                        self.work.wait_for(&mut q, RETRY_EVERY - since);
                    }
                    continue;
                }
                q.retry_wanted = false;
                self.work.wait(&mut q);
                continue;
            };
            drop(q);
            let outcome = pack.write_blocks(w.at(), w.bytes());
            self.done(pack, w, &outcome);
            q = self.queue.lock();
        }
    }

    /// Accounts for a counted window's write: its memory is reused, or it is kept to be
    /// written again.
    fn done(&self, pack: Arc<PackFile>, w: Window, outcome: &Result<()>) {
        if let Err(e) = outcome {
            tracing::warn!(pack = pack.id.0, error = %e, "pack write failed; retried before the next fsync");
        }
        let mut q = self.queue.lock();
        q.outstanding.remove(&w.seq());
        match outcome {
            Ok(()) => {
                let mut spare = self.spare.lock();
                if spare.len() < SPARE {
                    spare.push(w.into_mem());
                }
            }
            Err(e) => {
                q.last_failure = Some((e.kind, e.reason.clone()));
                q.failed.push((pack, w));
                self.any_failed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        self.written.notify_all();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{PackId, HEADER_LEN};
    use crate::staging::{window_mem, Staging, STAGING};

    /// A new pack, a flusher and a write buffer at the pack's first record.
    fn setup(dir: &std::path::Path) -> (Arc<PackFile>, Flusher, Staging) {
        let pack = Arc::new(PackFile::create(dir, PackId(1)).unwrap());
        let st = Staging::new(HEADER_LEN, pack.block());
        (pack, Flusher::start(), st)
    }

    #[test]
    fn windows_reach_the_file_and_a_failed_one_is_kept_for_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (pack, f, mut st) = setup(dir.path());
        let start = st.end();
        let mut full = Vec::new();
        let data: Vec<u8> = (0..2 * STAGING + 100).map(|i| (i % 251) as u8).collect();
        st.append(&data, &mut |w| {
            full.push((pack.clone(), w));
            window_mem()
        });
        assert_eq!(full.len(), 2);
        f.count(&mut full);
        f.submit(full);
        let (taken_pack, taken) = f.count_one(pack.clone(), st.take(window_mem).unwrap());
        f.write_now(taken_pack, taken).unwrap();
        f.wait_written().unwrap();
        let mut back = vec![0u8; data.len()];
        pack.read_at(&mut back, start).unwrap();
        assert!(back == data, "every byte where it was staged");
        assert_eq!(f.backlog(), 0);

        // A handle that cannot write: the failure is reported by the write and again by every
        // later wait (the window is kept, never dropped as if written).
        let read_only = Arc::new(PackFile::open(dir.path(), PackId(1), false).unwrap());
        st.append(b"unacknowledged", &mut |_| {
            unreachable!("not a full window")
        });
        let (read_only, w) = f.count_one(read_only, st.take(window_mem).unwrap());
        assert!(f.write_now(read_only, w).is_err());
        assert!(f.wait_written().is_err());
        assert!(f.wait_written().is_err(), "still kept after a failed retry");
    }

    /// While a failed window waits, appends are refused at once with its error (and no I/O of
    /// their own), and the writer thread tries it again at most once a second.
    #[test]
    fn appends_are_refused_while_a_failed_window_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (_pack, f, mut st) = setup(dir.path());
        assert!(f.check().is_ok(), "nothing failed yet");
        let read_only = Arc::new(PackFile::open(dir.path(), PackId(1), false).unwrap());
        st.append(b"refused", &mut |_| unreachable!("not a full window"));
        let (read_only, w) = f.count_one(read_only, st.take(window_mem).unwrap());
        let failed = f.write_now(read_only, w).unwrap_err();
        let t = std::time::Instant::now();
        let refused = f.check().unwrap_err();
        assert_eq!(refused.kind, failed.kind);
        assert!(refused.reason.contains(&failed.reason), "{refused}");
        assert!(
            t.elapsed() < std::time::Duration::from_millis(100),
            "no I/O"
        );
        // The writer thread's try (it fails again: the handle cannot write) keeps it refused.
        std::thread::sleep(RETRY_EVERY + std::time::Duration::from_millis(300));
        assert!(
            f.shared.queue.lock().last_retry.is_some(),
            "the writer thread tried"
        );
        assert!(f.check().is_err(), "still refused");
        assert!(f.wait_written().is_err(), "and kept for the next sync");
    }

    /// Appenders that go on handing out windows while a sync waits must not keep it waiting:
    /// the sync waits for the windows counted before it, not for an empty queue.
    #[test]
    fn a_sync_waits_only_for_windows_counted_before_it() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let (pack, f, mut st) = setup(dir.path());
        let taken = |st: &mut Staging, bytes: &[u8]| {
            st.append(bytes, &mut |_| unreachable!("not a full window"));
            f.count_one(pack.clone(), st.take(window_mem).unwrap())
        };
        let (pa, a) = taken(&mut st, b"counted before the sync");
        let later_written = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                f.wait_written().unwrap();
                later_written.load(SeqCst)
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            let (pb, b) = taken(&mut st, b"counted after the sync began");
            f.write_now(pa, a).unwrap();
            // Written only later: a sync that waited for it would see `later_written` set.
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(700));
                later_written.store(true, SeqCst);
                f.write_now(pb, b).unwrap();
            });
            assert!(
                !waiter.join().unwrap(),
                "the sync waited for a window counted after it began"
            );
        });
        f.wait_written().unwrap();
    }
}
