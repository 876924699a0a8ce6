//! Emulator of Runloop's devbox API (`../shared/providers/runloop.md`), executing for real
//! through localbox.
//!
//! What it serves, under `/v1/devboxes`: create (+ `create_and_await_running`), retrieve,
//! update, list (`limit`, `starting_after`, `status`), `wait_for_status` for devboxes and
//! executions (200 only once a wanted status is reached, else 408 after `timeout_seconds`),
//! shutdown, suspend/resume, keep_alive (with a reaper applying keep-alive and `after_idle`),
//! logs, `execute_sync`, `execute`, `execute_async`, execution get/kill/`send_std_in` and the
//! stdout/stderr SSE streams (`?offset=` bytes; each event's `offset` is where its chunk
//! starts), read/write contents, upload (multipart) / download, `enable_tunnel`,
//! `remove_tunnel`, legacy `create_tunnel`, and the tunnels themselves at
//! `{base}/tunnel/{key}/{port}/…` (a loopback proxy to the port in the devbox).
//!
//! Faithful where clients can tell: status transitions (provisioning → initializing → running,
//! suspending → suspended → resuming → running), `x-should-retry: false` on client errors, and
//! every POST deduplicated by `x-request-id` (a retried create makes one devbox).
//!
//! Differences from the real service, on purpose:
//! - The devbox home is localbox's `/workspace` (commands start there); file calls also accept
//!   `/home/user/…` and `~/…` as aliases of it.
//! - Command output bytes that are not UTF-8 travel as `\udcXX` escapes (surrogateescape), so
//!   binary output survives for clients that decode them; the real service replaces them.
//! - `POST /_emulator/runloop/rate_limit {"count","retry_after_ms","path"?}` makes the next
//!   `count` API requests answer 429 with `retry-after-ms` (the shared `--fault` rules only
//!   know `retry-after` in seconds).
//! - `POST /_emulator/runloop/cut_streams {"count","after_frames"}` breaks the connection of the
//!   next `count` output streams after `after_frames` body frames, while the command runs (the
//!   shared `drop` fault buffers the whole body first, so it cannot cut a live stream).

mod devboxes;
mod executions;
mod files;
mod state;
mod tunnels;
mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use emulator_common::Options;
use serde::Deserialize;
use tokio::sync::Notify;

use state::{ApiError, Devbox};

/// How many answered POSTs are remembered for `x-request-id` dedupe.
const DEDUPE_KEEP: usize = 4096;
/// Largest request body (uploads).
const MAX_BODY: usize = 512 << 20;

/// Shared emulator state.
pub(crate) struct Emu {
    pub opts: Options,
    /// Devboxes in creation order.
    pub devboxes: Mutex<Vec<Devbox>>,
    /// Notified on every devbox status change (long polls wait on it).
    pub changed: Notify,
    dedupe: Mutex<Dedupe>,
    rate_limit: Mutex<Option<RateLimit>>,
    /// The stream-cutting switch: the next `count` output streams break after `after_frames`.
    pub cut_streams: Mutex<Option<CutStreams>>,
    pub proxy: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
}

type Cached = (StatusCode, Option<HeaderValue>, Bytes);
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

#[derive(Default)]
struct Dedupe {
    answers: HashMap<String, Slot>,
    order: VecDeque<String>,
}

/// `POST /_emulator/runloop/cut_streams {"count", "after_frames"}`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct CutStreams {
    pub count: u32,
    pub after_frames: usize,
}

#[derive(Clone, Debug, Deserialize)]
struct RateLimit {
    count: u32,
    retry_after_ms: u64,
    #[serde(default)]
    path: Option<String>,
}

impl Emu {
    /// Runs `f` on the devbox `id`, or 404.
    pub fn with_devbox<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Devbox) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut all = self.devboxes.lock().unwrap();
        let d = all
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| ApiError::not_found(&format!("devbox {id}")))?;
        f(d)
    }

    /// Sets a devbox's status and wakes the long polls.
    pub fn set_status(&self, id: &str, status: &str, failure: Option<&str>) {
        let _ = self.with_devbox(id, |d| {
            d.set_status(status, failure);
            Ok(())
        });
        self.changed.notify_waiters();
    }
}

