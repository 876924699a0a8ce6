//! `[serve]`: tenants and their bearer tokens (stored as sha256, never in clear), per-tenant
//! limits, the admin token, and the idle reaper.
//!
//! ```toml
//! [serve]
//! listen = "0.0.0.0:8080"
//! admin_token_sha256 = "…"            # printf %s "$TOKEN" | sha256sum
//! idle_timeout_secs = 3600             # reap sandboxes nobody called for an hour
//! idle_action = "pause"                # or "destroy"
//!
//! [serve.tenants.acme]
//! token_sha256 = ["…"]
//! max_sandboxes = 20
//! max_concurrent_calls = 64
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Address to listen on when `--listen` is not given (default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// sha256 (hex) of the admin token: preflight, metrics, every tenant's sandboxes.
    pub admin_token_sha256: Option<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// A sandbox nobody called for this long is reaped (default: never).
    pub idle_timeout_secs: Option<u64>,
    /// What reaping does: `pause` (default; destroys when the provider cannot pause) or `destroy`.
    pub idle_action: Option<String>,
    /// How often the reaper looks (default 30 s).
    pub reap_interval_secs: Option<u64>,
    /// Largest JSON request body in KiB (default 16384: exec stdin travels in JSON).
    pub max_json_kib: Option<u64>,
    /// How long SIGTERM waits for in-flight calls before exiting anyway (default 300 s).
    pub shutdown_grace_secs: Option<u64>,
}

/// `[serve.tenants.NAME]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// sha256 (hex) of each bearer token bound to this tenant.
    #[serde(default)]
    pub token_sha256: Vec<String>,
    /// Sandboxes the tenant may have at once (default unlimited).
    pub max_sandboxes: Option<usize>,
    /// Calls the tenant may have in flight at once; more get 429 (default unlimited).
    pub max_concurrent_calls: Option<usize>,
}

impl ServeSection {
    /// Whether any token is configured (without one, only loopback listening is allowed).
    pub fn has_tokens(&self) -> bool {
        self.admin_token_sha256.is_some()
            || self.tenants.values().any(|t| !t.token_sha256.is_empty())
    }
}
