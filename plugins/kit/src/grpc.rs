//! gRPC over the kit's HTTP client (HTTP/2: h2c to hosts the operator marks, ALPN over TLS).
//!
//! Byte-level, so any protobuf library fits: a request is one message (`frame`d with the 5-byte
//! prefix: flag 0, big-endian length); a response is read frame by frame as the body arrives
//! ([`ServerStream`]), and its status comes from the trailers, or from the headers of a
//! Trailers-Only answer. Non-200 HTTP statuses (proxies, fault injectors) map to gRPC codes as
//! the gRPC spec says. Unary calls retry `UNAVAILABLE` and `RESOURCE_EXHAUSTED` with backoff
//! ([`Call::unary`]).
//!
//! ```no_run
//! # fn demo(msg: Vec<u8>) -> kit::Result<()> {
//! use kit::grpc::Call;
//! let reply = Call::new("https://api.example.com", "/pkg.Service/Method")
//!     .metadata("x-api-token", "t")
//!     .unary(&msg)?;
//! # let _ = reply; Ok(()) }
//! ```

use std::time::Duration;

use crate::error::{
    conflict, forbidden, invalid_argument, not_found, provider, rate_limited, timeout,
    unauthorized, unavailable, unsupported,
};
use crate::http::{Request, Response};
use crate::types::Error;

/// gRPC status codes.
pub mod code {
    pub const OK: i32 = 0;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// A call that failed: with a gRPC status, or before one arrived (transport).
#[derive(Debug, Clone)]
pub enum GrpcError {
    Status { code: i32, message: String },
    Transport(Error),
}

impl GrpcError {
    /// The gRPC code (`UNAVAILABLE` for transport failures).
    pub fn code(&self) -> i32 {
        match self {
            GrpcError::Status { code, .. } => *code,
            GrpcError::Transport(Error::Unavailable(_)) => code::UNAVAILABLE,
            GrpcError::Transport(Error::Timeout(_)) => code::DEADLINE_EXCEEDED,
            GrpcError::Transport(_) => code::UNKNOWN,
        }
    }
    /// Worth retrying: the server is unavailable or throttling, or the connection failed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code(), code::UNAVAILABLE | code::RESOURCE_EXHAUSTED)
    }
}

impl std::fmt::Display for GrpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcError::Status { code, message } => write!(f, "gRPC status {code}: {message}"),
            GrpcError::Transport(e) => write!(f, "{e:?}"),
        }
    }
}

impl From<GrpcError> for Error {
    fn from(e: GrpcError) -> Error {
        let (code, message) = match e {
            GrpcError::Transport(e) => return e,
            GrpcError::Status { code, message } => (code, message),
        };
        match code {
            code::INVALID_ARGUMENT | code::OUT_OF_RANGE => invalid_argument(message),
            code::DEADLINE_EXCEEDED => timeout(message),
            code::NOT_FOUND => not_found(message),
            code::ALREADY_EXISTS | code::FAILED_PRECONDITION | code::ABORTED => conflict(message),
            code::PERMISSION_DENIED => forbidden(message),
            code::RESOURCE_EXHAUSTED => rate_limited(None, message),
            code::UNIMPLEMENTED => unsupported(&message),
            code::UNAVAILABLE | code::CANCELLED => unavailable(message),
            code::UNAUTHENTICATED => unauthorized(message),
            other => provider(0, format!("gRPC status {other}: {message}")),
        }
    }
}

/// One message with the gRPC 5-byte prefix.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The head of a frame carrying `message` (encoded without its large `bytes` field) and then
/// that field, `tag`, holding `data_len` bytes: the field's bytes follow the head on the wire.
/// Protobuf reads fields in any order, so the field may come last.
pub fn frame_head_with_bytes(message: &[u8], tag: u32, data_len: usize) -> Vec<u8> {
    let mut field = Vec::with_capacity(20);
    put_varint(&mut field, u64::from(tag) << 3 | 2);
    put_varint(&mut field, data_len as u64);
    let len = message.len() + field.len() + data_len;
    let mut out = Vec::with_capacity(5 + message.len() + field.len());
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(&field);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Largest buffer reserved up front from a message's declared length (a longer message still
/// arrives, in a growing buffer): a peer cannot make the plugin allocate by claiming a size.
const PRESIZE_LIMIT: usize = 16 << 20;

/// Splits a byte stream into gRPC messages as the bytes arrive. Each message's bytes are
/// gathered once, into a buffer sized from its prefix (a large message arrives in many
/// HTTP/2 DATA frames; it is neither regrown nor copied out again).
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes of the next prefix, until all five are in.
    head: Vec<u8>,
    /// The message being gathered: its declared length and its bytes so far.
    body: Option<(usize, Vec<u8>)>,
    ready: std::collections::VecDeque<Vec<u8>>,
    compressed: bool,
}

