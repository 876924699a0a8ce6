//! Wire shapes: the Sandbox DTO with every field the SDK requires, and the two error bodies
//! (control plane: `{path,timestamp,statusCode,error,message}`; daemon: `{statusCode,message,
//! code,timestamp,path,method,source}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::{now_iso, Sandbox};

/// The organization every emulated sandbox belongs to.
pub const ORG_ID: &str = "00000000-0000-4000-8000-000000000000";

/// The full Sandbox DTO (`GET /sandbox/{id}` and lifecycle answers).
pub fn sandbox(sb: &Sandbox, toolbox_url: &str) -> Value {
    let mut v = list_item(sb, toolbox_url);
    v["env"] = json!(sb.env);
    v["kvm"] = json!(false);
    v
}

/// A `SandboxListItem`: the DTO without `env` and `kvm`.
pub fn list_item(sb: &Sandbox, toolbox_url: &str) -> Value {
    json!({
        "id": sb.id,
        "organizationId": ORG_ID,
        "name": sb.name,
        "snapshot": sb.snapshot,
        "user": "daytona",
        "labels": sb.labels,
        "public": sb.public,
        "networkBlockAll": false,
        "target": sb.target,
        "cpu": sb.cpu,
        "gpu": sb.gpu,
        "memory": sb.memory,
        "disk": sb.disk,
        "state": sb.state,
        "desiredState": sb.desired_state,
        "errorReason": sb.error_reason,
        "recoverable": false,
        "autoStopInterval": sb.auto_stop,
        "autoArchiveInterval": sb.auto_archive,
        "autoDeleteInterval": sb.auto_delete,
        "volumes": [],
        "createdAt": sb.created_at,
        "updatedAt": sb.updated_at,
        "lastActivityAt": sb.updated_at,
        "backupState": "None",
        "daemonVersion": "0.226.1-emulator",
        "toolboxProxyUrl": toolbox_url,
    })
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A control-plane error answer.
pub fn api_error(status: u16, error: &str, message: &str, path: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error = if error.is_empty() {
        reason(status)
    } else {
        error
    };
    (
        code,
        Json(json!({
            "path": path, "timestamp": now_iso(), "statusCode": status,
            "error": error, "message": message,
        })),
    )
        .into_response()
}

/// A toolbox (daemon) error answer; `code` selects the SDK's finer error classes. The request's
/// `path` and `method`, which the SDK requires, are added by [`daemon_error_context`].
pub fn daemon_error(status: u16, code: &str, message: &str) -> Response {
    let sc = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = daemon_error_body(status, code, message);
    let mut r = (sc, Json(body.clone())).into_response();
    r.extensions_mut().insert(DaemonError(body));
    r
}

/// The body of a [`daemon_error`] answer, for [`daemon_error_context`] to complete.
#[derive(Clone)]
struct DaemonError(Value);

/// Completes daemon errors with the request's `path` (as the daemon sees it, without the
/// proxy's `/toolbox/{id}`) and `method`.
pub async fn daemon_error_context(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let Some(DaemonError(mut body)) = resp.extensions().get::<DaemonError>().cloned() else {
        return resp;
    };
    let daemon_path = path
        .strip_prefix("/toolbox/")
        .and_then(|rest| rest.find('/').map(|i| rest[i..].to_string()))
        .unwrap_or(path);
    body["path"] = json!(daemon_path);
    body["method"] = json!(method);
    (resp.status(), Json(body)).into_response()
}

pub fn daemon_error_body(status: u16, code: &str, message: &str) -> Value {
    json!({
        "statusCode": status, "message": message, "code": code,
        "timestamp": now_iso(), "source": "DAYTONA_DAEMON",
    })
}

/// A localbox failure as a daemon error.
pub fn from_localbox(e: localbox::Error) -> Response {
    let (status, code) = localbox_status(&e);
    daemon_error(status, code, &e.to_string())
}

pub fn localbox_status(e: &localbox::Error) -> (u16, &'static str) {
    use localbox::ErrorCode as C;
    match e.code {
        C::NotFound => (404, "FILE_NOT_FOUND"),
        C::InvalidArgument => (400, "BAD_REQUEST"),
        C::Conflict => (409, "CONFLICT"),
        C::Unauthorized => (401, "UNAUTHORIZED"),
        C::Forbidden => (403, "FORBIDDEN"),
        C::Unavailable => (503, "SERVICE_UNAVAILABLE"),
        C::Internal => (500, "INTERNAL_ERROR"),
    }
}
