//! A small blocking HTTP client over the raw `wasi:http` bindings.
//!
//! ```no_run
//! use kit::http::Request;
//! # fn demo(base: &str) -> kit::Result<()> {
//! #[derive(serde::Deserialize)]
//! struct Sandbox { id: String }
//! let created: Sandbox = Request::post(kit::url(base, &["sandboxes"]))
//!     .header("idempotency-key", "k1")
//!     .json(&serde_json::json!({ "name": "demo" }))
//!     .send_json()?;
//! let mut resp = Request::get(kit::url(base, &["sandboxes", &created.id, "logs"])).send_ok()?;
//! for line in resp.lines() {
//!     kit::emit_stdout(&line?);
//! }
//! # Ok(()) }
//! ```
//!
//! Errors are the contract's [`Error`]: a non-2xx answer maps through
//! [`error_from_status`](crate::error::error_from_status) (see [`Response::error_for_status`]),
//! a transport failure through [`error_from_code`].

use std::rc::Rc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    self as wt, ErrorCode, FutureIncomingResponse, HeaderError, IncomingBody, IncomingResponse,
    OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use crate::error::{
    error_from_io_message, error_from_status, forbidden, invalid_argument, provider, timeout,
    unavailable, Result,
};
use crate::types::Error;
use crate::util::{self, LineSplitter};

pub use crate::bindings::wasi::http::types::Method;

/// The header that asks the host to finish a request the plugin lets go of (the host strips it).
const DETACH_HEADER: &str = "sandbox-host-detach";
/// How many bytes one `read_chunk` asks the host for at most (it returns what has arrived).
pub const READ_CHUNK: u64 = 1 << 20;
/// The most [`Response::bytes`] reserves up front from a `content-length` it cannot trust.
const RESERVE_LIMIT: usize = 16 << 20;
/// How much of an error body [`Response::into_error`] reads for the message.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// An outgoing HTTP request (builder style). Nothing happens until [`send`](Request::send).
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, Vec<u8>)>,
    /// The body's pieces, sent one after the other; shared, so that cloning a request to send
    /// it again does not copy a large body.
    body: Vec<Rc<Vec<u8>>>,
    connect_timeout: Option<Duration>,
    first_byte_timeout: Option<Duration>,
    between_bytes_timeout: Option<Duration>,
    /// A builder failure (e.g. a body that did not serialize), reported by `send`.
    error: Option<Error>,
}

