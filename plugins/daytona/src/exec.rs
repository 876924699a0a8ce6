//! Commands through toolbox sessions, which keep stdout and stderr apart (`process/execute`
//! merges them): a session per command, the command started with `runAsync`, then its exit code
//! and its log polled, new output emitted as it appears. The log is fetched raw
//! (`X-Daytona-Split-Output: true`, no SDK version): every line marked `\x01\x01\x01` (stdout) or
//! `\x02\x02\x02` (stderr), bytes intact — JSON would mangle binary output.
//!
//! Background processes are session commands too: pid = `<session>:<command id>`; a signal ends
//! the session (Daytona has no per-command signal), after which the process reads as ended.

use std::time::Duration;

use kit::http::{Method, Request};
use kit::{
    Command, ExecOutput, ExecRequest, ExecResult, OutputChunk, ProcessInfo, Result, SandboxRef,
};
use serde::Deserialize;
use serde_json::json;

use crate::api::{request, toolbox_base, transient, SendExt};

const STDOUT_MARK: &[u8] = b"\x01\x01\x01";
const STDERR_MARK: &[u8] = b"\x02\x02\x02";
/// Session ids this plugin creates start with these.
const EXEC_PREFIX: &str = "sandbox-host-exec-";
const BG_PREFIX: &str = "sandbox-host-bg-";
/// How long a command may run before its log is first polled for output to stream.
const FIRST_LOOK: Duration = Duration::from_millis(100);
/// Longest pause between two polls of a running command.
const MAX_POLL: Duration = Duration::from_millis(250);
/// Exit code reported for a command killed at its timeout (as coreutils `timeout` does).
const TIMEOUT_EXIT: i32 = 124;

/// Splits a marked-up log into (stdout, stderr).
pub fn demux(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut current: Option<bool> = None; // Some(true) = stdout
    let mut i = 0;
    while i < log.len() {
        if log[i..].starts_with(STDOUT_MARK) {
            current = Some(true);
            i += 3;
            continue;
        }
        if log[i..].starts_with(STDERR_MARK) {
            current = Some(false);
            i += 3;
            continue;
        }
        // Text before any marker (an old daemon's plain log) counts as stdout.
        let next = log[i + 1..]
            .iter()
            .position(|b| *b == 1 || *b == 2)
            .map_or(log.len(), |p| i + 1 + p);
        match current {
            Some(false) => err.extend_from_slice(&log[i..next]),
            _ => out.extend_from_slice(&log[i..next]),
        }
        i = next;
    }
    (out, err)
}

fn toolbox(method: Method, base: &str, segments: &[&str]) -> Request {
    request(method, kit::url(base, segments))
}

/// Creates a session. Safe to retry on a transport failure: the id is ours, so a 409 on a
/// retry means the first attempt made it.
fn create_session(base: &str, sid: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = toolbox(Method::Post, base, &["process", "session"])
            .json(&json!({ "sessionId": sid }))
            .ok_5xx();
        match sent {
            Ok(_) => return Ok(()),
            Err(kit::Error::Conflict(_)) if attempt > 1 => return Ok(()),
            Err(kit::Error::Unavailable(m)) if attempt < 3 => {
                kit::debug!("daytona: creating session {sid}: {m}; retrying");
                kit::sleep(Duration::from_millis(20 * attempt));
            }
            Err(e) => return Err(e),
        }
    }
}

