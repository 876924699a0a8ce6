//! Delivering signals to a sandbox's processes.
//!
//! With a per-sandbox uid the kernel itself knows which processes belong to a sandbox: a helper
//! child that switches to that uid and calls `kill(-1, sig)` reaches all of them at once (also
//! ones that left their process group or pid namespace tricks), and nothing else. Without one,
//! the engine falls back to the process groups it started.

use std::io;

/// Sends `sig` to every process whose real or saved uid is `uid`, from a short-lived child
/// running as `uid`/`gid` (so the kernel's permission check selects exactly the sandbox).
pub(crate) fn signal_uid(uid: u32, gid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: the child only makes async-signal-safe syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            libc::kill(-1, sig);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 2 {
        return Err(io::Error::other(format!(
            "cannot switch to uid {uid} to deliver a signal"
        )));
    }
    Ok(())
}

/// Host pids whose real, effective or saved uid is `uid`.
#[cfg(target_os = "linux")]
pub(crate) fn pids_of_uid(uid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for (pid, status) in proc_entries("status") {
        let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) else {
            continue;
        };
        let ids: Vec<u32> = line[4..]
            .split_whitespace()
            .take(3)
            .filter_map(|s| s.parse().ok())
            .collect();
        // A zombie holds nothing and cannot be killed; it waits for its parent (often the
        // machine's init, which may be slow) to reap it. Counting it would stall destroy.
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l[6..].trim_start().starts_with('Z'));
        if ids.contains(&uid) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn pids_of_uid(_uid: u32) -> Vec<i32> {
    Vec::new()
}

/// Kills every process of `uid` and waits (bounded, ~2 s) until none is left.
pub(crate) fn kill_all_of_uid(uid: u32, gid: u32) -> io::Result<()> {
    for _ in 0..200 {
        signal_uid(uid, gid, libc::SIGKILL)?;
        if pids_of_uid(uid).is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(io::Error::other(format!(
        "processes of uid {uid} survive SIGKILL"
    )))
}

/// Signals a whole process group. Only used while its leader is unreaped (or right after), so
/// the group id cannot have been recycled.
pub(crate) fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Signals the command started by bubblewrap in group `pgid` and its group-mates, but not the
/// two bubblewrap processes (`leader` outside, its child as pid 1 inside): bwrap does not relay
/// signals, and a SIGTERM/SIGHUP/SIGUSR1 to it would tear the whole sandbox down instead of
/// letting the command handle the signal.
#[cfg(target_os = "linux")]
pub(crate) fn signal_payload(pgid: i32, leader: i32, sig: i32) {
    for (pid, stat) in proc_entries("stat") {
        // Fields after the parenthesised command name: state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (_state, ppid, pgrp) = (f.next(), f.next(), f.next());
        let (Some(ppid), Some(pgrp)) = (
            ppid.and_then(|s| s.parse::<i32>().ok()),
            pgrp.and_then(|s| s.parse::<i32>().ok()),
        ) else {
            continue;
        };
        if pgrp == pgid && pid != leader && ppid != leader {
            unsafe { libc::kill(pid, sig) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn signal_payload(pgid: i32, _leader: i32, sig: i32) {
    signal_group(pgid, sig)
}

/// `(pid, contents of /proc/<pid>/<file>)` for every live process.
#[cfg(target_os = "linux")]
fn proc_entries(file: &str) -> impl Iterator<Item = (i32, String)> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join(file)).ok()?;
            Some((pid, text))
        })
}
