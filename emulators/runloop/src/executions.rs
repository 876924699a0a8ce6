//! Commands: `execute_sync`, `execute`, `execute_async`, executions (get, wait, kill, stdin),
//! their stdout/stderr SSE streams, and devbox logs.
//!
//! A command runs as `bash -c` in localbox (the devbox's home is its workdir). Its output is
//! kept whole per stream, so a stream can be replayed from any byte offset. `attach_stdin`
//! gives the command a stdin pipe that `send_std_in` writes and `{"signal":"EOF"}` closes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use localbox::{ExecEvent, ExecRequest, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::devboxes::{hold, touch};
use crate::state::{ApiError, Execution, Which};
use crate::wire::{
    escape_bytes, json as json_resp, json_text, long_poll_timeout, sse_event, sse_response,
};
use crate::Emu;

/// Lines of output in an execution view when `last_n` is not given.
const DEFAULT_LAST_N: usize = 100;

/// A command line as localbox runs it.
pub(crate) fn shell(command: &str) -> ExecRequest {
    ExecRequest::argv(["bash", "-c", command])
}

#[derive(Deserialize)]
pub(crate) struct ExecBody {
    command: String,
    #[serde(default)]
    attach_stdin: Option<bool>,
    #[serde(default)]
    optimistic_timeout: Option<u64>,
    /// `execute` only: the client's UUIDv7 for the command; a repeat returns the first run.
    #[serde(default)]
    command_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LastN {
    last_n: Option<String>,
}

impl LastN {
    fn get(&self) -> usize {
        self.last_n
            .as_deref()
            .and_then(|n| n.parse().ok())
            .unwrap_or(DEFAULT_LAST_N)
    }
}

/// Starts `command` in the devbox and registers the execution.
async fn start(
    emu: &Arc<Emu>,
    devbox: &str,
    command: &str,
    attach_stdin: bool,
) -> Result<Arc<Execution>, ApiError> {
    let sandbox = emu.with_devbox(devbox, |d| d.running_sandbox())?;
    touch(emu, devbox);
    let engine = &emu.opts.engine;
    let (mut stream, stdin) = if attach_stdin {
        let (stream, stdin) = engine
            .exec_stream_with_stdin(&sandbox, shell(command))
            .await?;
        (stream, Some(stdin))
    } else {
        (engine.exec_stream(&sandbox, shell(command)).await?, None)
    };
    let (exe, kill_rx) = Execution::new(devbox, command, stdin);
    emu.with_devbox(devbox, |d| {
        d.executions.insert(exe.id.clone(), exe.clone());
        d.execution_order.push(exe.id.clone());
        Ok(())
    })?;
    let (run, emu2) = (exe.clone(), emu.clone());
    tokio::spawn(async move {
        let mut kill_rx = kill_rx;
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(ExecEvent::Output(s, b)) => run.push(if s == Stream::Stdout { Which::Stdout } else { Which::Stderr }, &b),
                    Some(ExecEvent::Exit(out)) => { run.finish(out.exit_code); break }
                    None => { run.finish(-1); break }
                },
                Ok(()) = &mut kill_rx => {
                    // Dropping the stream kills the command's process group.
                    drop(stream);
                    run.finish(137);
                    break;
                }
            }
        }
        run.stdin.lock().await.take();
        touch(&emu2, &run.devbox_id);
    });
    Ok(exe)
}

/// Waits until the execution completed or `limit` passed; true when completed.
async fn wait_completed(exe: &Execution, limit: Duration) -> bool {
    let mut rx = exe.version.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        rx.borrow_and_update();
        if exe.is_completed() {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return exe.is_completed(),
        }
    }
}

fn execution(emu: &Emu, devbox: &str, eid: &str) -> Result<Arc<Execution>, ApiError> {
    emu.with_devbox(devbox, |d| {
        d.executions
            .get(eid)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&format!("execution {eid}")))
    })
}

/// `execute_sync`: runs to the end; the whole output.
pub(crate) async fn execute_sync(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<ExecBody>,
) -> Result<Response, ApiError> {
    let exe = start(&emu, &id, &b.command, false).await?;
    wait_completed(&exe, Duration::from_secs(24 * 3600)).await;
    let s = exe.state.lock().unwrap();
    Ok(json_text(format!(
        r#"{{"devbox_id":{},"exit_status":{},"stdout":{},"stderr":{}}}"#,
        Value::String(id.clone()),
        s.exit_status.unwrap_or(-1),
        escape_bytes(&s.stdout.bytes),
        escape_bytes(&s.stderr.bytes),
    )))
}

