//! `serve` throughput: `exec true` on the local provider through the HTTP API with 1, 16 and
//! 256 concurrent clients (keep-alive connections), beside the same exec through the library
//! API in the same run, against the same localbox; and memory per open sandbox session.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use sandbox_host::config::Config;
use sandbox_host::serve::{start, ServeOptions};
use sandbox_host::types::{ExecRequest, Spec};
use sandbox_tests::localbox_support::LocalboxServer;

/// Sandboxes the clients are spread over (one sandbox's process limit must not be the bottleneck).
const SANDBOXES: usize = 16;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A keep-alive HTTP/1.1 connection speaking just enough for JSON requests.
struct Conn {
    r: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s),
            addr: addr.to_string(),
        }
    }

    /// POSTs JSON; returns (status, body).
    async fn post(&mut self, path: &str, body: &str) -> (u16, Vec<u8>) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut buf = vec![0; len];
        self.r.read_exact(&mut buf).await.unwrap();
        (status, buf)
    }
}

/// The `"id"` of a created sandbox's JSON (ids are plain tokens, no escapes).
fn id_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let rest = text.split("\"id\":\"").nth(1).expect("an id in the answer");
    rest.split('"').next().unwrap().to_string()
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let at = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    Stats {
        rps: lat.len() as f64 / wall.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

async fn through_serve(addr: &str, ids: &[String], clients: usize, per_client: usize) -> Stats {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (addr, id) = (addr.to_string(), ids[i % ids.len()].clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await;
                let path = format!("/v1/sandboxes/{id}/exec");
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let (status, body) = conn.post(&path, r#"{"argv":["true"]}"#).await;
                    lat.push(t.elapsed());
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                }
                lat
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stats(all, started.elapsed())
}

async fn through_library(
    sandboxes: &[sandbox_host::Sandbox],
    clients: usize,
    per_client: usize,
) -> Stats {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let sb = sandboxes[i % sandboxes.len()].clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let r = sb.exec(ExecRequest::argv(["true"]), None).await.unwrap();
                    lat.push(t.elapsed());
                    assert_eq!(r.exit_code, 0);
                }
                lat
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stats(all, started.elapsed())
}

pub async fn run() {
    println!("\n## `serve`: exec true on the local provider over HTTP vs the library API (same localbox)");
    let lb = LocalboxServer::start().await;
    let config = || Config::from_toml(&lb.config_toml(), "bench").unwrap();
    let home = tempfile::tempdir().unwrap();
    let plugins = home.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        sandbox_tests::plugin_file("local"),
        plugins.join("local.wasm"),
    )
    .unwrap();

    // The library side: a host of its own over the same plugin and localbox.
    let lib_home = tempfile::tempdir().unwrap();
    let host = sandbox_host::HostBuilder::new()
        .home(lib_home.path())
        .plugins_dir(&plugins)
        .config(config())
        .hot_reload(false)
        .build()
        .await
        .unwrap();
    let provider = host.provider("local").unwrap();
    let mut lib_sandboxes = vec![];
    for _ in 0..SANDBOXES {
        lib_sandboxes.push(provider.create(Spec::default()).await.unwrap());
    }

    let running = start(ServeOptions {
        listen: Some("127.0.0.1:0".into()),
        home: home.path().to_path_buf(),
        config: config(),
        plugins_dir: Some(plugins.clone()),
        cache_dir: None,
    })
    .await
    .unwrap();
    let addr = running.addr.to_string();
    let mut conn = Conn::open(&addr).await;
    let mut ids = vec![];
    for _ in 0..SANDBOXES {
        let (status, body) = conn.post("/v1/sandboxes", r#"{"provider":"local"}"#).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        ids.push(id_of(&body));
    }
    // Memory per open session, measured before the load phases grow the heap (their freed
    // memory would absorb the growth): RSS growth of this process (server, registry, localbox
    // engine all in it) per sandbox created through the API and left open.
    const MORE: usize = 500;
    let before = rss_kib();
    let mut more = vec![];
    for _ in 0..MORE {
        let (status, body) = conn.post("/v1/sandboxes", r#"{"provider":"local"}"#).await;
        assert_eq!(status, 201);
        more.push(id_of(&body));
    }
    let after = rss_kib();
    let memory_line = format!(
        "memory per open sandbox session (server + registry + in-process localbox): {:.1} KiB ({MORE} sessions, RSS {before} -> {after} KiB)",
        after.saturating_sub(before) as f64 / MORE as f64
    );

    // Warm both paths (connection pools, page cache).
    through_serve(&addr, &ids, 4, 5).await;
    through_library(&lib_sandboxes, 4, 5).await;

    println!("clients  path      req/s    p50 ms   p99 ms   (serve/library)");
    for (clients, per_client) in [(1usize, 150usize), (16, 20), (256, 3)] {
        // Alternate which side runs first so drift hits both alike.
        let lib = through_library(&lib_sandboxes, clients, per_client).await;
        let srv = through_serve(&addr, &ids, clients, per_client).await;
        println!(
            "{clients:>7}  library {:>7.0} {:>9.2} {:>8.2}",
            lib.rps,
            lib.p50.as_secs_f64() * 1e3,
            lib.p99.as_secs_f64() * 1e3
        );
        println!(
            "{clients:>7}  serve   {:>7.0} {:>9.2} {:>8.2}   rps {:.2}x, p50 {:.2}x",
            srv.rps,
            srv.p50.as_secs_f64() * 1e3,
            srv.p99.as_secs_f64() * 1e3,
            srv.rps / lib.rps,
            srv.p50.as_secs_f64() / lib.p50.as_secs_f64()
        );
    }

    println!("{memory_line}");

    for id in ids.iter().chain(&more) {
        let req = format!(
            "DELETE /v1/sandboxes/{id} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
        );
        conn.r.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            conn.r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
    }
    running.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(30), running.wait()).await;
    for sb in lib_sandboxes {
        let _ = sb.destroy().await;
    }
    lb.shutdown().await;
}