impl Request {
    /// A request to an absolute `http://` or `https://` URL. Build URLs with [`crate::url`]
    /// so path segments are percent-encoded.
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            connect_timeout: None,
            first_byte_timeout: None,
            between_bytes_timeout: None,
            error: None,
        }
    }
    pub fn get(url: impl Into<String>) -> Request {
        Request::new(Method::Get, url)
    }
    pub fn post(url: impl Into<String>) -> Request {
        Request::new(Method::Post, url)
    }
    pub fn put(url: impl Into<String>) -> Request {
        Request::new(Method::Put, url)
    }
    pub fn patch(url: impl Into<String>) -> Request {
        Request::new(Method::Patch, url)
    }
    pub fn delete(url: impl Into<String>) -> Request {
        Request::new(Method::Delete, url)
    }
    pub fn head(url: impl Into<String>) -> Request {
        Request::new(Method::Head, url)
    }

    /// Adds a header (repeatable; several values for one name are all sent).
    /// Headers the host forbids (`host`, and usually `authorization`, which the host sets from
    /// the operator's secret) make `send` fail with `forbidden`.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }
    /// Adds a query parameter; key and value are percent-encoded.
    pub fn query(mut self, key: impl Into<String>, value: impl Into<String>) -> Request {
        self.query.push((key.into(), value.into()));
        self
    }
    /// Adds several query parameters.
    pub fn query_pairs<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Request {
        for (k, v) in pairs {
            self.query
                .push((k.as_ref().to_string(), v.as_ref().to_string()));
        }
        self
    }
    /// A JSON body (`content-type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Request {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.body = vec![Rc::new(body)];
                if !self.has_header("content-type") {
                    self = self.header("content-type", "application/json");
                }
            }
            Err(e) => self.error = Some(invalid_argument(format!("request body: {e}"))),
        }
        self
    }
    /// A raw body; set `content-type` yourself. Any size: it is written in chunks.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Request {
        self.body = vec![Rc::new(bytes.into())];
        self
    }
    /// A raw body sent in pieces, as if concatenated (e.g. a multipart head, a file, a tail:
    /// the file is not copied into one buffer).
    pub fn body_parts(mut self, parts: Vec<Vec<u8>>) -> Request {
        self.body = parts.into_iter().map(Rc::new).collect();
        self
    }
    /// [`body_parts`](Request::body_parts) with parts the caller keeps too (e.g. data it may
    /// have to send again in another request): shared, not copied.
    pub fn body_shared(mut self, parts: Vec<Rc<Vec<u8>>>) -> Request {
        self.body = parts;
        self
    }
    /// Sets the connect, first-byte and between-bytes timeouts at once (wasi:http has no
    /// whole-request timeout). The host may cap them further.
    pub fn timeout(self, d: Duration) -> Request {
        self.connect_timeout(d)
            .first_byte_timeout(d)
            .between_bytes_timeout(d)
    }
    pub fn connect_timeout(mut self, d: Duration) -> Request {
        self.connect_timeout = Some(d);
        self
    }
    /// Time until the response head arrives (e.g. a long-poll or a long exec).
    pub fn first_byte_timeout(mut self, d: Duration) -> Request {
        self.first_byte_timeout = Some(d);
        self
    }
    /// Longest silence between two body chunks.
    pub fn between_bytes_timeout(mut self, d: Duration) -> Request {
        self.between_bytes_timeout = Some(d);
        self
    }

    pub fn method(&self) -> &Method {
        &self.method
    }
    /// The URL with the query parameters added.
    pub fn full_url(&self) -> String {
        util::with_query(&self.url, &self.query)
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Sends the request and waits for the response head. Any status is `Ok`; see
    /// [`send_ok`](Request::send_ok) for status checking.
    pub fn send(self) -> Result<Response> {
        self.start()?.wait()
    }

    /// Sends the request (head and body) without waiting for the answer, so that several
    /// requests can be in flight at once; [`InFlight::wait`] then takes the response head.
    pub fn start(mut self) -> Result<InFlight> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let url = self.full_url();
        let parts = util::parse_url(&url)?;
        // For messages: no query (it may carry tokens).
        let context = format!(
            "{} {}://{}{}",
            method_name(&self.method),
            parts.scheme,
            parts.authority,
            parts.path_with_query.split('?').next().unwrap_or("")
        );

        let headers = wt::Fields::new();
        for (name, value) in &self.headers {
            headers
                .append(name, value)
                .map_err(|e| header_error(name, e))?;
        }
        let body = std::mem::take(&mut self.body);
        let length: usize = body.iter().map(|p| p.len()).sum();
        let sends_body =
            length > 0 || matches!(self.method, Method::Post | Method::Put | Method::Patch);
        if sends_body && !self.has_header("content-length") {
            headers
                .append("content-length", length.to_string().as_bytes())
                .map_err(|e| header_error("content-length", e))?;
        }

        let request = OutgoingRequest::new(headers);
        request
            .set_method(&self.method)
            .map_err(|()| invalid_argument(format!("invalid HTTP method {:?}", self.method)))?;
        let scheme = match parts.scheme.as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid_argument(format!("invalid URL scheme in {url:?}")))?;
        request
            .set_authority(Some(&parts.authority))
            .map_err(|()| invalid_argument(format!("invalid URL authority in {url:?}")))?;
        request
            .set_path_with_query(Some(&parts.path_with_query))
            .map_err(|()| invalid_argument(format!("invalid URL path in {url:?}")))?;
        let outgoing_body = request
            .body()
            .map_err(|()| provider(0, "wasi:http: request body already taken"))?;

        let options = if self.connect_timeout.is_some()
            || self.first_byte_timeout.is_some()
            || self.between_bytes_timeout.is_some()
        {
            let o = wt::RequestOptions::new();
            let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
            // A host that does not support an option refuses it; the others still apply.
            if let Some(d) = self.connect_timeout {
                let _ = o.set_connect_timeout(Some(ns(d)));
            }
            if let Some(d) = self.first_byte_timeout {
                let _ = o.set_first_byte_timeout(Some(ns(d)));
            }
            if let Some(d) = self.between_bytes_timeout {
                let _ = o.set_between_bytes_timeout(Some(ns(d)));
            }
            Some(o)
        } else {
            None
        };

        // Hand the request over first, then stream the body: a body larger than the host's
        // buffer would otherwise block forever.
        let future = outgoing_handler::handle(request, options)
            .map_err(|code| error_from_code(code, &context))?;
        // The response decides. A denial or a refused connection also breaks the body, and a
        // server may answer (and the host drop the body stream) before the last flush: a body
        // error only matters when no response comes, and then the response's error says more.
        let _ = write_body(outgoing_body, &body, &context);
        Ok(InFlight { future, context })
    }

    /// Sends the request and lets go of it: the host finishes it after this call returns and
    /// drops the answer, which nobody sees. For cleanup off the caller's wait (deleting a
    /// provider-side session); a failure is only logged by the host. A host past its limit of
    /// detached requests, or without the feature, may cancel it instead: use it only for
    /// work whose loss is harmless.
    pub fn send_detached(self) -> Result<()> {
        self.header(DETACH_HEADER, "1").start().map(drop)
    }

    /// [`send`](Request::send), then [`Response::error_for_status`].
    pub fn send_ok(self) -> Result<Response> {
        self.send()?.error_for_status()
    }

    /// [`send_ok`](Request::send_ok), then the body as JSON.
    pub fn send_json<T: DeserializeOwned>(self) -> Result<T> {
        self.send_ok()?.json()
    }
}