/// `execute`: waits up to `optimistic_timeout` (default and most 25 s) for completion.
pub(crate) async fn execute(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Query(q): Query<LastN>,
    Json(b): Json<ExecBody>,
) -> Result<Response, ApiError> {
    let exe = match &b.command_id {
        Some(cid) => {
            if !is_uuid7(cid) {
                return Err(ApiError::bad(format!("command_id {cid:?} is not a UUIDv7")));
            }
            let known = emu.with_devbox(&id, |d| {
                Ok(d.command_ids
                    .get(cid)
                    .and_then(|e| d.executions.get(e))
                    .cloned())
            })?;
            match known {
                Some(exe) => exe,
                None => {
                    let exe = start(&emu, &id, &b.command, false).await?;
                    emu.with_devbox(&id, |d| {
                        d.command_ids.insert(cid.clone(), exe.id.clone());
                        Ok(())
                    })?;
                    exe
                }
            }
        }
        None => start(&emu, &id, &b.command, false).await?,
    };
    let limit = Duration::from_secs(b.optimistic_timeout.unwrap_or(25).min(25));
    wait_completed(&exe, limit).await;
    Ok(json_text(exe.view(q.get())))
}

/// A UUID string (8-4-4-4-12 hex) of version 7, as the API asks of a `command_id`.
fn is_uuid7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
        && b[14] == b'7'
}

/// `execute_async`: answers `running` at once.
pub(crate) async fn execute_async(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<ExecBody>,
) -> Result<Response, ApiError> {
    let exe = start(&emu, &id, &b.command, b.attach_stdin.unwrap_or(false)).await?;
    Ok(json_text(exe.view(DEFAULT_LAST_N)))
}

pub(crate) async fn retrieve(
    State(emu): State<Arc<Emu>>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<LastN>,
) -> Result<Response, ApiError> {
    Ok(json_text(execution(&emu, &id, &eid)?.view(q.get())))
}

#[derive(Deserialize)]
pub(crate) struct WaitBody {
    statuses: Vec<String>,
    timeout_seconds: Option<f64>,
}

