//! Commands through `process.Process`: foreground exec on the `Start` stream, and background
//! processes whose output envd does not keep (it only streams what comes next), so they run
//! under a small shell wrapper that writes stdout, stderr and the exit code to files in
//! `/tmp/.sandbox-host/`, read back by offset over `/files`.

use std::collections::BTreeMap;

use kit::{Command, ExecOutput, ExecRequest, ExecResult, ProcessInfo, Result};
use serde_json::{json, Value};

use crate::config;
use crate::envd::Envd;

/// Exit code reported for a command killed at its timeout (as coreutils `timeout` does).
pub const TIMEOUT_EXIT_CODE: i32 = 124;
/// Where background processes keep their output.
pub const STATE_DIR: &str = "/tmp/.sandbox-host";
/// Tag prefix marking background processes this plugin started.
pub const TAG_PREFIX: &str = "sbh-";
/// Largest stdin chunk per `SendInput`.
const STDIN_CHUNK: usize = 1 << 20;

/// The `ProcessConfig` for a request: argv runs directly, a shell string under `bash -l -c`
/// as the SDK does. Relative cwds are under the home.
fn process_config(request: &ExecRequest, script: Option<String>) -> Result<Value> {
    let (cmd, args): (String, Vec<String>) = match (script, &request.command) {
        (Some(s), _) => ("/bin/bash".into(), vec!["-l".into(), "-c".into(), s]),
        (None, Command::Shell(s)) => (
            "/bin/bash".into(),
            vec!["-l".into(), "-c".into(), s.clone()],
        ),
        (None, Command::Argv(argv)) => {
            let (first, rest) = argv
                .split_first()
                .ok_or_else(|| kit::invalid_argument("argv must not be empty"))?;
            if first.is_empty() {
                return Err(kit::invalid_argument("argv[0] must not be empty"));
            }
            (first.clone(), rest.to_vec())
        }
    };
    let envs: BTreeMap<&str, &str> = request
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut process = json!({ "cmd": cmd, "args": args, "envs": envs });
    process["cwd"] = json!(match &request.cwd {
        Some(c) => config::absolute(c)?,
        None => config::home(),
    });
    Ok(process)
}

/// Reads events until `start` and returns its pid.
fn wait_start(stream: &mut kit::connect::Stream) -> Result<u32> {
    while let Some(msg) = stream.next_message()? {
        if let Some(pid) = msg.pointer("/event/start/pid") {
            return pid
                .as_u64()
                .map(|p| p as u32)
                .ok_or_else(|| kit::provider(0, "start event without pid"));
        }
    }
    Err(kit::unavailable(
        "the process stream ended before its start event",
    ))
}

/// Runs a command to its end, emitting output as it arrives.
pub fn exec(envd: &Envd, request: &ExecRequest) -> Result<ExecResult> {
    let process = process_config(request, None)?;
    let with_stdin = request.stdin.is_some();
    let mut stream = envd.stream(
        "Start",
        &json!({ "process": process, "stdin": with_stdin }),
        request.timeout_ms,
    )?;
    let mut output = ExecOutput::new();
    if let Some(input) = &request.stdin {
        let pid = wait_start(&mut stream)?;
        let selector = json!({ "pid": pid });
        let delivered = input.chunks(STDIN_CHUNK).try_for_each(|chunk| {
            envd.call(
                "process.Process",
                "SendInput",
                &json!({ "process": selector, "input": { "stdin": kit::b64_encode(chunk) } }),
            )
            .map(drop)
        });
        let closed = delivered.and_then(|()| {
            envd.call(
                "process.Process",
                "CloseStdin",
                &json!({ "process": selector }),
            )
            .map(drop)
        });
        // A command may end without reading its stdin (envd then refuses the input: broken
        // pipe, or the process is gone): its end event below is the result, as envd says.
        match closed {
            Err(e) if kit::input_refused(&e) => {
                kit::debug!("e2b: pid {pid} took no more stdin ({e:?}); reading its end")
            }
            other => other?,
        }
    }
    loop {
        let msg = match stream.next_message() {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(kit::unavailable(
                    "the process stream ended without an end event",
                ))
            }
            // envd ends the stream with deadline_exceeded when the command's timeout killed it.
            Err(kit::Error::Timeout(_)) if request.timeout_ms.is_some() => {
                return Ok(output.finish(TIMEOUT_EXIT_CODE, true))
            }
            Err(e) => return Err(e),
        };
        let Some(event) = msg.get("event") else {
            continue;
        };
        if let Some(data) = event.get("data") {
            if let Some(b) = data.get("stdout").and_then(Value::as_str) {
                output.stdout(&kit::b64_decode(b)?);
            }
            if let Some(b) = data.get("stderr").and_then(Value::as_str) {
                output.stderr(&kit::b64_decode(b)?);
            }
            if let Some(b) = data.get("pty").and_then(Value::as_str) {
                output.stdout(&kit::b64_decode(b)?);
            }
        } else if let Some(end) = event.get("end") {
            let code = end.get("exitCode").and_then(Value::as_i64).unwrap_or(0) as i32;
            // Drain to the end-of-stream trailer (an error there still counts).
            while stream.next_message()?.is_some() {}
            return Ok(output.finish(code, false));
        }
    }
}

