//! Starting a command without copying the engine's address space.
//!
//! `fork()` copies the page tables of the whole engine, and afterwards every page the engine
//! writes takes a copy-on-write fault once; in an emulator serving execs that was ~40% of its
//! own CPU. Here the child is made with `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own,
//! as `posix_spawn` does, and does what `posix_spawn` cannot before `execve`: a new session,
//! rlimits, dropped credentials and the parent-death signal. The engine thread is suspended
//! until the child has exec'd (or failed to), so the shared memory is never used by both.
//!
//! The child shares memory but not the thread: it only makes raw system calls (libc wrappers
//! such as `setuid` would coordinate with the engine's threads), takes no locks and does not
//! allocate. Everything it reads is prepared by the parent beforehand.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::process::Spawned;

/// What the child does before `execve`, all prepared by the parent.
pub(crate) struct Plan<'a> {
    pub program: &'a OsStr,
    pub args: &'a [std::ffi::OsString],
    pub env: &'a [(String, String)],
    pub cwd: &'a OsStr,
    /// `(resource, value)` for `setrlimit` (soft = hard).
    pub rlimits: &'a [(libc::c_int, libc::rlim_t)],
    /// `(uid, gid)` to switch to, supplementary groups dropped.
    pub creds: Option<(u32, u32)>,
    pub with_stdin: bool,
}

/// The raw pieces the child reads. Pointers point into the parent's `CString`s, alive (and
/// unmoved) until `clone` returns, which is after the child exec'd or exited.
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    /// stdin, stdout, stderr of the child.
    stdio: [RawFd; 3],
    /// Where the child writes its errno if it fails before `execve` (close-on-exec).
    report: RawFd,
    rlimits: *const (libc::c_int, libc::rlim_t),
    rlimit_count: usize,
    creds: Option<(u32, u32)>,
    /// Signals to reset to their default action: those with an engine handler, and SIGPIPE.
    reset_signals: *const libc::c_int,
    reset_count: usize,
}

const CHILD_STACK: usize = 64 << 10;

