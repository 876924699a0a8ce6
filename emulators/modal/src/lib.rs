//! Emulator of Modal's gRPC API (see `../shared/providers/modal.md`): one h2c port serving both
//! the control plane (`modal.client.ModalClient`) and the task command router
//! (`modal.task_command_router.TaskCommandRouter`), commands really running in localbox.
//!
//! gRPC is spoken by hand over axum (see [`grpc`]): `POST /<package>.<Service>/<Method>` over
//! HTTP/2 only (HTTP/1.1 gets 505, as from a real gRPC server), framed protobuf messages
//! generated at build time from the vendored descriptor set `proto/modal.fds.bin` ([`proto`]).
//! Unknown methods answer `UNIMPLEMENTED`. Token headers are checked on the control plane,
//! `x-modal-auth-token` on `*V2` calls, the router JWT on the router. The fs-tools helper is
//! answered natively ([`fs_tools`]); encrypted tunnels are TLS proxies with a test CA
//! ([`tunnels`]).
//!
//! Faults: the shared `emulator_common` switches apply to every path (HTTP 503 and 429 read as
//! UNAVAILABLE / RESOURCE_EXHAUSTED by gRPC clients, `drop` cuts a stream, `latency`), plus the
//! gRPC-native ones of [`router_with`] (Trailers-Only statuses, an output stream reset in the
//! middle of a message, router JWT revocation).

pub mod control;
pub mod exec;
pub mod fs_tools;
pub mod grpc;
pub mod proto;
pub mod state;
pub mod tunnels;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use emulator_common::Options;

/// The control plane's gRPC service path.
pub const CONTROL_SERVICE: &str = "modal.client.ModalClient";
/// The router's gRPC service path.
pub const ROUTER_SERVICE: &str = "modal.task_command_router.TaskCommandRouter";

/// The emulator's routes. The `sandbox-emulator` binary adds fault injection and serves them
/// over hyper-util's auto builder (HTTP/1.1 and h2c prior knowledge on one port).
pub fn router(opts: Options) -> axum::Router {
    router_with(Arc::new(state::Emu::new(opts.engine)))
}

/// The routes over a given state (tests inspect it), plus admin routes (never faulted):
/// - `POST /_emulator/modal/output-reset {"after_bytes": N}`: the next output stream
///   (`TaskExecStdioRead`) is reset after N bytes, in the middle of a message;
/// - `POST /_emulator/modal/grpc-faults [{"method": "AppGetOrCreate", "code": 14, "count": 2}]`:
///   gRPC errors (Trailers-Only) for the next calls of a method (any method when empty),
///   e.g. 14 UNAVAILABLE, 8 RESOURCE_EXHAUSTED;
/// - `GET` on the two routes above: what is still pending;
/// - `GET /_emulator/modal/ca.pem`: the CA that signs the encrypted tunnels' certificates;
/// - `POST /_emulator/modal/revoke-jwts`: every router JWT handed out so far is refused
///   (UNAUTHENTICATED), so clients must fetch fresh access.
pub fn router_with(emu: Arc<state::Emu>) -> axum::Router {
    axum::Router::new()
        .route(
            "/_emulator/modal/output-reset",
            post(output_reset).get(pending_resets),
        )
        .route(
            "/_emulator/modal/grpc-faults",
            post(grpc_faults).get(pending_grpc_faults),
        )
        .route("/_emulator/modal/revoke-jwts", post(revoke_jwts))
        .route("/_emulator/modal/ca.pem", axum::routing::get(ca_pem))
        .route("/{service}/{method}", post(dispatch))
        // Stdin and file uploads arrive as large messages (the SDK sends 256 KiB chunks, the
        // plugin larger ones).
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(emu)
}

#[derive(serde::Deserialize)]
struct OutputReset {
    after_bytes: usize,
}

async fn output_reset(
    State(emu): State<Arc<state::Emu>>,
    axum::Json(r): axum::Json<OutputReset>,
) -> StatusCode {
    emu.output_resets.lock().unwrap().push(r.after_bytes);
    StatusCode::NO_CONTENT
}

async fn grpc_faults(
    State(emu): State<Arc<state::Emu>>,
    axum::Json(f): axum::Json<Vec<state::GrpcFault>>,
) -> StatusCode {
    emu.grpc_faults.lock().unwrap().extend(f);
    StatusCode::NO_CONTENT
}

/// What is still pending, so a test can tell its faults were injected.
async fn pending_resets(State(emu): State<Arc<state::Emu>>) -> axum::Json<Vec<usize>> {
    axum::Json(emu.output_resets.lock().unwrap().clone())
}

async fn pending_grpc_faults(
    State(emu): State<Arc<state::Emu>>,
) -> axum::Json<Vec<state::GrpcFault>> {
    axum::Json(emu.grpc_faults.lock().unwrap().clone())
}

async fn ca_pem(State(emu): State<Arc<state::Emu>>) -> Response {
    match &emu.tls {
        Some(t) => t.ca_pem.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "no TLS").into_response(),
    }
}

async fn revoke_jwts(State(emu): State<Arc<state::Emu>>) -> StatusCode {
    emu.jwt_epoch
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn dispatch(
    State(emu): State<Arc<state::Emu>>,
    Path((service, method)): Path<(String, String)>,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // gRPC needs HTTP/2 (trailers): an HTTP/1.1 client gets what a real gRPC server gives it.
    if version != Version::HTTP_2 {
        return (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "gRPC requires HTTP/2",
        )
            .into_response();
    }
    // HTTP/2 carries `:authority` in the URI; HTTP/1.1 in `host`.
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".into());
    tracing::debug!(%service, %method, bytes = body.len(), "grpc call");
    if let Some(f) = emu.take_grpc_fault(&method) {
        tracing::info!(%method, code = f.code, "injecting gRPC fault");
        return grpc::error_response(&grpc::Status::new(
            f.code,
            if f.message.is_empty() {
                "injected fault".into()
            } else {
                f.message
            },
        ));
    }
    match service.as_str() {
        CONTROL_SERVICE => control::handle(&emu, &method, &headers, &authority, &body).await,
        ROUTER_SERVICE => exec::handle(&emu, &method, &headers, &body).await,
        other => grpc::error_response(&grpc::Status::new(
            grpc::code::UNIMPLEMENTED,
            format!("unknown service {other}"),
        )),
    }
}