impl FrameReader {
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.compressed {
            match &mut self.body {
                None => {
                    let take = (5 - self.head.len()).min(bytes.len());
                    self.head.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.head.len() == 5 {
                        if self.head[0] != 0 {
                            self.compressed = true;
                            return;
                        }
                        let h = &self.head;
                        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                        self.head.clear();
                        self.body = Some((len, Vec::with_capacity(len.min(PRESIZE_LIMIT))));
                    }
                }
                Some((len, buf)) => {
                    let take = (*len - buf.len()).min(bytes.len());
                    buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                }
            }
            if let Some((len, buf)) = &self.body {
                if buf.len() == *len {
                    let (_, buf) = self.body.take().expect("checked above");
                    self.ready.push_back(buf);
                }
            }
        }
    }
    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, GrpcError> {
        if let Some(m) = self.ready.pop_front() {
            return Ok(Some(m));
        }
        if self.compressed {
            return Err(GrpcError::Status {
                code: code::INTERNAL,
                message: "compressed gRPC message (not requested)".into(),
            });
        }
        Ok(None)
    }
    /// Bytes of an incomplete message left over.
    pub fn pending(&self) -> usize {
        self.head.len() + self.body.as_ref().map_or(0, |(_, b)| 5 + b.len())
    }
}

/// `grpc-timeout` for a duration (at most 8 digits, as the spec wants).
pub fn timeout_header(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// Percent-decodes `grpc-message`.
pub fn decode_message(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status in a set of fields (headers of a Trailers-Only answer, or trailers).
fn status_in(fields: &[(String, String)]) -> Option<GrpcError> {
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let code: i32 = get("grpc-status")?.trim().parse().unwrap_or(code::UNKNOWN);
    let message = get("grpc-message").map(decode_message).unwrap_or_default();
    Some(GrpcError::Status { code, message })
}

/// The gRPC code for an HTTP status that is not 200 (gRPC's HTTP-to-gRPC mapping; 429 as
/// RESOURCE_EXHAUSTED so throttling is recognisable).
fn code_for_http(status: u16) -> i32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 => code::RESOURCE_EXHAUSTED,
        502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// Retries of [`Call::unary`]: attempts and the first backoff (doubling, capped at 2 s).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_backoff: Duration::from_millis(100),
        }
    }
}

/// One gRPC method on one server, with its metadata.
#[derive(Debug, Clone)]
pub struct Call {
    url: String,
    metadata: Vec<(String, String)>,
    deadline: Option<Duration>,
    retry: Retry,
}

impl Call {
    /// `base` is `scheme://host[:port]`, `path` is `/package.Service/Method`.
    pub fn new(base: &str, path: &str) -> Call {
        Call {
            url: format!("{}{}", base.trim_end_matches('/'), path),
            metadata: Vec::new(),
            deadline: None,
            retry: Retry::default(),
        }
    }
    /// Adds a metadata header (lower-case name).
    pub fn metadata(mut self, name: &str, value: impl Into<String>) -> Call {
        self.metadata.push((name.to_string(), value.into()));
        self
    }
    /// Sends `grpc-timeout` and bounds the wait for the answer's head.
    pub fn deadline(mut self, d: Duration) -> Call {
        self.deadline = Some(d);
        self
    }
    pub fn retry(mut self, retry: Retry) -> Call {
        self.retry = retry;
        self
    }

    fn request(&self, message: &[u8]) -> Request {
        self.request_with(Request::post(&self.url).body(frame(message)))
    }

    fn request_with(&self, r: Request) -> Request {
        let mut r = r
            .header("content-type", "application/grpc")
            .connect_timeout(Duration::from_secs(10));
        for (k, v) in &self.metadata {
            r = r.header(k, v);
        }
        if let Some(d) = self.deadline {
            // The deadline bounds the head and the silences of a streamed body alike.
            r = r
                .header("grpc-timeout", timeout_header(d))
                .first_byte_timeout(d + Duration::from_secs(5))
                .between_bytes_timeout(d + Duration::from_secs(5));
        }
        r
    }

