//! Connect-RPC framing (JSON codec): unary answers and errors, and the envelopes of server
//! streams (1 flag byte, big-endian u32 length, payload; flag 0x02 ends the stream with a JSON
//! trailer `{}` or `{"error":{"code","message"}}`).

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Flag of the last envelope of a stream.
pub const END_STREAM: u8 = 0x02;

/// A Connect error code with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    FailedPrecondition,
    DeadlineExceeded,
    Unimplemented,
    Unavailable,
    Internal,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::Unauthenticated => "unauthenticated",
            Code::FailedPrecondition => "failed_precondition",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Connect code of a localbox error.
    pub fn of(e: &localbox::Error) -> Code {
        use localbox::ErrorCode as L;
        match e.code {
            L::NotFound => Code::NotFound,
            L::InvalidArgument | L::Forbidden => Code::InvalidArgument,
            L::Conflict => Code::FailedPrecondition,
            L::Unauthorized => Code::Unauthenticated,
            L::Unavailable => Code::Unavailable,
            L::Internal => Code::Internal,
        }
    }
}

/// A Connect error: code and message.
#[derive(Debug, Clone)]
pub struct RpcError(pub Code, pub String);

impl RpcError {
    pub fn json(&self) -> Value {
        json!({ "code": self.0.name(), "message": self.1 })
    }
}

impl From<localbox::Error> for RpcError {
    fn from(e: localbox::Error) -> Self {
        RpcError(Code::of(&e), e.message)
    }
}

impl IntoResponse for RpcError {
    /// A unary error: the code's status and `{"code","message"}`.
    fn into_response(self) -> Response {
        let body = self.json().to_string();
        (
            self.0.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// A unary success: 200 with the JSON message.
pub fn ok(message: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        message.to_string(),
    )
        .into_response()
}

/// One envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A data envelope carrying `message`.
pub fn message(message: &Value) -> Bytes {
    envelope(0, message.to_string().as_bytes())
}

/// The end-of-stream envelope: `{}` or the error.
pub fn end(error: Option<&RpcError>) -> Bytes {
    let trailer = match error {
        None => json!({}),
        Some(e) => json!({ "error": e.json() }),
    };
    envelope(END_STREAM, trailer.to_string().as_bytes())
}

/// The JSON message of a stream request: its first envelope (or, leniently, a bare JSON body).
pub fn stream_request(body: &[u8]) -> Result<Value, RpcError> {
    let bad = |m: String| RpcError(Code::InvalidArgument, m);
    let payload = if body.len() >= 5 && body[0] & !0x01 == 0 {
        if body[0] & 0x01 != 0 {
            return Err(RpcError(
                Code::Unimplemented,
                "compressed envelopes are not supported".into(),
            ));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.get(5..5 + len)
            .ok_or_else(|| bad("truncated envelope".into()))?
    } else {
        body
    };
    if payload.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(payload).map_err(|e| bad(format!("invalid JSON message: {e}")))
}

/// Splits the envelopes off the front of `buf` as a client stream arrives: each complete one's
/// JSON message; what is left is an envelope still incomplete.
pub fn take_envelopes(buf: &mut Vec<u8>) -> Result<Vec<Value>, RpcError> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 5 {
        let flags = buf[at];
        let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
        if buf.len() - at - 5 < len {
            break;
        }
        if flags & 0x01 != 0 {
            return Err(RpcError(
                Code::Unimplemented,
                "compressed envelopes are not supported".into(),
            ));
        }
        let payload = &buf[at + 5..at + 5 + len];
        out.push(if payload.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(payload).map_err(|e| {
                RpcError(Code::InvalidArgument, format!("invalid JSON message: {e}"))
            })?
        });
        at += 5 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// The JSON message of a unary request.
pub fn unary_request(body: &[u8]) -> Result<Value, RpcError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| RpcError(Code::InvalidArgument, format!("invalid JSON message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_stream_envelopes_are_taken_as_they_complete() {
        let mut all = message(&json!({"a": 1})).to_vec();
        all.extend_from_slice(&message(&json!({"b": 2})));
        let mut buf = all[..9].to_vec();
        assert!(take_envelopes(&mut buf).unwrap().is_empty());
        buf.extend_from_slice(&all[9..15]);
        assert_eq!(take_envelopes(&mut buf).unwrap(), vec![json!({"a": 1})]);
        buf.extend_from_slice(&all[15..]);
        assert_eq!(take_envelopes(&mut buf).unwrap(), vec![json!({"b": 2})]);
        assert!(buf.is_empty());
    }

    #[test]
    fn envelopes_round_trip() {
        let e = message(&json!({"a": 1}));
        assert_eq!(&e[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(stream_request(&e).unwrap(), json!({"a": 1}));
        let end = end(Some(&RpcError(Code::Internal, "boom".into())));
        assert_eq!(end[0], END_STREAM);
        assert!(std::str::from_utf8(&end[5..])
            .unwrap()
            .contains("\"internal\""));
    }
}