pub(crate) fn start(plan: &Plan<'_>) -> io::Result<Spawned> {
    let cstr = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| io::Error::other("argument contains a NUL byte"))
    };
    let program = cstr(&resolve(plan.program, plan.env))?;
    let argv_owned: Vec<CString> = std::iter::once(Ok(program.clone()))
        .chain(plan.args.iter().map(|a| cstr(a)))
        .collect::<io::Result<_>>()?;
    let env_owned: Vec<CString> = plan
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone().into_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| io::Error::other("environment contains a NUL byte"))
        })
        .collect::<io::Result<_>>()?;
    let cwd = cstr(plan.cwd)?;
    let nul_terminated = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let argv = nul_terminated(&argv_owned);
    let envp = nul_terminated(&env_owned);

    // Parent ends: stdin's write end, stdout's and stderr's read ends.
    let (stdin_child, stdin_parent) = if plan.with_stdin {
        let (r, w) = pipe_pair()?;
        (r, Some(w))
    } else {
        (open_dev_null()?, None)
    };
    let (stdout_parent, stdout_child) = pipe_pair()?;
    let (stderr_parent, stderr_child) = pipe_pair()?;
    let (report_read, report_write) = pipe_pair()?;

    let reset_signals = signals_to_reset();
    let args = ChildArgs {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd.as_ptr(),
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        report: report_write.as_raw_fd(),
        rlimits: plan.rlimits.as_ptr(),
        rlimit_count: plan.rlimits.len(),
        creds: plan.creds,
        reset_signals: reset_signals.as_ptr(),
        reset_count: reset_signals.len(),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down: hand over its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;

    // With every signal blocked, none can run an engine handler in the child before it has
    // reset them; the child unblocks right before execve.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut saved: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(stack);
    // The child's ends are the child's now (or it is gone): close ours, then learn whether
    // execve happened (the report pipe closed on exec) or failed (its errno arrives).
    drop((stdin_child, stdout_child, stderr_child, report_write));
    let mut errno = [0u8; 4];
    let n = loop {
        // SAFETY: reads into our own buffer.
        let n = unsafe {
            libc::read(
                report_read.as_raw_fd(),
                errno.as_mut_ptr().cast(),
                errno.len(),
            )
        };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    let child = ChildProcess::new(pid)?;
    if n == 4 {
        let mut child = child;
        child.reap_blocking();
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
    Ok(Spawned {
        // Its own session leader, so its process group id is its pid.
        pgid: pid,
        child,
        stdin: stdin_parent
            .map(|fd| nonblocking(fd).and_then(pipe::Sender::from_owned_fd))
            .transpose()?,
        stdout: nonblocking(stdout_parent).and_then(pipe::Receiver::from_owned_fd)?,
        stderr: nonblocking(stderr_parent).and_then(pipe::Receiver::from_owned_fd)?,
    })
}

/// `program` as `execve` needs it: a name without a slash is looked up on the command's PATH
/// (else the engine's), as `execvp` would.
fn resolve(program: &OsStr, env: &[(String, String)]) -> std::ffi::OsString {
    if program.as_bytes().contains(&b'/') {
        return program.to_owned();
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .map_or_else(|| program.to_owned(), |p| p.into_os_string())
}

/// The child: raw system calls only (see the module docs), then `execve`.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent waits in `clone`.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = |report: RawFd| -> ! {
            let errno = (*libc::__errno_location()).to_ne_bytes();
            libc::write(report, errno.as_ptr().cast(), errno.len());
            libc::_exit(127)
        };
        // Caught signals back to default (their handlers are the engine's); SIGPIPE too, which
        // the engine ignores but a command expects to die of.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for i in 0..a.reset_count {
            libc::sigaction(*a.reset_signals.add(i), &dfl, std::ptr::null_mut());
        }
        for (target, &fd) in a.stdio.iter().enumerate() {
            let target = target as RawFd;
            if fd == target {
                // Already in place (the engine had that descriptor closed): keep it across exec.
                if libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, 0) < 0 {
                    fail(a.report);
                }
            } else if libc::syscall(libc::SYS_dup3, fd, target, 0) < 0 {
                fail(a.report);
            }
        }
        if libc::syscall(libc::SYS_chdir, a.cwd) < 0 || libc::syscall(libc::SYS_setsid) < 0 {
            fail(a.report);
        }
        for i in 0..a.rlimit_count {
            let (resource, value) = *a.rlimits.add(i);
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            if libc::syscall(
                libc::SYS_prlimit64,
                0,
                resource,
                &lim,
                std::ptr::null::<u8>(),
            ) < 0
            {
                fail(a.report);
            }
        }
        if let Some((uid, gid)) = a.creds {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                fail(a.report);
            }
        }
        // After the uid change, which clears it: die with the engine's spawning thread.
        if libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            fail(a.report);
        }
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        );
        libc::syscall(libc::SYS_execve, a.program, a.argv, a.envp);
        fail(a.report)
    }
}

/// The signals the child must reset before exec, looked up here so that the child (which
/// holds copies of all the engine's descriptors until it execs) does as little as possible.
fn signals_to_reset() -> Vec<libc::c_int> {
    (1..libc::SIGRTMAX())
        .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
        .filter(|&sig| {
            // SAFETY: queries the disposition only.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let queried = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
            queried
                && old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
        })
        .collect()
}

