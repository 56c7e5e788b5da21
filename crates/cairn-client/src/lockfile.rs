//! Exclusive locks on files in the local file system (`flock`, released when the file is
//! closed, also when the process dies), shared by `upload`'s resume records and `get`'s partial
//! files.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Opens `path` (made if absent, never truncated) and takes its exclusive lock without waiting:
/// `Ok(None)` while another process holds it. The lock is taken on the file that is at `path`
/// once it is held: one unlinked or replaced between the open and the lock (by the holder that
/// just finished) is opened again, so two processes never hold locks on two files of one name.
pub fn lock_exclusive(path: &Path) -> std::io::Result<Option<File>> {
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let ours = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => return Ok(Some(file)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}
