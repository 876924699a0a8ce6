//! Emulator of E2B's API (see `shared/providers/e2b.md`): the control plane (`/v2/sandboxes`
//! and the older `/sandboxes` routes) and envd (Connect-RPC `process.Process` and
//! `filesystem.Filesystem`, plain-HTTP `/files` and `/health`) on one origin. Commands really
//! run in a localbox sandbox and files really land there.
//!
//! Routing, as the official SDK needs it when `E2B_SANDBOX_URL` flattens every sandbox onto
//! one origin:
//! - a request with `E2b-Sandbox-Id` (or a `Host` of the form `<port>-<id>.<domain>`) goes to
//!   that sandbox: port 49983 (`E2b-Sandbox-Port`, default) is envd, any other port is proxied
//!   to the server listening on that port inside the sandbox (sandboxes share the host's
//!   loopback);
//! - anything else is the control plane, authenticated with any non-empty `X-API-Key`.
//!
//! Emulation limits: the sandbox user's home `/home/user` is localbox's `/workspace` (paths are
//! mapped both ways in file calls; a command's own `pwd` prints `/workspace`); stdin of a
//! process started with `stdin: true` is delivered when the client closes it (`CloseStdin`).

mod connect;
mod control;
mod envd;
mod multipart;
mod paths;
mod proxy;
mod state;
mod time;
mod watch;

use axum::extract::{Request, State as AxState};
use axum::middleware::Next;
use axum::response::Response;
use emulator_common::Options;

pub use state::{Emulator, SandboxMeta};

/// envd's port inside an E2B sandbox.
pub const ENVD_PORT: u16 = 49983;
/// The envd version the emulator reports (the SDK gates features on it; ≥ 0.6.4).
pub const ENVD_VERSION: &str = "0.6.4";

/// The emulator's routes. The `sandbox-emulator` binary adds fault injection and serves it.
pub fn router(opts: Options) -> axum::Router {
    router_with(Emulator::new(opts))
}

/// The routes over an existing [`Emulator`] state (tests keep a handle to count sandboxes).
pub fn router_with(emu: Emulator) -> axum::Router {
    control::routes()
        .with_state(emu.clone())
        .layer(axum::middleware::from_fn_with_state(emu, sandbox_traffic))
}

/// Sends sandbox-addressed requests (envd and exposed ports) away from the control plane.
async fn sandbox_traffic(AxState(emu): AxState<Emulator>, req: Request, next: Next) -> Response {
    match paths::target(req.headers()) {
        Some((id, port)) if port == ENVD_PORT => envd::handle(emu, id, req).await,
        Some((id, port)) => proxy::forward(emu, id, port, req).await,
        None => next.run(req).await,
    }
}
