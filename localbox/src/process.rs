//! Running one command: spawning it confined (own session, rlimits, sandbox uid) and pumping its
//! output to a consumer until it exits, times out or the consumer goes away.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Limits;
use crate::signals;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// Executed directly (no shell parsing). Not found → exit code 127, not executable → 126.
    Argv(Vec<String>),
    /// Run with `/bin/sh -c`.
    Shell(String),
}

impl CommandSpec {
    /// A one-line rendering for listings.
    pub fn display(&self) -> String {
        match self {
            CommandSpec::Argv(a) => a.join(" "),
            CommandSpec::Shell(s) => s.clone(),
        }
    }
}

/// A command to run in a sandbox (foreground with [`Engine::exec`](crate::Engine::exec) or
/// background with [`Engine::start_process`](crate::Engine::start_process)).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub command: CommandSpec,
    /// Working directory in the sandbox view; relative paths resolve against the sandbox's
    /// workdir. Must exist under `/workspace` or `/tmp`. Default: the workdir.
    pub cwd: Option<String>,
    /// Added to (and overriding) the sandbox's own env.
    pub env: BTreeMap<String, String>,
    /// Kill the command (its whole process group / pid namespace) after this long.
    pub timeout: Option<Duration>,
    /// Written to the command's stdin, which is then closed. `None`: stdin is `/dev/null`.
    pub stdin: Option<Vec<u8>>,
}

impl ExecRequest {
    /// An argv command with no other options.
    pub fn argv<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self::new(CommandSpec::Argv(
            argv.into_iter().map(Into::into).collect(),
        ))
    }
    /// A `sh -c` command with no other options.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(CommandSpec::Shell(script.into()))
    }
    fn new(command: CommandSpec) -> Self {
        ExecRequest {
            command,
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            stdin: None,
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One event of a streaming exec; `Exit` is always the last.
#[derive(Debug, Clone)]
pub enum ExecEvent {
    Output(Stream, Bytes),
    Exit(ExecOutput),
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; `128 + signal` when killed by a signal; 124 when it timed out.
    pub exit_code: i32,
    pub timed_out: bool,
    /// The last [`TAIL_BYTES`] of stdout.
    pub stdout_tail: Vec<u8>,
    /// The last [`TAIL_BYTES`] of stderr.
    pub stderr_tail: Vec<u8>,
}

/// Size of the output tails kept in [`ExecOutput`].
pub const TAIL_BYTES: usize = 64 << 10;
/// Exit code reported for a timed-out command (as coreutils `timeout` does).
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// How long output pipes are still drained after the command exited (a process that escaped
/// the group may keep them open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 << 10;

/// A running foreground command. Events arrive as output is produced; dropping the stream
/// kills the command.
#[derive(Debug)]
pub struct ExecStream {
    pub(crate) rx: mpsc::Receiver<ExecEvent>,
}

impl ExecStream {
    /// The next event; `None` after `Exit` was delivered.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.rx.recv().await
    }

    /// Waits for the end, discarding streamed chunks (the result keeps the tails).
    pub async fn finish(mut self) -> ExecOutput {
        while let Some(ev) = self.rx.recv().await {
            if let ExecEvent::Exit(out) = ev {
                return out;
            }
        }
        // The pump always sends Exit unless the runtime shut down under it.
        ExecOutput {
            exit_code: -1,
            ..Default::default()
        }
    }
}

/// A fully built command line plus the identity it runs under.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment (the engine's own is never inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub creds: Option<(u32, u32)>,
    /// Started through bubblewrap (changes how signals are delivered).
    pub bwrap: bool,
}

/// The writing end of a running command's stdin (see `Engine::exec_stream_with_stdin`).
pub type StdinPipe = tokio::net::unix::pipe::Sender;

/// A spawned command: its own session and process group (pgid = pid).
pub(crate) struct Spawned {
    pub child: crate::spawn::ChildProcess,
    pub pgid: i32,
    pub stdout: tokio::net::unix::pipe::Receiver,
    pub stderr: tokio::net::unix::pipe::Receiver,
    pub stdin: Option<StdinPipe>,
}

