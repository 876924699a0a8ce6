//! Connect-RPC with the JSON codec over [`crate::http`]: unary calls, server streams read
//! envelope by envelope as they arrive, and the mapping of Connect error codes to the contract's
//! error.
//!
//! A stream body is a sequence of envelopes: 1 flag byte (`0x00` message, `0x01` compressed,
//! `0x02` end of stream), a big-endian `u32` length, then that many bytes of JSON. The last
//! envelope has flag `0x02` and carries `{}` or `{"error": {"code", "message"}}`.
//!
//! ```no_run
//! use kit::connect;
//! # fn demo(base: &str) -> kit::Result<()> {
//! let req = connect::stream_request(&format!("{base}/process.Process/Start"),
//!     &serde_json::json!({"process": {"cmd": "echo", "args": ["hi"]}}));
//! let mut stream = connect::Stream::open(req)?;
//! while let Some(msg) = stream.next_message()? {
//!     // each `msg` is one JSON message, as soon as its envelope is complete
//!     # let _ = msg;
//! }
//! # Ok(()) }
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{error_from_status, provider, Result};
use crate::http::{Request, Response};
use crate::types::Error;

/// Flag of a compressed envelope (never requested by this kit).
pub const COMPRESSED: u8 = 0x01;
/// Flag of the end-of-stream envelope.
pub const END_STREAM: u8 = 0x02;
/// Largest envelope accepted (protects the plugin's memory from a broken peer).
pub const MAX_ENVELOPE: usize = 64 << 20;

/// One envelope: flags, big-endian length, payload.
pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a byte stream into envelopes, whatever the chunking.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
    /// The next complete envelope `(flags, payload)`, if one is buffered.
    pub fn next_envelope(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_ENVELOPE {
            return Err(provider(
                0,
                format!("Connect envelope of {len} bytes is too large"),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let flags = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((flags, payload)))
    }
    /// Bytes buffered that do not make a whole envelope yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The contract's error for a Connect error code (`not_found`, `deadline_exceeded`, ...).
pub fn error_from_code(code: &str, message: &str) -> Error {
    let m = if message.is_empty() {
        code.to_string()
    } else {
        format!("{code}: {message}")
    };
    match code {
        "invalid_argument" | "out_of_range" => Error::InvalidArgument(m),
        "not_found" => Error::NotFound(m),
        "already_exists" | "aborted" | "failed_precondition" => Error::Conflict(m),
        "permission_denied" => Error::Forbidden(m),
        "unauthenticated" => Error::Unauthorized(m),
        "resource_exhausted" => crate::error::rate_limited(None, m),
        "unimplemented" => Error::Unsupported(m),
        "unavailable" => Error::Unavailable(m),
        "deadline_exceeded" => Error::Timeout(m),
        "canceled" => provider(499, m),
        _ => provider(500, m),
    }
}

/// The error of a non-2xx unary answer: a Connect error (`{"code": "<name>"}`) by its code; a
/// proxy's answer (`{"code": 502}` or anything else) by the HTTP status, with `Retry-After`.
pub fn error_from_response(status: u16, retry_after: Option<&str>, body: &[u8]) -> Error {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(code) = v.get("code").and_then(Value::as_str) {
            let message = v.get("message").and_then(Value::as_str).unwrap_or("");
            let e = error_from_code(code, message);
            // A 429 keeps its Retry-After.
            if status == 429 {
                return error_from_status(status, retry_after, message.as_bytes());
            }
            return e;
        }
    }
    error_from_status(status, retry_after, body)
}

/// The error in an end-of-stream trailer, if any (`{}` is a clean end).
pub fn trailer_error(payload: &[u8]) -> Option<Error> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let e = v.get("error")?;
    let code = e.get("code").and_then(Value::as_str).unwrap_or("unknown");
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    Some(error_from_code(code, message))
}

/// A unary call's request: `POST url` with the JSON message and Connect's headers.
pub fn unary_request<T: Serialize + ?Sized>(url: &str, message: &T) -> Request {
    Request::post(url)
        .header("connect-protocol-version", "1")
        .json(message)
}