/// The wrapper around a background command: its output and exit code go to files named by
/// `key`; a TERM is passed on to the command so its exit code is still recorded.
fn wrapper(key: &str, command: &Command, stdin: bool) -> String {
    let inner = match command {
        Command::Shell(s) => s.clone(),
        Command::Argv(argv) => format!("exec {}", kit::quote_argv(argv)),
    };
    let input = if stdin {
        format!("\"$d/{key}.in\"")
    } else {
        "/dev/null".into()
    };
    format!(
        "d={STATE_DIR}; mkdir -p \"$d\"; (\n{inner}\n) >\"$d/{key}.out\" 2>\"$d/{key}.err\" <{input} & c=$!; \
         trap 'kill -TERM $c 2>/dev/null; t=1' TERM; wait $c; r=$?; \
         if [ -n \"$t\" ]; then wait $c; r=$?; fi; echo $r >\"$d/{key}.exit\""
    )
}

fn random_key() -> String {
    format!("{TAG_PREFIX}{}", kit::random_hex(8))
}

/// Starts a background process; its handle is the tag `sbh-<hex>`.
pub fn start(envd: &Envd, request: &ExecRequest) -> Result<ProcessInfo> {
    let key = random_key();
    if let Some(input) = &request.stdin {
        envd.write(&format!("{STATE_DIR}/{key}.in"), input.clone())?;
    }
    let script = wrapper(&key, &request.command, request.stdin.is_some());
    let process = process_config(request, Some(script))?;
    let mut stream = envd.stream(
        "Start",
        &json!({ "process": process, "stdin": false, "tag": key }),
        request.timeout_ms,
    )?;
    wait_start(&mut stream)?;
    // Leaving the stream does not stop the process.
    drop(stream);
    Ok(ProcessInfo {
        pid: key,
        command: kit::command_line(&request.command),
        running: true,
        exit_code: None,
    })
}

/// Running processes as envd lists them: `(pid, tag, command)`.
pub fn running(envd: &Envd) -> Result<Vec<(u32, Option<String>, String)>> {
    let list = envd.call("process.Process", "List", &json!({}))?;
    let procs = list
        .get("processes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(procs
        .iter()
        .map(|p| {
            let pid = p.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
            let tag = p.get("tag").and_then(Value::as_str).map(str::to_string);
            let cfg = p.get("config").cloned().unwrap_or(Value::Null);
            let mut words: Vec<String> = vec![cfg
                .get("cmd")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()];
            words.extend(
                cfg.get("args")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string),
            );
            (pid, tag, words.join(" "))
        })
        .collect())
}

/// The handle of a listed process: our tag, else its pid.
pub fn handle_of(pid: u32, tag: &Option<String>) -> String {
    match tag {
        Some(t) if t.starts_with(TAG_PREFIX) => t.clone(),
        _ => pid.to_string(),
    }
}

/// envd's pid of a running process named by `handle`, `None` once it ended.
pub fn pid_of(envd: &Envd, handle: &str) -> Result<Option<u32>> {
    let listed = running(envd)?;
    Ok(listed
        .iter()
        .find(|(pid, tag, _)| handle_of(*pid, tag) == handle)
        .map(|(pid, _, _)| *pid))
}

/// A file of a background process, `None` when missing.
pub fn state_file(envd: &Envd, handle: &str, ext: &str) -> Result<Option<Vec<u8>>> {
    match envd.read(&format!("{STATE_DIR}/{handle}.{ext}")) {
        Ok(b) => Ok(Some(b)),
        Err(kit::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The exit code a finished background process recorded.
pub fn exit_code(envd: &Envd, handle: &str) -> Result<Option<i32>> {
    Ok(state_file(envd, handle, "exit")?
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
}

/// Status of a process: running per envd's list, else finished with its recorded exit code.
pub fn status(envd: &Envd, handle: &str) -> Result<ProcessInfo> {
    if pid_of(envd, handle)?.is_some() {
        return Ok(ProcessInfo {
            pid: handle.into(),
            command: String::new(),
            running: true,
            exit_code: None,
        });
    }
    if !handle.starts_with(TAG_PREFIX) {
        return Err(kit::not_found(format!("process {handle} not found")));
    }
    let code = exit_code(envd, handle)?;
    if code.is_none() && state_file(envd, handle, "out")?.is_none() {
        return Err(kit::not_found(format!("process {handle} not found")));
    }
    Ok(ProcessInfo {
        pid: handle.into(),
        command: String::new(),
        running: false,
        exit_code: code,
    })
}
