//! The sandbox token (task id, router URL and JWT, workdir): fetched, refreshed on
//! UNAUTHENTICATED, and the router calls made with it.

use super::*;

// The sandbox token.

/// What the plugin remembers about a sandbox, in the host-persisted token.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Token {
    pub(crate) task: String,
    pub(crate) url: String,
    pub(crate) jwt: String,
    pub(crate) wd: String,
}

impl Token {
    pub(crate) fn parse(s: &Option<String>) -> Option<Token> {
        s.as_deref().and_then(|t| serde_json::from_str(t).ok())
    }
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    pub(crate) fn router(&self) -> Router {
        Router {
            url: self.url.clone(),
            jwt: self.jwt.clone(),
        }
    }
}

/// Router access for a sandbox: from its token, else from the control plane.
pub(crate) fn token_for(sandbox: &SandboxRef) -> Result<Token> {
    if let Some(t) = Token::parse(&sandbox.token) {
        return Ok(t);
    }
    let wd = DEFAULT_WORKDIR.to_string();
    fetch_access(&sandbox.id, wd)
}

/// Task id and fresh router access from the control plane.
pub(crate) fn fetch_access(sandbox_id: &str, wd: String) -> Result<Token> {
    let auth = rpc::auth_token()?;
    let task = wait_task_id(sandbox_id, &auth)?;
    let access: pb::SandboxGetCommandRouterAccessResponse = rpc::control(
        "SandboxGetCommandRouterAccess",
        Some(&auth),
        &pb::SandboxGetCommandRouterAccessRequest {
            target: Some(
                pb::sandbox_get_command_router_access_request::Target::SandboxId(
                    sandbox_id.to_string(),
                ),
            ),
        },
    )?;
    Ok(Token {
        task,
        url: access.url,
        jwt: access.jwt,
        wd,
    })
}

pub(crate) fn wait_task_id(sandbox_id: &str, auth: &str) -> Result<String> {
    let started = Instant::now();
    loop {
        let r: pb::SandboxGetTaskIdResponse = rpc::control(
            "SandboxGetTaskIdV2",
            Some(auth),
            &pb::SandboxGetTaskIdRequest {
                sandbox_id: sandbox_id.into(),
                ..Default::default()
            },
        )?;
        if let Some(t) = r.task_id.filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        if r.task_result.is_some_and(|res| res.status != 0) {
            return Err(kit::not_found(format!("sandbox {sandbox_id} has finished")));
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(kit::timeout(format!(
                "sandbox {sandbox_id} did not start within 300 s"
            )));
        }
        kit::sleep(Duration::from_millis(200));
    }
}

/// Runs a router call; on UNAUTHENTICATED, refreshes the JWT once (persisting the new token).
pub(crate) fn with_router<T>(
    sandbox_id: &str,
    token: &mut Token,
    f: impl Fn(&Router) -> std::result::Result<T, GrpcError>,
) -> Result<T> {
    match f(&token.router()) {
        Err(e) if e.code() == code::UNAUTHENTICATED => {
            *token = fetch_access(sandbox_id, token.wd.clone())?;
            kit::refresh_token(&token.encode());
            Ok(f(&token.router())?)
        }
        other => Ok(other?),
    }
}