/// The emulator's routes. The `sandbox-emulator` binary adds fault injection and serves it.
pub fn router(opts: Options) -> Router {
    let emu = Arc::new(Emu {
        opts,
        devboxes: Mutex::new(Vec::new()),
        changed: Notify::new(),
        dedupe: Mutex::new(Dedupe::default()),
        rate_limit: Mutex::new(None),
        cut_streams: Mutex::new(None),
        proxy: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    });
    devboxes::spawn_reaper(Arc::downgrade(&emu));
    let d = "/v1/devboxes/{id}";
    let api = Router::new()
        .route("/v1/devboxes", post(devboxes::create).get(devboxes::list))
        .route(
            "/v1/devboxes/create_and_await_running",
            post(devboxes::create),
        )
        .route(d, get(devboxes::retrieve).post(devboxes::update))
        .route(
            &format!("{d}/wait_for_status"),
            post(devboxes::wait_for_status),
        )
        .route(&format!("{d}/shutdown"), post(devboxes::shutdown))
        .route(&format!("{d}/suspend"), post(devboxes::suspend))
        .route(&format!("{d}/resume"), post(devboxes::resume))
        .route(&format!("{d}/keep_alive"), post(devboxes::keep_alive))
        .route(&format!("{d}/logs"), get(executions::logs))
        .route(&format!("{d}/execute_sync"), post(executions::execute_sync))
        .route(&format!("{d}/execute"), post(executions::execute))
        .route(
            &format!("{d}/execute_async"),
            post(executions::execute_async),
        )
        .route(
            &format!("{d}/executions/{{eid}}"),
            get(executions::retrieve),
        )
        .route(
            &format!("{d}/executions/{{eid}}/wait_for_status"),
            post(executions::wait_for_status),
        )
        .route(
            &format!("{d}/executions/{{eid}}/kill"),
            post(executions::kill),
        )
        .route(
            &format!("{d}/executions/{{eid}}/send_std_in"),
            post(executions::send_stdin),
        )
        .route(
            &format!("{d}/executions/{{eid}}/stream_stdout_updates"),
            get(executions::stream_stdout),
        )
        .route(
            &format!("{d}/executions/{{eid}}/stream_stderr_updates"),
            get(executions::stream_stderr),
        )
        .route(
            &format!("{d}/write_file_contents"),
            post(files::write_contents),
        )
        .route(
            &format!("{d}/read_file_contents"),
            post(files::read_contents),
        )
        .route(&format!("{d}/upload_file"), post(files::upload))
        .route(&format!("{d}/download_file"), post(files::download))
        .route(&format!("{d}/enable_tunnel"), post(tunnels::enable))
        .route(&format!("{d}/remove_tunnel"), post(tunnels::remove))
        .route(&format!("{d}/create_tunnel"), post(tunnels::create_legacy))
        .layer(axum::middleware::from_fn_with_state(emu.clone(), dedupe))
        .layer(axum::middleware::from_fn_with_state(
            emu.clone(),
            rate_limited,
        ))
        .layer(axum::middleware::from_fn(authorized))
        // Uploads and contents writes may be large (the conformance suite sends 10 MiB).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    Router::new()
        .merge(api)
        .route("/tunnel/{key}/{port}", any(tunnels::proxy_root))
        .route("/tunnel/{key}/{port}/{*rest}", any(tunnels::proxy))
        .route("/_emulator/runloop/rate_limit", post(set_rate_limit))
        .route(
            "/_emulator/runloop/cut_streams",
            post(set_cut_streams).get(get_cut_streams),
        )
        .with_state(emu)
}

/// Every API call needs `Authorization: Bearer <key>` (any key).
async fn authorized(req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty());
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or malformed bearer token",
        )
        .into_response();
    }
    next.run(req).await
}