/// A request sent whose answer has not been taken yet.
pub struct InFlight {
    future: FutureIncomingResponse,
    context: String,
}

impl InFlight {
    /// Waits at most `d` for the response head (or a failure) to arrive; true once it has.
    /// [`wait`](InFlight::wait) then returns without blocking.
    pub fn ready_within(&self, d: Duration) -> bool {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let response = self.future.subscribe();
        let timer = crate::bindings::wasi::clocks::monotonic_clock::subscribe_duration(ns);
        crate::bindings::wasi::io::poll::poll(&[&response, &timer]);
        response.ready()
    }

    /// Waits for the response head.
    pub fn wait(self) -> Result<Response> {
        let response = wait_response(&self.future, &self.context)?;
        Response::new(response, self.future, self.context)
    }
}

fn method_name(m: &Method) -> &str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(s) => s,
    }
}

fn header_error(name: &str, e: HeaderError) -> Error {
    match e {
        HeaderError::Forbidden => forbidden(format!(
            "the host does not let plugins set the header `{name}`"
        )),
        HeaderError::InvalidSyntax => invalid_argument(format!("invalid header `{name}`")),
        HeaderError::Immutable => invalid_argument(format!("header `{name}` is immutable")),
    }
}

/// Writes the body's pieces respecting `check-write`, flushes, and finishes the body.
fn write_body(body: OutgoingBody, parts: &[Rc<Vec<u8>>], context: &str) -> Result<()> {
    {
        let stream = body
            .write()
            .map_err(|()| provider(0, "wasi:http: request body stream already taken"))?;
        parts
            .iter()
            .try_for_each(|part| write_unflushed(&stream, part))
            .and_then(|()| stream.blocking_flush())
            .map_err(|e| stream_error(e, context, "sending request body"))?;
        // `stream` is a child of `body`: dropped here, before `finish`.
    }
    OutgoingBody::finish(body, None).map_err(|code| error_from_code(code, context))
}

/// Writes all of `data` to a wasi output stream in `check-write`-sized pieces and flushes.
pub fn write_all(stream: &OutputStream, data: &[u8]) -> core::result::Result<(), StreamError> {
    write_unflushed(stream, data)?;
    stream.blocking_flush()
}

fn write_unflushed(
    stream: &OutputStream,
    mut data: &[u8],
) -> core::result::Result<(), StreamError> {
    while !data.is_empty() {
        let permit = stream.check_write()?;
        if permit == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = (permit.min(data.len() as u64)) as usize;
        stream.write(&data[..n])?;
        data = &data[n..];
    }
    Ok(())
}

fn wait_response(future: &FutureIncomingResponse, context: &str) -> Result<IncomingResponse> {
    loop {
        match future.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(code))) => return Err(error_from_code(code, context)),
            Some(Err(())) => return Err(provider(0, "wasi:http: response already taken")),
            None => future.subscribe().block(),
        }
    }
}

fn stream_error(e: StreamError, context: &str, doing: &str) -> Error {
    match e {
        StreamError::Closed => unavailable(format!("{context}: connection closed while {doing}")),
        StreamError::LastOperationFailed(io) => match wt::http_error_code(&io) {
            Some(code) => error_from_code(code, context),
            // wasmtime 48 gives no error code for failures inside a body (the host's body
            // error is not an `error-code`), only its text: classify that.
            None => error_from_io_message(&format!("{context}: {doing}"), &io.to_debug_string()),
        },
    }
}

