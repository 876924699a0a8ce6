//! What every provider emulator shares: command-line options, the localbox engine that really
//! runs the sandboxes, and fault injection (latency, error statuses with Retry-After, dropped
//! connections mid-stream, slow bodies), switchable per run (`--fault`) and per route at run
//! time (`POST /_emulator/faults`).
//!
//! A fault rule, as JSON or as the `--fault` shorthand `kind[:arg],key=value,...`:
//!
//! | JSON | shorthand | effect |
//! |---|---|---|
//! | `{"type":"latency","ms":200}` | `latency:200` | wait before answering |
//! | `{"type":"status","status":429,"retry_after":1}` | `status:429,retry_after=1` | answer that status instead (Retry-After header when given) |
//! | `{"type":"drop","after_bytes":10}` | `drop:10` | send the head and N body bytes, then cut the connection |
//! | `{"type":"slow","bytes_per_sec":1024}` | `slow:1024` | trickle the body |
//!
//! Common keys: `path` (prefix the request path must start with; default all), `method`,
//! `count` (how many requests it applies to; default unlimited). The admin routes are never
//! faulted. `GET /_emulator/faults` lists the rules, `DELETE` clears them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Options every emulator subcommand takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Address to listen on (port 0: any free port). The base URL is printed as the first line.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// How sandboxes run: `bubblewrap` (isolated, each its own uid) or `none`.
    #[arg(long, default_value = "bubblewrap")]
    pub isolation: String,
    /// Where sandboxes live (default: a fresh temp directory, removed at exit).
    #[arg(long)]
    pub root: Option<std::path::PathBuf>,
    /// A fault rule (repeatable), e.g. `status:429,retry_after=1,count=2,path=/v2/sandboxes`.
    #[arg(long = "fault", value_name = "RULE")]
    pub faults: Vec<String>,
}

/// What an emulator gets to serve with.
#[derive(Clone)]
pub struct Options {
    pub engine: localbox::Engine,
    pub faults: Faults,
    /// The emulator's own base URL, e.g. `http://127.0.0.1:4010`.
    pub base_url: String,
}

/// One fault rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FaultRule {
    #[serde(flatten)]
    pub kind: FaultKind,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    Latency {
        ms: u64,
    },
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    Drop {
        #[serde(default)]
        after_bytes: usize,
    },
    Slow {
        bytes_per_sec: u64,
    },
}

impl std::str::FromStr for FaultRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (kind, arg) = head.split_once(':').unwrap_or((head, ""));
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("fault {s:?}: {v:?} is not a number"))
        };
        let mut rule = FaultRule {
            kind: match kind {
                "latency" => FaultKind::Latency { ms: num(arg)? },
                "status" => FaultKind::Status {
                    status: num(arg)? as u16,
                    retry_after: None,
                },
                "drop" => FaultKind::Drop {
                    after_bytes: if arg.is_empty() {
                        0
                    } else {
                        num(arg)? as usize
                    },
                },
                "slow" => FaultKind::Slow {
                    bytes_per_sec: num(arg)?,
                },
                other => {
                    return Err(format!(
                        "fault {s:?}: unknown kind {other:?} (latency, status, drop, slow)"
                    ))
                }
            },
            path: None,
            method: None,
            count: None,
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("fault {s:?}: expected key=value, got {kv:?}"))?;
            match k {
                "path" => rule.path = Some(v.to_string()),
                "method" => rule.method = Some(v.to_ascii_uppercase()),
                "count" => rule.count = Some(num(v)? as u32),
                "retry_after" => match &mut rule.kind {
                    FaultKind::Status { retry_after, .. } => *retry_after = Some(num(v)?),
                    _ => return Err(format!("fault {s:?}: retry_after goes with status")),
                },
                other => return Err(format!("fault {s:?}: unknown key {other:?}")),
            }
        }
        Ok(rule)
    }
}

/// The live fault rules of one emulator.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<FaultRule>>>);

impl Faults {
    pub fn set(&self, rules: Vec<FaultRule>) {
        *self.0.lock().unwrap() = rules;
    }

    pub fn push(&self, rule: FaultRule) {
        self.0.lock().unwrap().push(rule);
    }

    pub fn list(&self) -> Vec<FaultRule> {
        self.0.lock().unwrap().clone()
    }

