//! Loopback test servers: an HTTP/1.1 + h2c server that counts accepted connections and
//! records requests, optionally behind TLS with a CA made for the test.
//!
//! Routes: `/ok` → 200 "ok"; `/grpc` → data frames then trailers `grpc-status: 0`,
//! `grpc-message: ok`; `/huge?mb=N` → N MiB of zeros (chunked, no length); `/hang` → headers
//! never come; `/retry-after?n=K` → 429 with `Retry-After: 1` the first K times, then 200.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct Shared {
    accepts: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
    retry_counts: Mutex<HashMap<String, usize>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// With TLS: the PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Plain HTTP/1.1 and h2c (prior knowledge) on 127.0.0.1.
    pub async fn start() -> TestServer {
        Self::start_inner(None).await
    }

    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN) for `localhost` and 127.0.0.1, signed by a fresh CA.
    pub async fn start_tls() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sandbox-host test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut s = Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await;
        s.ca_file = Some(ca_file);
        s._dir = Some(dir);
        s
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                s2.accepts.fetch_add(1, Ordering::SeqCst);
                let shared = s2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            shared,
            ca_file: None,
            _dir: None,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().unwrap().clone()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: u16, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(text.as_bytes())).boxed())
        .unwrap()
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    shared.requests.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        version: req.version(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let _ = req.into_body().collect().await;
    let param = |name: &str| -> Option<usize> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Ok(match path.as_str() {
        "/ok" => full(200, "ok"),
        "/grpc" => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"hello "))),
                Ok(Frame::data(Bytes::from_static(b"world"))),
                Ok(Frame::trailers({
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    t.insert("grpc-message", "ok".parse().unwrap());
                    t
                })),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
            Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap()
        }
        "/huge" => {
            let mb = param("mb").unwrap_or(64);
            let chunk = Bytes::from(vec![0u8; 1 << 20]);
            let frames = (0..mb).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
            Response::builder()
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            full(200, "late")
        }
        "/retry-after" => {
            let n = param("n").unwrap_or(1);
            let mut counts = shared.retry_counts.lock().unwrap();
            let c = counts.entry(query.clone()).or_default();
            *c += 1;
            if *c <= n {
                Response::builder()
                    .status(429)
                    .header("retry-after", "1")
                    .body(Full::new(Bytes::from_static(b"slow down")).boxed())
                    .unwrap()
            } else {
                full(200, "ok")
            }
        }
        _ => full(404, "not found"),
    })
}