/// Spawns `launch` from the process-wide spawner thread.
///
/// Why a dedicated thread: the parent-death signal (bwrap's `--die-with-parent`, our
/// `PR_SET_PDEATHSIG`) fires when the *thread* that started the child exits, not the process.
/// Callers may sit on Tokio blocking-pool threads (or `block_in_place` ones) that exit after a
/// while, which would kill long-running background processes. The spawner thread lives as long
/// as the process, so children die with the engine's process and only then.
pub(crate) fn spawn(launch: &Launch, limits: &Limits, with_stdin: bool) -> io::Result<Spawned> {
    type Job = (
        Box<dyn FnOnce() -> io::Result<Spawned> + Send>,
        std::sync::mpsc::SyncSender<io::Result<Spawned>>,
    );
    static SPAWNER: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<Job>>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("localbox-spawner".into())
            .spawn(move || {
                for (job, reply) in rx {
                    let _ = reply.send(job());
                }
            })
            .ok()
            .map(|_| std::sync::Mutex::new(tx))
    });
    // The child is registered with the caller's runtime, which will wait for it.
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let (launch, limits) = (launch.clone(), *limits);
    let job = move || {
        let _rt = handle.enter();
        spawn_here(&launch, &limits, with_stdin)
    };
    let Some(spawner) = spawner else { return job() };
    let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
    spawner
        .lock()
        .unwrap()
        .send((Box::new(job), reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Spawns `launch` on the current thread (see [`crate::spawn`]). In the child, before exec:
/// new session (so the whole group can be killed), rlimits, then groups/gid/uid dropped to the
/// sandbox's (rlimits first: raising them needs root; RLIMIT_NPROC is enforced for the uid set
/// afterwards), and death with the engine.
fn spawn_here(launch: &Launch, limits: &Limits, with_stdin: bool) -> io::Result<Spawned> {
    // NPROC counts every process of the real uid; without a uid of its own the sandbox would
    // share the count with the engine's user (and root is exempt anyway).
    let rlimits = rlimits(limits, launch.creds.is_some())?;
    crate::spawn::start(&crate::spawn::Plan {
        program: launch.program.as_os_str(),
        args: &launch.args,
        env: &launch.env,
        cwd: launch.cwd.as_os_str(),
        rlimits: &rlimits,
        creds: launch.creds,
        with_stdin,
    })
}

/// The `(resource, value)` pairs to `setrlimit` in the child. An unprivileged engine cannot
/// raise its hard limit: such values are clamped to it instead of failing.
fn rlimits(l: &Limits, own_uid: bool) -> io::Result<Vec<(libc::c_int, libc::rlim_t)>> {
    let wanted = [
        (libc::RLIMIT_NPROC, l.nproc.filter(|_| own_uid)),
        (libc::RLIMIT_FSIZE, l.fsize_bytes),
        (libc::RLIMIT_NOFILE, l.nofile),
        (libc::RLIMIT_CPU, l.cpu_secs),
        (libc::RLIMIT_AS, l.address_space_bytes),
    ];
    let is_root = unsafe { libc::geteuid() } == 0;
    wanted
        .into_iter()
        .filter_map(|(res, value)| Some((res, value? as libc::rlim_t)))
        .map(|(res, v)| {
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit fills `cur`.
            if unsafe { libc::getrlimit(res, &mut cur) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let v = if is_root { v } else { v.min(cur.rlim_max) };
            Ok((res as libc::c_int, v))
        })
        .collect()
}

/// Where a command's output goes.
pub(crate) trait OutputSink: Send {
    /// Delivers a chunk; `false` means the consumer is gone and the command should be killed.
    fn deliver(
        &mut self,
        stream: Stream,
        data: &[u8],
    ) -> impl std::future::Future<Output = bool> + Send;
    /// Resolves when the consumer is gone (never, for sinks without one).
    fn gone(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// Sink of a foreground exec: an mpsc channel to the caller.
pub(crate) struct ChannelSink(pub mpsc::Sender<ExecEvent>);

impl OutputSink for ChannelSink {
    async fn deliver(&mut self, stream: Stream, data: &[u8]) -> bool {
        self.0
            .send(ExecEvent::Output(stream, Bytes::copy_from_slice(data)))
            .await
            .is_ok()
    }
    async fn gone(&self) {
        self.0.closed().await
    }
}

/// Runs a spawned command to its end. `on_reaped` runs right after the leader is reaped (used to
/// forget its process group before the id can be reused).
pub(crate) async fn pump<S: OutputSink>(
    sp: Spawned,
    sink: &mut S,
    timeout: Option<Duration>,
    stdin: Option<Vec<u8>>,
    on_reaped: impl FnOnce(),
) -> ExecOutput {
    let Spawned {
        mut child,
        pgid,
        mut stdout,
        mut stderr,
        stdin: child_stdin,
    } = sp;
    if let (Some(mut pipe), Some(data)) = (child_stdin, stdin) {
        // Separate task: a command that does not read stdin must not block output pumping.
        tokio::spawn(async move {
            let _ = pipe.write_all(&data).await;
        });
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut on_reaped = Some(on_reaped);
    let (mut out_buf, mut err_buf) = (vec![0u8; READ_CHUNK], vec![0u8; READ_CHUNK]);
    let (mut out_tail, mut err_tail) = (Tail::default(), Tail::default());
    let (mut out_open, mut err_open) = (true, true);
    let mut status = None;
    let mut timed_out = false;
    let mut killed = false;
    let mut consumer_gone = false;
    let mut drain_until: Option<Instant> = None;

    while status.is_none() || out_open || err_open {
        let ev = tokio::select! {
            r = stdout.read(&mut out_buf), if out_open => Ev::Read(Stream::Stdout, r),
            r = stderr.read(&mut err_buf), if err_open => Ev::Read(Stream::Stderr, r),
            s = child.wait(), if status.is_none() => Ev::Exited(s),
            _ = sleep_until_opt(deadline), if status.is_none() && !killed => Ev::Deadline,
            _ = sink.gone(), if status.is_none() && !killed && !consumer_gone => Ev::ConsumerGone,
            _ = sleep_until_opt(drain_until), if drain_until.is_some() => break,
        };
        match ev {
            Ev::Read(stream, Ok(n)) if n > 0 => {
                let (buf, tail) = match stream {
                    Stream::Stdout => (&out_buf, &mut out_tail),
                    Stream::Stderr => (&err_buf, &mut err_tail),
                };
                tail.push(&buf[..n]);
                if !consumer_gone {
                    // A stalled consumer must not keep the command alive past its deadline.
                    let live_deadline = if killed || status.is_some() {
                        None
                    } else {
                        deadline
                    };
                    tokio::select! {
                        ok = sink.deliver(stream, &buf[..n]) => consumer_gone = !ok,
                        _ = sleep_until_opt(live_deadline) => {
                            timed_out = true;
                            killed = true;
                            signals::signal_group(pgid, libc::SIGKILL);
                            consumer_gone = !sink.deliver(stream, &buf[..n]).await;
                        }
                    }
                }
            }
            Ev::Read(Stream::Stdout, _) => out_open = false,
            Ev::Read(Stream::Stderr, _) => err_open = false,
            Ev::Exited(s) => {
                status = Some(s);
                if let Some(f) = on_reaped.take() {
                    f()
                }
                // Leftovers of the command (e.g. `cmd &`) end with it, as they do under bwrap
                // when its pid namespace goes away.
                signals::signal_group(pgid, libc::SIGKILL);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            Ev::Deadline => {
                timed_out = true;
                killed = true;
                signals::signal_group(pgid, libc::SIGKILL);
            }
            Ev::ConsumerGone => consumer_gone = true,
        }
        // The leader is not reaped yet (status is None), so its group id is still ours.
        if consumer_gone && !killed && status.is_none() {
            killed = true;
            signals::signal_group(pgid, libc::SIGKILL);
        }
    }
    let exit_code = match status {
        _ if timed_out => TIMEOUT_EXIT_CODE,
        Some(Ok(s)) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        _ => -1,
    };
    ExecOutput {
        exit_code,
        timed_out,
        stdout_tail: out_tail.into_vec(),
        stderr_tail: err_tail.into_vec(),
    }
}

enum Ev {
    Read(Stream, io::Result<usize>),
    Exited(io::Result<std::process::ExitStatus>),
    Deadline,
    ConsumerGone,
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The last [`TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (self.0.len() + data.len()).saturating_sub(TAIL_BYTES);
        self.0.drain(..overflow);
        self.0.extend(data);
    }
    fn into_vec(self) -> Vec<u8> {
        self.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::default();
        t.push(&vec![1u8; TAIL_BYTES - 10]);
        t.push(&[2u8; 20]);
        let v = t.into_vec();
        assert_eq!(v.len(), TAIL_BYTES);
        assert_eq!(&v[TAIL_BYTES - 20..], &[2u8; 20]);
        assert_eq!(v[0], 1);
    }
}
