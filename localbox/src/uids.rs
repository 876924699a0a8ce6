//! Allocation of per-sandbox uids from the reserved range.
//!
//! A uid is held by an exclusive `flock` on `<lock_dir>/<uid>.lock` for as long as its sandbox
//! lives in this engine. The lock directory is machine-wide, so separate engines (parallel test
//! binaries, emulators, a daemon) never hand out the same uid — which matters because destroying
//! a sandbox kills every process of its uid.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A held uid (the lock is released when this is dropped).
#[derive(Debug)]
pub(crate) struct UidLease {
    pub uid: u32,
    _lock: File,
}

#[derive(Debug)]
pub(crate) struct UidAllocator {
    lock_dir: PathBuf,
    base: u32,
    count: u32,
}

impl UidAllocator {
    pub(crate) fn new(lock_dir: Option<PathBuf>, base: u32, count: u32) -> io::Result<Self> {
        let lock_dir = lock_dir.unwrap_or_else(|| PathBuf::from("/run/localbox/uids"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&lock_dir)?;
        Ok(UidAllocator {
            lock_dir,
            base,
            count,
        })
    }

    /// Takes the lowest uid of the range that no engine holds, skipping `in_use`.
    pub(crate) fn allocate(&self, in_use: &HashSet<u32>) -> io::Result<UidLease> {
        for uid in self.base..self.base.saturating_add(self.count) {
            if in_use.contains(&uid) {
                continue;
            }
            if let Some(lease) = self.try_lock(uid)? {
                return Ok(lease);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "all {} sandbox uids from {} are in use",
                self.count, self.base
            ),
        ))
    }

    /// Re-takes the uid of a sandbox found on disk; `None` if another engine holds it.
    pub(crate) fn reacquire(&self, uid: u32) -> io::Result<Option<UidLease>> {
        self.try_lock(uid)
    }

    pub(crate) fn contains(&self, uid: u32) -> bool {
        uid >= self.base && uid - self.base < self.count
    }

    fn try_lock(&self, uid: u32) -> io::Result<Option<UidLease>> {
        let path = lock_path(&self.lock_dir, uid);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        // flock locks belong to the open file description, so this also excludes other
        // engines inside the same process.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(UidLease { uid, _lock: file }));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }
}

fn lock_path(dir: &Path, uid: u32) -> PathBuf {
    dir.join(format!("{uid}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let a = UidAllocator::new(Some(dir.path().into()), 500_000, 2).unwrap();
        let b = UidAllocator::new(Some(dir.path().into()), 500_000, 2).unwrap();
        let l1 = a.allocate(&HashSet::new()).unwrap();
        let l2 = b.allocate(&HashSet::new()).unwrap();
        assert_eq!((l1.uid, l2.uid), (500_000, 500_001));
        assert!(a.allocate(&HashSet::new()).is_err());
        assert!(b.reacquire(500_000).unwrap().is_none());
        drop(l1);
        // A command another test spawns at this moment holds a copy of every descriptor until
        // it execs (as after any fork), so the lock may outlive the drop by a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            match b.reacquire(500_000).unwrap() {
                Some(lease) => break lease,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                None => panic!("uid 500000 still held after its lease was dropped"),
            }
        };
        assert_eq!(again.uid, 500_000);
    }
}
