//! Waiting for a file to appear, woken by inotify on its directory instead of polling (a
//! command's "stdin is open" marker appears within a millisecond or two, and a timer tick is
//! a millisecond: polling would add that to every exec that closes its stdin).

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// Returns once `path` exists, or when `give_up` completes first.
pub async fn wait(path: &Path, give_up: impl Future<Output = ()>) {
    tokio::pin!(give_up);
    let Some(watch) = path.parent().and_then(watch_dir) else {
        // No inotify (e.g. out of watches): poll instead.
        while !path.exists() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = &mut give_up => return,
            }
        }
        return;
    };
    // The watch is in place before the first look, so a creation in between is not missed.
    while !path.exists() {
        tokio::select! {
            ready = watch.readable() => match ready {
                Ok(mut guard) => {
                    drain(guard.get_inner());
                    guard.clear_ready();
                }
                Err(_) => break,
            },
            _ = &mut give_up => break,
        }
    }
    // Closing an inotify instance waits for an RCU grace period (~20 ms here): not on this
    // thread, which serves requests.
    let fd = watch.into_inner();
    tokio::task::spawn_blocking(move || drop(fd));
}

/// An inotify instance watching `dir` for entries created or moved in.
fn watch_dir(dir: &Path) -> Option<AsyncFd<OwnedFd>> {
    let mut c_dir = dir.as_os_str().as_bytes().to_vec();
    c_dir.push(0);
    // SAFETY: plain syscalls; the fd is owned from here on and the path is NUL-terminated.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO;
        if libc::inotify_add_watch(fd.as_raw_fd(), c_dir.as_ptr().cast(), mask) < 0 {
            return None;
        }
        // The OwnedFd stays open, and the same descriptor, for as long as the AsyncFd owns it.
        AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
    }
}

/// Reads the pending events (their content does not matter: the caller looks at the path).
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a buffer we own; stops at EAGAIN (non-blocking fd) or an error.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}
