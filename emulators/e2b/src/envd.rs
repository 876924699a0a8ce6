//! envd, the in-sandbox daemon: Connect-RPC `process.Process` and `filesystem.Filesystem`
//! (JSON codec), plain-HTTP `/files`, `/health`, `/envs`. Every call but `/health` needs the
//! sandbox's `X-Access-Token`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};

use crate::connect::{self, Code, RpcError};
use crate::paths::{home_view, to_local, to_remote};
use crate::state::{Emulator, Proc, ProcState, SandboxMeta};

/// Largest request body envd accepts here (file uploads).
const MAX_BODY: usize = 1 << 30;
/// Longest a stream waits for a process's output before it looks at keepalives again.
const OUTPUT_WAIT: Duration = Duration::from_secs(1);

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A plain-HTTP envd error: `{"code": <status>, "message"}`.
fn http_error(status: u16, message: impl Into<String>) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        s,
        Json(json!({ "code": status, "message": message.into() })),
    )
        .into_response()
}

/// Serves one envd request for sandbox `id`.
pub async fn handle(emu: Emulator, id: String, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/health" && method == Method::GET {
        return match emu.live(&id) {
            Some(m) if !m.paused => StatusCode::NO_CONTENT.into_response(),
            _ => http_error(502, format!("The sandbox {id} is not running")),
        };
    }
    let meta = match emu.live(&id) {
        Some(m) if !m.paused => m,
        Some(_) => return http_error(502, format!("The sandbox {id} is paused")),
        None => return http_error(502, format!("The sandbox {id} was not found")),
    };
    let token = req
        .headers()
        .get("x-access-token")
        .and_then(|v| v.to_str().ok());
    if token != Some(meta.access_token.as_str()) {
        return if path.starts_with("/process.") || path.starts_with("/filesystem.") {
            RpcError(
                Code::Unauthenticated,
                "invalid or missing X-Access-Token".into(),
            )
            .into_response()
        } else {
            http_error(401, "invalid or missing X-Access-Token")
        };
    }
    let (parts, body) = req.into_parts();
    if method == Method::POST && path == "/process.Process/StreamInput" {
        return stream_input(&emu, &meta, body).await;
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return http_error(400, format!("reading the body: {e}")),
    };
    let query = parts.uri.query().unwrap_or("").to_string();
    let h = &parts.headers;
    match (method, path.as_str()) {
        (Method::GET, "/files") => read_file(&emu, &meta, &query).await,
        (Method::POST, "/files") => write_files(&emu, &meta, &query, h, body).await,
        (Method::GET, "/envs") => Json(json!(meta.env_vars)).into_response(),
        (Method::POST, "/init") => StatusCode::NO_CONTENT.into_response(),
        (Method::POST, "/process.Process/Start") => start(&emu, &meta, h, &body).await,
        (Method::POST, "/process.Process/Connect") => attach(&emu, &meta, h, &body).await,
        (Method::POST, "/filesystem.Filesystem/WatchDir") => watch_dir(&emu, &meta, h, &body).await,
        (Method::POST, p)
            if p.starts_with("/process.Process/") || p.starts_with("/filesystem.Filesystem/") =>
        {
            let result = match connect::unary_request(&body) {
                Ok(msg) => unary(&emu, &meta, p, msg).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => connect::ok(v),
                Err(e) => e.into_response(),
            }
        }
        _ => http_error(404, format!("no envd route {path}")),
    }
}

