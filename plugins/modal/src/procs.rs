//! Background processes: router execs started without waiting for them. The router keeps an
//! exec's output and exit status for the task's lifetime, by exec id (the pid here), but has
//! no call that lists execs or signals one. So each background command runs under a small
//! shell that records the command line in [`RECORDS`]/<exec id> (list-processes reads those),
//! starts the command as its child and waits for it, and meanwhile reads a FIFO beside the
//! record: signal-process writes a signal number there and the shell `kill`s its child with
//! it. Files, unlike pids, mean the same to every exec of a sandbox.

use super::*;
use kit::grpc::Next;
use kit::OutputChunk;
use tr::task_exec_poll_response::ExitStatus;

/// Where each background command records its command line (and keeps its signal FIFO).
const RECORDS: &str = "/tmp/.sandbox-host-procs";
/// How long process-output waits for more output of a running process.
const OUTPUT_WAIT: Duration = Duration::from_millis(50);

/// Checks that `pid` is one of ours (an exec id: hex digits and dashes), so it can name a
/// record file.
fn exec_of(pid: &str) -> Result<&str> {
    if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(kit::not_found(format!("no process {pid:?}")));
    }
    Ok(pid)
}

pub(crate) fn start(sandbox: &SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
    let token = token_for(sandbox)?;
    let cwd = match &request.cwd {
        Some(c) => Some(abs_path(&token, c)?),
        None => None,
    };
    let line = kit::command_line(&request.command);
    let stdin = request.stdin.filter(|s| !s.is_empty());
    let id = exec_id();
    let mut argv = vec![
        "sh".into(),
        "-c".into(),
        wrapper(&request.command, stdin.is_some())?,
        "sh".into(),
        format!("{RECORDS}/{id}"),
        line.clone(),
    ];
    if let Command::Argv(a) = &request.command {
        argv.extend(a.iter().cloned());
    }
    let mut run = Running::start_as(
        id.clone(),
        &sandbox.id,
        token,
        argv,
        cwd,
        &request.env,
        request.timeout_ms,
    )?;
    if let Some(data) = stdin {
        run.stdin(&data, None)?;
    }
    Ok(ProcessInfo {
        pid: id,
        command: line,
        running: true,
        exit_code: None,
    })
}

/// The shell a background command runs under: $1 is its record file, $2 the command line;
/// an argv follows. The command is its child (so a signal reaches the command itself: a
/// shell string that `exec`s, or an argv, is that child), with the exec's stdin (or
/// /dev/null); the shell waits for it and exits with its status. Beside it, a reader of the
/// record's FIFO turns a signal number written there into a `kill`.
fn wrapper(command: &Command, with_stdin: bool) -> Result<String> {
    let run = match command {
        Command::Argv(a) if a.is_empty() => return Err(kit::invalid_argument("empty argv")),
        Command::Argv(_) => "exec \"$@\"",
        Command::Shell(_) => "eval \"$c\"",
    };
    let input = if with_stdin { "<&0" } else { "</dev/null" };
    Ok(format!(
        "r=$1; c=$2; shift 2; \
         {{ mkdir -p {RECORDS} && printf '%s' \"$c\" > \"$r\" && mkfifo \"$r.sig\"; }} 2>/dev/null; \
         exec 3{input}; \
         ( exec <&3 3<&-; {run} ) & p=$!; exec 3<&-; \
         ( read s < \"$r.sig\" && kill -\"$s\" \"$p\" ) </dev/null >/dev/null 2>&1 & w=$!; \
         wait \"$p\"; rc=$?; kill \"$w\" 2>/dev/null; rm -f \"$r.sig\"; exit $rc"
    ))
}

/// The exec's exit status now (`None` while it runs).
fn poll(sandbox: &SandboxRef, token: &mut Token, exec: &str) -> Result<Option<i32>> {
    let req = tr::TaskExecPollRequest {
        task_id: token.task.clone(),
        exec_id: exec.to_string(),
    };
    let resp = with_router(&sandbox.id, token, |r| {
        r.unary::<_, tr::TaskExecPollResponse>("TaskExecPoll", &req, Duration::from_secs(30))
    })
    .map_err(|e| match e {
        kit::Error::NotFound(_) => kit::not_found(format!("no process {exec}")),
        e => e,
    })?;
    Ok(resp.exit_status.map(|s| match s {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    }))
}

pub(crate) fn status(sandbox: &SandboxRef, pid: &str) -> Result<ProcessInfo> {
    let exec = exec_of(pid)?;
    let mut token = token_for(sandbox)?;
    let exit = poll(sandbox, &mut token, exec)?;
    let command = records(sandbox, Some(exec))?
        .pop()
        .map(|(_, line)| line)
        .unwrap_or_default();
    Ok(ProcessInfo {
        pid: pid.to_string(),
        command,
        running: exit.is_none(),
        exit_code: exit,
    })
}

