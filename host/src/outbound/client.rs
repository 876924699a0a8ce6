//! Pooled HTTP clients shared by every plugin call: HTTP/1.1 and HTTP/2 (ALPN) over TLS with
//! webpki roots plus configured CAs, HTTPS_PROXY/NO_PROXY via CONNECT tunnels, and a separate
//! prior-knowledge HTTP/2 client for h2c hosts (gRPC emulators).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tower_service::Service;
use wasmtime_wasi_http::WasiBody;

use crate::policy::allowlist::is_sensitive_ip;

pub type HttpsClient = Client<HttpsConnector<ProxyConnector>, WasiBody>;
pub type H2cClient = Client<HttpConnector<GuardedResolver>, WasiBody>;

/// The two pools one TLS trust configuration needs.
pub struct Clients {
    pub https: HttpsClient,
    pub h2c: H2cClient,
}

/// Builds and caches [`Clients`] per set of extra CA files, so every plugin trusting the same
/// roots shares one connection pool.
#[derive(Default)]
pub struct ClientCache {
    by_cas: Mutex<HashMap<Vec<PathBuf>, Arc<Clients>>>,
    /// Host names an operator granted by exact name; only these may resolve to loopback.
    explicit_names: Arc<RwLock<HashSet<String>>>,
}

impl ClientCache {
    pub fn get(&self, ca_files: &[PathBuf]) -> anyhow::Result<Arc<Clients>> {
        let mut key = ca_files.to_vec();
        key.sort();
        let mut map = self.by_cas.lock().unwrap();
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let clients = Arc::new(build_clients(&key, self.explicit_names.clone())?);
        map.insert(key, clients.clone());
        Ok(clients)
    }

    /// Records names granted by exact entries (see [`GuardedResolver`]).
    pub fn grant_names(&self, names: impl IntoIterator<Item = String>) {
        self.explicit_names.write().unwrap().extend(names);
    }
}

fn tls_config(ca_files: &[PathBuf]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in ca_files {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("CA file {}: {e}", path.display()))?;
            n += 1;
        }
        anyhow::ensure!(n > 0, "CA file {} holds no certificate", path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The largest HTTP/2 frame we accept (see `build_clients`).
const H2_MAX_FRAME: u32 = 1 << 20;

fn build_clients(
    ca_files: &[PathBuf],
    explicit: Arc<RwLock<HashSet<String>>>,
) -> anyhow::Result<Clients> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        inner: GaiResolver::new(),
        explicit,
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(30)));
    let proxy = ProxyConnector {
        direct: http.clone(),
        matcher: Arc::new(Matcher::from_env()),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_files)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(proxy);
    let pool = |b: &mut hyper_util::client::legacy::Builder| {
        b.pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            // HTTP/2 peers may send us DATA frames this large (the default is 16 KiB): a
            // large answer (a file over gRPC) reaches the plugin in a few reads, not one
            // per 16 KiB.
            .http2_max_frame_size(H2_MAX_FRAME);
    };
    let mut b = Client::builder(TokioExecutor::new());
    pool(&mut b);
    let https = b.build(https);
    let mut b = Client::builder(TokioExecutor::new());
    pool(&mut b);
    let h2c = b.http2_only(true).build(http);
    Ok(Clients { https, h2c })
}

/// DNS resolution that refuses to hand a name loopback or link-local addresses unless an
/// operator granted that exact name: a wildcard grant must not become a way into localbox or
/// a cloud metadata service through a name that resolves there (DNS rebinding).
#[derive(Clone)]
pub struct GuardedResolver {
    inner: GaiResolver,
    explicit: Arc<RwLock<HashSet<String>>>,
}

/// The error a refused resolution gives; mapped to `destination-ip-prohibited` for the guest.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to loopback or link-local addresses, which its grant does not cover")]
pub struct ProhibitedAddress(pub String);

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_ascii_lowercase();
        let explicit = host == "localhost" || self.explicit.read().unwrap().contains(&host);
        let fut = self.inner.call(name);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = fut.await?.collect();
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| explicit || !is_sensitive_ip(a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(Box::new(ProhibitedAddress(host)) as _);
            }
            Ok(kept.into_iter())
        })
    }
}

/// Connects directly, or through the proxy `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` choose:
/// a CONNECT tunnel for https, an absolute-form request for plain http.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: HttpConnector<GuardedResolver>,
    matcher: Arc<Matcher>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Uri> for ProxyConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        let intercept = self.matcher.intercept(&dst);
        Box::pin(async move {
            let Some(proxy) = intercept else {
                return Ok(Conn {
                    io: direct.call(dst).await?,
                    proxied: false,
                });
            };
            if dst.scheme_str() == Some("https") {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Ok(Conn {
                    io: tunnel.call(dst).await?,
                    proxied: false,
                })
            } else {
                Ok(Conn {
                    io: direct.call(proxy.uri().clone()).await?,
                    proxied: true,
                })
            }
        })
    }
}

/// A TCP connection that tells hyper whether it leads to a proxy (absolute-form requests).
pub struct Conn {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