/// Sends a unary request and decodes the answer; errors map through [`error_from_response`].
pub fn call<T: DeserializeOwned>(req: Request) -> Result<T> {
    let resp = req.send()?;
    let resp = check(resp)?;
    resp.json()
}

/// A non-2xx answer as the contract's error (reads the error body).
pub fn check(mut resp: Response) -> Result<Response> {
    if resp.is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(str::to_string);
    let mut body = Vec::new();
    while body.len() < crate::http::ERROR_BODY_LIMIT {
        match resp.read_chunk() {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    Err(error_from_response(status, retry_after.as_deref(), &body))
}

/// A server-stream call's request: one envelope holding the message, identity encodings.
pub fn stream_request<T: Serialize + ?Sized>(url: &str, message: &T) -> Request {
    let payload = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    Request::post(url)
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("connect-content-encoding", "identity")
        .header("connect-accept-encoding", "identity")
        .body(envelope(0, &payload))
}

/// An open server stream.
pub struct Stream {
    response: Response,
    decoder: Decoder,
    done: bool,
}

impl Stream {
    /// Sends the request; a non-2xx answer is the call's error.
    pub fn open(req: Request) -> Result<Stream> {
        let response = check(req.send()?)?;
        Ok(Stream {
            response,
            decoder: Decoder::new(),
            done: false,
        })
    }

    /// The next message as JSON, as soon as it has fully arrived; `None` after a clean end of
    /// stream. An error trailer is returned as the error; so is a body that ends without one.
    pub fn next_message(&mut self) -> Result<Option<Value>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some((flags, payload)) = self.decoder.next_envelope()? {
                if flags & END_STREAM != 0 {
                    self.done = true;
                    return match trailer_error(&payload) {
                        Some(e) => Err(e),
                        None => Ok(None),
                    };
                }
                if flags & COMPRESSED != 0 {
                    return Err(provider(0, "compressed Connect envelope (not requested)"));
                }
                return serde_json::from_slice(&payload)
                    .map(Some)
                    .map_err(|e| provider(0, format!("invalid JSON in a stream message: {e}")));
            }
            match self.response.read_chunk()? {
                Some(chunk) => self.decoder.push(&chunk),
                None => {
                    self.done = true;
                    return Err(crate::error::unavailable(format!(
                        "{}: the stream ended without its end-of-stream message",
                        self.response.context()
                    )));
                }
            }
        }
    }

    /// The underlying response (headers).
    pub fn response(&self) -> &Response {
        &self.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reassembles_split_envelopes() {
        let mut bytes = envelope(0, br#"{"a":1}"#);
        bytes.extend(envelope(END_STREAM, b"{}"));
        let mut d = Decoder::new();
        d.push(&bytes[..3]);
        assert_eq!(d.next_envelope().unwrap(), None);
        d.push(&bytes[3..9]);
        assert_eq!(d.next_envelope().unwrap(), None);
        d.push(&bytes[9..]);
        assert_eq!(
            d.next_envelope().unwrap(),
            Some((0, br#"{"a":1}"#.to_vec()))
        );
        assert_eq!(
            d.next_envelope().unwrap(),
            Some((END_STREAM, b"{}".to_vec()))
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn codes_map_to_the_contract() {
        assert!(matches!(
            error_from_code("not_found", "x"),
            Error::NotFound(_)
        ));
        assert!(matches!(
            error_from_code("deadline_exceeded", ""),
            Error::Timeout(_)
        ));
        assert!(matches!(
            error_from_code("internal", "boom"),
            Error::Provider(_)
        ));
        assert!(trailer_error(b"{}").is_none());
        let e = trailer_error(br#"{"error":{"code":"unauthenticated","message":"bad token"}}"#);
        assert!(matches!(e, Some(Error::Unauthorized(_))));
    }

    #[test]
    fn proxy_errors_map_by_status() {
        assert!(matches!(
            error_from_response(502, None, br#"{"code":502,"message":"not running"}"#),
            Error::Unavailable(_)
        ));
        match error_from_response(429, Some("2"), br#"{"code":429}"#) {
            Error::RateLimited(r) => assert_eq!(r.retry_after_ms, Some(2000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            error_from_response(404, None, br#"{"code":"not_found","message":"no"}"#),
            Error::NotFound(_)
        ));
    }
}
