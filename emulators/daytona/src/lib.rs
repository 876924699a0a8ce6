//! Emulator of Daytona's API (see `shared/providers/daytona.md`): the control plane under
//! `/api` and the toolbox (the in-sandbox daemon's API) under `/toolbox/{sandboxId}`, which every
//! Sandbox DTO names as its `toolboxProxyUrl`. Commands really run in localbox.
//!
//! Emulator-only admin route: `POST /_emulator/daytona/transitions {"ms": N}` makes lifecycle
//! transitions (create, start, stop, delete) take N ms, reported through the intermediate states
//! (`creating`, `starting`, `stopping`, `destroying`) as the real service does. The default 0
//! answers with the final state at once (fast tests). `DAYTONA_EMULATOR_TRANSITION_MS` sets the
//! initial value for the binary.

// Handlers return ready answers (`Response`) as their errors: large, but idiomatic in axum.
#![allow(clippy::result_large_err)]

mod control;
mod dto;
mod files;
mod multipart;
mod process;
mod sessions;
mod state;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use emulator_common::Options;

pub use state::App;

/// The emulator's routes. The `sandbox-emulator` binary adds fault injection and serves it.
pub fn router(opts: Options) -> Router {
    let app = Arc::new(App::new(opts));
    if let Some(ms) = std::env::var("DAYTONA_EMULATOR_TRANSITION_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        app.set_transition_ms(ms);
    }
    let admin = Router::new()
        .route(
            "/_emulator/daytona/transitions",
            post(
                |State(app): State<Arc<App>>, Json(v): Json<serde_json::Value>| async move {
                    app.set_transition_ms(v["ms"].as_u64().unwrap_or(0));
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(app.clone());
    let api = control::routes()
        .merge(process::routes())
        .merge(sessions::routes())
        .merge(files::routes())
        .layer(axum::middleware::from_fn(dto::daemon_error_context))
        .layer(axum::middleware::from_fn(require_bearer))
        .with_state(app);
    api.merge(admin)
}

/// Every route but the admin ones and the preview proxy wants `Authorization: Bearer <key>`
/// (any key is accepted, as the fact sheet's local setup says).
async fn require_bearer(req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    if ok || req.uri().path().starts_with("/api/socket.io") {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    dto::api_error(
        401,
        "Unauthorized",
        "missing or malformed bearer token",
        &path,
    )
    .into_response()
}
