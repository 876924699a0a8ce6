//! Traffic to a port of a sandbox (`E2b-Sandbox-Port` other than envd's, or a `Host` of the
//! form `<port>-<id>.<domain>`): forwarded to that port on loopback, where localbox sandboxes'
//! servers listen (they share the host's network).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::state::Emulator;

/// The pooled client used for forwarding.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

fn bad_gateway(message: String) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Json(json!({ "code": 502, "message": message })),
    )
        .into_response()
}

/// Forwards `req` to `127.0.0.1:<port>` if the sandbox is running.
pub async fn forward(emu: Emulator, id: String, port: u16, req: Request) -> Response {
    match emu.live(&id) {
        Some(m) if !m.paused => {}
        Some(_) => return bad_gateway(format!("The sandbox {id} is paused")),
        None => return bad_gateway(format!("The sandbox {id} was not found")),
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = match format!("http://127.0.0.1:{port}{path}").parse::<Uri>() {
        Ok(u) => u,
        Err(e) => return bad_gateway(format!("bad path: {e}")),
    };
    for name in [
        "e2b-sandbox-id",
        "e2b-sandbox-port",
        "e2b-traffic-access-token",
    ] {
        parts.headers.remove(name);
    }
    parts
        .headers
        .insert(header::HOST, format!("127.0.0.1:{port}").parse().unwrap());
    match emu
        .inner
        .http
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(resp) => resp.map(Body::new),
        Err(_) => bad_gateway(format!(
            "The sandbox is running but port {port} is not open"
        )),
    }
}