fn delete_session(base: &str, sid: &str) -> Result<()> {
    match toolbox(Method::Delete, base, &["process", "session", sid]).ok_5xx() {
        Ok(_) | Err(kit::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Uploads stdin bytes to a temp file the command then reads (binary-safe, unlike `/input`).
fn upload_stdin(base: &str, data: &[u8]) -> Result<String> {
    let path = format!("/tmp/.sandbox-host-stdin-{}", kit::random_hex(8));
    crate::files::upload(base, &path, data.to_vec())?;
    Ok(path)
}

/// The shell line run in the session: `( eval '<script>' )`, where the script sets stdin, cwd
/// and env and then runs the command. Everything runs in that subshell, so `exit` or `exec` in
/// the command cannot end the session's own shell, and `eval` keeps a syntax error in the
/// command inside it too; a subshell is a fork, where `sh -c` would also start a new shell.
fn command_line(req: &ExecRequest, stdin_file: Option<&str>) -> Result<String> {
    let mut script = String::new();
    match stdin_file {
        Some(f) => script.push_str(&format!("exec <{q}; rm -f -- {q}\n", q = kit::quote(f))),
        None => script.push_str("exec </dev/null\n"),
    }
    if let Some(cwd) = req.cwd.as_deref().filter(|c| !c.is_empty()) {
        script.push_str(&format!("cd -- {} || exit 1\n", kit::quote(cwd)));
    }
    for (k, v) in &req.env {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(kit::invalid_argument(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        script.push_str(&format!("export {k}={}\n", kit::quote(v)));
    }
    match &req.command {
        Command::Argv(argv) if argv.is_empty() => {
            return Err(kit::invalid_argument("empty argv"));
        }
        Command::Argv(argv) => script.push_str(&format!("exec {}", kit::quote_argv(argv))),
        Command::Shell(s) => script.push_str(s),
    }
    Ok(format!("( eval {} )", kit::quote(&script)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Started {
    cmd_id: String,
}

fn start(base: &str, sid: &str, line: &str) -> Result<String> {
    let s: Started = toolbox(Method::Post, base, &["process", "session", sid, "exec"])
        .json(&json!({ "command": line, "runAsync": true }))
        .json_5xx()?;
    Ok(s.cmd_id)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandInfo {
    #[serde(default)]
    command: String,
    exit_code: Option<i32>,
}

fn command_info(base: &str, sid: &str, cid: &str) -> Result<CommandInfo> {
    toolbox(
        Method::Get,
        base,
        &["process", "session", sid, "command", cid],
    )
    .json_5xx()
}

/// The command's whole log, split into (stdout, stderr). Takes the raw marked-up text; a
/// daemon that answers JSON anyway is understood too.
fn logs(base: &str, sid: &str, cid: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let url = kit::url(base, &["process", "session", sid, "command", cid, "logs"]);
    let resp = Request::get(url)
        .connect_timeout(Duration::from_secs(15))
        .header("x-daytona-source", "sandbox-host")
        .header("x-daytona-split-output", "true")
        .ok_5xx()?;
    let is_json = resp
        .header("content-type")
        .is_some_and(|c| c.contains("json"));
    let body = resp.bytes()?;
    if is_json {
        #[derive(Deserialize)]
        struct Split {
            output: Option<String>,
            stdout: Option<String>,
            stderr: Option<String>,
        }
        let s: Split = serde_json::from_slice(&body)?;
        if let (Some(o), Some(e)) = (s.stdout.as_ref(), s.stderr.as_ref()) {
            return Ok((o.clone().into_bytes(), e.clone().into_bytes()));
        }
        return Ok(demux(s.output.unwrap_or_default().as_bytes()));
    }
    Ok(demux(&body))
}

pub fn exec(sandbox: &SandboxRef, req: ExecRequest) -> Result<ExecResult> {
    let base = toolbox_base(sandbox)?;
    let stdin_file = match req.stdin.as_deref() {
        Some(data) => Some(upload_stdin(&base, data)?),
        None => None,
    };
    let line = command_line(&req, stdin_file.as_deref())?;
    let sid = format!("{EXEC_PREFIX}{}", kit::random_hex(8));
    create_session(&base, &sid)?;
    let result = run(&base, &sid, &line, req.timeout_ms);
    // Its command has ended: the session's deletion need not hold up the answer (the host
    // finishes the request after this call; a failure only leaves an idle shell behind until
    // the sandbox goes, as an ignored error did before).
    let _ = toolbox(Method::Delete, &base, &["process", "session", &sid]).send_detached();
    result
}

/// What a synchronous session exec answers (`stdout`/`stderr` only from newer daemons).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Finished {
    cmd_id: String,
    exit_code: Option<i32>,
    stdout: Option<String>,
    stderr: Option<String>,
}

/// Runs `line` in session `sid` to its end. The exec is sent synchronous (the daemon answers
/// when the command ended, with its exit code and output), so a command that ends within
/// [`FIRST_LOOK`] costs this one request. While it runs longer, its log is polled and new
/// output emitted as it appears; should the synchronous answer be lost (a proxy's idle
/// timeout on a long command), polling carries on to the end.
fn run(base: &str, sid: &str, line: &str, timeout_ms: Option<u64>) -> Result<ExecResult> {
    let mut poll = Poll::new(timeout_ms);
    let pending = toolbox(Method::Post, base, &["process", "session", sid, "exec"])
        .json(&json!({ "command": line }))
        .start()
        .map_err(transient)?;
    while !pending.ready_within(poll.pause()) {
        if poll.timed_out() {
            return Ok(poll.output.finish(TIMEOUT_EXIT, true));
        }
        poll.emit_log(base, sid)?;
    }
    let done = pending
        .wait()
        .and_then(|r| r.error_for_status())
        .map_err(transient)
        .and_then(|r| r.json::<Finished>());
    let done = match done {
        Ok(done) => done,
        Err(kit::Error::Timeout(_) | kit::Error::Unavailable(_)) => {
            return poll.until_exit(base, sid)
        }
        Err(e) => return Err(e),
    };
    // JSON carries text: output that was not UTF-8 came back with U+FFFD in it, and an older
    // daemon sends no split streams. Then the raw log has the exact bytes.
    let (out, err) = match (done.stdout, done.stderr) {
        (Some(o), Some(e)) if !o.contains('\u{FFFD}') && !e.contains('\u{FFFD}') => {
            (o.into_bytes(), e.into_bytes())
        }
        _ => logs(base, sid, &done.cmd_id)?,
    };
    poll.emit(&out, &err);
    Ok(poll.output.finish(done.exit_code.unwrap_or(-1), false))
}

/// Following a running session command: its output so far, the pause before the next look
/// (from [`FIRST_LOOK`], doubling up to [`MAX_POLL`]) and its deadline.
struct Poll {
    output: ExecOutput,
    sent: (usize, usize),
    cid: Option<String>,
    delay: Duration,
    deadline: Option<u64>,
}

impl Poll {
    fn new(timeout_ms: Option<u64>) -> Poll {
        Poll {
            output: ExecOutput::new(),
            sent: (0, 0),
            cid: None,
            delay: FIRST_LOOK,
            deadline: timeout_ms.map(|ms| kit::monotonic_ns() + ms.saturating_mul(1_000_000)),
        }
    }

    /// The next pause (never past the deadline).
    fn pause(&mut self) -> Duration {
        let pause = match self.deadline {
            Some(d) => self
                .delay
                .min(Duration::from_nanos(d.saturating_sub(kit::monotonic_ns()))),
            None => self.delay,
        };
        self.delay = (self.delay * 2).min(MAX_POLL);
        pause
    }

    fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| kit::monotonic_ns() >= d)
    }

    /// Emits what is new in the command's whole output so far.
    fn emit(&mut self, out: &[u8], err: &[u8]) {
        if out.len() > self.sent.0 {
            self.output.stdout(&out[self.sent.0..]);
            self.sent.0 = out.len();
        }
        if err.len() > self.sent.1 {
            self.output.stderr(&err[self.sent.1..]);
            self.sent.1 = err.len();
        }
    }

    /// The command's id, once the daemon lists it in the session.
    fn command(&mut self, base: &str, sid: &str) -> Result<Option<String>> {
        if self.cid.is_none() {
            self.cid = session_command(base, sid)?;
        }
        Ok(self.cid.clone())
    }

    /// Emits what is new in the command's log.
    fn emit_log(&mut self, base: &str, sid: &str) -> Result<()> {
        if let Some(cid) = self.command(base, sid)? {
            let (out, err) = logs(base, sid, &cid)?;
            self.emit(&out, &err);
        }
        Ok(())
    }

    /// Polls the command's exit code and log until it ended (the log read after the exit code
    /// is known is complete).
    fn until_exit(mut self, base: &str, sid: &str) -> Result<ExecResult> {
        loop {
            if self.timed_out() {
                return Ok(self.output.finish(TIMEOUT_EXIT, true));
            }
            kit::sleep(self.pause());
            let Some(cid) = self.command(base, sid)? else {
                continue;
            };
            let code = command_info(base, sid, &cid)?.exit_code;
            let (out, err) = logs(base, sid, &cid)?;
            self.emit(&out, &err);
            if let Some(code) = code {
                return Ok(self.output.finish(code, false));
            }
        }
    }
}

/// The id of the (one) command in session `sid`, once the daemon lists it.
fn session_command(base: &str, sid: &str) -> Result<Option<String>> {
    #[derive(Deserialize)]
    struct Session {
        #[serde(default)]
        commands: Vec<Cmd>,
    }
    #[derive(Deserialize)]
    struct Cmd {
        id: String,
    }
    let s: Session = toolbox(Method::Get, base, &["process", "session", sid]).json_5xx()?;
    Ok(s.commands.into_iter().next().map(|c| c.id))
}

// ---------------------------------------------------------------------------------------------
// Background processes.

fn split_pid(pid: &str) -> Result<(&str, &str)> {
    pid.split_once(':')
        .filter(|(s, c)| s.starts_with(BG_PREFIX) && !c.is_empty())
        .ok_or_else(|| kit::not_found(format!("no process {pid:?} (not started by this plugin)")))
}

pub fn start_process(sandbox: &SandboxRef, req: ExecRequest) -> Result<ProcessInfo> {
    let base = toolbox_base(sandbox)?;
    let stdin_file = match req.stdin.as_deref() {
        Some(data) => Some(upload_stdin(&base, data)?),
        None => None,
    };
    let line = command_line(&req, stdin_file.as_deref())?;
    let sid = format!("{BG_PREFIX}{}", kit::random_hex(8));
    create_session(&base, &sid)?;
    let cid = match start(&base, &sid, &line) {
        Ok(c) => c,
        Err(e) => {
            let _ = delete_session(&base, &sid);
            return Err(e);
        }
    };
    Ok(ProcessInfo {
        pid: format!("{sid}:{cid}"),
        command: kit::command_line(&req.command),
        running: true,
        exit_code: None,
    })
}

/// A process whose session is gone (signalled, or the sandbox was stopped).
fn ended(pid: &str) -> ProcessInfo {
    ProcessInfo {
        pid: pid.to_string(),
        command: String::new(),
        running: false,
        exit_code: None,
    }
}

pub fn process_status(sandbox: &SandboxRef, pid: &str) -> Result<ProcessInfo> {
    let (sid, cid) = split_pid(pid)?;
    let base = toolbox_base(sandbox)?;
    match command_info(&base, sid, cid) {
        Ok(c) => Ok(ProcessInfo {
            pid: pid.to_string(),
            command: c.command,
            running: c.exit_code.is_none(),
            exit_code: c.exit_code,
        }),
        Err(kit::Error::NotFound(_)) => Ok(ended(pid)),
        Err(e) => Err(e),
    }
}

pub fn list_processes(sandbox: &SandboxRef) -> Result<Vec<ProcessInfo>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Session {
        session_id: String,
        #[serde(default)]
        commands: Vec<Cmd>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Cmd {
        id: String,
        #[serde(default)]
        command: String,
        exit_code: Option<i32>,
    }
    let base = toolbox_base(sandbox)?;
    let sessions: Vec<Session> = toolbox(Method::Get, &base, &["process", "session"]).json_5xx()?;
    Ok(sessions
        .into_iter()
        .filter(|s| s.session_id.starts_with(BG_PREFIX))
        .flat_map(|s| {
            let sid = s.session_id;
            s.commands.into_iter().map(move |c| ProcessInfo {
                pid: format!("{sid}:{}", c.id),
                command: c.command,
                running: c.exit_code.is_none(),
                exit_code: c.exit_code,
            })
        })
        .collect())
}

pub fn process_output(
    sandbox: &SandboxRef,
    pid: &str,
    out_at: u64,
    err_at: u64,
) -> Result<OutputChunk> {
    let (sid, cid) = split_pid(pid)?;
    let base = toolbox_base(sandbox)?;
    // Status first: output read after the exit code is known is complete.
    let info = match command_info(&base, sid, cid) {
        Ok(i) => i,
        Err(kit::Error::NotFound(_)) => {
            return Ok(OutputChunk {
                stdout: vec![],
                stderr: vec![],
                stdout_next: out_at,
                stderr_next: err_at,
                running: false,
                exit_code: None,
            })
        }
        Err(e) => return Err(e),
    };
    let (out, err) = logs(&base, sid, cid)?;
    let from = |all: &[u8], at: u64| all.get(at as usize..).unwrap_or_default().to_vec();
    let (stdout, stderr) = (from(&out, out_at), from(&err, err_at));
    Ok(OutputChunk {
        stdout_next: out_at + stdout.len() as u64,
        stderr_next: err_at + stderr.len() as u64,
        stdout,
        stderr,
        running: info.exit_code.is_none(),
        exit_code: info.exit_code,
    })
}

/// Daytona cannot signal one command: any signal ends the process's own session.
pub fn signal_process(sandbox: &SandboxRef, pid: &str, _signal: i32) -> Result<()> {
    let (sid, _) = split_pid(pid)?;
    delete_session(&toolbox_base(sandbox)?, sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_keeps_bytes_and_order() {
        let log = b"\x01\x01\x01out1\n\x02\x02\x02err\x01\x01\x01\x00\xff\n\x01\x01\x01tail";
        let (o, e) = demux(log);
        assert_eq!(o, b"out1\n\x00\xff\ntail");
        assert_eq!(e, b"err");
        assert_eq!(demux(b"plain").0, b"plain");
    }
}
