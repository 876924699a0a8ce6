//! The tiny HTTP sandbox API that the `example` plugin (plugins/example) adapts. A test server:
//! commands run for real with no isolation, each sandbox being a temp directory.
//!
//! Every request needs `authorization: Bearer <api key>` (401 otherwise). Errors are
//! `{"message": "..."}`.

// Handlers return `Result<_, Response>`: the error is the answer itself, boxing it buys nothing.
#![allow(clippy::result_large_err)]
//!
//! | request | answer |
//! |---|---|
//! | `POST /sandboxes` `{name?, labels?, env?}` (+ `idempotency-key`) | 201 sandbox (200 and the same sandbox for a repeated key; 409 for a taken name) |
//! | `GET /sandboxes?label=k=v&label=...` | `[sandbox]` carrying all the labels |
//! | `GET`, `DELETE /sandboxes/{id}` | sandbox, 204 |
//! | `POST /sandboxes/{id}/exec` `{argv? , cmd?, cwd?, env?, stdin? (base64), timeout_ms?}` | NDJSON: `{"type":"stdout"\|"stderr","data":"<base64>"}` as output is produced, then `{"type":"exit","code":N,"timed_out":bool}` |
//! | `PUT /sandboxes/{id}/files/{path}?mode=755` raw body, `GET` same | 204, the bytes |
//! | `GET /sandboxes/{id}/ports/{port}` | `{"url":"http://127.0.0.1:<port>"}` |
//!
//! A sandbox is `{id, name, labels: {k: v}, state: "running", workdir, created_at_ms}`. File paths
//! are relative to the workdir, or absolute inside it (`files//abs/path`); `..` is refused.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Component, Path as FsPath, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// One request as the server received it (before fault injection and auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query, e.g. `/sandboxes?label=a%3Db`.
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Serialize)]
struct Sandbox {
    id: String,
    name: Option<String>,
    labels: BTreeMap<String, String>,
    state: &'static str,
    workdir: PathBuf,
    created_at_ms: u64,
    #[serde(skip)]
    env: BTreeMap<String, String>,
    #[serde(skip)]
    idempotency_key: Option<String>,
}

#[derive(Default)]
struct Faults {
    status: u16,
    retry_after: Option<u64>,
    remaining: usize,
}

struct Shared {
    key: String,
    root: PathBuf,
    next_id: Mutex<u64>,
    sandboxes: Mutex<HashMap<String, Sandbox>>,
    log: Mutex<Vec<LoggedRequest>>,
    faults: Mutex<Faults>,
}

/// A running example API on `127.0.0.1:<random port>`; stops when dropped.
pub struct ExampleServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Starts a server with a fresh random API key.
pub async fn start() -> ExampleServer {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    start_with_key(&format!("exk-{:x}{:x}", nanos, std::process::id())).await
}

/// Starts a server accepting `Bearer <key>`.
pub async fn start_with_key(key: &str) -> ExampleServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = Arc::new(Shared {
        key: key.to_string(),
        root: dir.path().canonicalize().expect("canonical tempdir"),
        next_id: Mutex::new(0),
        sandboxes: Mutex::default(),
        log: Mutex::default(),
        faults: Mutex::default(),
    });
    let app = Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(destroy))
        .route("/sandboxes/{id}/exec", post(exec))
        .route(
            "/sandboxes/{id}/files/{*path}",
            get(read_file).put(write_file),
        )
        .route("/sandboxes/{id}/ports/{port}", get(port_url))
        .layer(DefaultBodyLimit::max(256 << 20))
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    ExampleServer {
        addr,
        shared,
        task,
        _dir: dir,
    }
}

