//! Tunnels: `enable_tunnel` / `remove_tunnel` (V2: one key for every port), the legacy
//! `create_tunnel {port}` answering a URL, and the tunnels themselves: `{base}/tunnel/{key}/{port}/…`
//! is proxied to `127.0.0.1:{port}` — localbox sandboxes share the host's network, so that is
//! the server started in the devbox.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{new_id, now_ms, ApiError, Tunnel};
use crate::wire::json as json_resp;
use crate::Emu;

/// The header an authenticated tunnel wants: `Bearer {auth_token}`.
pub const TUNNEL_AUTH_HEADER: &str = "x-runloop-tunnel-authorization";

/// A tunnel from an `enable_tunnel` (or create `tunnel`) body.
pub(crate) fn new_tunnel(body: &Value) -> Tunnel {
    let auth_mode = body
        .get("auth_mode")
        .and_then(Value::as_str)
        .unwrap_or("open")
        .to_string();
    Tunnel {
        key: new_id("tnl").replace('_', "").to_lowercase(),
        auth_token: (auth_mode == "authenticated")
            .then(|| uuid::Uuid::new_v4().simple().to_string()),
        auth_mode,
        create_time_ms: now_ms(),
        http_keep_alive: body
            .get("http_keep_alive")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        wake_on_http: body
            .get("wake_on_http")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// The devbox's tunnel, made if it has none.
fn ensure(emu: &Emu, id: &str, body: &Value) -> Result<Tunnel, ApiError> {
    emu.with_devbox(id, |d| {
        if matches!(d.status.as_str(), "shutdown" | "failure") {
            return Err(ApiError::bad(format!("devbox {id} is {}", d.status)));
        }
        Ok(d.tunnel.get_or_insert_with(|| new_tunnel(body)).clone())
    })
}

pub(crate) async fn enable(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Response, ApiError> {
    let body = body.map(|b| b.0).unwrap_or_else(|| json!({}));
    Ok(json_resp(ensure(&emu, &id, &body)?.view()))
}

pub(crate) async fn remove(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    emu.with_devbox(&id, |d| {
        d.tunnel = None;
        Ok(())
    })?;
    Ok(json_resp(json!({})))
}

/// Legacy (OpenHands): `{port}` → `{devbox_id, port, url}`.
pub(crate) async fn create_legacy(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let port = body
        .get("port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| ApiError::bad("`port` must be 1-65535"))?;
    let t = ensure(&emu, &id, &json!({}))?;
    let url = format!("{}/tunnel/{}/{port}", emu.opts.base_url, t.key);
    Ok(json_resp(
        json!({ "devbox_id": id, "port": port, "url": url }),
    ))
}

pub(crate) async fn proxy_root(
    State(emu): State<Arc<Emu>>,
    Path((key, port)): Path<(String, u16)>,
    req: Request,
) -> Response {
    forward(&emu, &key, port, "", req).await
}

pub(crate) async fn proxy(
    State(emu): State<Arc<Emu>>,
    Path((key, port, rest)): Path<(String, u16, String)>,
    req: Request,
) -> Response {
    forward(&emu, &key, port, &rest, req).await
}

async fn forward(emu: &Emu, key: &str, port: u16, rest: &str, mut req: Request) -> Response {
    let tunnel = {
        let all = emu.devboxes.lock().unwrap();
        all.iter()
            .find(|d| d.tunnel.as_ref().is_some_and(|t| t.key == key))
            .map(|d| (d.status.clone(), d.tunnel.clone().unwrap()))
    };
    let Some((status, tunnel)) = tunnel else {
        return (StatusCode::NOT_FOUND, "no such tunnel").into_response();
    };
    if let Some(token) = &tunnel.auth_token {
        let given = req
            .headers()
            .get(TUNNEL_AUTH_HEADER)
            .and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, "tunnel authorization required").into_response();
        }
    }
    if status != "running" {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("devbox is {status}"),
        )
            .into_response();
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let Ok(uri) = format!("http://127.0.0.1:{port}/{rest}{query}").parse::<Uri>() else {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    };
    *req.uri_mut() = uri;
    req.headers_mut().remove(TUNNEL_AUTH_HEADER);
    req.headers_mut().remove("host");
    match emu.proxy.request(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("nothing answers on port {port} in the devbox: {e}"),
        )
            .into_response(),
    }
}
