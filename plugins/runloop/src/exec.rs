//! Commands on a devbox: the bash script that gives a command its cwd, env and stdin; the
//! foreground exec over `execute` (+ SSE and a completion wait when it runs long); background processes (executions); short helper
//! commands for the file calls.

use std::time::Duration;

use kit::http::Method;
use kit::{
    Command, ExecOutput, ExecRequest, ExecResult, OutputChunk, OutputStream, ProcessInfo, Result,
    SandboxRef,
};
use serde_json::json;

use crate::api::{devboxes, new_request_id, request, send, send_read};
use crate::text::{bool_field, int_field, string_field, SseParser};
use crate::Token;

/// Silence allowed on an output stream when the command has no timeout (the host's call
/// timeout still bounds the call).
const STREAM_IDLE: Duration = Duration::from_secs(24 * 3600);
/// How long a background process's output poll listens for more before answering.
const POLL_LISTEN: Duration = Duration::from_millis(150);
/// Consecutive failed reconnections of one stream before giving up.
const MAX_RECONNECTS: u32 = 8;
/// How long the completion wait sent with a running exec holds (the server's maximum is 25 s).
const COMPLETION_WAIT: Duration = Duration::from_secs(25);
/// How long a command may run before its stdout is streamed (a quicker one's output comes
/// whole with its completion).
const FIRST_LOOK: Duration = Duration::from_millis(100);
/// The setting: how long `execute` holds its answer for a command to complete (whole
/// seconds, the API's unit). A command that ends sooner costs one request; a longer one's
/// output is streamed from then on (from byte 0). `0` streams from the start, at the cost of
/// a second request per command.
pub const EXEC_HOLD_SETTING: &str = "exec-hold-seconds";
const DEFAULT_EXEC_HOLD_SECS: u64 = 1;

fn exec_hold_secs() -> Result<u64> {
    match kit::setting(EXEC_HOLD_SETTING) {
        None => Ok(DEFAULT_EXEC_HOLD_SECS),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= 25)
            .ok_or_else(|| {
                kit::invalid_argument(format!(
                    "setting {EXEC_HOLD_SETTING} = {v:?}: whole seconds from 0 to 25 expected"
                ))
            }),
    }
}
/// Lines of output asked of `execute`'s view, enough that a quick command's output rarely
/// needs its stream read (the view says when it truncated).
const VIEW_LINES: &str = "1000";
/// Exit code of a command killed for its timeout (as coreutils `timeout`).
const TIMEOUT_EXIT: i32 = 124;

/// `path` made absolute against `base`.
pub fn absolute(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            path.trim_start_matches("./")
        )
    }
}

/// The bash script running `request`; `workdir` is the sandbox's own workdir when its spec
/// chose one (else commands start in the devbox's home, Runloop's default, and a relative cwd
/// is taken from there). `stdin_file` (already uploaded) becomes its stdin and is unlinked once
/// open.
pub fn script(workdir: Option<&str>, request: &ExecRequest, stdin_file: Option<&str>) -> String {
    let cwd = match (&request.cwd, workdir) {
        (Some(c), Some(w)) => Some(absolute(w, c)),
        (Some(c), None) => Some(c.clone()),
        (None, w) => w.map(str::to_string),
    };
    let mut s = String::new();
    if let Some(cwd) = cwd {
        s.push_str(&format!("cd {} || exit 1\n", kit::quote(&cwd)));
    }
    for (k, v) in &request.env {
        s.push_str(&format!("export {k}={}\n", kit::quote(v)));
    }
    match stdin_file {
        Some(f) => s.push_str(&format!("exec 0<{q} && rm -f {q}\n", q = kit::quote(f))),
        None => s.push_str("exec 0</dev/null\n"),
    }
    match &request.command {
        Command::Argv(argv) => s.push_str(&kit::quote_argv(argv)),
        Command::Shell(script) => s.push_str(script),
    }
    s.push('\n');
    s
}

/// The script for `request`, its stdin (if any) uploaded first.
fn prepare(sandbox: &SandboxRef, request: &ExecRequest) -> Result<String> {
    let token = Token::of(sandbox);
    let stdin_file = match &request.stdin {
        Some(bytes) => {
            let f = format!("/tmp/.sandbox-host-stdin-{}", &new_request_id()[13..]);
            crate::files::upload(sandbox, &f, bytes.clone())?;
            Some(f)
        }
        None => None,
    };
    Ok(script(
        token.workdir.as_deref(),
        request,
        stdin_file.as_deref(),
    ))
}