    /// Opens a server-streaming (or any) call: the answer's messages as they arrive.
    pub fn open(&self, message: &[u8]) -> Result<ServerStream, GrpcError> {
        self.start(message)?.open()
    }

    /// Sends the call without waiting for its answer (several calls can be in flight at once
    /// on one HTTP/2 connection); [`PendingCall`] then takes the answer. Not retried.
    pub fn start(&self, message: &[u8]) -> Result<PendingCall, GrpcError> {
        let sent = self
            .request(message)
            .start()
            .map_err(GrpcError::Transport)?;
        Ok(PendingCall(sent))
    }
}

impl Call {
    /// [`start`](Call::start) for a message with one large `bytes` field (stdin, a file),
    /// encoded without it in `message`: `data` goes out as field `tag` straight from the
    /// caller's buffer, not copied into the frame.
    pub fn start_with_bytes(
        &self,
        message: &[u8],
        tag: u32,
        data: std::rc::Rc<Vec<u8>>,
    ) -> Result<PendingCall, GrpcError> {
        let head = frame_head_with_bytes(message, tag, data.len());
        let r = Request::post(&self.url).body_shared(vec![std::rc::Rc::new(head), data]);
        let sent = self.request_with(r).start().map_err(GrpcError::Transport)?;
        Ok(PendingCall(sent))
    }
}

/// A call sent whose answer has not been taken yet.
pub struct PendingCall(crate::http::InFlight);

impl PendingCall {
    /// Waits at most `d` for the answer's head; true once it has come (a server may hold the
    /// head of a stream until its first message).
    pub fn ready_within(&self, d: Duration) -> bool {
        self.0.ready_within(d)
    }

    /// The answer's messages as they arrive.
    pub fn open(self) -> Result<ServerStream, GrpcError> {
        let resp = self.0.wait().map_err(GrpcError::Transport)?;
        if resp.status() != 200 {
            let code = code_for_http(resp.status());
            let message = format!("HTTP {} from {}", resp.status(), resp.context());
            return Err(GrpcError::Status { code, message });
        }
        // Trailers-Only: the status is in the head and there is no body.
        if let Some(status) = status_in(resp.headers()) {
            return match status {
                GrpcError::Status { code: code::OK, .. } => Ok(ServerStream {
                    resp: None,
                    reader: FrameReader::default(),
                }),
                e => Err(e),
            };
        }
        Ok(ServerStream {
            resp: Some(resp),
            reader: FrameReader::default(),
        })
    }

    /// The single answer message of a unary call.
    pub fn unary(self) -> Result<Vec<u8>, GrpcError> {
        let mut stream = self.open()?;
        let reply = stream.next_message()?;
        // Drain to the trailers: a status after the message still decides.
        while stream.next_message()?.is_some() {}
        reply.ok_or_else(|| GrpcError::Status {
            code: code::INTERNAL,
            message: "no message in a unary answer".into(),
        })
    }
}

impl Call {
    /// One attempt of a unary call: the single answer message.
    pub fn unary_once(&self, message: &[u8]) -> Result<Vec<u8>, GrpcError> {
        self.start(message)?.unary()
    }

