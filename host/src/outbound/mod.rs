//! Outbound HTTP for plugins: the `send_request` hook of wasmtime-wasi-http.
//!
//! Every request a plugin makes passes here, and only here, on its way out:
//! 1. the allowlist is checked on scheme, host and port; a denied request never opens a
//!    connection and the plugin gets `HttpRequestDenied`;
//! 2. each bound secret whose hosts match is written into its header, replacing whatever the
//!    plugin put there (the plugin never holds the value; it may still set its own
//!    `authorization` toward other hosts, e.g. per-sandbox tokens);
//! 3. the request goes out on a pooled client (HTTP/2 by ALPN or h2c prior knowledge where the
//!    operator marked the host), with the plugin's timeouts enforced;
//! 4. the response body is capped in size and bounded in time between frames;
//! 5. method, host, path (no query), status and latency are logged; header values never are.
//!
//! A request carrying [`DETACH_HEADER`] (stripped before it leaves) is finished by a task of its
//! own: the plugin may drop its handle and return, and the request still completes (cleanup
//! such as deleting a provider-side session, off the caller's wait). At most
//! [`DETACHED_PER_PLUGIN`] run at once per plugin; beyond, the request stays tied to its handle.

mod body;
pub mod client;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::policy::allowlist::Allowlist;
use client::{Clients, ProhibitedAddress};

/// The request header a plugin sets to have its request finished after it lets go of it.
pub const DETACH_HEADER: &str = "sandbox-host-detach";
/// Detached requests in flight per plugin.
pub const DETACHED_PER_PLUGIN: usize = 64;

/// The permits for a plugin's detached requests.
pub struct DetachLimit(Arc<tokio::sync::Semaphore>);

impl DetachLimit {
    /// Waits until none of these requests is in flight, at most `timeout`; whether none is.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let all = self.0.acquire_many(DETACHED_PER_PLUGIN as u32);
        matches!(tokio::time::timeout(timeout, all).await, Ok(Ok(_)))
    }
}

impl Default for DetachLimit {
    fn default() -> Self {
        DetachLimit(Arc::new(tokio::sync::Semaphore::new(DETACHED_PER_PLUGIN)))
    }
}

const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(300);

/// A secret bound to a header toward some hosts. `Debug` never prints the value.
#[derive(Clone)]
pub struct BoundSecret {
    pub name: String,
    pub header: HeaderName,
    pub value: HeaderValue,
    pub hosts: Allowlist,
}

impl std::fmt::Debug for BoundSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BoundSecret({} -> {}, <redacted>)",
            self.name, self.header
        )
    }
}

/// A callback told about every denied request (plugin, URI without query).
pub type DenialHandler = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What one plugin may do on the network, shared by all its calls.
pub struct Egress {
    pub plugin: Arc<str>,
    pub allow: Allowlist,
    pub h2c: Allowlist,
    pub secrets: Vec<BoundSecret>,
    pub response_cap: u64,
    pub clients: Arc<Clients>,
    pub on_denied: Option<DenialHandler>,
    pub detached: DetachLimit,
}

/// The hooks value stored in each call's Store.
pub struct Hooks(pub Arc<Egress>);

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let egress = self.0.clone();
        let mut request = request;
        let options = options.unwrap_or_default();
        let detach = request.headers_mut().remove(DETACH_HEADER).is_some();
        let permit = detach
            .then(|| egress.detached.0.clone().try_acquire_owned().ok())
            .flatten();
        if let Some(permit) = permit {
            // Spawned now, not when wasi:http first polls the future returned here: a plugin
            // that drops its handle at once has that future aborted before it ever runs, while
            // a spawned task outlives its dropped JoinHandle.
            let task = tokio::spawn(async move {
                let _permit = permit;
                egress.send(request, options).await
            });
            return Box::new(async move {
                let resp = task
                    .await
                    .map_err(|e| Error::InternalError(Some(e.to_string())))??;
                Ok((
                    resp,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            });
        }
        Box::new(async move {
            let resp = egress.send(request, options).await?;
            Ok((
                resp,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The URI without query or fragment, safe to log.
fn loggable(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.authority().map_or("?", |a| a.as_str()),
        uri.path()
    )
}

impl Egress {
    /// Applies the policy and sends. Public so the hook can be tested without wasm.
    pub async fn send(
        &self,
        mut req: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<http::Response<WasiBody>, Error> {
        let uri = req.uri().clone();
        let started = Instant::now();
        let method = req.method().clone();
        if !self.allow.allows_uri(&uri) {
            tracing::warn!(plugin = %self.plugin, %method, url = %loggable(&uri), "outbound request denied: host not granted");
            if let Some(cb) = &self.on_denied {
                cb(&self.plugin, &loggable(&uri));
            }
            return Err(Error::HttpRequestDenied);
        }
        for secret in &self.secrets {
            if secret.hosts.allows_uri(&uri) {
                let mut value = secret.value.clone();
                value.set_sensitive(true);
                req.headers_mut().insert(secret.header.clone(), value);
            }
        }
        let h2c = uri.scheme_str() == Some("http") && self.h2c.allows_uri(&uri);
        if h2c
            && req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        {
            req.headers_mut()
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        // Connecting is bounded by the connector (30 s); a pooled connection needs none. The
        // head of the response must come within the plugin's connect + first-byte timeouts.
        let head_timeout = options.connect_timeout.unwrap_or(Duration::ZERO)
            + options
                .first_byte_timeout
                .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);
        let fut = async {
            if h2c {
                self.clients.h2c.request(req).await
            } else {
                self.clients.https.request(req).await
            }
        };
        let result = tokio::time::timeout(head_timeout, fut).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let resp = match result {
            Err(_) => {
                tracing::info!(plugin = %self.plugin, %method, url = %loggable(&uri), latency_ms, "outbound request timed out");
                return Err(Error::HttpResponseTimeout);
            }
            Ok(Err(e)) => {
                let err = map_client_error(&e);
                tracing::info!(plugin = %self.plugin, %method, url = %loggable(&uri), latency_ms, error = %chain(&e), "outbound request failed");
                return Err(err);
            }
            Ok(Ok(resp)) => resp,
        };
        tracing::info!(plugin = %self.plugin, %method, url = %loggable(&uri), status = resp.status().as_u16(), latency_ms, "outbound request");
        if let Some(len) = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            if len > self.response_cap {
                return Err(Error::HttpResponseBodySize(Some(self.response_cap)));
            }
        }
        let between = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_BETWEEN_BYTES_TIMEOUT);
        let cap = self.response_cap;
        Ok(resp.map(|b| body::GuardedBody::new(b, cap, between).boxed_unsync()))
    }
}

/// An error and its sources, one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Maps a client error to the closest `wasi:http` error code by walking its sources.
fn map_client_error(e: &hyper_util::client::legacy::Error) -> Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(p) = err.downcast_ref::<ProhibitedAddress>() {
            tracing::warn!("{p}");
            return Error::DestinationIpProhibited;
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => Error::TlsCertificateError,
                _ => Error::TlsProtocolError,
            };
        }
        next = err.source();
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Error::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return Error::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    return Error::ConnectionTerminated
                }
                _ => {}
            }
            // io::Error hides what it wraps from `source()`: descend into it instead.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
            }
        }
    }
    if e.is_connect() {
        return Error::DestinationUnavailable;
    }
    Error::InternalError(Some(e.to_string()))
}