    /// The first rule matching the request, consuming one of its uses.
    fn take(&self, method: &str, path: &str) -> Option<FaultKind> {
        let mut rules = self.0.lock().unwrap();
        let i = rules.iter().position(|r| {
            r.path.as_deref().is_none_or(|p| path.starts_with(p))
                && r.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let kind = rules[i].kind.clone();
        if let Some(c) = rules[i].count.as_mut() {
            *c -= 1;
            if *c == 0 {
                rules.remove(i);
            }
        }
        Some(kind)
    }
}

const ADMIN: &str = "/_emulator/";

/// Middleware applying the fault rules; mount with `axum::middleware::from_fn_with_state`.
pub async fn inject(State(faults): State<Faults>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with(ADMIN) {
        return next.run(req).await;
    }
    let Some(kind) = faults.take(req.method().as_str(), &path) else {
        return next.run(req).await;
    };
    tracing::info!(%path, ?kind, "injecting fault");
    match kind {
        FaultKind::Latency { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(req).await
        }
        FaultKind::Status {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = (
                status,
                Json(serde_json::json!({"message": "injected fault", "code": status.as_u16()})),
            )
                .into_response();
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(s));
            }
            resp
        }
        FaultKind::Drop { after_bytes } => {
            // Streamed, not buffered: a long-lived answer (SSE, a gRPC stream) is cut after
            // its first N bytes while it is still running.
            let resp = next.run(req).await;
            let (parts, body) = resp.into_parts();
            let cut = futures_util::stream::unfold(
                Some((body.into_data_stream(), after_bytes)),
                |state| async move {
                    let dropped = || Err(std::io::Error::other("injected connection drop"));
                    let (mut body, left) = state?;
                    if left == 0 {
                        // One pending poll first, so that the server flushes what was sent.
                        tokio::task::yield_now().await;
                        return Some((dropped(), None));
                    }
                    match body.next().await {
                        Some(Ok(b)) if b.len() < left => {
                            let rest = left - b.len();
                            Some((Ok(b), Some((body, rest))))
                        }
                        Some(Ok(b)) => Some((Ok(b.slice(..left)), Some((body, 0)))),
                        // The answer ended (or failed) before N bytes: cut at its end.
                        _ => Some((dropped(), None)),
                    }
                },
            );
            let mut resp = Response::from_parts(parts, Body::from_stream(cut));
            resp.headers_mut()
                .remove(axum::http::header::CONTENT_LENGTH);
            resp
        }
        FaultKind::Slow { bytes_per_sec } => {
            // At most a tenth of the rate every 100 ms, as the answer is produced.
            let resp = next.run(req).await;
            let (parts, body) = resp.into_parts();
            let chunk = (bytes_per_sec as usize / 10).max(1);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            tokio::spawn(async move {
                let mut body = body.into_data_stream();
                while let Some(next) = body.next().await {
                    let bytes = match next {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::other(e))).await;
                            return;
                        }
                    };
                    for piece in bytes.chunks(chunk) {
                        if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
            Response::from_parts(parts, Body::from_stream(ReceiverStream(rx)))
        }
    }
}

/// A stream over an mpsc receiver.
struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_util::Stream for ReceiverStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The admin routes: `GET|POST|DELETE /_emulator/faults`.
pub fn admin_router(faults: Faults) -> Router {
    Router::new()
        .route(
            "/_emulator/faults",
            get(|State(f): State<Faults>| async move { Json(f.list()) })
                .post(
                    |State(f): State<Faults>, Json(rules): Json<Vec<FaultRule>>| async move {
                        f.set(rules);
                        StatusCode::NO_CONTENT
                    },
                )
                .delete(|State(f): State<Faults>| async move {
                    f.set(vec![]);
                    StatusCode::NO_CONTENT
                }),
        )
        .with_state(faults)
}

/// Wraps an emulator's router with the admin routes and fault injection.
pub fn with_faults(router: Router, faults: Faults) -> Router {
    router
        .merge(admin_router(faults.clone()))
        .layer(axum::middleware::from_fn_with_state(faults, inject))
}

/// Serves `router` on `listener` with TCP_NODELAY (streamed output is small writes).
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await
}