async fn set_rate_limit(State(emu): State<Arc<Emu>>, Json(rule): Json<RateLimit>) -> StatusCode {
    *emu.rate_limit.lock().unwrap() = (rule.count > 0).then_some(rule);
    StatusCode::NO_CONTENT
}

async fn set_cut_streams(State(emu): State<Arc<Emu>>, Json(rule): Json<CutStreams>) -> StatusCode {
    *emu.cut_streams.lock().unwrap() = (rule.count > 0).then_some(rule);
    StatusCode::NO_CONTENT
}

/// What is left of the stream-cutting switch (`null` once used up).
async fn get_cut_streams(State(emu): State<Arc<Emu>>) -> Json<serde_json::Value> {
    let left = emu
        .cut_streams
        .lock()
        .unwrap()
        .as_ref()
        .map(|c| serde_json::json!({ "count": c.count, "after_frames": c.after_frames }));
    Json(left.unwrap_or(serde_json::Value::Null))
}

/// The runloop-specific 429 switch (see the module docs).
async fn rate_limited(State(emu): State<Arc<Emu>>, req: Request, next: Next) -> Response {
    let hit = {
        let mut rl = emu.rate_limit.lock().unwrap();
        match rl.as_mut() {
            Some(r)
                if r.path
                    .as_deref()
                    .is_none_or(|p| req.uri().path().starts_with(p)) =>
            {
                r.count -= 1;
                let ms = r.retry_after_ms;
                if r.count == 0 {
                    *rl = None;
                }
                Some(ms)
            }
            _ => None,
        }
    };
    match hit {
        Some(ms) => {
            let mut resp =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate limited").into_response();
            resp.headers_mut().remove("x-should-retry");
            resp.headers_mut()
                .insert("retry-after-ms", HeaderValue::from(ms));
            resp
        }
        None => next.run(req).await,
    }
}

/// POSTs carrying `x-request-id` run once: a retry (or a concurrent duplicate) gets the first
/// successful answer. The handler runs in its own task, holding the key's lock, so a client that
/// hangs up mid-create cannot leave a half-made devbox that its retry then makes again.
/// Failures are not kept, so a retry after an error runs again. Reads of file contents are not
/// kept (they are idempotent and may be large).
async fn dedupe(State(emu): State<Arc<Emu>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let key = match req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(k)
            if req.method() == Method::POST
                && !path.ends_with("/read_file_contents")
                && !path.ends_with("/download_file") =>
        {
            format!("{k} {path}")
        }
        _ => return next.run(req).await,
    };
    let slot = {
        let mut d = emu.dedupe.lock().unwrap();
        if !d.answers.contains_key(&key) {
            d.order.push_back(key.clone());
            if d.order.len() > DEDUPE_KEEP {
                if let Some(old) = d.order.pop_front() {
                    d.answers.remove(&old);
                }
            }
        }
        d.answers.entry(key).or_default().clone()
    };
    let mut guard = slot.lock_owned().await;
    if let Some((status, ct, body)) = guard.as_ref() {
        return cached(*status, ct.clone(), body.clone());
    }
    // Runs to the end (and keeps the key locked) even if this request is dropped.
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        if parts.status.is_success() {
            *guard = Some((
                parts.status,
                parts.headers.get("content-type").cloned(),
                bytes.clone(),
            ));
        }
        drop(guard);
        (parts.status, parts.headers, bytes)
    });
    let Ok((status, headers, bytes)) = task.await else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "handler failed").into_response();
    };
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp.headers_mut().remove("content-length");
    resp
}

fn cached(status: StatusCode, ct: Option<HeaderValue>, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    if let Some(ct) = ct {
        resp.headers_mut().insert("content-type", ct);
    }
    resp
}

/// Long poll: evaluates `check` now and after every change of `notify` until it gives `Some`
/// or `limit` passes (then `None`).
pub(crate) async fn long_poll<T>(
    notify: &Notify,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return check();
        }
    }
}

/// A weak handle for background tasks (they stop when the router is gone).
pub(crate) type WeakEmu = Weak<Emu>;
