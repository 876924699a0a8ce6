//! Commands: `exec` (JSON result, or Server-Sent Events with `Accept: text/event-stream`: the
//! output chunks in order as they happen, the exit last) and background processes (start,
//! list, status, output since offsets, kill).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use super::sandboxes::Which;
use super::state::AppState;
use crate::types::{Command, ExecRequest, OutputStream};

/// Output kept per stream for a JSON (non-streaming) exec; more is cut and flagged.
const JSON_OUTPUT_CAP: usize = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// A shell string (run with `sh -c`)…
    pub command: Option<String>,
    /// …or a program and its arguments.
    pub argv: Option<Vec<String>>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Seconds until the command is killed (`timed_out` in the result).
    pub timeout_secs: Option<f64>,
    /// Text written to the command's stdin, which is then closed.
    pub stdin: Option<String>,
    /// Binary stdin, base64.
    pub stdin_base64: Option<String>,
}

impl ExecBody {
    fn request(self) -> ApiResult<ExecRequest> {
        let command = match (self.command, self.argv) {
            (Some(c), None) => Command::Shell(c),
            (None, Some(a)) if !a.is_empty() => Command::Argv(a),
            _ => return Err(ApiError::bad_request(
                "give exactly one of \"command\" (a shell string) or \"argv\" (a non-empty list)",
            )),
        };
        let timeout_ms = match self.timeout_secs {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s < 1e7 => Some((s * 1000.0).ceil() as u64),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "timeout_secs must be a positive number",
                ))
            }
        };
        let stdin = match (self.stdin, self.stdin_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give stdin or stdin_base64, not both",
                ))
            }
            (Some(s), None) => Some(s.into_bytes()),
            (None, Some(b)) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| ApiError::bad_request(format!("stdin_base64: {e}")))?,
            ),
            (None, None) => None,
        };
        Ok(ExecRequest {
            command,
            cwd: self.cwd,
            env: self.env.into_iter().collect(),
            timeout_ms,
            stdin,
        })
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

pub async fn exec(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Response> {
    let request = body.request()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    if wants_sse(&headers) {
        return Ok(exec_sse(st, sandbox, request).into_response());
    }
    let buffers = Arc::new(Mutex::new(Collected::default()));
    let sink = {
        let buffers = buffers.clone();
        Box::new(move |stream: OutputStream, data: &[u8]| {
            buffers.lock().unwrap().push(stream, data)
        })
    };
    let result = st
        .metrics
        .call(
            sandbox.provider(),
            "exec",
            sandbox.exec(request, Some(sink)),
        )
        .await?;
    st.touch(sandbox.provider(), &id);
    let c = std::mem::take(&mut *buffers.lock().unwrap());
    // A plugin that does not stream only hands back the tails.
    let (stdout, stderr) = if c.streamed {
        (c.stdout, c.stderr)
    } else {
        (result.stdout_tail.clone(), result.stderr_tail.clone())
    };
    Ok(Json(json!({
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "truncated": c.truncated,
    }))
    .into_response())
}

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    streamed: bool,
    truncated: bool,
}

impl Collected {
    fn push(&mut self, stream: OutputStream, data: &[u8]) {
        self.streamed = true;
        let buf = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let room = JSON_OUTPUT_CAP.saturating_sub(buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Runs the exec in its own task (it finishes even if the client goes away) and streams
/// `stdout`/`stderr` events, then `exit` (or `error`).
fn exec_sse(
    st: Arc<AppState>,
    sandbox: crate::Sandbox,
    request: ExecRequest,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let sink_tx = tx.clone();
    let sink = Box::new(move |stream: OutputStream, data: &[u8]| {
        let v = crate::json::output_event(stream, data);
        let _ = sink_tx.send(
            Event::default()
                .event(crate::json::stream_name(stream))
                .data(v.to_string()),
        );
    });
    tokio::spawn(async move {
        let r = st
            .metrics
            .call(
                sandbox.provider(),
                "exec",
                sandbox.exec(request, Some(sink)),
            )
            .await;
        st.touch(sandbox.provider(), sandbox.id());
        let event = match r {
            Ok(result) => Event::default()
                .event("exit")
                .data(crate::json::exit_event(&result).to_string()),
            Err(e) => {
                let e = ApiError::from(e);
                Event::default()
                    .event("error")
                    .data(crate::json::error(&e.code, &e.message).to_string())
            }
        };
        let _ = tx.send(event);
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

pub async fn start_process(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
    ApiJson(body): ApiJson<ExecBody>,
) -> ApiResult<Response> {
    let request = body.request()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    let p = st
        .metrics
        .call(
            sandbox.provider(),
            "start-process",
            sandbox.start_process(request),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(crate::json::process(&p))).into_response())
}

pub async fn list_processes(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<Json<Value>> {
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    let ps = st
        .metrics
        .call(sandbox.provider(), "list-processes", sandbox.processes())
        .await?;
    Ok(Json(
        json!({ "processes": ps.iter().map(crate::json::process).collect::<Vec<_>>() }),
    ))
}

pub async fn process_status(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<Json<Value>> {
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    let p = st
        .metrics
        .call(
            sandbox.provider(),
            "process-status",
            sandbox.process_status(&pid),
        )
        .await?;
    Ok(Json(crate::json::process(&p)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    pub provider: Option<String>,
    #[serde(default)]
    pub stdout_offset: u64,
    #[serde(default)]
    pub stderr_offset: u64,
}

/// Output since the given offsets; pass `stdout_next`/`stderr_next` back to continue.
pub async fn process_output(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> ApiResult<Json<Value>> {
    let (sandbox, _) = st.sandbox_for(&caller, &id, q.provider.as_deref())?;
    let c = st
        .metrics
        .call(
            sandbox.provider(),
            "process-output",
            sandbox.process_output(&pid, q.stdout_offset, q.stderr_offset),
        )
        .await?;
    Ok(Json(json!({
        "stdout": String::from_utf8_lossy(&c.stdout),
        "stderr": String::from_utf8_lossy(&c.stderr),
        "stdout_next": c.stdout_next,
        "stderr_next": c.stderr_next,
        "running": c.running,
        "exit_code": c.exit_code,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KillBody {
    /// POSIX signal number (default 15, TERM).
    pub signal: Option<i32>,
}

pub async fn kill(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiQuery(which): ApiQuery<Which>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    // The body is optional: empty means TERM.
    let body: KillBody = if body.is_empty() {
        KillBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let signal = body.signal.unwrap_or(15);
    if !(1..=64).contains(&signal) {
        return Err(ApiError::bad_request("signal must be 1..=64"));
    }
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    st.metrics
        .call(
            sandbox.provider(),
            "signal-process",
            sandbox.signal_process(&pid, signal),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