/// Maps a wasi:http transport error to the contract's error. `context` is e.g.
/// `GET https://api.example.com/v1/sandboxes`.
pub fn error_from_code(code: ErrorCode, context: &str) -> Error {
    use ErrorCode as C;
    match code {
        C::HttpRequestDenied => forbidden(format!("host not allowed: {context}")),
        C::DestinationIpProhibited => {
            forbidden(format!("destination address prohibited: {context}"))
        }
        C::DnsTimeout
        | C::ConnectionTimeout
        | C::ConnectionReadTimeout
        | C::ConnectionWriteTimeout
        | C::HttpResponseTimeout => timeout(format!("{context}: {code:?}")),
        C::DnsError(ref p) => unavailable(format!(
            "{context}: DNS error {}",
            p.rcode
                .clone()
                .or_else(|| p.info_code.map(|c| c.to_string()))
                .unwrap_or_default()
        )),
        C::DestinationNotFound
        | C::DestinationUnavailable
        | C::DestinationIpUnroutable
        | C::ConnectionRefused
        | C::ConnectionTerminated
        | C::ConnectionLimitReached
        | C::TlsProtocolError
        | C::TlsCertificateError
        | C::TlsAlertReceived(_)
        | C::HttpResponseIncomplete
        | C::HttpProtocolError
        | C::HttpUpgradeFailed
        | C::LoopDetected => unavailable(format!("{context}: {code:?}")),
        C::HttpRequestLengthRequired
        | C::HttpRequestBodySize(_)
        | C::HttpRequestMethodInvalid
        | C::HttpRequestUriInvalid
        | C::HttpRequestUriTooLong
        | C::HttpRequestHeaderSectionSize(_)
        | C::HttpRequestHeaderSize(_)
        | C::HttpRequestTrailerSectionSize(_)
        | C::HttpRequestTrailerSize(_) => invalid_argument(format!("{context}: {code:?}")),
        C::HttpResponseBodySize(limit) => provider(
            0,
            match limit {
                Some(n) => format!("{context}: response body larger than {n} bytes"),
                None => format!("{context}: response body too large"),
            },
        ),
        C::InternalError(Some(msg)) => unavailable(format!("{context}: {msg}")),
        C::InternalError(None) => unavailable(format!("{context}: internal error")),
        other => provider(0, format!("{context}: {other:?}")),
    }
}

