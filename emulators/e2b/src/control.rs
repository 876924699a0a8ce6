//! The control plane: `/v2/sandboxes` and the older `/sandboxes` routes, authenticated with
//! any non-empty `X-API-Key`. Errors are `{"code": <status>, "message"}`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::{Emulator, SandboxMeta, DEFAULT_TIMEOUT_SECS};
use crate::time::{now_ms, rfc3339};

/// Longest lifetime a sandbox may be given (the Pro plan's 24 h).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// Page size of `GET /v2/sandboxes` when no `limit` is given.
const DEFAULT_PAGE: usize = 100;

/// A control-plane error.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message.into(),
        )
    }
    fn not_found(id: &str) -> Self {
        ApiError::new(
            404,
            format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({ "code": self.0.as_u16(), "message": self.1 })),
        )
            .into_response()
    }
}

impl From<localbox::Error> for ApiError {
    fn from(e: localbox::Error) -> Self {
        let status = match e.code {
            localbox::ErrorCode::Conflict => 409,
            localbox::ErrorCode::InvalidArgument | localbox::ErrorCode::Forbidden => 400,
            other => other.http_status(),
        };
        ApiError::new(status, e.message)
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

/// The control-plane routes.
pub fn routes() -> Router<Emulator> {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .fallback(|req: axum::extract::Request| async move {
            tracing::debug!(method = %req.method(), uri = %req.uri(), headers = ?req.headers(), "e2b emulator: no route");
            ApiError::new(404, format!("no route {} {}", req.method(), req.uri().path()))
        })
}

/// Any non-empty `X-API-Key` (or a bearer access token, the deprecated alternative) passes.
fn auth(headers: &HeaderMap) -> ApiResult<()> {
    let present = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty() && v.trim() != "Bearer")
    };
    if present("x-api-key") || present("authorization") {
        Ok(())
    } else {
        Err(ApiError::new(
            401,
            "Invalid API key, it must start with 'e2b_'",
        ))
    }
}

fn live(emu: &Emulator, id: &str) -> ApiResult<SandboxMeta> {
    emu.live(id).ok_or_else(|| ApiError::not_found(id))
}

/// The `Sandbox` answer of create and connect.
fn sandbox_json(m: &SandboxMeta) -> Value {
    json!({
        "templateID": m.template,
        "alias": m.template,
        "sandboxID": m.id,
        "clientID": m.client_id,
        "envdVersion": crate::ENVD_VERSION,
        "envdAccessToken": m.access_token,
        "trafficAccessToken": null,
        "domain": null,
    })
}

/// A `ListedSandbox`.
fn listed_json(m: &SandboxMeta) -> Value {
    json!({
        "templateID": m.template,
        "alias": m.template,
        "sandboxID": m.id,
        "clientID": m.client_id,
        "startedAt": rfc3339(m.started_at_ms),
        "endAt": rfc3339(m.end_at_ms),
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 1024,
        "state": if m.paused { "paused" } else { "running" },
        "envdVersion": crate::ENVD_VERSION,
        "metadata": m.metadata,
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

fn check_timeout(secs: u64) -> ApiResult<u64> {
    if secs > MAX_TIMEOUT_SECS {
        return Err(ApiError::new(
            400,
            format!(
                "Timeout cannot be greater than {} hours",
                MAX_TIMEOUT_SECS / 3600
            ),
        ));
    }
    Ok(secs)
}

fn random_id(len: usize) -> String {
    let mut s = String::new();
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

async fn create(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    auth(&headers)?;
    let req: NewSandbox = if body.is_empty() {
        NewSandbox::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(400, format!("invalid body: {e}")))?
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(k) = &key {
        if k.is_empty()
            || k.len() > 255
            || !k
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(ApiError::new(
                400,
                "Idempotency-Key must match [a-z0-9-]{1,255}",
            ));
        }
    }
    let timeout = check_timeout(req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS))?;
    let template = req
        .template_id
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "base".into());
    let metadata = req.metadata.unwrap_or_default();
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(ApiError::new(400, "metadata keys must not be empty"));
    }
    let _guard = emu.inner.create_lock.lock().await;
    // A retried create (same key) answers with the sandbox the first attempt made.
    if let Some(k) = &key {
        let known = emu.inner.idempotency.lock().unwrap().get(k).cloned();
        if let Some(m) = known.and_then(|id| emu.live(&id)) {
            return Ok((StatusCode::CREATED, Json(sandbox_json(&m))).into_response());
        }
    }
    let env_vars = req.env_vars.unwrap_or_default();
    let info = emu
        .engine()
        .create(localbox::SandboxSpec {
            name: None,
            image: Some(template.clone()),
            env: env_vars.clone(),
            labels: metadata.clone(),
            timeout_secs: Some(timeout),
            workdir: None,
        })
        .await?;
    let now = now_ms();
    let meta = SandboxMeta {
        id: random_id(20),
        local_id: info.id,
        template,
        client_id: random_id(8),
        metadata,
        env_vars,
        access_token: random_id(32),
        started_at_ms: now,
        end_at_ms: now + timeout * 1000,
        paused: false,
    };
    emu.inner
        .sandboxes
        .lock()
        .unwrap()
        .insert(meta.id.clone(), meta.clone());
    if let Some(k) = key {
        emu.inner
            .idempotency
            .lock()
            .unwrap()
            .insert(k, meta.id.clone());
    }
    emu.inner.creates.fetch_add(1, Ordering::SeqCst);
    Ok((StatusCode::CREATED, Json(sandbox_json(&meta))).into_response())
}