/// 200 once the execution's status is wanted (`completed`, or `running` right away); else 408.
pub(crate) async fn wait_for_status(
    State(emu): State<Arc<Emu>>,
    Path((id, eid)): Path<(String, String)>,
    Json(b): Json<WaitBody>,
) -> Result<Response, ApiError> {
    let exe = execution(&emu, &id, &eid)?;
    let want_completed = b.statuses.iter().any(|s| s == "completed");
    let done = exe.is_completed()
        || (want_completed && wait_completed(&exe, hold(b.timeout_seconds)).await);
    let running_ok = !exe.is_completed() && b.statuses.iter().any(|s| s == "running");
    if (done && want_completed) || running_ok {
        Ok(json_text(exe.view(DEFAULT_LAST_N)))
    } else {
        Ok(long_poll_timeout())
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct KillBody {
    #[allow(dead_code)]
    kill_process_group: Option<bool>,
}

pub(crate) async fn kill(
    State(emu): State<Arc<Emu>>,
    Path((id, eid)): Path<(String, String)>,
    _body: Option<Json<KillBody>>,
) -> Result<Response, ApiError> {
    let exe = execution(&emu, &id, &eid)?;
    let tx = exe.kill.lock().unwrap().take();
    if let Some(tx) = tx {
        let _ = tx.send(());
        wait_completed(&exe, Duration::from_secs(10)).await;
    }
    Ok(json_text(exe.view(DEFAULT_LAST_N)))
}

#[derive(Deserialize)]
pub(crate) struct StdinBody {
    text: Option<String>,
    signal: Option<String>,
}

/// Text goes into the command's stdin; `EOF` closes it; `INTERRUPT` kills the command.
pub(crate) async fn send_stdin(
    State(emu): State<Arc<Emu>>,
    Path((id, eid)): Path<(String, String)>,
    Json(b): Json<StdinBody>,
) -> Result<Response, ApiError> {
    let exe = execution(&emu, &id, &eid)?;
    emu.with_devbox(&id, |d| d.running_sandbox())?;
    if !exe.attached_stdin {
        return Err(ApiError::bad(
            "the execution was not started with attach_stdin",
        ));
    }
    if exe.is_completed() {
        return Err(ApiError::bad("the execution has completed"));
    }
    match (b.text.filter(|t| !t.is_empty()), b.signal.as_deref()) {
        (Some(text), None) => {
            let mut stdin = exe.stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return Err(ApiError::bad("stdin was closed"));
            };
            if pipe.write_all(text.as_bytes()).await.is_err() {
                return Err(ApiError::bad("the command no longer reads its stdin"));
            }
        }
        (None, Some("EOF")) => {
            exe.stdin.lock().await.take();
        }
        (None, Some("INTERRUPT")) => {
            let tx = exe.kill.lock().unwrap().take();
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
        }
        _ => {
            return Err(ApiError::bad(
                "give exactly one of a nonempty `text` or a `signal` (EOF, INTERRUPT)",
            ))
        }
    }
    Ok(json_resp(
        json!({ "devbox_id": id, "execution_id": eid, "success": true }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct OffsetQuery {
    offset: Option<String>,
}

pub(crate) async fn stream_stdout(
    State(emu): State<Arc<Emu>>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<OffsetQuery>,
) -> Result<Response, ApiError> {
    stream(&emu, &id, &eid, Which::Stdout, q)
}

pub(crate) async fn stream_stderr(
    State(emu): State<Arc<Emu>>,
    Path((id, eid)): Path<(String, String)>,
    Query(q): Query<OffsetQuery>,
) -> Result<Response, ApiError> {
    stream(&emu, &id, &eid, Which::Stderr, q)
}

/// SSE from byte `offset` on: what is there at once, then chunks as they come; closed when
/// the command completed and everything was sent.
fn stream(
    emu: &Emu,
    id: &str,
    eid: &str,
    which: Which,
    q: OffsetQuery,
) -> Result<Response, ApiError> {
    let exe = execution(emu, id, eid)?;
    let offset = match q.offset.as_deref() {
        None | Some("") => 0,
        Some(o) => o
            .parse::<usize>()
            .map_err(|_| ApiError::bad(format!("offset {o:?} is not a byte offset")))?,
    };
    // The stream-cutting switch: this stream breaks after so many frames.
    let mut cut = emu.cut_streams.lock().unwrap();
    let budget = cut.as_mut().map(|c| {
        c.count -= 1;
        c.after_frames
    });
    if cut.as_ref().is_some_and(|c| c.count == 0) {
        *cut = None;
    }
    drop(cut);
    let rx = exe.version.subscribe();
    let events = futures_util::stream::unfold(
        (exe, rx, offset, budget),
        move |(exe, mut rx, pos, budget)| async move {
            if budget == Some(0) {
                return None;
            }
            loop {
                rx.borrow_and_update();
                let (chunks, completed) = {
                    let s = exe.state.lock().unwrap();
                    let log = if which == Which::Stdout {
                        &s.stdout
                    } else {
                        &s.stderr
                    };
                    (log.chunks_from(pos), s.completed)
                };
                if let Some((start, last)) = chunks.last() {
                    let end = start + last.len();
                    let text: String = chunks.iter().map(|(o, c)| sse_event(*o, c)).collect();
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(text)),
                        (exe, rx, end, budget.map(|b| b - 1)),
                    ));
                }
                if completed || rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    // After the budget, the connection breaks (an error ends the body without its last chunk).
    let cut_off = futures_util::stream::iter(
        budget.map(|_| Err(std::io::Error::other("stream cut by the emulator"))),
    );
    let events = futures_util::StreamExt::chain(events, cut_off);
    Ok(sse_response(Body::from_stream(events)))
}

/// `GET …/logs`: one entry per command (start and exit).
pub(crate) async fn logs(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Query(q): Query<ExecIdQuery>,
) -> Result<Response, ApiError> {
    let entries = emu.with_devbox(&id, |d| {
        let mut logs = Vec::new();
        for eid in &d.execution_order {
            if q.execution_id.as_deref().is_some_and(|w| w != eid) {
                continue;
            }
            let exe = &d.executions[eid];
            let s = exe.state.lock().unwrap();
            logs.push(json!({"level": "info", "source": "exec", "timestamp_ms": exe.started_ms, "cmd": exe.command, "cmd_id": eid, "exit_code": s.exit_status, "message": exe.command}));
        }
        Ok(logs)
    })?;
    Ok(json_resp(json!({ "logs": entries })))
}

#[derive(Deserialize)]
pub(crate) struct ExecIdQuery {
    execution_id: Option<String>,
}
