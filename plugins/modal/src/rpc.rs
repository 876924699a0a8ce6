//! Modal's two gRPC services as typed calls: the control plane (account token pair, set by the
//! host from the operator's secrets, plus a short-lived `x-modal-auth-token` on `*V2` calls)
//! and the per-task command router (only `authorization: Bearer <router jwt>`).

use std::rc::Rc;
use std::time::Duration;

use kit::grpc::{Call, GrpcError, PendingCall, ServerStream};
use kit::Result;
use prost::Message;

use crate::proto::client as pb;

const CONTROL: &str = "/modal.client.ModalClient/";
const ROUTER: &str = "/modal.task_command_router.TaskCommandRouter/";
/// What the SDK sends; the server accepts any version ≥ 1.0.
const CLIENT_VERSION: &str = "1.6.4";

/// The control plane's base URL (`server-url`, default `https://api.modal.com`).
pub fn server_url() -> String {
    kit::setting("server-url")
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "https://api.modal.com".into())
        .trim_end_matches('/')
        .to_string()
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| kit::provider(0, format!("malformed protobuf answer: {e}")))
}

/// A control-plane call (`auth`: the `x-modal-auth-token` of `*V2` calls).
fn control_call(method: &str, auth: Option<&str>) -> Call {
    let mut c = Call::new(&server_url(), &format!("{CONTROL}{method}"))
        .metadata("x-modal-client-version", CLIENT_VERSION)
        .metadata("x-modal-client-type", "9")
        .deadline(Duration::from_secs(60));
    if let Some(a) = auth {
        c = c.metadata("x-modal-auth-token", a);
    }
    c
}

/// A unary control-plane call, retried on UNAVAILABLE / RESOURCE_EXHAUSTED.
pub fn control<Req: Message, Resp: Message + Default>(
    method: &str,
    auth: Option<&str>,
    req: &Req,
) -> Result<Resp> {
    let bytes = control_call(method, auth).unary(&req.encode_to_vec())?;
    decode(&bytes)
}

/// Like [`control`], with extra metadata (e.g. `x-idempotency-key`).
pub fn control_with<Req: Message, Resp: Message + Default>(
    method: &str,
    auth: Option<&str>,
    extra: &[(&str, &str)],
    req: &Req,
) -> Result<Resp> {
    let mut call = control_call(method, auth);
    for (k, v) in extra {
        call = call.metadata(k, *v);
    }
    decode(&call.unary(&req.encode_to_vec())?)
}

/// A server-streaming control-plane call (image build logs).
pub fn control_stream<Req: Message>(
    method: &str,
    auth: Option<&str>,
    req: &Req,
) -> Result<ServerStream> {
    Ok(control_call(method, auth).open(&req.encode_to_vec())?)
}

/// A fresh `x-modal-auth-token` for `*V2` calls.
pub fn auth_token() -> Result<String> {
    let resp: pb::AuthTokenGetResponse =
        control("AuthTokenGet", None, &pb::AuthTokenGetRequest::default())?;
    Ok(resp.token)
}

/// Where and how to reach a task's command router.
#[derive(Debug, Clone)]
pub struct Router {
    pub url: String,
    pub jwt: String,
}

impl Router {
    fn call(&self, method: &str, deadline: Duration) -> Call {
        Call::new(&self.url, &format!("{ROUTER}{method}"))
            .metadata("authorization", format!("Bearer {}", self.jwt))
            .deadline(deadline)
    }

    /// A unary router call, raw error so the caller can refresh the JWT on UNAUTHENTICATED.
    pub fn unary<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        req: &Req,
        deadline: Duration,
    ) -> std::result::Result<Resp, GrpcError> {
        let bytes = self.call(method, deadline).unary(&req.encode_to_vec())?;
        Resp::decode(bytes.as_slice()).map_err(|e| {
            GrpcError::Transport(kit::provider(0, format!("malformed protobuf answer: {e}")))
        })
    }

    /// Sends a router call without waiting for its answer (pipelining on the HTTP/2
    /// connection); `None` when it could not even be sent (the caller then goes the slow way).
    pub fn start<Req: Message>(
        &self,
        method: &str,
        req: &Req,
        deadline: Duration,
    ) -> Option<PendingCall> {
        self.call(method, deadline).start(&req.encode_to_vec()).ok()
    }

    /// [`start`](Router::start) for a request whose `bytes` field `tag` is left empty in `req`
    /// and sent from `data` as it is (stdin, a file's contents: not copied into the frame).
    pub fn start_with_bytes<Req: Message>(
        &self,
        method: &str,
        req: &Req,
        tag: u32,
        data: Rc<Vec<u8>>,
        deadline: Duration,
    ) -> Option<PendingCall> {
        self.call(method, deadline)
            .start_with_bytes(&req.encode_to_vec(), tag, data)
            .ok()
    }

    /// Opens a server-streaming router call.
    pub fn open<Req: Message>(
        &self,
        method: &str,
        req: &Req,
        deadline: Duration,
    ) -> std::result::Result<ServerStream, GrpcError> {
        self.call(method, deadline).open(&req.encode_to_vec())
    }
}
