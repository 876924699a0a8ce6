//! Commands in a sandbox: exec (streamed, or detached), ps, kill, and run (create, exec, destroy).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use sandbox_host::types::{Command, ExecRequest, ExecResult, OutputStream};
use sandbox_host::{OutputSink, Sandbox};

use super::args::{CreateArgs, Target};
use super::{lifecycle, output, parse_env, Ctx, Failure, Res, EXIT_HOST, EXIT_INTERRUPTED};

/// Exit code of a command that ran past its timeout (timeout(1)'s).
pub const EXIT_TIMED_OUT: i32 = 124;

pub struct ExecOpts {
    pub cwd: Option<String>,
    pub env: Vec<String>,
    pub timeout: Option<f64>,
    pub stdin: bool,
    pub command: Vec<String>,
}

/// One argument is a shell string; several are argv.
fn command_of(mut words: Vec<String>) -> Res<Command> {
    match words.len() {
        0 => Err(Failure::host("no command given (after `--`)")),
        1 => Ok(Command::Shell(words.remove(0))),
        _ => Ok(Command::Argv(words)),
    }
}

fn timeout_ms(secs: Option<f64>) -> Res<Option<u64>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(((s * 1000.0).ceil() as u64).max(1))),
        Some(s) => Err(Failure::host(format!(
            "invalid timeout {s}: expected a positive number of seconds"
        ))),
    }
}

async fn request(opts: ExecOpts) -> Res<ExecRequest> {
    let stdin = if opts.stdin {
        let mut buf = vec![];
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Failure::host(format!("reading stdin: {e}")))?;
        Some(buf)
    } else {
        None
    };
    Ok(ExecRequest {
        command: command_of(opts.command)?,
        cwd: opts.cwd,
        env: parse_env(&opts.env)?,
        timeout_ms: timeout_ms(opts.timeout)?,
        stdin,
    })
}

/// Where exec output goes: straight to our stdout/stderr, or NDJSON events on stdout.
fn emit(json: bool, stream: OutputStream, data: &[u8]) {
    if json {
        output::print_ndjson(&output::output_event(stream, data));
    } else {
        output::raw(stream, data);
    }
}

/// The exit code for a finished command: its own, 124 on timeout; one a shell cannot exit
/// with (negative, over 255) becomes 125.
fn exit_code_of(r: &ExecResult) -> i32 {
    if r.timed_out {
        EXIT_TIMED_OUT
    } else if (0..=255).contains(&r.exit_code) {
        r.exit_code
    } else {
        EXIT_HOST
    }
}

/// Runs a command, streaming its output as it arrives. Ctrl-C abandons the call (the provider
/// ends the command when the connection drops) and exits 130.
pub async fn stream_exec(ctx: &Ctx, sandbox: &Sandbox, req: ExecRequest) -> Res<i32> {
    let json = ctx.json;
    let seen = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let seen_in_sink = seen.clone();
    let sink: OutputSink = Box::new(move |stream, data: &[u8]| {
        if data.is_empty() {
            return;
        }
        seen_in_sink[matches!(stream, OutputStream::Stderr) as usize]
            .store(true, Ordering::Relaxed);
        emit(json, stream, data);
    });
    let result = tokio::select! {
        r = sandbox.exec(req, Some(sink)) => r?,
        _ = tokio::signal::ctrl_c() => return Ok(EXIT_INTERRUPTED),
    };
    // A plugin that does not stream still returns the tails.
    for (stream, tail, i) in [
        (OutputStream::Stdout, &result.stdout_tail, 0),
        (OutputStream::Stderr, &result.stderr_tail, 1),
    ] {
        if !seen[i].load(Ordering::Relaxed) && !tail.is_empty() {
            emit(json, stream, tail);
        }
    }
    if json {
        output::print_ndjson(&output::exit_event(&result));
    }
    Ok(exit_code_of(&result))
}

pub async fn exec(ctx: &Ctx, target: &Target, opts: ExecOpts, detach: bool) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    let req = request(opts).await?;
    if detach {
        let p = sandbox.start_process(req).await?;
        if ctx.json {
            output::print_json(&output::process(&p));
        } else {
            output::line(&p.pid);
        }
        return Ok(0);
    }
    stream_exec(ctx, &sandbox, req).await
}

