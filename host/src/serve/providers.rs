//! `GET /v1/providers` (every loaded plugin, live: hot reload shows here without a restart) and
//! `POST /v1/providers/{name}/preflight` (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiPath, ApiResult};
use super::state::AppState;

pub async fn list(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    let providers: Vec<Value> = st
        .host
        .plugins()
        .iter()
        .map(|p| {
            let mut v = crate::json::plugin(p);
            if !caller.admin {
                // Where files live on the server is the operator's business.
                if let Some(o) = v.as_object_mut() {
                    o.remove("path");
                }
            }
            v
        })
        .collect();
    Json(json!({ "providers": providers }))
}

pub async fn preflight(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    if !caller.admin {
        return Err(ApiError::forbidden("preflight needs the admin token"));
    }
    let provider = st.host.provider(&name)?;
    let checks = st
        .metrics
        .call(&name, "preflight", provider.preflight())
        .await?;
    Ok(Json(json!({
        "provider": name,
        "ok": checks.iter().all(|c| c.ok),
        "checks": checks.iter().map(crate::json::check).collect::<Vec<_>>(),
    })))
}