    /// A unary call, retried on `UNAVAILABLE`/`RESOURCE_EXHAUSTED` with exponential backoff.
    /// Only for calls that are safe to repeat (reads, or writes with an idempotency key).
    pub fn unary(&self, message: &[u8]) -> Result<Vec<u8>, GrpcError> {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            match self.unary_once(message) {
                Err(e) if e.is_retryable() && attempt < self.retry.attempts => {
                    crate::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The messages of an answer, read as they arrive; the status is checked at the end.
pub struct ServerStream {
    resp: Option<Response>,
    reader: FrameReader,
}

/// What [`ServerStream::next_within`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Message(Vec<u8>),
    /// The stream ended with `OK`.
    End,
    /// Nothing more arrived in the time given; the stream goes on.
    Later,
}

impl ServerStream {
    /// The next message; `None` once the stream ended with `OK`; the status as an error
    /// otherwise (and transport failures mid-stream as `Transport`).
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, GrpcError> {
        loop {
            if let Some(m) = self.reader.next_message()? {
                return Ok(Some(m));
            }
            if !self.read_more()? {
                return Ok(None);
            }
        }
    }

    /// [`next_message`](ServerStream::next_message), waiting at most `d` for it.
    pub fn next_within(&mut self, d: Duration) -> Result<Next, GrpcError> {
        let deadline = crate::monotonic_ns().saturating_add(d.as_nanos() as u64);
        loop {
            if let Some(m) = self.reader.next_message()? {
                return Ok(Next::Message(m));
            }
            let Some(resp) = self.resp.as_ref() else {
                return Ok(Next::End);
            };
            let left = deadline.saturating_sub(crate::monotonic_ns());
            if !resp.readable_within(Duration::from_nanos(left)) {
                return Ok(Next::Later);
            }
            if !self.read_more()? {
                return Ok(Next::End);
            }
        }
    }

    /// Reads the next piece of the answer into the frame reader; false once the stream ended
    /// with `OK`.
    fn read_more(&mut self) -> Result<bool, GrpcError> {
        let Some(resp) = self.resp.as_mut() else {
            return Ok(false);
        };
        if let Some(chunk) = resp.read_chunk().map_err(GrpcError::Transport)? {
            self.reader.push(&chunk);
            return Ok(true);
        }
        let resp = self.resp.take().expect("checked above");
        let trailers = resp
            .trailers()
            .map_err(GrpcError::Transport)?
            .unwrap_or_default();
        if self.reader.pending() > 0 {
            return Err(GrpcError::Transport(unavailable(
                "gRPC stream ended inside a message",
            )));
        }
        match status_in(&trailers) {
            Some(GrpcError::Status { code: code::OK, .. }) => Ok(false),
            Some(e) => Err(e),
            None => Err(GrpcError::Transport(unavailable(
                "gRPC stream ended without a status",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks() {
        let mut r = FrameReader::default();
        let mut bytes = frame(b"hello");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"world"));
        for b in &bytes[..7] {
            r.push(&[*b]);
        }
        assert_eq!(r.next_message().unwrap(), None);
        r.push(&bytes[7..]);
        assert_eq!(r.next_message().unwrap().unwrap(), b"hello");
        assert_eq!(r.next_message().unwrap().unwrap(), b"");
        assert_eq!(r.next_message().unwrap().unwrap(), b"world");
        assert_eq!(r.next_message().unwrap(), None);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_large_bytes_field_follows_the_head() {
        // Field 1 = varint 1, then field 4 (bytes) = "abc" appended after the head.
        let mut wire = frame_head_with_bytes(b"\x08\x01", 4, 3);
        wire.extend_from_slice(b"abc");
        let mut r = FrameReader::default();
        r.push(&wire);
        assert_eq!(r.next_message().unwrap().unwrap(), b"\x08\x01\x22\x03abc");
        // A length needing two varint bytes (300 = 0xac 0x02).
        let head = frame_head_with_bytes(b"", 4, 300);
        assert_eq!(&head[5..], b"\x22\xac\x02");
        assert_eq!(
            u32::from_be_bytes([head[1], head[2], head[3], head[4]]),
            303
        );
    }

    #[test]
    fn a_claimed_length_does_not_reserve_memory_and_compression_is_refused() {
        let mut r = FrameReader::default();
        r.push(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(r.next_message().unwrap(), None);
        assert_eq!(r.pending(), 7);
        let (_, buf) = r.body.as_ref().unwrap();
        assert!(buf.capacity() <= PRESIZE_LIMIT);
        let mut r = FrameReader::default();
        r.push(&frame(b"ok"));
        r.push(&[1, 0, 0, 0, 1, 9]);
        assert_eq!(r.next_message().unwrap().unwrap(), b"ok");
        assert!(r.next_message().is_err());
    }

    #[test]
    fn status_and_timeout_helpers() {
        assert_eq!(decode_message("a%20b%25"), "a b%");
        assert_eq!(timeout_header(Duration::from_secs(15)), "15000m");
        let fields = vec![
            ("grpc-status".to_string(), "14".to_string()),
            ("grpc-message".to_string(), "down".to_string()),
        ];
        let e = status_in(&fields).unwrap();
        assert_eq!(e.code(), code::UNAVAILABLE);
        assert!(e.is_retryable());
        assert!(matches!(Error::from(e), Error::Unavailable(_)));
        assert_eq!(code_for_http(429), code::RESOURCE_EXHAUSTED);
    }
}