/// A started child process: waited for through a pidfd, reaped exactly once.
pub(crate) struct ChildProcess {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    fn new(pid: i32) -> io::Result<ChildProcess> {
        // SAFETY: plain syscall; the returned descriptor is owned from here on.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = if fd >= 0 {
            // SAFETY: the descriptor is new and owned; the OwnedFd keeps it open and the same
            // for as long as the AsyncFd holds it.
            unsafe {
                let fd = OwnedFd::from_raw_fd(fd as RawFd);
                AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
            }
        } else {
            None // Linux < 5.3: `wait` waits on a blocking thread instead.
        };
        Ok(ChildProcess {
            pid,
            pidfd,
            status: None,
        })
    }

    /// The exit status, once the process ended (reaping it).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        if self.pidfd.is_some() {
            loop {
                if let Some(s) = self.try_reap()? {
                    return Ok(s);
                }
                let pidfd = self.pidfd.as_ref().expect("checked above");
                let mut ready = pidfd.readable().await?;
                ready.clear_ready();
            }
        }
        let pid = self.pid;
        let status = tokio::task::spawn_blocking(move || waitpid(pid, 0))
            .await
            .map_err(io::Error::other)??;
        let status = status.expect("a blocking waitpid returns a status");
        self.status = Some(status);
        Ok(status)
    }

    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = waitpid(self.pid, libc::WNOHANG)?;
        if status.is_some() {
            self.status = status;
        }
        Ok(status)
    }

    fn reap_blocking(&mut self) {
        if self.status.is_none() {
            self.status = waitpid(self.pid, 0).ok().flatten();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Never leave a zombie: a process nobody waited for is reaped in the background.
        if self.status.is_none() && !matches!(self.try_reap(), Ok(Some(_))) {
            let pid = self.pid;
            std::thread::spawn(move || waitpid(pid, 0));
        }
    }
}

/// `waitpid`; `None` when `WNOHANG` found it still running.
fn waitpid(pid: i32, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    loop {
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

fn open_dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn run(
        program: &str,
        script: &str,
        rlimits: &[(libc::c_int, libc::rlim_t)],
    ) -> (i32, String, io::Result<()>) {
        let args = ["-c".into(), script.into()];
        let env = [("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let started = start(&Plan {
            program: OsStr::new(program),
            args: &args,
            env: &env,
            cwd: OsStr::new("/"),
            rlimits,
            creds: None,
            with_stdin: false,
        });
        let mut s = match started {
            Ok(s) => s,
            Err(e) => return (0, String::new(), Err(e)),
        };
        let mut out = String::new();
        s.stdout.read_to_string(&mut out).await.unwrap();
        let status = s.child.wait().await.unwrap();
        (
            s.pgid,
            format!("{out}|{}", status.code().unwrap_or(-1)),
            Ok(()),
        )
    }

    #[tokio::test]
    async fn the_child_leads_its_own_session_with_its_limits_and_default_sigpipe() {
        // Its /proc stat (pgrp and session fields), `ulimit -n`, and the ignored-signal mask.
        let script = "read -r stat < /proc/$$/stat; echo \"$stat\"; ulimit -n; \
                      grep SigIgn /proc/$$/status; cat; exit 3";
        let (pid, out, started) = run("sh", script, &[(libc::RLIMIT_NOFILE as _, 123)]).await;
        started.unwrap();
        let mut lines = out.lines();
        let stat = lines.next().unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        // state ppid pgrp session: pgrp and session are the child's own pid.
        assert_eq!(
            (fields[2], fields[3]),
            (&*pid.to_string(), &*pid.to_string()),
            "{stat}"
        );
        assert_eq!(lines.next(), Some("123"));
        let ignored =
            u64::from_str_radix(lines.next().unwrap().split_whitespace().nth(1).unwrap(), 16)
                .unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE is still ignored"
        );
        // stdin is /dev/null (cat ends at once) and the exit code comes back.
        assert_eq!(lines.next(), Some("|3"));
    }

    #[tokio::test]
    async fn a_program_that_cannot_be_executed_is_an_error_not_a_child() {
        let (_, _, started) = run("/nonexistent/program", "", &[]).await;
        assert_eq!(started.unwrap_err().kind(), io::ErrorKind::NotFound);
        // Not executable: a plain file, mode 0644.
        let file = std::env::temp_dir().join(format!("spawn-test-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let (_, _, started) = run(file.to_str().unwrap(), "", &[]).await;
        let _ = std::fs::remove_file(&file);
        assert_eq!(started.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }
}
