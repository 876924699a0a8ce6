//! gRPC over HTTP/2 on the server side, by hand: length-prefixed frames in, and responses that
//! end with `grpc-status` trailers (or Trailers-Only headers for errors), which is all grpclib
//! and the plugin need. No tonic: the dispatcher is a plain axum handler, so the shared fault
//! injection middleware sees every call.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;

/// gRPC status codes used here.
#[allow(missing_docs)]
pub mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// A failed call: a gRPC status code and message.
#[derive(Debug, Clone)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(m: impl Into<String>) -> Status {
        Status::new(code::INVALID_ARGUMENT, m)
    }
    pub fn not_found(m: impl Into<String>) -> Status {
        Status::new(code::NOT_FOUND, m)
    }
    pub fn unauthenticated(m: impl Into<String>) -> Status {
        Status::new(code::UNAUTHENTICATED, m)
    }
    pub fn internal(m: impl Into<String>) -> Status {
        Status::new(code::INTERNAL, m)
    }
}

impl From<localbox::Error> for Status {
    fn from(e: localbox::Error) -> Status {
        use localbox::ErrorCode as C;
        let code = match e.code {
            C::InvalidArgument => code::INVALID_ARGUMENT,
            C::Unauthorized => code::UNAUTHENTICATED,
            C::Forbidden => code::PERMISSION_DENIED,
            C::NotFound => code::NOT_FOUND,
            C::Conflict => code::FAILED_PRECONDITION,
            C::Unavailable => code::UNAVAILABLE,
            C::Internal => code::INTERNAL,
        };
        Status::new(code, e.message)
    }
}

/// The result of a handler.
pub type GrpcResult<T> = Result<T, Status>;

/// Splits a request body into its messages (5-byte prefix: compressed flag, big-endian length).
pub fn split_frames(mut body: &[u8]) -> GrpcResult<Vec<Bytes>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(Status::new(code::INTERNAL, "truncated gRPC frame header"));
        }
        if body[0] != 0 {
            return Err(Status::new(
                code::UNIMPLEMENTED,
                "compressed messages are not supported",
            ));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            return Err(Status::new(code::INTERNAL, "truncated gRPC message"));
        }
        out.push(Bytes::copy_from_slice(&body[5..5 + len]));
        body = &body[5 + len..];
    }
    Ok(out)
}

/// The single message of a unary or server-streaming request.
pub fn decode_one<M: Message + Default>(body: &[u8]) -> GrpcResult<M> {
    let frames = split_frames(body)?;
    let first = frames.first().map(|b| b.as_ref()).unwrap_or(&[]);
    M::decode(first).map_err(|e| Status::invalid(format!("malformed request message: {e}")))
}

/// One message as a length-prefixed frame.
pub fn frame<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    m.encode(&mut buf).expect("encoding into a sized buffer");
    buf.freeze()
}

fn base_headers(resp: &mut Response) {
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
}

fn status_fields(status: &Status, headers: &mut HeaderMap) {
    headers.insert("grpc-status", HeaderValue::from(status.code));
    if !status.message.is_empty() {
        // grpc-message is percent-encoded; keep it ASCII-safe.
        let msg: String = status
            .message
            .bytes()
            .flat_map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    vec![b as char]
                } else {
                    format!("%{b:02X}").chars().collect()
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&msg) {
            headers.insert("grpc-message", v);
        }
    }
}

/// A Trailers-Only error response: status in the headers, no body.
pub fn error_response(status: &Status) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::OK;
    base_headers(&mut resp);
    status_fields(status, resp.headers_mut());
    resp
}

/// A unary answer: one message, then `grpc-status: 0` trailers.
pub fn unary<M: Message>(result: GrpcResult<M>) -> Response {
    match result {
        Ok(m) => {
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(frame(&m))),
                Ok(Frame::trailers(ok_trailers())),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            let mut resp = Response::new(Body::new(body));
            base_headers(&mut resp);
            resp
        }
        Err(s) => error_response(&s),
    }
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

/// What a server-streaming handler sends: messages, then the final status.
pub type StreamItem = Result<Bytes, Status>;

/// A status code that is not one: the stream is reset (RST_STREAM) instead of ending, as when a
/// connection breaks mid-output. Used by fault injection.
pub const RESET: i32 = -1;

/// A server-streaming answer fed by `rx`: each `Ok` is sent as is (framed messages, or any
/// bytes); the first `Err` (or the channel closing) ends the stream with that status (or OK)
/// in the trailers, or resets it for [`RESET`].
pub fn streaming(mut rx: mpsc::Receiver<StreamItem>) -> Response {
    let stream = async_stream(
        move |tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>| async move {
            let mut status = Status::new(code::OK, "");
            while let Some(item) = rx.recv().await {
                match item {
                    Ok(bytes) => {
                        if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                            return;
                        }
                    }
                    Err(s) => {
                        status = s;
                        break;
                    }
                }
            }
            if status.code == RESET {
                let _ = tx
                    .send(Err(std::io::Error::other("injected stream reset")))
                    .await;
                return;
            }
            let mut t = HeaderMap::new();
            status_fields(&status, &mut t);
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        },
    );
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
    base_headers(&mut resp);
    resp
}

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

/// A stream of frames produced by a task writing into a channel.
fn async_stream<F, Fut>(f: F) -> ChannelStream
where
    F: FnOnce(mpsc::Sender<FrameResult>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(f(tx));
    ChannelStream(rx)
}

/// The receiving end of [`async_stream`].
pub struct ChannelStream(mpsc::Receiver<FrameResult>);

impl futures_util::Stream for ChannelStream {
    type Item = FrameResult;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let m = crate::proto::client::AuthTokenGetResponse {
            token: "abc".into(),
        };
        let mut body = frame(&m).to_vec();
        body.extend_from_slice(&frame(&m));
        let frames = split_frames(&body).unwrap();
        assert_eq!(frames.len(), 2);
        let back: crate::proto::client::AuthTokenGetResponse = decode_one(&body).unwrap();
        assert_eq!(back.token, "abc");
        assert!(split_frames(&body[..body.len() - 1]).is_err());
    }
}