/// Builds the shared options from the command line: the engine and the fault rules.
/// Returns the temp directory (if any) that must outlive the emulator.
pub fn options(args: &CommonArgs, base_url: String) -> anyhow::Result<(Options, Option<TempRoot>)> {
    let (root, temp) = match &args.root {
        Some(r) => (r.clone(), None),
        None => {
            let t = TempRoot::new()?;
            (t.path.join("sandboxes"), Some(t))
        }
    };
    let mut config = localbox::EngineConfig::new(root);
    config.isolation = match args.isolation.as_str() {
        "bubblewrap" | "bwrap" => localbox::Isolation::Bubblewrap,
        "none" => localbox::Isolation::None,
        other => anyhow::bail!("--isolation {other:?}: expected bubblewrap or none"),
    };
    let faults = Faults::default();
    for f in &args.faults {
        faults.push(f.parse().map_err(anyhow::Error::msg)?);
    }
    Ok((
        Options {
            engine: localbox::Engine::new(config)?,
            faults,
            base_url,
        },
        temp,
    ))
}

/// A temp directory whose ancestors sandbox uids can traverse (mode 0755), removed on drop.
pub struct TempRoot {
    pub path: std::path::PathBuf,
}

impl TempRoot {
    pub fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!(
            "sandbox-emulator-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(TempRoot { path })
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Where `needle` first occurs in `hay` at or after `from` (multipart bodies of a MiB are
/// searched for their boundary: a byte-by-byte compare was milliseconds of every upload).
pub fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| i + from)
}

/// Most entries [`walk`] lists: a runaway tree must not stall an emulator.
pub const MAX_WALK: usize = 100_000;

/// The entries under the directory `root` (localbox's view) of sandbox `id`, each with its path
/// relative to `root` (`a`, `sub/b`), through subdirectories when `recursive`. A subdirectory
/// that cannot be listed (removed meanwhile) is skipped; `root` itself must list. More than
/// [`MAX_WALK`] entries is an `invalid_argument` error.
pub async fn walk(
    engine: &localbox::Engine,
    id: &str,
    root: &str,
    recursive: bool,
) -> localbox::Result<Vec<(String, localbox::FileStat)>> {
    let mut all = Vec::new();
    let mut dirs = vec![(String::new(), root.to_string())];
    while let Some((prefix, dir)) = dirs.pop() {
        let entries = match engine.list_dir(id, &dir).await {
            Ok(e) => e,
            Err(e) if prefix.is_empty() => return Err(e),
            Err(_) => continue,
        };
        for st in entries {
            if all.len() >= MAX_WALK {
                return Err(localbox::Error::invalid(format!(
                    "more than {MAX_WALK} entries under {root}"
                )));
            }
            let name = format!("{prefix}{}", st.name);
            if recursive && st.kind == localbox::FileKind::Directory {
                dirs.push((format!("{name}/"), st.path.clone()));
            }
            all.push((name, st));
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_parses() {
        let r: FaultRule = "status:429,retry_after=2,count=3,path=/v2/sandboxes,method=post"
            .parse()
            .unwrap();
        assert_eq!(
            r.kind,
            FaultKind::Status {
                status: 429,
                retry_after: Some(2)
            }
        );
        assert_eq!(
            (r.count, r.path.as_deref(), r.method.as_deref()),
            (Some(3), Some("/v2/sandboxes"), Some("POST"))
        );
        assert!("latency:x".parse::<FaultRule>().is_err());
        assert!("teleport".parse::<FaultRule>().is_err());
    }

    /// `drop` cuts an answer that is still being produced (it never ends here) after its first
    /// bytes, instead of waiting for the whole body.
    #[tokio::test]
    async fn drop_cuts_a_streaming_answer_mid_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let endless = || async {
            let first =
                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("hello world"))]);
            Body::from_stream(first.chain(futures_util::stream::pending()))
        };
        let faults = Faults::default();
        faults.push("drop:5".parse().unwrap());
        let app = with_faults(Router::new().route("/stream", get(endless)), faults);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { serve(listener, app).await });

        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let sent = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "the connection was not cut: {sent:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("hello") && !text.contains("world"), "{text}");
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "the body ended cleanly: {text}"
        );
    }

    #[test]
    fn rules_are_consumed_by_count() {
        let f = Faults::default();
        f.push("status:503,count=2,path=/a".parse().unwrap());
        assert!(f.take("GET", "/b").is_none());
        assert!(f.take("GET", "/a/x").is_some());
        assert!(f.take("GET", "/a").is_some());
        assert!(f.take("GET", "/a").is_none());
    }
}