pub async fn ps(ctx: &Ctx, target: &Target) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    let procs: Vec<Value> = sandbox
        .processes()
        .await?
        .iter()
        .map(output::process)
        .collect();
    if ctx.json {
        output::print_json(&Value::Array(procs));
    } else {
        output::out(&output::render_processes(&procs));
    }
    Ok(0)
}

/// Linux signal numbers by name (what sandboxes run on).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Res<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(Failure::host(format!(
                "invalid signal number {n}: expected 1 to 64"
            )))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, num)| *num)
        .ok_or_else(|| {
            Failure::host(format!(
                "unknown signal {s:?} (use a name such as TERM, KILL, INT, HUP, USR1, or a number)"
            ))
        })
}

pub async fn kill(ctx: &Ctx, target: &Target, pid: &str, signal: &str) -> Res<i32> {
    let signal = parse_signal(signal)?;
    let sandbox = ctx.sandbox(target)?;
    sandbox.signal_process(pid, signal).await?;
    if ctx.json {
        output::print_json(
            &serde_json::json!({ "id": sandbox.id(), "provider": sandbox.provider(), "pid": pid, "signal": signal }),
        );
    }
    Ok(0)
}

/// Create, exec, destroy — the destroy happens whatever the exec did, Ctrl-C included.
pub async fn run(
    ctx: &Ctx,
    create: &CreateArgs,
    exec_timeout: Option<f64>,
    command: Vec<String>,
) -> Res<i32> {
    // Validate everything before creating anything.
    let req = ExecRequest {
        command: command_of(command)?,
        cwd: None,
        env: vec![],
        timeout_ms: timeout_ms(exec_timeout)?,
        stdin: None,
    };
    lifecycle::spec_from(create)?;

    // From here on Ctrl-C is ours: a sandbox being created is still destroyed.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let creating = lifecycle::create_sandbox(ctx, create);
    tokio::pin!(creating);
    let mut stop = false;
    let sandbox = tokio::select! {
        s = &mut creating => s?,
        _ = &mut interrupted => {
            stop = true;
            creating.await?
        }
    };
    if ctx.json {
        output::print_ndjson(&output::created_event(sandbox.provider(), sandbox.id()));
    }
    tracing::info!(
        id = sandbox.id(),
        provider = sandbox.provider(),
        "sandbox created"
    );
    let outcome = if stop {
        Ok(EXIT_INTERRUPTED)
    } else {
        stream_exec(ctx, &sandbox, req).await
    };
    let destroyed = sandbox.destroy().await;
    match (outcome, destroyed) {
        (Ok(code), Ok(())) => Ok(code),
        (Ok(code), Err(e)) => {
            let f = Failure::from(e);
            output::print_error(
                &f.code,
                &format!("sandbox {} was not destroyed: {}", sandbox.id(), f.message),
                ctx.json,
            );
            Ok(if code == 0 { EXIT_HOST } else { code })
        }
        (Err(f), Ok(())) => Err(f),
        (Err(f), Err(e)) => {
            let d = Failure::from(e);
            output::print_error(
                &d.code,
                &format!("sandbox {} was not destroyed: {}", sandbox.id(), d.message),
                ctx.json,
            );
            Err(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("sigkill").unwrap(), 9);
        assert_eq!(parse_signal("USR1").unwrap(), 10);
        assert_eq!(parse_signal("2").unwrap(), 2);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn one_word_is_a_shell_string() {
        assert!(
            matches!(command_of(vec!["echo hi".into()]).unwrap(), Command::Shell(s) if s == "echo hi")
        );
        assert!(
            matches!(command_of(vec!["echo".into(), "hi".into()]).unwrap(), Command::Argv(v) if v.len() == 2)
        );
    }

    #[test]
    fn exit_codes() {
        let r = |exit_code, timed_out| ExecResult {
            exit_code,
            timed_out,
            stdout_tail: vec![],
            stderr_tail: vec![],
        };
        assert_eq!(exit_code_of(&r(3, false)), 3);
        assert_eq!(exit_code_of(&r(137, true)), 124);
        assert_eq!(exit_code_of(&r(-1, false)), 125);
    }
}