impl ExampleServer {
    /// `http://127.0.0.1:<port>`, the plugin's `base-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn api_key(&self) -> &str {
        &self.shared.key
    }
    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().unwrap().clone()
    }
    pub fn clear_requests(&self) {
        self.shared.log.lock().unwrap().clear();
    }
    /// The next `count` requests are answered with `status` (and `Retry-After: <secs>` if given)
    /// without being handled.
    pub fn fail_next(&self, status: u16, retry_after: Option<u64>, count: usize) {
        *self.shared.faults.lock().unwrap() = Faults {
            status,
            retry_after,
            remaining: count,
        };
    }
    pub fn sandbox_count(&self) -> usize {
        self.shared.sandboxes.lock().unwrap().len()
    }
    /// The directory of a sandbox (its workdir).
    pub fn sandbox_dir(&self, id: &str) -> Option<PathBuf> {
        self.shared
            .sandboxes
            .lock()
            .unwrap()
            .get(id)
            .map(|s| s.workdir.clone())
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn err(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "message": message.into() }))).into_response()
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Logs the request, then injected faults, then the bearer check.
async fn gate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let auth = header(req.headers(), "authorization");
    s.log.lock().unwrap().push(LoggedRequest {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: auth.clone(),
        idempotency_key: header(req.headers(), "idempotency-key"),
    });
    let injected = {
        let mut f = s.faults.lock().unwrap();
        (f.remaining > 0).then(|| {
            f.remaining -= 1;
            (f.status, f.retry_after)
        })
    };
    if let Some((status, retry_after)) = injected {
        let mut resp = err(
            StatusCode::from_u16(status).unwrap(),
            format!("injected failure {status}"),
        );
        if let Some(secs) = retry_after {
            resp.headers_mut().insert("retry-after", secs.into());
        }
        return resp;
    }
    if auth.as_deref() != Some(format!("Bearer {}", s.key).as_str()) {
        return err(StatusCode::UNAUTHORIZED, "missing or invalid API key");
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct CreateReq {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

async fn create(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(req): Json<CreateReq>,
) -> Response {
    let key = header(&headers, "idempotency-key");
    let mut boxes = s.sandboxes.lock().unwrap();
    if let Some(k) = &key {
        if let Some(existing) = boxes
            .values()
            .find(|b| b.idempotency_key.as_ref() == Some(k))
        {
            return (StatusCode::OK, Json(existing.clone())).into_response();
        }
    }
    if let Some(name) = req
        .name
        .as_deref()
        .filter(|n| boxes.values().any(|b| b.name.as_deref() == Some(*n)))
    {
        return err(StatusCode::CONFLICT, format!("name {name:?} is taken"));
    }
    let id = {
        let mut n = s.next_id.lock().unwrap();
        *n += 1;
        format!("sbx-{n}")
    };
    let workdir = s.root.join(&id);
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let created_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let sbx = Sandbox {
        id: id.clone(),
        name: req.name,
        labels: req.labels,
        state: "running",
        workdir,
        created_at_ms,
        env: req.env,
        idempotency_key: key,
    };
    boxes.insert(id, sbx.clone());
    (StatusCode::CREATED, Json(sbx)).into_response()
}

async fn list(State(s): State<Arc<Shared>>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let mut wanted = Vec::new();
    for (_, v) in q.into_iter().filter(|(k, _)| k == "label") {
        match v.split_once('=') {
            Some((lk, lv)) => wanted.push((lk.to_string(), lv.to_string())),
            None => {
                return err(
                    StatusCode::BAD_REQUEST,
                    format!("label {v:?} is not key=value"),
                )
            }
        }
    }
    let boxes = s.sandboxes.lock().unwrap();
    let mut out: Vec<&Sandbox> = boxes
        .values()
        .filter(|b| wanted.iter().all(|(k, v)| b.labels.get(k) == Some(v)))
        .collect();
    out.sort_by_key(|b| (b.created_at_ms, b.id.clone()));
    Json(out).into_response()
}

fn lookup(s: &Shared, id: &str) -> Result<Sandbox, Response> {
    s.sandboxes
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("sandbox {id} not found")))
}

async fn get_one(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lookup(&s, &id) {
        Ok(b) => Json(b).into_response(),
        Err(e) => e,
    }
}

async fn destroy(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.sandboxes.lock().unwrap().remove(&id) {
        Some(b) => {
            let _ = std::fs::remove_dir_all(&b.workdir);
            StatusCode::NO_CONTENT.into_response()
        }
        None => err(StatusCode::NOT_FOUND, format!("sandbox {id} not found")),
    }
}

/// `rel` resolved inside `workdir`: relative, or absolute under it; no `..`.
fn resolve(workdir: &FsPath, rel: &str) -> Result<PathBuf, Response> {
    let p = FsPath::new(rel);
    let p = if p.is_absolute() {
        p.strip_prefix(workdir).map_err(|_| {
            err(
                StatusCode::BAD_REQUEST,
                format!("{rel:?} is outside the sandbox"),
            )
        })?
    } else {
        p
    };
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("{rel:?} must not contain `..`"),
        ));
    }
    Ok(workdir.join(p))
}

