//! What every handler shares: the host, auth, metrics, tenant-tagged status events, last-call
//! times for the reaper, and the shutdown signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::auth::{Auth, Caller, TenantState};
use super::config::ServeSection;
use super::error::{ApiError, ApiResult};
use super::metrics::Metrics;
use crate::registry::{now_ms, SessionRecord};
use crate::{Host, RuntimeStatus, Sandbox};

/// A status event with the tenant that owns its sandbox (None: only the admin sees it).
#[derive(Clone, Debug, Serialize)]
pub struct TenantEvent {
    #[serde(skip)]
    pub owner: Option<String>,
    pub provider: String,
    pub sandbox_id: Option<String>,
    pub status: RuntimeStatus,
    pub message: String,
    pub at_ms: i64,
}

pub struct AppState {
    pub host: Host,
    pub cfg: ServeSection,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub events: broadcast::Sender<TenantEvent>,
    pub tenants: HashMap<String, Arc<TenantState>>,
    /// (provider, sandbox id) → last call through this server, Unix ms.
    pub activity: Mutex<HashMap<(String, String), i64>>,
    /// Set once start-up re-attachment finished (`/readyz`).
    pub ready: AtomicBool,
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn tenant(&self, name: &str) -> Arc<TenantState> {
        self.tenants.get(name).cloned().unwrap_or_else(|| {
            Arc::new(TenantState {
                calls: None,
                max_sandboxes: None,
                create_lock: tokio::sync::Mutex::new(()),
            })
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn emit(
        &self,
        owner: Option<&str>,
        provider: &str,
        sandbox_id: Option<&str>,
        status: RuntimeStatus,
        message: impl Into<String>,
    ) {
        let _ = self.events.send(TenantEvent {
            owner: owner.map(str::to_string),
            provider: provider.to_string(),
            sandbox_id: sandbox_id.map(str::to_string),
            status,
            message: message.into(),
            at_ms: now_ms(),
        });
    }

    pub fn touch(&self, provider: &str, id: &str) {
        self.activity
            .lock()
            .unwrap()
            .insert((provider.to_string(), id.to_string()), now_ms());
    }

    /// The caller's sandbox with this id. Someone else's is "not found", exactly like one that
    /// does not exist, so ids of other tenants cannot be probed.
    pub fn sandbox_for(
        &self,
        caller: &Caller,
        id: &str,
        provider: Option<&str>,
    ) -> ApiResult<(Sandbox, SessionRecord)> {
        let visible: Vec<SessionRecord> = self
            .host
            .sessions()
            .find(id)?
            .into_iter()
            .filter(|r| caller.may_see(r.owner.as_deref()))
            .filter(|r| provider.is_none_or(|p| p == r.provider))
            .collect();
        match visible.as_slice() {
            [] => Err(ApiError::not_found(format!("no sandbox {id:?}"))),
            [one] => {
                let sandbox = self.host.sandbox(id, Some(&one.provider))?;
                self.touch(&one.provider, id);
                Ok((sandbox, one.clone()))
            }
            _ => Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "ambiguous",
                format!("sandbox id {id:?} exists under several providers: add ?provider="),
            )),
        }
    }
}
