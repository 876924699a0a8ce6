//! Bearer tokens bound to tenants. The configuration holds only sha256 digests of tokens, so a
//! leaked config file does not leak credentials; a presented token is hashed and compared in
//! constant time against every digest. With no token configured every caller is the admin of
//! tenant `default` (allowed only on loopback: see `serve::run`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::config::ServeSection;
use super::error::ApiError;
use super::state::AppState;

/// Who is calling, as the handlers see it (a request extension set by [`require_caller`]).
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: String,
    /// The admin sees every tenant's sandboxes, preflight and metrics.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see a sandbox owned by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(self.tenant.as_str())
    }
}

pub struct Auth {
    /// sha256 digest → caller.
    digests: Vec<([u8; 32], Caller)>,
    open: bool,
}

fn parse_digest(hex_str: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(hex_str.trim())
        .map_err(|e| anyhow::anyhow!("{what}: not a hex sha256 digest: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{what}: a sha256 digest has 64 hex digits"))
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub fn from_config(cfg: &ServeSection) -> anyhow::Result<Auth> {
        let mut digests = vec![];
        if let Some(admin) = &cfg.admin_token_sha256 {
            digests.push((
                parse_digest(admin, "[serve] admin_token_sha256")?,
                Caller {
                    tenant: "admin".into(),
                    admin: true,
                },
            ));
        }
        for (name, t) in &cfg.tenants {
            for d in &t.token_sha256 {
                digests.push((
                    parse_digest(d, &format!("[serve.tenants.{name}] token_sha256"))?,
                    Caller {
                        tenant: name.clone(),
                        admin: false,
                    },
                ));
            }
        }
        Ok(Auth {
            open: digests.is_empty(),
            digests,
        })
    }

    /// The caller a token stands for.
    pub fn caller(&self, token: Option<&str>) -> Option<Caller> {
        if self.open {
            return Some(Caller {
                tenant: "default".into(),
                admin: true,
            });
        }
        let d = digest(token?);
        // Compare against every digest so timing does not tell which one matched.
        let mut found = None;
        for (want, caller) in &self.digests {
            if ct_eq(want, &d) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// Middleware: resolves the bearer token to a [`Caller`] or answers 401, then applies the
/// tenant's limit on calls in flight (429 past it).
pub async fn require_caller(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(caller) = state.auth.caller(token) else {
        return ApiError::unauthorized().into_response();
    };
    let permit = match state.tenant(&caller.tenant).calls.clone() {
        Some(sem) => match sem.try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return ApiError::too_many(
                    "quota_exceeded",
                    format!("tenant {:?} has too many calls in flight", caller.tenant),
                )
                .into_response()
            }
        },
        None => None,
    };
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    drop(permit);
    response
}

/// Per-tenant runtime state: its call limiter and the lock that makes count-then-create atomic.
pub struct TenantState {
    pub calls: Option<Arc<tokio::sync::Semaphore>>,
    pub max_sandboxes: Option<usize>,
    pub create_lock: tokio::sync::Mutex<()>,
}

pub fn tenant_states(cfg: &ServeSection) -> HashMap<String, Arc<TenantState>> {
    cfg.tenants
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                Arc::new(TenantState {
                    calls: t
                        .max_concurrent_calls
                        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
                    max_sandboxes: t.max_sandboxes,
                    create_lock: tokio::sync::Mutex::new(()),
                }),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_resolve_to_their_tenant_only() {
        let mut cfg = ServeSection::default();
        cfg.tenants.insert(
            "a".into(),
            super::super::config::TenantConfig {
                token_sha256: vec![hex::encode(digest("ta"))],
                ..Default::default()
            },
        );
        cfg.admin_token_sha256 = Some(hex::encode(digest("root")));
        let auth = Auth::from_config(&cfg).unwrap();
        assert_eq!(auth.caller(Some("ta")).unwrap().tenant, "a");
        assert!(!auth.caller(Some("ta")).unwrap().admin);
        assert!(auth.caller(Some("root")).unwrap().admin);
        assert!(auth.caller(Some("tb")).is_none());
        assert!(auth.caller(None).is_none());
        assert!(
            Auth::from_config(&ServeSection::default())
                .unwrap()
                .caller(None)
                .unwrap()
                .admin
        );
        cfg.admin_token_sha256 = Some("zz".into());
        assert!(Auth::from_config(&cfg).is_err());
    }
}