async fn unary(
    emu: &Emulator,
    meta: &SandboxMeta,
    path: &str,
    msg: Value,
) -> Result<Value, RpcError> {
    match path.rsplit('/').next().unwrap_or("") {
        "List" if path.starts_with("/process.") => list_processes(emu, meta),
        "SendSignal" => send_signal(emu, meta, &msg),
        "SendInput" => send_input(emu, meta, &msg).await,
        "CloseStdin" => close_stdin(emu, meta, &msg).await,
        "Stat" => stat(emu, meta, &msg).await,
        "ListDir" => list_dir(emu, meta, &msg).await,
        "MakeDir" => make_dir(emu, meta, &msg).await,
        "Remove" => remove(emu, meta, &msg).await,
        "Move" => move_entry(emu, meta, &msg).await,
        "CreateWatcher" => create_watcher(emu, meta, &msg).await,
        "GetWatcherEvents" => watcher_events(emu, meta, &msg).await,
        "RemoveWatcher" => remove_watcher(emu, meta, &msg),
        other => Err(RpcError(
            Code::Unimplemented,
            format!("{other} is not implemented by the emulator"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// process.Process

fn procs_of<'a>(
    emu: &'a Emulator,
    meta: &SandboxMeta,
) -> std::sync::MutexGuard<'a, std::collections::HashMap<String, crate::state::Procs>> {
    let mut all = emu.inner.procs.lock().unwrap();
    all.entry(meta.id.clone()).or_default();
    all
}

/// The process a `ProcessSelector` (`{"pid"}` or `{"tag"}`) names.
fn find(emu: &Emulator, meta: &SandboxMeta, selector: &Value) -> Result<Arc<Proc>, RpcError> {
    let all = procs_of(emu, meta);
    let procs = &all[&meta.id];
    let found = if let Some(pid) = selector.get("pid").and_then(Value::as_u64) {
        procs.by_pid.get(&(pid as u32)).cloned()
    } else if let Some(tag) = selector.get("tag").and_then(Value::as_str) {
        procs
            .by_pid
            .values()
            .rev()
            .find(|p| p.tag.as_deref() == Some(tag))
            .cloned()
    } else {
        return Err(RpcError(
            Code::InvalidArgument,
            "process selector needs pid or tag".into(),
        ));
    };
    found.ok_or_else(|| RpcError(Code::NotFound, format!("process {selector} not found")))
}

/// Most processes remembered per sandbox; the oldest finished ones are forgotten first.
const KEEP_PROCS: usize = 256;

/// Bounds a sandbox's process table (every command adds one).
fn forget_finished(emu: &Emulator, meta: &SandboxMeta, procs: &mut crate::state::Procs) {
    if procs.by_pid.len() <= KEEP_PROCS {
        return;
    }
    let excess = procs.by_pid.len() - KEEP_PROCS;
    let old: Vec<u32> = procs
        .by_pid
        .values()
        .filter(|p| !running(emu, meta, p))
        .map(|p| p.pid)
        .take(excess)
        .collect();
    for pid in old {
        procs.by_pid.remove(&pid);
    }
}

/// Whether the process still runs (being spawned counts as running).
fn running(emu: &Emulator, meta: &SandboxMeta, p: &Proc) -> bool {
    let st = p.state.lock().unwrap();
    if st.failed.is_some() {
        return false;
    }
    match &st.local_pid {
        None => true,
        Some(lp) => emu
            .engine()
            .process(&meta.local_id, lp)
            .map(|i| i.running)
            .unwrap_or(false),
    }
}

/// The localbox request for a `Start` message's `process` config.
fn exec_request(
    config: &Value,
    timeout: Option<Duration>,
) -> Result<localbox::ExecRequest, RpcError> {
    let cmd = config
        .get("cmd")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    let cmd =
        cmd.ok_or_else(|| RpcError(Code::InvalidArgument, "process.cmd is required".into()))?;
    let mut argv = vec![cmd.to_string()];
    if let Some(args) = config.get("args").and_then(Value::as_array) {
        argv.extend(
            args.iter()
                .map(|a| a.as_str().unwrap_or_default().to_string()),
        );
    }
    let env: BTreeMap<String, String> = config
        .get("envs")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let cwd = config
        .get("cwd")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(to_local);
    Ok(localbox::ExecRequest {
        command: localbox::CommandSpec::Argv(argv),
        cwd,
        env,
        timeout,
        stdin: None,
    })
}

/// `Connect-Timeout-Ms`: envd kills the process when it runs out.
fn timeout_of(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers
        .get("connect-timeout-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn keepalive_of(headers: &HeaderMap) -> Option<Duration> {
    let s = headers
        .get("keepalive-ping-interval")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (s > 0).then(|| Duration::from_secs(s))
}

/// Spawns a registered process in localbox, with a stdin pipe for `SendInput` if asked.
async fn spawn(
    emu: &Emulator,
    meta: &SandboxMeta,
    p: &Proc,
    req: localbox::ExecRequest,
    with_stdin: bool,
) {
    let engine = emu.engine();
    let result = if with_stdin {
        engine
            .start_process_with_stdin(&meta.local_id, req)
            .await
            .map(|(info, pipe)| (info, Some(pipe)))
    } else {
        engine
            .start_process(&meta.local_id, req)
            .await
            .map(|info| (info, None))
    };
    match result {
        Ok((info, pipe)) => {
            *p.stdin.lock().await = pipe;
            let mut st = p.state.lock().unwrap();
            st.local_pid = Some(info.pid);
            st.started = Some(Instant::now());
        }
        Err(e) => p.state.lock().unwrap().failed = Some(e.message),
    }
    p.spawned.notify_waiters();
}

/// A stream response: headers now, envelopes as the channel yields them.
fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A stream that is only its end: an error before any message.
fn stream_error(e: RpcError) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(connect::end(Some(&e)));
    stream_response(rx)
}

async fn start(emu: &Emulator, meta: &SandboxMeta, headers: &HeaderMap, body: &[u8]) -> Response {
    let msg = match connect::stream_request(body) {
        Ok(m) => m,
        Err(e) => return stream_error(e),
    };
    let config = msg.get("process").cloned().unwrap_or(Value::Null);
    let timeout = timeout_of(headers);
    let req = match exec_request(&config, timeout) {
        Ok(r) => r,
        Err(e) => return stream_error(e),
    };
    let with_stdin = msg.get("stdin").and_then(Value::as_bool).unwrap_or(false);
    let tag = msg.get("tag").and_then(Value::as_str).map(str::to_string);
    let proc = {
        let mut all = procs_of(emu, meta);
        let procs = all.get_mut(&meta.id).unwrap();
        procs.next_pid += 1;
        let pid = 1000 + procs.next_pid;
        let p = Arc::new(Proc {
            pid,
            tag,
            config,
            state: Mutex::new(ProcState {
                local_pid: None,
                started: None,
                failed: None,
            }),
            spawned: Notify::new(),
            timeout,
            stdin: tokio::sync::Mutex::new(None),
        });
        procs.by_pid.insert(pid, p.clone());
        forget_finished(emu, meta, procs);
        p
    };
    spawn(emu, meta, &proc, req, with_stdin).await;
    let failed = proc.state.lock().unwrap().failed.clone();
    if let Some(e) = failed {
        return stream_error(RpcError(
            Code::Internal,
            format!("error starting process: {e}"),
        ));
    }
    pump(emu.clone(), meta.clone(), proc, None, keepalive_of(headers))
}

async fn attach(emu: &Emulator, meta: &SandboxMeta, headers: &HeaderMap, body: &[u8]) -> Response {
    let msg = match connect::stream_request(body) {
        Ok(m) => m,
        Err(e) => return stream_error(e),
    };
    let proc = match find(emu, meta, msg.get("process").unwrap_or(&Value::Null)) {
        Ok(p) => p,
        Err(e) => return stream_error(e),
    };
    if !running(emu, meta, &proc) {
        return stream_error(RpcError(
            Code::NotFound,
            format!("process with pid {} not found", proc.pid),
        ));
    }
    // Only output from now on, as envd does.
    let local = proc.state.lock().unwrap().local_pid.clone();
    let from = local
        .and_then(|lp| {
            emu.engine()
                .process_output(&meta.local_id, &lp, u64::MAX, u64::MAX)
                .ok()
        })
        .map(|o| (o.stdout_next, o.stderr_next));
    pump(emu.clone(), meta.clone(), proc, from, keepalive_of(headers))
}

fn event(e: Value) -> Bytes {
    connect::message(&json!({ "event": e }))
}

/// Streams a process's events: `start`, `data` as output appears, `end` (or a
/// `deadline_exceeded` error when its timeout killed it), then the end of the stream. The
/// process keeps running if the client goes away.
fn pump(
    emu: Emulator,
    meta: SandboxMeta,
    proc: Arc<Proc>,
    from: Option<(u64, u64)>,
    keepalive: Option<Duration>,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        if tx
            .send(event(json!({ "start": { "pid": proc.pid } })))
            .await
            .is_err()
        {
            return;
        }
        // Wait for the spawn (an `attach` may come while it is under way).
        let local_pid = loop {
            let notified = proc.spawned.notified();
            let (failed, local) = {
                let st = proc.state.lock().unwrap();
                (st.failed.clone(), st.local_pid.clone())
            };
            if let Some(e) = failed {
                let _ = tx
                    .send(connect::end(Some(&RpcError(Code::Internal, e))))
                    .await;
                return;
            }
            if let Some(lp) = local {
                break lp;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(keepalive.unwrap_or(Duration::from_secs(90))) => {
                    if tx.send(event(json!({ "keepalive": {} }))).await.is_err() { return; }
                }
                _ = tx.closed() => return,
            }
        };
        let (mut o, mut e) = from.unwrap_or((0, 0));
        let mut quiet_since = Instant::now();
        // Woken by new output or the exit; the wait is bounded so keepalives still go out.
        let max_wait = keepalive.unwrap_or(OUTPUT_WAIT).min(OUTPUT_WAIT);
        loop {
            let wait = emu
                .engine()
                .wait_process_output(&meta.local_id, &local_pid, o, e, max_wait);
            let out = tokio::select! {
                out = wait => out,
                _ = tx.closed() => return,
            };
            let out = match out {
                Ok(out) => out,
                Err(err) => {
                    let _ = tx
                        .send(connect::end(Some(&RpcError(
                            Code::Unavailable,
                            err.message,
                        ))))
                        .await;
                    return;
                }
            };
            let got = !out.stdout.is_empty() || !out.stderr.is_empty();
            for (name, data) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
                if !data.is_empty()
                    && tx
                        .send(event(json!({ "data": { name: b64(data) } })))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            (o, e) = (out.stdout_next, out.stderr_next);
            if !out.running && !got {
                let code = out.exit_code.unwrap_or(-1);
                let started = proc.state.lock().unwrap().started;
                let timed_out = code == localbox::TIMEOUT_EXIT_CODE
                    && proc
                        .timeout
                        .zip(started)
                        .is_some_and(|(t, s)| s.elapsed() + Duration::from_millis(50) >= t);
                let last = if timed_out {
                    connect::end(Some(&RpcError(
                        Code::DeadlineExceeded,
                        "context deadline exceeded".into(),
                    )))
                } else {
                    let mut end =
                        json!({ "exited": true, "status": format!("exit status {code}") });
                    if code != 0 {
                        end["exitCode"] = json!(code);
                    }
                    if tx.send(event(json!({ "end": end }))).await.is_err() {
                        return;
                    }
                    connect::end(None)
                };
                let _ = tx.send(last).await;
                return;
            }
            if got {
                quiet_since = Instant::now();
                continue;
            }
            if keepalive.is_some_and(|k| quiet_since.elapsed() >= k) {
                if tx.send(event(json!({ "keepalive": {} }))).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
            }
        }
    });
    stream_response(rx)
}

fn list_processes(emu: &Emulator, meta: &SandboxMeta) -> Result<Value, RpcError> {
    let procs: Vec<Arc<Proc>> = procs_of(emu, meta)[&meta.id]
        .by_pid
        .values()
        .cloned()
        .collect();
    let listed: Vec<Value> = procs
        .iter()
        .filter(|p| running(emu, meta, p))
        .map(|p| {
            let mut v = json!({ "config": p.config, "pid": p.pid });
            if let Some(t) = &p.tag {
                v["tag"] = json!(t);
            }
            v
        })
        .collect();
    Ok(json!({ "processes": listed }))
}

fn send_signal(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let p = find(emu, meta, msg.get("process").unwrap_or(&Value::Null))?;
    let signal = match msg.get("signal") {
        Some(Value::String(s)) if s == "SIGNAL_SIGKILL" => 9,
        Some(Value::String(s)) if s == "SIGNAL_SIGTERM" => 15,
        Some(Value::Number(n)) if n.as_i64() == Some(9) || n.as_i64() == Some(15) => {
            n.as_i64().unwrap() as i32
        }
        other => {
            return Err(RpcError(
                Code::InvalidArgument,
                format!("unsupported signal {other:?}"),
            ))
        }
    };
    if !running(emu, meta, &p) {
        return Err(RpcError(
            Code::NotFound,
            format!("process with pid {} not found", p.pid),
        ));
    }
    let local = {
        let mut st = p.state.lock().unwrap();
        if st.local_pid.is_none() {
            // Killed while its spawn was under way.
            st.failed = Some(format!("killed by signal {signal}"));
        }
        st.local_pid.clone()
    };
    match local {
        Some(lp) => emu.engine().signal_process(&meta.local_id, &lp, signal)?,
        None => p.spawned.notify_waiters(),
    }
    Ok(json!({}))
}

async fn send_input(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let p = find(emu, meta, msg.get("process").unwrap_or(&Value::Null))?;
    write_stdin(&p, msg.get("input").unwrap_or(&Value::Null)).await?;
    Ok(json!({}))
}

/// Writes a `ProcessInput` (`{"stdin": <base64>}`, or `pty`) to the process's stdin.
async fn write_stdin(p: &Proc, input: &Value) -> Result<(), RpcError> {
    let data = input
        .get("stdin")
        .or_else(|| input.get("pty"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| RpcError(Code::InvalidArgument, format!("input is not base64: {e}")))?;
    let mut stdin = p.stdin.lock().await;
    let Some(pipe) = stdin.as_mut() else {
        return Err(RpcError(
            Code::FailedPrecondition,
            "the process was not started with stdin, or its stdin was closed".into(),
        ));
    };
    if pipe.write_all(&data).await.is_err() {
        return Err(RpcError(
            Code::FailedPrecondition,
            "the process no longer reads its stdin".into(),
        ));
    }
    Ok(())
}

/// `StreamInput` (client streaming): a `start` naming the process, then `data` events written
/// to its stdin as they arrive (`keepalive`s ignored); answered when the client ends the stream.
/// Stdin stays open afterwards, as after `SendInput`.
async fn stream_input(emu: &Emulator, meta: &SandboxMeta, mut body: axum::body::Body) -> Response {
    use http_body_util::BodyExt;
    let mut buf = Vec::new();
    let mut proc: Option<Arc<Proc>> = None;
    let result: Result<(), RpcError> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| RpcError(Code::Unavailable, format!("reading the stream: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            if buf.len() > MAX_BODY {
                return Err(RpcError(Code::InvalidArgument, "message too large".into()));
            }
            for msg in connect::take_envelopes(&mut buf)? {
                if let Some(start) = msg.get("start") {
                    proc = Some(find(
                        emu,
                        meta,
                        start.get("process").unwrap_or(&Value::Null),
                    )?);
                } else if let Some(data) = msg.get("data") {
                    let p = proc.as_ref().ok_or_else(|| {
                        RpcError(Code::InvalidArgument, "data before the start event".into())
                    })?;
                    write_stdin(p, data.get("input").unwrap_or(&Value::Null)).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    let (tx, rx) = mpsc::channel(2);
    if result.is_ok() {
        let _ = tx.try_send(connect::message(&json!({})));
    }
    let _ = tx.try_send(connect::end(result.err().as_ref()));
    stream_response(rx)
}

async fn close_stdin(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let p = find(emu, meta, msg.get("process").unwrap_or(&Value::Null))?;
    p.stdin.lock().await.take();
    Ok(json!({}))
}

// ---------------------------------------------------------------------------------------------
// filesystem.Filesystem

fn path_arg(msg: &Value, key: &str) -> Result<String, RpcError> {
    msg.get(key)
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .ok_or_else(|| RpcError(Code::InvalidArgument, format!("{key} is required")))
}

fn permissions(kind: localbox::FileKind, mode: u32) -> String {
    let mut s = String::from(match kind {
        localbox::FileKind::Directory => "d",
        localbox::FileKind::Symlink => "L",
        _ => "-",
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// An `EntryInfo`.
fn entry(st: &localbox::FileStat, home: bool) -> Value {
    let ty = match st.kind {
        localbox::FileKind::File => "FILE_TYPE_FILE",
        localbox::FileKind::Directory => "FILE_TYPE_DIRECTORY",
        localbox::FileKind::Symlink => "FILE_TYPE_SYMLINK",
        localbox::FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    };
    json!({
        "name": st.name,
        "type": ty,
        "path": to_remote(&st.path, home),
        "size": st.size.to_string(),
        "mode": st.mode,
        "permissions": permissions(st.kind, st.mode),
        "owner": "user",
        "group": "user",
        "modifiedTime": crate::time::rfc3339(st.modified_ms),
    })
}

async fn stat(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let path = path_arg(msg, "path")?;
    let st = emu.engine().stat(&meta.local_id, &to_local(&path)).await?;
    Ok(json!({ "entry": entry(&st, home_view(&path)) }))
}

async fn list_dir(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let path = path_arg(msg, "path")?;
    let depth = msg.get("depth").and_then(Value::as_u64).unwrap_or(1).max(1);
    let home = home_view(&path);
    let root = to_local(&path);
    let st = emu.engine().stat(&meta.local_id, &root).await?;
    if st.kind != localbox::FileKind::Directory {
        return Err(RpcError(
            Code::InvalidArgument,
            format!("path {path} is not a directory"),
        ));
    }
    let mut entries = Vec::new();
    let mut level = vec![root];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            for st in emu.engine().list_dir(&meta.local_id, &dir).await? {
                if st.kind == localbox::FileKind::Directory {
                    next.push(st.path.clone());
                }
                entries.push(entry(&st, home));
            }
        }
        level = next;
    }
    Ok(json!({ "entries": entries }))
}

async fn make_dir(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let path = path_arg(msg, "path")?;
    let local = to_local(&path);
    if emu.engine().stat(&meta.local_id, &local).await.is_ok() {
        return Err(RpcError(
            Code::AlreadyExists,
            format!("directory {path} already exists"),
        ));
    }
    emu.engine().mkdir(&meta.local_id, &local, true).await?;
    let st = emu.engine().stat(&meta.local_id, &local).await?;
    Ok(json!({ "entry": entry(&st, home_view(&path)) }))
}

async fn remove(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let path = path_arg(msg, "path")?;
    // envd removes like `rm -rf`.
    emu.engine()
        .remove(&meta.local_id, &to_local(&path), true)
        .await?;
    Ok(json!({}))
}

async fn move_entry(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let (from, to) = (path_arg(msg, "source")?, path_arg(msg, "destination")?);
    let local = to_local(&to);
    emu.engine()
        .rename(&meta.local_id, &to_local(&from), &local)
        .await?;
    let st = emu.engine().stat(&meta.local_id, &local).await?;
    Ok(json!({ "entry": entry(&st, home_view(&to)) }))
}

/// The watcher `watcherId` names, if it watches this sandbox.
fn watcher(
    emu: &Emulator,
    meta: &SandboxMeta,
    msg: &Value,
) -> Result<(String, Arc<tokio::sync::Mutex<crate::watch::Watcher>>), RpcError> {
    let id = path_arg(msg, "watcherId")?;
    let w = emu.inner.watchers.lock().unwrap().get(&id).cloned();
    match w {
        Some((sandbox, w)) if sandbox == meta.id => Ok((id, w)),
        _ => Err(RpcError(Code::NotFound, format!("watcher {id} not found"))),
    }
}

async fn new_watcher(
    emu: &Emulator,
    meta: &SandboxMeta,
    msg: &Value,
) -> Result<crate::watch::Watcher, RpcError> {
    let path = path_arg(msg, "path")?;
    let recursive = msg
        .get("recursive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (engine, local) = (emu.engine(), to_local(&path));
    Ok(crate::watch::Watcher::new(engine, &meta.local_id, &local, recursive).await?)
}

async fn create_watcher(
    emu: &Emulator,
    meta: &SandboxMeta,
    msg: &Value,
) -> Result<Value, RpcError> {
    let w = new_watcher(emu, meta, msg).await?;
    let id = uuid::Uuid::new_v4().to_string();
    emu.inner.watchers.lock().unwrap().insert(
        id.clone(),
        (meta.id.clone(), Arc::new(tokio::sync::Mutex::new(w))),
    );
    Ok(json!({ "watcherId": id }))
}

async fn watcher_events(
    emu: &Emulator,
    meta: &SandboxMeta,
    msg: &Value,
) -> Result<Value, RpcError> {
    let (_, w) = watcher(emu, meta, msg)?;
    let events = w.lock().await.events(emu.engine(), &meta.local_id).await?;
    Ok(json!({ "events": events }))
}

fn remove_watcher(emu: &Emulator, meta: &SandboxMeta, msg: &Value) -> Result<Value, RpcError> {
    let (id, _) = watcher(emu, meta, msg)?;
    emu.inner.watchers.lock().unwrap().remove(&id);
    Ok(json!({}))
}

/// How often a `WatchDir` stream looks for changes.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// `WatchDir`: a `start` event, then each change as a `filesystem` event as it is seen, and
/// keepalives, until the client goes away (the events are the response's own oneof, not
/// wrapped in an `event` field as `process.Process` streams are).
async fn watch_dir(
    emu: &Emulator,
    meta: &SandboxMeta,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let msg = match connect::stream_request(body) {
        Ok(m) => m,
        Err(e) => return stream_error(e),
    };
    let mut w = match new_watcher(emu, meta, &msg).await {
        Ok(w) => w,
        Err(e) => return stream_error(e),
    };
    let (emu, meta) = (emu.clone(), meta.clone());
    let keepalive = keepalive_of(headers).unwrap_or(Duration::from_secs(90));
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        if tx
            .send(connect::message(&json!({ "start": {} })))
            .await
            .is_err()
        {
            return;
        }
        let mut quiet_since = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = tx.closed() => return,
            }
            let events = match w.events(emu.engine(), &meta.local_id).await {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(connect::end(Some(&e.into()))).await;
                    return;
                }
            };
            for e in events {
                if tx
                    .send(connect::message(&json!({ "filesystem": e })))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet_since = Instant::now();
            }
            if quiet_since.elapsed() >= keepalive {
                if tx
                    .send(connect::message(&json!({ "keepalive": {} })))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet_since = Instant::now();
            }
        }
    });
    stream_response(rx)
}

// ---------------------------------------------------------------------------------------------
// /files

/// The value of `key` in a query string, percent-decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && s.is_char_boundary(i + 3) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn file_error(e: localbox::Error) -> Response {
    let status = match e.code {
        localbox::ErrorCode::NotFound => 404,
        localbox::ErrorCode::InvalidArgument | localbox::ErrorCode::Conflict => 400,
        localbox::ErrorCode::Forbidden | localbox::ErrorCode::Unauthorized => 401,
        _ => 500,
    };
    http_error(status, e.message)
}

async fn read_file(emu: &Emulator, meta: &SandboxMeta, query: &str) -> Response {
    let Some(path) = query_param(query, "path") else {
        return http_error(400, "path is required");
    };
    let local = to_local(&path);
    match emu.engine().stat(&meta.local_id, &local).await {
        Ok(st) if st.kind == localbox::FileKind::Directory => {
            return http_error(400, format!("path '{path}' is a directory"))
        }
        Err(e) => return file_error(e),
        Ok(_) => {}
    }
    match emu.engine().read_file(&meta.local_id, &local).await {
        Ok(data) => ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response(),
        Err(e) => file_error(e),
    }
}

async fn write_one(
    emu: &Emulator,
    meta: &SandboxMeta,
    path: &str,
    data: Vec<u8>,
) -> Result<Value, Response> {
    let local = to_local(path);
    if let Some((parent, _)) = local.rsplit_once('/') {
        if !parent.is_empty() && emu.engine().stat(&meta.local_id, parent).await.is_err() {
            emu.engine()
                .mkdir(&meta.local_id, parent, true)
                .await
                .map_err(file_error)?;
        }
    }
    emu.engine()
        .write_file(&meta.local_id, &local, data, None)
        .await
        .map_err(file_error)?;
    let name = local.rsplit('/').next().unwrap_or_default().to_string();
    Ok(json!({ "name": name, "type": "file", "path": to_remote(&local, home_view(path)) }))
}

async fn write_files(
    emu: &Emulator,
    meta: &SandboxMeta,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let path = query_param(query, "path").filter(|p| !p.is_empty());
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return http_error(406, "the emulator accepts identity-encoded uploads only");
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let files: Vec<(String, Vec<u8>)> = if ctype.starts_with("multipart/") {
        let Some(boundary) = crate::multipart::boundary(ctype) else {
            return http_error(400, "multipart body without a boundary");
        };
        let Some(parts) = crate::multipart::parse(&body, &boundary) else {
            return http_error(400, "malformed multipart body");
        };
        let single = parts.len() == 1;
        let mut files = Vec::new();
        for part in parts {
            let target = match (&path, part.filename) {
                (Some(p), _) if single => p.clone(),
                (_, Some(f)) if !f.is_empty() => f,
                (Some(p), None) => p.clone(),
                _ => return http_error(400, "a part without a filename and no path"),
            };
            files.push((target, part.data));
        }
        files
    } else {
        match path {
            Some(p) => vec![(p, body.to_vec())],
            None => return http_error(400, "path is required"),
        }
    };
    let mut written = Vec::new();
    for (p, data) in files {
        match write_one(emu, meta, &p, data).await {
            Ok(v) => written.push(v),
            Err(resp) => return resp,
        }
    }
    Json(Value::Array(written)).into_response()
}