#[derive(Deserialize)]
struct ExecReq {
    argv: Option<Vec<String>>,
    cmd: Option<String>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stdin: Option<String>,
    timeout_ms: Option<u64>,
}

/// An NDJSON body fed by a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

fn line(v: serde_json::Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

async fn pump(mut r: impl AsyncRead + Unpin, stream: &'static str, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
        if tx
            .send(line(json!({ "type": stream, "data": data })))
            .await
            .is_err()
        {
            break;
        }
    }
}

async fn exec(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(req): Json<ExecReq>,
) -> Response {
    let sbx = match lookup(&s, &id) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let argv = match (req.argv, req.cmd) {
        (Some(a), _) if !a.is_empty() => a,
        (None, Some(c)) => vec!["sh".into(), "-c".into(), c],
        _ => {
            return err(
                StatusCode::BAD_REQUEST,
                "give a non-empty `argv` or a `cmd`",
            )
        }
    };
    let cwd = match resolve(&sbx.workdir, req.cwd.as_deref().unwrap_or(".")) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let stdin = match req
        .stdin
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
    {
        Some(Err(e)) => return err(StatusCode::BAD_REQUEST, format!("stdin: {e}")),
        Some(Ok(b)) => Some(b),
        None => None,
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .envs(&sbx.env)
        .envs(&req.env)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{}: {e}\n", argv[0]);
                let data = base64::engine::general_purpose::STANDARD.encode(msg);
                let _ = tx
                    .send(line(json!({ "type": "stderr", "data": data })))
                    .await;
                let _ = tx
                    .send(line(
                        json!({ "type": "exit", "code": 127, "timed_out": false }),
                    ))
                    .await;
                return;
            }
        };
        if let (Some(mut w), Some(data)) = (child.stdin.take(), stdin) {
            tokio::spawn(async move {
                let _ = w.write_all(&data).await;
            });
        }
        let out = tokio::spawn(pump(child.stdout.take().unwrap(), "stdout", tx.clone()));
        let errs = tokio::spawn(pump(child.stderr.take().unwrap(), "stderr", tx.clone()));
        let limit = Duration::from_millis(req.timeout_ms.unwrap_or(u64::MAX / 4));
        let (code, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => (status.map(|s| s.code().unwrap_or(-1)).unwrap_or(-1), false),
            Err(_) => {
                let _ = child.kill().await;
                (124, true)
            }
        };
        // Background children may hold the pipes open: do not wait for them forever.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let _ = out.await;
            let _ = errs.await;
        })
        .await;
        let _ = tx
            .send(line(
                json!({ "type": "exit", "code": code, "timed_out": timed_out }),
            ))
            .await;
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::new(ChannelBody(rx)))
        .unwrap()
}

#[derive(Deserialize)]
struct FileQuery {
    mode: Option<String>,
}

async fn write_file(
    State(s): State<Arc<Shared>>,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
    body: Bytes,
) -> Response {
    let target = match lookup(&s, &id).and_then(|b| resolve(&b.workdir, &path)) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mode = match q.mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
        Some(Err(_)) => return err(StatusCode::BAD_REQUEST, "mode must be octal"),
        Some(Ok(m)) => Some(m),
        None => None,
    };
    let result = (|| {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &body)?;
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m))?;
        }
        Ok::<_, std::io::Error>(())
    })();
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn read_file(
    State(s): State<Arc<Shared>>,
    Path((id, path)): Path<(String, String)>,
) -> Response {
    let target = match lookup(&s, &id).and_then(|b| resolve(&b.workdir, &path)) {
        Ok(p) => p,
        Err(e) => return e,
    };
    match std::fs::read(&target) {
        Ok(data) => ([("content-type", "application/octet-stream")], data).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            err(StatusCode::NOT_FOUND, format!("{path} not found"))
        }
        Err(e) => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn port_url(State(s): State<Arc<Shared>>, Path((id, port)): Path<(String, u16)>) -> Response {
    match lookup(&s, &id) {
        Ok(_) => Json(json!({ "url": format!("http://127.0.0.1:{port}") })).into_response(),
        Err(e) => e,
    }
}
