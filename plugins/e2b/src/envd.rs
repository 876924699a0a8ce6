//! envd, the daemon in each sandbox: Connect-RPC `process.Process` / `filesystem.Filesystem`
//! and plain-HTTP `/files`, authenticated with the sandbox's `X-Access-Token`.

use std::time::Duration;

use kit::connect;
use kit::http::{Method, Request};
use kit::{Result, SandboxRef};
use serde_json::{json, Value};

use crate::config::{self, ENVD_PORT};
use crate::token::Token;

/// Seconds between envd's keepalive messages on a stream we ask for.
pub const KEEPALIVE_SECS: u64 = 30;

/// How to reach one sandbox's envd.
pub struct Envd {
    base: String,
    headers: Vec<(String, String)>,
}

impl Envd {
    /// From the host's reference; a reference without token (an attach by id) fetches it from
    /// the control plane and hands it back to the host.
    pub fn of(sandbox: &SandboxRef) -> Result<Envd> {
        let token = match sandbox.token.as_deref().and_then(Token::decode) {
            Some(t) => t,
            None => {
                let t = crate::api::get(&sandbox.id)?.token();
                kit::refresh_token(&t.encode());
                t
            }
        };
        let domain = token.domain.clone().unwrap_or_else(config::domain);
        let (base, mut headers) = config::sandbox_base(&sandbox.id, &domain, ENVD_PORT);
        if let Some(a) = &token.access {
            headers.push(("x-access-token".into(), a.clone()));
        }
        Ok(Envd { base, headers })
    }

    fn with_headers(&self, mut req: Request) -> Request {
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.connect_timeout(Duration::from_secs(30))
    }

    /// A unary RPC, e.g. `("filesystem.Filesystem", "Stat")`.
    pub fn call(&self, service: &str, method: &str, message: &Value) -> Result<Value> {
        let req = connect::unary_request(&format!("{}/{service}/{method}", self.base), message)
            .first_byte_timeout(Duration::from_secs(60));
        connect::call(self.with_headers(req))
    }

    /// Opens `process.Process/Start` (or `Connect`) as a stream; `timeout_ms` is the command's
    /// lifetime (envd kills it then).
    pub fn stream(
        &self,
        method: &str,
        message: &Value,
        timeout_ms: Option<u64>,
    ) -> Result<connect::Stream> {
        let mut req =
            connect::stream_request(&format!("{}/process.Process/{method}", self.base), message)
                .header("keepalive-ping-interval", KEEPALIVE_SECS.to_string())
                .first_byte_timeout(Duration::from_secs(60))
                // Keepalives arrive every KEEPALIVE_SECS: longer silence is a dead connection.
                .between_bytes_timeout(Duration::from_secs(KEEPALIVE_SECS * 3));
        if let Some(ms) = timeout_ms {
            req = req.header("connect-timeout-ms", ms.to_string());
        }
        connect::Stream::open(self.with_headers(req))
    }

    /// `GET /files?path=` → the bytes.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let req = Request::get(format!("{}/files", self.base))
            .query("path", path)
            .first_byte_timeout(Duration::from_secs(120));
        crate::api::check(self.with_headers(req).send()?)?.bytes()
    }

    /// `POST /files?path=` with a raw body (parents are created, the file replaced).
    pub fn write(&self, path: &str, data: Vec<u8>) -> Result<()> {
        let req = Request::new(Method::Post, format!("{}/files", self.base))
            .query("path", path)
            .header("content-type", "application/octet-stream")
            .body(data)
            .first_byte_timeout(Duration::from_secs(120));
        crate::api::check(self.with_headers(req).send()?).map(drop)
    }

    /// `filesystem.Filesystem/Stat`, `None` when nothing is there.
    pub fn stat(&self, path: &str) -> Result<Option<Value>> {
        match self.call("filesystem.Filesystem", "Stat", &json!({ "path": path })) {
            Ok(v) => Ok(v.get("entry").cloned()),
            Err(kit::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