/// Starts the request as an execution; its id.
fn start(sandbox: &SandboxRef, request: &ExecRequest) -> Result<(String, String)> {
    let command = prepare(sandbox, request)?;
    let resp = send_read(
        request_post(devboxes(&[&sandbox.id, "execute_async"])?)
            .json(&json!({ "command": command })),
        None,
        &[],
    )?;
    Ok((execution_id(&resp)?, kit::command_line(&request.command)))
}

fn execution_id(view: &[u8]) -> Result<String> {
    let id = string_field(view, "execution_id")
        .ok_or_else(|| kit::provider(0, "the devbox answered no execution_id"))?;
    Ok(String::from_utf8_lossy(&id).into_owned())
}

fn request_post(url: String) -> kit::http::Request {
    request(Method::Post, url)
}

/// An execution's view: (completed, exit status, stdout, stderr).
struct View {
    completed: bool,
    exit_status: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn view(sandbox: &SandboxRef, eid: &str) -> Result<View> {
    let body = send_read(
        request(Method::Get, devboxes(&[&sandbox.id, "executions", eid])?),
        None,
        &[],
    )?;
    Ok(parse_view(&body))
}

fn parse_view(body: &[u8]) -> View {
    View {
        completed: string_field(body, "status").as_deref() == Some(b"completed"),
        exit_status: int_field(body, "exit_status").map(|c| c as i32),
        stdout: string_field(body, "stdout").unwrap_or_default(),
        stderr: string_field(body, "stderr").unwrap_or_default(),
    }
}

/// How a stream read ended.
enum StreamEnd {
    /// The server closed it (normally: the command completed).
    Closed,
    /// `deadline` passed.
    Deadline,
}

/// Reads one output stream of an execution from byte `*offset` on, passing each new piece to
/// `sink` and advancing `*offset`; reconnects after a dropped connection from the offset
/// reached, skipping any bytes a server repeats. Stops when the server closes the stream with
/// the execution completed, or at `deadline` (monotonic ns).
fn follow(
    sandbox: &SandboxRef,
    eid: &str,
    which: &str,
    offset: &mut u64,
    deadline: Option<u64>,
    listen: Option<Duration>,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<StreamEnd> {
    let url = devboxes(&[&sandbox.id, "executions", eid, which])?;
    let mut failures = 0;
    loop {
        let left = deadline.map(|d| Duration::from_nanos(d.saturating_sub(kit::monotonic_ns())));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(StreamEnd::Deadline);
        }
        let idle = listen
            .or(left)
            .unwrap_or(STREAM_IDLE)
            .max(Duration::from_millis(1));
        let req = request(
            Method::Get,
            kit::with_query(&url, &[("offset", offset.to_string())]),
        )
        .header("accept", "text/event-stream")
        .first_byte_timeout(Duration::from_secs(60))
        .between_bytes_timeout(idle);
        let outcome = send(req, None, &[]).and_then(|mut resp| {
            let mut parser = SseParser::default();
            loop {
                let Some(chunk) = resp.read_chunk()? else {
                    return Ok(());
                };
                for ev in parser.push(&chunk) {
                    if ev.name.as_deref() == Some("error") {
                        let code = int_field(&ev.data, "code").unwrap_or(500) as u16;
                        return Err(kit::error_from_status(code, None, &ev.data));
                    }
                    let Some(out) = string_field(&ev.data, "output") else {
                        continue;
                    };
                    let start = int_field(&ev.data, "offset").map_or(*offset, |o| o as u64);
                    let end = start + out.len() as u64;
                    if end > *offset && start <= *offset {
                        sink(&out[(*offset - start) as usize..]);
                        *offset = end;
                    } else if start > *offset {
                        // A gap: the server skipped bytes; take what is there.
                        sink(&out);
                        *offset = end;
                    }
                }
                failures = 0;
            }
        });
        match outcome {
            Ok(()) => return Ok(StreamEnd::Closed),
            // Silence: the poll's listening time, or the command's deadline.
            Err(kit::Error::Timeout(_)) if listen.is_some() => return Ok(StreamEnd::Deadline),
            Err(kit::Error::Timeout(_)) if deadline.is_some_and(|d| kit::monotonic_ns() >= d) => {
                return Ok(StreamEnd::Deadline)
            }
            Err(e)
                if matches!(e, kit::Error::Unavailable(_) | kit::Error::Timeout(_))
                    || matches!(&e, kit::Error::Provider(p) if p.status == 408) =>
            {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(e);
                }
                kit::debug!("{which} of {eid} broke off at byte {offset} ({e:?}); reconnecting");
                kit::sleep(Duration::from_millis(50 * failures as u64));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Foreground exec: `execute` starts the command and holds its answer up to
/// [`EXEC_HOLD_SETTING`] (1 s by default) for the completion, so a quick command takes this one
/// request (its command id, a UUIDv7, makes a retried start run the command once). A command
/// still running then gets a `wait_for_status` read alongside its stdout stream, which is
/// followed live from byte 0. A command with less time than that left is started without the
/// hold and gets [`FIRST_LOOK`] to complete before its stdout is streamed.
pub fn run(sandbox: &SandboxRef, request: &ExecRequest) -> Result<ExecResult> {
    let mut deadline = request
        .timeout_ms
        .map(|ms| kit::monotonic_ns() + ms * 1_000_000);
    let left =
        |d: Option<u64>| d.map(|d| Duration::from_nanos(d.saturating_sub(kit::monotonic_ns())));
    let hold = exec_hold_secs()?;
    let optimistic = match left(deadline) {
        Some(t) if t < Duration::from_secs(hold) => 0,
        _ => hold,
    };
    let command = prepare(sandbox, request)?;
    let url = kit::with_query(
        &devboxes(&[&sandbox.id, "execute"])?,
        &[("last_n", VIEW_LINES)],
    );
    let started = send_read(
        request_post(url)
            .first_byte_timeout(Duration::from_secs(optimistic + 30))
            .json(&json!({
                "command": command,
                "command_id": crate::api::uuid7(),
                "optimistic_timeout": optimistic,
            })),
        None,
        &[],
    )?;
    let eid = execution_id(&started)?;
    let mut pending = None;
    let quick = if parse_view(&started).completed {
        Some(started)
    } else {
        let wait_url = devboxes(&[&sandbox.id, "executions", &eid, "wait_for_status"])?;
        let until_done =
            json!({ "statuses": ["completed"], "timeout_seconds": COMPLETION_WAIT.as_secs() });
        // Sent now, answered when the command ends: read alongside the stdout stream.
        let wait = crate::api::request(Method::Post, wait_url)
            .json(&until_done)
            .header("x-request-id", new_request_id())
            .first_byte_timeout(COMPLETION_WAIT + Duration::from_secs(10))
            .start()?;
        let first_look = left(deadline).map_or(FIRST_LOOK, |t| FIRST_LOOK.min(t));
        if wait.ready_within(first_look) {
            completed_view(wait.wait())
        } else {
            pending = Some(wait);
            None
        }
    }
    .filter(|body| bool_field(body, "stdout_truncated") != Some(true));
    let mut out = ExecOutput::new();
    let mut timed_out = false;
    let mut offset = 0;
    let done = match quick {
        Some(body) => {
            out.push(OutputStream::Stdout, &parse_view(&body).stdout);
            body
        }
        None => loop {
            let end = follow(
                sandbox,
                &eid,
                "stream_stdout_updates",
                &mut offset,
                deadline,
                None,
                &mut |b| out.push(OutputStream::Stdout, b),
            )?;
            if let StreamEnd::Deadline = end {
                kill(sandbox, &eid)?;
                timed_out = true;
                // Read what it wrote up to the kill.
                deadline = None;
                continue;
            }
            // The completion wait sent alongside, if it saw the end; else (a long command, a
            // server-side stream limit) the view, asking again until completed.
            let body = match pending.take().and_then(|p| completed_view(p.wait())) {
                Some(body) => body,
                None => full_view(sandbox, &eid)?,
            };
            if parse_view(&body).completed {
                break body;
            }
        },
    };
    let v = parse_view(&done);
    if bool_field(&done, "stderr_truncated") == Some(true) {
        let mut e = 0;
        follow(
            sandbox,
            &eid,
            "stream_stderr_updates",
            &mut e,
            None,
            None,
            &mut |b| out.push(OutputStream::Stderr, b),
        )?;
    } else {
        out.push(OutputStream::Stderr, &v.stderr);
    }
    if timed_out {
        return Ok(out.finish(TIMEOUT_EXIT, true));
    }
    Ok(out.finish(v.exit_status.unwrap_or(-1), false))
}

/// The body of a completion wait's answer, when it says the execution completed.
fn completed_view(answer: Result<kit::http::Response>) -> Option<Vec<u8>> {
    let resp = answer.ok().filter(|r| r.status() == 200)?;
    resp.bytes().ok().filter(|body| parse_view(body).completed)
}

/// The execution view with every line of output (raw JSON).
fn full_view(sandbox: &SandboxRef, eid: &str) -> Result<Vec<u8>> {
    let url = kit::with_query(
        &devboxes(&[&sandbox.id, "executions", eid])?,
        &[("last_n", "1000000")],
    );
    send_read(request(Method::Get, url), None, &[])
}

pub fn start_process(sandbox: &SandboxRef, request: &ExecRequest) -> Result<ProcessInfo> {
    let (eid, command) = start(sandbox, request)?;
    let mut token = Token::of(sandbox);
    token.remember(&eid, &command);
    Ok(ProcessInfo {
        pid: eid,
        command,
        running: true,
        exit_code: None,
    })
}

pub fn process_status(
    sandbox: &SandboxRef,
    pid: &str,
    command: Option<&str>,
) -> Result<ProcessInfo> {
    let v = view(sandbox, pid)?;
    let command = command
        .map(str::to_string)
        .or_else(|| {
            Token::of(sandbox)
                .processes
                .iter()
                .find(|(p, _)| p == pid)
                .map(|(_, c)| c.clone())
        })
        .unwrap_or_default();
    Ok(ProcessInfo {
        pid: pid.to_string(),
        command,
        running: !v.completed,
        exit_code: if v.completed { v.exit_status } else { None },
    })
}

/// The background executions this sandbox's token remembers.
pub fn list_processes(sandbox: &SandboxRef) -> Result<Vec<ProcessInfo>> {
    let token = Token::of(sandbox);
    let mut out = Vec::new();
    for (pid, command) in &token.processes {
        match process_status(sandbox, pid, Some(command)) {
            Ok(p) => out.push(p),
            Err(kit::Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Output since the offsets: what the streams hold now (listening briefly while it runs).
pub fn process_output(
    sandbox: &SandboxRef,
    pid: &str,
    stdout_offset: u64,
    stderr_offset: u64,
) -> Result<OutputChunk> {
    // The status first: if it had completed, the streams below hold everything.
    let v = view(sandbox, pid)?;
    let listen = (!v.completed).then_some(POLL_LISTEN);
    let (mut o, mut e) = (stdout_offset, stderr_offset);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    follow(
        sandbox,
        pid,
        "stream_stdout_updates",
        &mut o,
        None,
        listen,
        &mut |b| stdout.extend_from_slice(b),
    )?;
    follow(
        sandbox,
        pid,
        "stream_stderr_updates",
        &mut e,
        None,
        listen,
        &mut |b| stderr.extend_from_slice(b),
    )?;
    Ok(OutputChunk {
        stdout,
        stderr,
        stdout_next: o,
        stderr_next: e,
        running: !v.completed,
        exit_code: if v.completed { v.exit_status } else { None },
    })
}

pub fn kill(sandbox: &SandboxRef, pid: &str) -> Result<()> {
    send(
        request_post(devboxes(&[&sandbox.id, "executions", pid, "kill"])?)
            .json(&json!({ "kill_process_group": true })),
        None,
        &[],
    )
    .map(drop)
}

/// Runs a short helper script to completion: (exit status, stdout, stderr).
pub fn helper(sandbox: &SandboxRef, script: &str) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let resp = send_read(
        request_post(kit::with_query(
            &devboxes(&[&sandbox.id, "execute"])?,
            &[("last_n", "100000")],
        ))
        .json(
            &json!({ "command": script, "command_id": crate::api::uuid7(), "optimistic_timeout": 25 }),
        ),
        None,
        &[],
    )?;
    let mut v = parse_view(&resp);
    if !v.completed {
        let eid = execution_id(&resp)?;
        for _ in 0..120 {
            let body = send_read(
                request_post(devboxes(&[
                    &sandbox.id,
                    "executions",
                    &eid,
                    "wait_for_status",
                ])?)
                .first_byte_timeout(Duration::from_secs(40))
                .json(&json!({ "statuses": ["completed"], "timeout_seconds": 25 })),
                None,
                &[408],
            )?;
            v = parse_view(&body);
            if v.completed {
                break;
            }
        }
    }
    Ok((v.exit_status.unwrap_or(-1), v.stdout, v.stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_set_cwd_env_and_stdin() {
        let mut r = ExecRequest {
            command: Command::Argv(vec!["printf".into(), "%s".into(), "a b".into()]),
            cwd: Some("sub".into()),
            env: vec![("K".into(), "v w".into())],
            timeout_ms: None,
            stdin: None,
        };
        assert_eq!(
            script(Some("/home/user"), &r, None),
            "cd /home/user/sub || exit 1\nexport K='v w'\nexec 0</dev/null\nprintf %s 'a b'\n"
        );
        assert_eq!(
            script(None, &r, None),
            "cd sub || exit 1\nexport K='v w'\nexec 0</dev/null\nprintf %s 'a b'\n"
        );
        r.cwd = None;
        r.env.clear();
        assert_eq!(
            script(Some("/w"), &r, Some("/tmp/in")),
            "cd /w || exit 1\nexec 0</tmp/in && rm -f /tmp/in\nprintf %s 'a b'\n"
        );
        assert_eq!(
            script(None, &r, None),
            "exec 0</dev/null\nprintf %s 'a b'\n"
        );
        assert_eq!(absolute("/w/", "./x"), "/w/x");
    }
}
