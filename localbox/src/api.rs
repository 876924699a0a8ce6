//! HTTP handlers of the localbox API (documented in `API.md`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::config::Network;
use crate::error::{Error, ErrorCode};
use crate::process::{CommandSpec, ExecEvent, ExecRequest, Stream};
use crate::sandbox::SandboxSpec;
use crate::Engine;

#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub token: Arc<str>,
    pub advertise_host: Arc<str>,
}

/// An engine error rendered as `{"error": {"code", "message"}}` with the matching status.
pub(crate) struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.0.code.as_str(), "message": self.0.message}});
        (status, axum::Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body. Any content type is accepted (clients such as curl or a wasm plugin need
/// not set one), an empty body counts as `{}`, and errors are JSON `invalid_argument`.
pub(crate) struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::invalid(format!("request body: {}", e.body_text())))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| Error::invalid(format!("request body: {e}")).into())
    }
}

/// `Query` whose rejections are JSON `invalid_argument` errors.
pub(crate) struct Q<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Q(v)),
            Err(e) => Err(Error::invalid(format!("query: {}", e.body_text())).into()),
        }
    }
}

pub(crate) fn router(state: AppState, max_write_bytes: usize) -> Router {
    let sandbox_routes = Router::new()
        .route("/v1/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox).delete(destroy_sandbox),
        )
        .route("/v1/sandboxes/{id}/pause", post(pause_sandbox))
        .route("/v1/sandboxes/{id}/resume", post(resume_sandbox))
        .route("/v1/sandboxes/{id}/timeout", post(set_timeout))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route(
            "/v1/sandboxes/{id}/processes",
            post(start_process).get(list_processes),
        )
        .route("/v1/sandboxes/{id}/processes/{pid}", get(get_process))
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/output",
            get(process_output),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/signal",
            post(signal_process),
        )
        .route(
            "/v1/sandboxes/{id}/files",
            get(read_file).put(write_file).delete(remove_file),
        )
        .route("/v1/sandboxes/{id}/files/list", get(list_dir))
        .route("/v1/sandboxes/{id}/files/stat", get(stat))
        .route("/v1/sandboxes/{id}/files/mkdir", post(mkdir))
        .route("/v1/sandboxes/{id}/ports/{port}", get(port_url))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // File writes and exec stdin (base64 in JSON) share the one configurable limit.
        .layer(DefaultBodyLimit::max(max_write_bytes));
    Router::new()
        .route("/v1/health", get(health))
        .merge(sandbox_routes)
        .fallback(|| async { ApiError(Error::not_found("no such route")) })
        .with_state(state)
}

async fn require_token(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if st.token.is_empty() || !constant_time_eq(presented.as_bytes(), st.token.as_bytes()) {
        return ApiError(Error::new(
            ErrorCode::Unauthorized,
            "missing or invalid bearer token",
        ))
        .into_response();
    }
    st.engine.touch();
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

// ----- sandboxes ------------------------------------------------------------------------------

async fn create_sandbox(
    State(st): State<AppState>,
    JsonBody(spec): JsonBody<SandboxSpec>,
) -> ApiResult<Response> {
    let info = st.engine.create(spec).await?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn list_sandboxes(
    State(st): State<AppState>,
    Q(query): Q<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let mut labels = BTreeMap::new();
    for (_, v) in query.into_iter().filter(|(k, _)| k == "label") {
        let (lk, lv) = v
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("label filter {v:?} is not key=value")))?;
        labels.insert(lk.to_string(), lv.to_string());
    }
    Ok(axum::Json(json!({"sandboxes": st.engine.list(&labels)})).into_response())
}

async fn get_sandbox(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(st.engine.get(&id)?).into_response())
}

async fn destroy_sandbox(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.engine.destroy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause_sandbox(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(st.engine.pause(&id).await?).into_response())
}

async fn resume_sandbox(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(st.engine.resume(&id).await?).into_response())
}

#[derive(Deserialize)]
struct TimeoutBody {
    seconds: u64,
}

async fn set_timeout(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<TimeoutBody>,
) -> ApiResult<Response> {
    let timeout = (b.seconds > 0).then(|| Duration::from_secs(b.seconds));
    Ok(axum::Json(st.engine.set_timeout(&id, timeout)?).into_response())
}

// ----- commands -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ExecBody {
    argv: Option<Vec<String>>,
    shell: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
    stdin_b64: Option<String>,
}

impl ExecBody {
    fn into_request(self) -> Result<ExecRequest, Error> {
        let command = match (self.argv, self.shell) {
            (Some(argv), None) => CommandSpec::Argv(argv),
            (None, Some(shell)) => CommandSpec::Shell(shell),
            _ => {
                return Err(Error::invalid(
                    "exactly one of \"argv\" and \"shell\" is required",
                ))
            }
        };
        let stdin = match self.stdin_b64 {
            Some(s) => Some(
                B64.decode(s.as_bytes())
                    .map_err(|e| Error::invalid(format!("stdin_b64: {e}")))?,
            ),
            None => None,
        };
        Ok(ExecRequest {
            command,
            cwd: self.cwd,
            env: self.env,
            timeout: self
                .timeout_ms
                .filter(|&t| t > 0)
                .map(Duration::from_millis),
            stdin,
        })
    }
}

