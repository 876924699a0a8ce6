//! Sandbox lifecycle: create, list (the caller's, paginated), get, destroy, pause, resume,
//! timeout, port.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use super::state::AppState;
use crate::types::Spec;
use crate::RuntimeStatus;

/// The JSON form of the contract's `spec`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpecJson {
    pub image: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub timeout_secs: Option<u64>,
    pub cpu: Option<f64>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    pub workdir: Option<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl From<SpecJson> for Spec {
    fn from(s: SpecJson) -> Spec {
        Spec {
            image: s.image,
            name: s.name,
            env: s.env.into_iter().collect(),
            labels: s.labels.into_iter().collect(),
            timeout_secs: s.timeout_secs,
            cpu: s.cpu,
            memory_mb: s.memory_mb,
            disk_mb: s.disk_mb,
            workdir: s.workdir,
            ports: s.ports,
            options: s.options.into_iter().collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub provider: String,
    #[serde(default)]
    pub spec: SpecJson,
}

/// `?provider=` to disambiguate an id known under several providers.
#[derive(Deserialize, Default)]
pub struct Which {
    pub provider: Option<String>,
}

pub async fn create(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<Response> {
    let provider = st.host.provider(&body.provider)?;
    let tenant = st.tenant(&caller.tenant);
    // Count and create under one lock so concurrent creates cannot overshoot the limit.
    let _guard = tenant.create_lock.lock().await;
    if let Some(max) = tenant.max_sandboxes {
        let owned = st
            .host
            .registered(None, &BTreeMap::new())?
            .iter()
            .filter(|r| r.owner.as_deref() == Some(caller.tenant.as_str()))
            .count();
        if owned >= max {
            return Err(ApiError::too_many(
                "quota_exceeded",
                format!(
                    "tenant {:?} has {owned} sandboxes, its limit is {max}",
                    caller.tenant
                ),
            ));
        }
    }
    let owner = Some(caller.tenant.as_str());
    st.emit(
        owner,
        &body.provider,
        None,
        RuntimeStatus::Starting,
        "creating sandbox",
    );
    let created = st
        .metrics
        .call(&body.provider, "create", provider.create(body.spec.into()))
        .await;
    let sandbox = match created {
        Ok(s) => s,
        Err(e) => {
            st.emit(
                owner,
                &body.provider,
                None,
                RuntimeStatus::Error,
                e.to_string(),
            );
            return Err(e.into());
        }
    };
    let mut record = sandbox.record()?;
    record.owner = Some(caller.tenant.clone());
    st.host.sessions().put(&record)?;
    st.touch(&record.provider, &record.sandbox_id);
    st.emit(
        owner,
        &record.provider,
        Some(&record.sandbox_id),
        RuntimeStatus::Started,
        "sandbox created",
    );
    st.emit(
        owner,
        &record.provider,
        Some(&record.sandbox_id),
        RuntimeStatus::Ready,
        "sandbox ready",
    );
    Ok((StatusCode::CREATED, Json(crate::json::record(&record))).into_response())
}

/// `GET /v1/sandboxes?provider=P&label=k=v&label=…&limit=N&cursor=C`: the caller's sandboxes
/// from the registry, oldest first; `next_cursor` is null on the last page.
pub async fn list(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let mut provider = None;
    let mut labels = BTreeMap::new();
    let mut limit = 100usize;
    let mut cursor = 0usize;
    for (k, v) in form_pairs(q.as_deref().unwrap_or(""))? {
        match k.as_str() {
            "provider" => provider = Some(v),
            "label" => {
                let (lk, lv) = v
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| ApiError::bad_request(format!("label {v:?}: expected k=v")))?;
                labels.insert(lk.to_string(), lv.to_string());
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::bad_request("limit: expected 1..=1000"))?
            }
            "cursor" => {
                cursor = v
                    .parse()
                    .map_err(|_| ApiError::bad_request("cursor: not one this server handed out"))?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    let mine: Vec<_> = st
        .host
        .registered(provider.as_deref(), &labels)?
        .into_iter()
        .filter(|r| caller.may_see(r.owner.as_deref()))
        .collect();
    let page: Vec<Value> = mine
        .iter()
        .skip(cursor)
        .take(limit)
        .map(crate::json::record)
        .collect();
    let next = (cursor + limit < mine.len()).then(|| (cursor + limit).to_string());
    Ok(Json(json!({ "sandboxes": page, "next_cursor": next })))
}

fn form_pairs(q: &str) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .map_err(|e| ApiError::bad_request(format!("query string: {e}")))
}

/// The registry's record after asking the provider (which refreshes the recorded state).
/// A sandbox the provider no longer knows is reported as `lost`, not silently dropped.
pub async fn get(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<Json<Value>> {
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    match st
        .metrics
        .call(sandbox.provider(), "get", sandbox.info())
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            st.host.sessions().set_state(
                sandbox.provider(),
                &id,
                "lost",
                "the provider no longer knows it",
            )?;
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Json(crate::json::record(&sandbox.record()?)))
}

pub async fn destroy(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<StatusCode> {
    let (sandbox, rec) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    st.metrics
        .call(sandbox.provider(), "destroy", sandbox.destroy())
        .await?;
    st.activity
        .lock()
        .unwrap()
        .remove(&(rec.provider.clone(), id.clone()));
    st.emit(
        rec.owner.as_deref(),
        &rec.provider,
        Some(&id),
        RuntimeStatus::Disconnected,
        "destroyed",
    );
    Ok(StatusCode::NO_CONTENT)
}

pub async fn pause(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<Json<Value>> {
    let (sandbox, rec) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    st.metrics
        .call(sandbox.provider(), "pause", sandbox.pause())
        .await?;
    st.emit(
        rec.owner.as_deref(),
        &rec.provider,
        Some(&id),
        RuntimeStatus::Disconnected,
        "paused",
    );
    Ok(Json(crate::json::record(&sandbox.record()?)))
}

pub async fn resume(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<Json<Value>> {
    let (sandbox, rec) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    st.emit(
        rec.owner.as_deref(),
        &rec.provider,
        Some(&id),
        RuntimeStatus::Starting,
        "resuming",
    );
    st.metrics
        .call(sandbox.provider(), "resume", sandbox.resume())
        .await?;
    st.emit(
        rec.owner.as_deref(),
        &rec.provider,
        Some(&id),
        RuntimeStatus::Ready,
        "resumed",
    );
    Ok(Json(crate::json::record(&sandbox.record()?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutBody {
    pub seconds: u64,
}

pub async fn timeout(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(which): ApiQuery<Which>,
    ApiJson(body): ApiJson<TimeoutBody>,
) -> ApiResult<Json<Value>> {
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    st.metrics
        .call(
            sandbox.provider(),
            "set-timeout",
            sandbox.set_timeout(body.seconds),
        )
        .await?;
    Ok(Json(json!({ "id": id, "timeout_secs": body.seconds })))
}

pub async fn port(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, port)): ApiPath<(String, u16)>,
    ApiQuery(which): ApiQuery<Which>,
) -> ApiResult<Json<Value>> {
    let (sandbox, _) = st.sandbox_for(&caller, &id, which.provider.as_deref())?;
    let ep = st
        .metrics
        .call(sandbox.provider(), "port-url", sandbox.port_url(port))
        .await?;
    Ok(Json(crate::json::endpoint(&ep)))
}
