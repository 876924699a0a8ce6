//! Emulator of e2b's API (see `../shared/providers/e2b.md`). Not written yet.

use emulator_common::Options;

/// The emulator's routes. The `sandbox-emulator` binary adds fault injection and serves it.
pub fn router(opts: Options) -> axum::Router {
    let _ = opts;
    axum::Router::new().fallback(|| async { (axum::http::StatusCode::NOT_IMPLEMENTED, "the e2b emulator is not implemented yet") })
}