fn ndjson_line(v: serde_json::Value) -> Result<Bytes, Infallible> {
    let mut line = serde_json::to_vec(&v).unwrap_or_default();
    line.push(b'\n');
    Ok(Bytes::from(line))
}

async fn exec(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ExecBody>,
) -> ApiResult<Response> {
    let stream = st.engine.exec_stream(&id, b.into_request()?).await?;
    // Dropping the body (client gone) drops the ExecStream, which kills the command.
    let body = futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let line = match stream.next().await? {
            ExecEvent::Output(Stream::Stdout, b) => ndjson_line(json!({"stdout": B64.encode(&b)})),
            ExecEvent::Output(Stream::Stderr, b) => ndjson_line(json!({"stderr": B64.encode(&b)})),
            ExecEvent::Exit(out) => {
                return Some((
                    ndjson_line(json!({"exit_code": out.exit_code, "timed_out": out.timed_out})),
                    None,
                ))
            }
        };
        Some((line, Some(stream)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn start_process(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ExecBody>,
) -> ApiResult<Response> {
    Ok(axum::Json(st.engine.start_process(&id, b.into_request()?).await?).into_response())
}

async fn list_processes(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(axum::Json(json!({"processes": st.engine.list_processes(&id)?})).into_response())
}

async fn get_process(
    State(st): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(axum::Json(st.engine.process(&id, &pid)?).into_response())
}

#[derive(Deserialize)]
struct OutputQuery {
    #[serde(default)]
    stdout_offset: u64,
    #[serde(default)]
    stderr_offset: u64,
}

async fn process_output(
    State(st): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    Q(q): Q<OutputQuery>,
) -> ApiResult<Response> {
    let o = st
        .engine
        .process_output(&id, &pid, q.stdout_offset, q.stderr_offset)?;
    Ok(axum::Json(json!({
        "stdout_b64": B64.encode(&o.stdout),
        "stderr_b64": B64.encode(&o.stderr),
        "stdout_next": o.stdout_next,
        "stderr_next": o.stderr_next,
        "running": o.running,
        "exit_code": o.exit_code,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct SignalBody {
    signal: i32,
}

async fn signal_process(
    State(st): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(b): JsonBody<SignalBody>,
) -> ApiResult<StatusCode> {
    st.engine.signal_process(&id, &pid, b.signal)?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- files ----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct PathQuery {
    path: String,
}

#[derive(Deserialize)]
struct WriteQuery {
    path: String,
    mode: Option<String>,
}

#[derive(Deserialize)]
struct RemoveQuery {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize)]
struct MkdirQuery {
    path: String,
    #[serde(default)]
    parents: bool,
}

/// Decimal (`420`), or octal with a `0o`/`0` prefix (`0o644`, `0644`).
fn parse_mode(s: &str) -> Result<u32, Error> {
    let parsed = if let Some(o) = s.strip_prefix("0o") {
        u32::from_str_radix(o, 8)
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8)
    } else {
        s.parse()
    };
    parsed
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::invalid(format!("invalid mode {s:?}")))
}

async fn read_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<PathQuery>,
) -> ApiResult<Response> {
    let data = st.engine.read_file(&id, &q.path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn write_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<WriteQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<StatusCode> {
    let body = body.map_err(|e| Error::invalid(format!("request body: {}", e.body_text())))?;
    let mode = q.mode.as_deref().map(parse_mode).transpose()?;
    st.engine
        .write_file(&id, &q.path, body.to_vec(), mode)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<RemoveQuery>,
) -> ApiResult<StatusCode> {
    st.engine.remove(&id, &q.path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_dir(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<PathQuery>,
) -> ApiResult<Response> {
    Ok(axum::Json(json!({"entries": st.engine.list_dir(&id, &q.path).await?})).into_response())
}

async fn stat(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<PathQuery>,
) -> ApiResult<Response> {
    Ok(axum::Json(st.engine.stat(&id, &q.path).await?).into_response())
}

async fn mkdir(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<MkdirQuery>,
) -> ApiResult<StatusCode> {
    st.engine.mkdir(&id, &q.path, q.parents).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- ports ----------------------------------------------------------------------------------

async fn port_url(
    State(st): State<AppState>,
    Path((id, port)): Path<(String, String)>,
) -> ApiResult<Response> {
    st.engine.get(&id)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::invalid(format!("invalid port {port:?}")))?;
    if st.engine.config().network == Network::None {
        return Err(Error::conflict("sandboxes have no network (network = none)").into());
    }
    let host = if st.advertise_host.contains(':') {
        format!("[{}]", st.advertise_host)
    } else {
        st.advertise_host.to_string()
    };
    Ok(axum::Json(json!({"url": format!("http://{host}:{port}")})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_decimal_and_octal() {
        assert_eq!(parse_mode("420").unwrap(), 0o644);
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("0o755").unwrap(), 0o755);
        assert!(parse_mode("99999").is_err());
        assert!(parse_mode("abc").is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