pub(crate) fn list(sandbox: &SandboxRef) -> Result<Vec<ProcessInfo>> {
    let mut token = token_for(sandbox)?;
    let mut out = Vec::new();
    for (exec, command) in records(sandbox, None)? {
        // A record the router does not know (another task's) is not a process of this one.
        match poll(sandbox, &mut token, &exec) {
            Ok(exit) => out.push(ProcessInfo {
                pid: exec,
                command,
                running: exit.is_none(),
                exit_code: exit,
            }),
            Err(kit::Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The records (exec id, command line): all, or just `only`'s.
fn records(sandbox: &SandboxRef, only: Option<&str>) -> Result<Vec<(String, String)>> {
    let pattern = only.unwrap_or("*");
    let script = format!(
        "cd {RECORDS} 2>/dev/null || exit 0; for f in {pattern}; do \
         [ -f \"$f\" ] && printf '%s\\0' \"$f\" && cat -- \"$f\" && printf '\\0'; done; exit 0"
    );
    let (code, out, err) = helper(sandbox, &script)?;
    if code != 0 {
        return Err(kit::provider(
            0,
            format!("reading process records: {}", String::from_utf8_lossy(&err)),
        ));
    }
    Ok(parse_records(&out))
}

fn parse_records(out: &[u8]) -> Vec<(String, String)> {
    let fields: Vec<&[u8]> = out.split(|b| *b == 0).collect();
    fields
        .chunks_exact(2)
        .map(|pair| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(pair[0]), text(pair[1]))
        })
        .collect()
}

/// Runs a short shell script to its end: (exit code, stdout, stderr).
fn helper(sandbox: &SandboxRef, script: &str) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let run = Running::start(
        &sandbox.id,
        token_for(sandbox)?,
        vec![
            "sh".into(),
            "-c".into(),
            format!("exec </dev/null; {script}"),
        ],
        None,
        &vec![],
        Some(30_000),
    )?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run.finish(
        None,
        Reads::Both,
        |b| out.extend_from_slice(&b),
        |b| err.extend_from_slice(&b),
    )?;
    Ok((code, out, err))
}

pub(crate) fn output(
    sandbox: &SandboxRef,
    pid: &str,
    stdout_offset: u64,
    stderr_offset: u64,
) -> Result<OutputChunk> {
    let exec = exec_of(pid)?;
    let mut token = token_for(sandbox)?;
    // The status first: output read after an exit is complete.
    let exit = poll(sandbox, &mut token, exec)?;
    let r = token.router();
    let open = |fd: Fd, offset: u64| {
        let req = stdio_read(&token.task, exec, fd, offset);
        r.start("TaskExecStdioRead", &req, STDIO_DEADLINE)
    };
    let (stdout, stderr) = (
        open(Fd::Stdout, stdout_offset),
        open(Fd::Stderr, stderr_offset),
    );
    let deadline = kit::monotonic_ns() + OUTPUT_WAIT.as_nanos() as u64;
    let read = |call: Option<PendingCall>| -> Result<Vec<u8>> {
        let Some(call) = call else {
            return Err(kit::unavailable("could not open an output stream"));
        };
        let left = || Duration::from_nanos(deadline.saturating_sub(kit::monotonic_ns()));
        // A router may hold a stream's head until there is output: none yet, then.
        if exit.is_none() && !call.ready_within(left()) {
            return Ok(Vec::new());
        }
        let mut stream = call.open()?;
        let mut data = Vec::new();
        loop {
            let next = if exit.is_some() {
                match stream.next_message()? {
                    Some(m) => Next::Message(m),
                    None => Next::End,
                }
            } else {
                stream.next_within(left())?
            };
            match next {
                Next::Message(m) => data.extend_from_slice(&stdio_data(m)?),
                Next::End | Next::Later => return Ok(data),
            }
        }
    };
    let out = read(stdout)?;
    let err = read(stderr)?;
    Ok(OutputChunk {
        stdout_next: stdout_offset + out.len() as u64,
        stderr_next: stderr_offset + err.len() as u64,
        stdout: out,
        stderr: err,
        running: exit.is_none(),
        exit_code: exit,
    })
}

pub(crate) fn signal(sandbox: &SandboxRef, pid: &str, signal: i32) -> Result<()> {
    let exec = exec_of(pid)?;
    let mut token = token_for(sandbox)?;
    if poll(sandbox, &mut token, exec)?.is_some() {
        return Ok(());
    }
    if !(1..=64).contains(&signal) {
        return Err(kit::invalid_argument(format!("signal {signal}")));
    }
    // No FIFO: the command has ended (its shell removes it) or never had one.
    let script = format!(
        "f={RECORDS}/{exec}.sig; [ -p \"$f\" ] || exit 44; printf '%s\\n' {signal} > \"$f\""
    );
    match helper(sandbox, &script)? {
        (0, _, _) => Ok(()),
        (44, _, _) if poll(sandbox, &mut token, exec)?.is_some() => Ok(()),
        (44, _, _) => Err(kit::provider(
            0,
            format!("process {pid} cannot be signalled (it was not started by this plugin)"),
        )),
        (code, _, err) => Err(kit::provider(
            0,
            format!(
                "signal {signal} to {pid}: exit {code}: {}",
                String::from_utf8_lossy(&err).trim()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse() {
        let out = b"ab-1\x00sleep 60\x00cd-2\x00printf 'a\nb'\x00";
        assert_eq!(
            parse_records(out),
            [
                ("ab-1".into(), "sleep 60".into()),
                ("cd-2".into(), "printf 'a\nb'".into()),
            ]
        );
        assert!(parse_records(b"").is_empty());
    }

    #[test]
    fn only_exec_ids_name_records() {
        assert!(exec_of("0a1b-2c").is_ok());
        for bad in ["", "../x", "a b", "*"] {
            assert!(exec_of(bad).is_err(), "{bad:?}");
        }
    }
}