/// `%XX` decoding (and `+` as space, as form encoding does).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `owner=alice&x=y` (each key and value itself URL-encoded) → pairs.
fn metadata_filter(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

async fn list(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    auth(&headers)?;
    let param = |name: &str| {
        q.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let filter: Vec<(String, String)> = param("metadata")
        .iter()
        .flat_map(|m| metadata_filter(m))
        .collect();
    let states: Vec<&str> = param("state")
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let limit = match param("limit").first() {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::new(400, "limit must be a number"))?
            .clamp(1, 100),
        None => DEFAULT_PAGE,
    };
    let after = param("nextToken")
        .first()
        .map(|t| t.to_string())
        .filter(|t| !t.is_empty());
    let all = emu.sandboxes();
    let running = all.iter().filter(|m| !m.paused).count();
    let mut matching = all.into_iter().filter(|m| {
        let state = if m.paused { "paused" } else { "running" };
        (states.is_empty() || states.contains(&state))
            && filter.iter().all(|(k, v)| m.metadata.get(k) == Some(v))
    });
    let token = |m: &SandboxMeta| format!("{}-{}", m.started_at_ms, m.id);
    let mut page: Vec<SandboxMeta> = Vec::new();
    let mut more = false;
    for m in matching.by_ref() {
        if after.as_deref().is_some_and(|a| after_cmp(&token(&m), a)) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(m);
    }
    let mut resp = Json(Value::Array(page.iter().map(listed_json).collect())).into_response();
    let h = resp.headers_mut();
    h.insert("x-total-running", HeaderValue::from(running));
    if more {
        if let Some(last) = page.last() {
            h.insert("x-next-token", HeaderValue::from_str(&token(last)).unwrap());
        }
    }
    Ok(resp)
}

/// Whether a sandbox with `token` comes at or before the page token `after` (so is skipped).
fn after_cmp(token: &str, after: &str) -> bool {
    let split = |t: &str| {
        let (ms, id) = t.split_once('-').unwrap_or((t, ""));
        (ms.parse::<u64>().unwrap_or(0), id.to_string())
    };
    split(token) <= split(after)
}

async fn detail(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    let mut v = listed_json(&m);
    v["envdAccessToken"] = json!(m.access_token);
    v["domain"] = Value::Null;
    v["lifecycle"] = json!({ "autoResume": false, "onTimeout": "kill" });
    Ok(Json(v).into_response())
}

async fn kill(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    match emu.engine().destroy(&m.local_id).await {
        Ok(()) => {}
        Err(e) if e.code == localbox::ErrorCode::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    emu.forget(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
struct TimeoutBody {
    timeout: Option<u64>,
}

fn body_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("invalid body: {e}")))
}

/// Moves the deadline to `secs` from now (kept by localbox's reaper while running).
fn set_deadline(emu: &Emulator, m: &SandboxMeta, secs: u64) -> ApiResult<SandboxMeta> {
    emu.engine()
        .set_timeout(&m.local_id, Some(Duration::from_secs(secs)))?;
    emu.update(&m.id, |s| s.end_at_ms = now_ms() + secs * 1000)
        .ok_or_else(|| ApiError::not_found(&m.id))
}

async fn set_timeout(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    let b: TimeoutBody = body_json(&body)?;
    let secs = check_timeout(
        b.timeout
            .ok_or_else(|| ApiError::new(400, "timeout is required"))?,
    )?;
    if m.paused {
        emu.update(&id, |s| s.end_at_ms = now_ms() + secs * 1000);
    } else {
        set_deadline(&emu, &m, secs)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    if m.paused {
        return Err(ApiError::new(
            409,
            format!("sandbox \"{id}\" is already paused"),
        ));
    }
    emu.engine().pause(&m.local_id).await?;
    // A paused sandbox does not expire.
    emu.engine().set_timeout(&m.local_id, None)?;
    emu.update(&id, |s| s.paused = true);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Resumes a paused sandbox for `timeout` seconds.
async fn wake(emu: &Emulator, m: &SandboxMeta, timeout: Option<u64>) -> ApiResult<SandboxMeta> {
    let secs = check_timeout(timeout.unwrap_or(DEFAULT_TIMEOUT_SECS))?;
    emu.engine().resume(&m.local_id).await?;
    emu.update(&m.id, |s| s.paused = false);
    set_deadline(emu, m, secs)
}

async fn resume(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    let b: TimeoutBody = body_json(&body)?;
    if !m.paused {
        return Err(ApiError::new(
            409,
            format!("sandbox \"{id}\" is already running"),
        ));
    }
    let m = wake(&emu, &m, b.timeout).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&m))).into_response())
}

/// 201 when it resumed a paused sandbox, 200 when it was running (the deadline only grows).
async fn connect(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    let b: TimeoutBody = body_json(&body)?;
    if m.paused {
        let m = wake(&emu, &m, b.timeout).await?;
        return Ok((StatusCode::CREATED, Json(sandbox_json(&m))).into_response());
    }
    let m = match b.timeout {
        Some(secs) if now_ms() + check_timeout(secs)? * 1000 > m.end_at_ms => {
            set_deadline(&emu, &m, secs)?
        }
        _ => m,
    };
    Ok((StatusCode::OK, Json(sandbox_json(&m))).into_response())
}

async fn refresh(
    State(emu): State<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    auth(&headers)?;
    let m = live(&emu, &id)?;
    #[derive(Deserialize, Default)]
    struct Refresh {
        duration: Option<u64>,
    }
    let b: Refresh = body_json(&body)?;
    if let Some(secs) = b.duration {
        if now_ms() + secs * 1000 > m.end_at_ms {
            set_deadline(&emu, &m, secs)?;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filter_decodes_twice_encoded_pairs() {
        assert_eq!(
            metadata_filter("owner=alice&k%26=v%3D1"),
            vec![
                ("owner".into(), "alice".into()),
                ("k&".into(), "v=1".into())
            ]
        );
    }
}
