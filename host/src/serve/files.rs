//! Files as raw bytes: `GET/PUT/DELETE /v1/sandboxes/{id}/files?path=` and `GET|POST
//! /v1/sandboxes/{id}/dirs?path=` (list, mkdir). Bodies are capped at the plugin's configured
//! file limit (`limits.file_mb`): a larger upload is refused with 413 before it is buffered.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use super::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    pub path: Option<String>,
    pub provider: Option<String>,
    /// PUT: permission bits, octal text such as `755`.
    pub mode: Option<String>,
    /// DELETE: remove a directory and its contents.
    #[serde(default)]
    pub recursive: bool,
    /// POST dirs: create missing parents (default true).
    pub parents: Option<bool>,
}

impl PathQuery {
    fn path(&self) -> ApiResult<&str> {
        match self.path.as_deref() {
            Some(p) if !p.is_empty() && !p.contains('\0') => Ok(p),
            _ => Err(ApiError::bad_request("?path= is required")),
        }
    }
}

pub async fn read(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Response> {
    let path = q.path()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, q.provider.as_deref())?;
    let data = st
        .metrics
        .call(sandbox.provider(), "read-file", sandbox.read_file(path))
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

pub async fn write(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let path = q.path()?.to_string();
    let mode = q
        .mode
        .as_deref()
        .map(|m| u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777))
        .map(|m| m.ok_or_else(|| ApiError::bad_request("mode: octal permission bits such as 644")))
        .transpose()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, q.provider.as_deref())?;
    let cap = st
        .host
        .plugins()
        .into_iter()
        .find(|p| p.name() == sandbox.provider())
        .map_or(64 << 20, |p| p.limits.file_bytes) as usize;
    let data: Bytes = axum::body::to_bytes(body, cap).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than the {} MiB file limit", cap >> 20),
        )
    })?;
    st.metrics
        .call(
            sandbox.provider(),
            "write-file",
            sandbox.write_file(&path, data.to_vec(), mode),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<StatusCode> {
    let path = q.path()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, q.provider.as_deref())?;
    st.metrics
        .call(
            sandbox.provider(),
            "remove",
            sandbox.remove(path, q.recursive),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_dir(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<Value>> {
    let path = q.path()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, q.provider.as_deref())?;
    let entries = st
        .metrics
        .call(sandbox.provider(), "list-dir", sandbox.list_dir(path))
        .await?;
    Ok(Json(
        json!({ "entries": entries.iter().map(crate::json::file_stat).collect::<Vec<_>>() }),
    ))
}

pub async fn mkdir(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<StatusCode> {
    let path = q.path()?;
    let (sandbox, _) = st.sandbox_for(&caller, &id, q.provider.as_deref())?;
    st.metrics
        .call(
            sandbox.provider(),
            "mkdir",
            sandbox.mkdir(path, q.parents.unwrap_or(true)),
        )
        .await?;
    Ok(StatusCode::CREATED)
}