/// A response whose head has arrived. The body is read with [`read_chunk`](Response::read_chunk),
/// [`chunks`](Response::chunks), [`lines`](Response::lines), or all at once with
/// [`bytes`](Response::bytes) / [`text`](Response::text) / [`json`](Response::json);
/// then [`trailers`](Response::trailers).
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    context: String,
    eof: bool,
    // Drop order matters: a stream before its body, the body before its response.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    _response: IncomingResponse,
    _future: FutureIncomingResponse,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Response {
    fn new(
        response: IncomingResponse,
        future: FutureIncomingResponse,
        context: String,
    ) -> Result<Response> {
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let body = response
            .consume()
            .map_err(|()| provider(0, "wasi:http: response body already taken"))?;
        let stream = body
            .stream()
            .map_err(|()| provider(0, "wasi:http: response body stream already taken"))?;
        Ok(Response {
            status,
            headers,
            context,
            eof: false,
            stream: Some(stream),
            body: Some(body),
            _response: response,
            _future: future,
        })
    }

    pub fn status(&self) -> u16 {
        self.status
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// All response headers (lower-case names; values decoded lossily as UTF-8).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `METHOD scheme://authority/path` of the request, for messages.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Non-2xx → the mapped error (reads up to [`ERROR_BODY_LIMIT`] of the body for the message).
    pub fn error_for_status(self) -> Result<Response> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// This response as the contract's error, whatever its status.
    pub fn into_error(mut self) -> Error {
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_LIMIT {
            match self.read_chunk() {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        error_from_status(self.status, self.header("retry-after"), &body)
    }

    /// Waits at most `d` for more of the body (or its end) to arrive; true once it has, and
    /// [`read_chunk`](Response::read_chunk) then returns without waiting.
    pub fn readable_within(&self, d: Duration) -> bool {
        let Some(stream) = self.stream.as_ref().filter(|_| !self.eof) else {
            return true;
        };
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let readable = stream.subscribe();
        let timer = crate::bindings::wasi::clocks::monotonic_clock::subscribe_duration(ns);
        crate::bindings::wasi::io::poll::poll(&[&readable, &timer]);
        readable.ready()
    }

    /// The next piece of the body as it arrives (blocks until some bytes or the end);
    /// `None` at the end.
    pub fn read_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.eof {
            return Ok(None);
        }
        let Some(stream) = &self.stream else {
            self.eof = true;
            return Ok(None);
        };
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Ok(Some(chunk)),
                Err(StreamError::Closed) => {
                    self.eof = true;
                    return Ok(None);
                }
                Err(e) => {
                    self.eof = true;
                    return Err(stream_error(e, &self.context, "reading response body"));
                }
            }
        }
    }

    /// The body as an iterator of chunks, as they arrive.
    pub fn chunks(&mut self) -> Chunks<'_> {
        Chunks {
            response: self,
            failed: false,
        }
    }

    /// The body as `\n`-separated lines (without the `\n`/`\r\n`), as they arrive; the last
    /// line need not end in `\n`. For NDJSON or log streams.
    pub fn lines(&mut self) -> Lines<'_> {
        Lines {
            response: self,
            splitter: Some(LineSplitter::new()),
            failed: false,
        }
    }

    /// NDJSON: each non-empty line parsed as `T`, as the lines arrive.
    pub fn json_lines<T: DeserializeOwned>(&mut self) -> impl Iterator<Item = Result<T>> + '_ {
        let status = self.status;
        self.lines().filter_map(move |line| match line {
            Err(e) => Some(Err(e)),
            Ok(l) if l.iter().all(u8::is_ascii_whitespace) => None,
            Ok(l) => Some(
                serde_json::from_slice(&l)
                    .map_err(|e| provider(status, format!("invalid JSON line in response: {e}"))),
            ),
        })
    }

    /// The whole (rest of the) body.
    pub fn bytes(mut self) -> Result<Vec<u8>> {
        self.read_rest()
    }

    fn read_rest(&mut self) -> Result<Vec<u8>> {
        // Sized once from content-length: a large body is not copied again at each growth.
        let expected = self
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(RESERVE_LIMIT);
        let mut out = Vec::new();
        while let Some(chunk) = self.read_chunk()? {
            if out.is_empty() && chunk.len() >= expected {
                out = chunk;
                continue;
            }
            out.reserve(expected.saturating_sub(out.len()).max(chunk.len()));
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The whole body as text (invalid UTF-8 is replaced).
    pub fn text(self) -> Result<String> {
        let bytes = self.bytes()?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The whole body as JSON.
    pub fn json<T: DeserializeOwned>(self) -> Result<T> {
        let status = self.status;
        let bytes = self.bytes()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| provider(status, format!("invalid JSON in response: {e}")))
    }

    /// Reads (and drops) what is left of the body, then waits for the trailers (HTTP/2,
    /// gRPC's `grpc-status`). `None` when the response had none.
    pub fn trailers(mut self) -> Result<Option<Vec<(String, String)>>> {
        while self.read_chunk()?.is_some() {}
        drop(self.stream.take());
        let Some(body) = self.body.take() else {
            return Ok(None);
        };
        let future = IncomingBody::finish(body);
        let result = loop {
            match future.get() {
                Some(r) => break r,
                None => future.subscribe().block(),
            }
        };
        match result {
            Ok(Ok(Some(fields))) => Ok(Some(
                fields
                    .entries()
                    .into_iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
            )),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(code)) => Err(error_from_code(code, &self.context)),
            Err(()) => Err(provider(0, "wasi:http: trailers already taken")),
        }
    }
}

/// See [`Response::chunks`].
pub struct Chunks<'a> {
    response: &'a mut Response,
    failed: bool,
}

impl Iterator for Chunks<'_> {
    type Item = Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.response.read_chunk() {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// See [`Response::lines`].
pub struct Lines<'a> {
    response: &'a mut Response,
    splitter: Option<LineSplitter>,
    failed: bool,
}

impl Iterator for Lines<'_> {
    type Item = Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            let splitter = self.splitter.as_mut()?;
            if let Some(line) = splitter.next_line() {
                return Some(Ok(line));
            }
            match self.response.read_chunk() {
                Ok(Some(chunk)) => splitter.push(&chunk),
                Ok(None) => return self.splitter.take().and_then(LineSplitter::finish).map(Ok),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
