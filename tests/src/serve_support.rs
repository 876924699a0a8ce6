//! Support for `tests/tests/serve.rs`: a real `sandbox-host serve` process on loopback over a
//! temp home (its own localbox root, registry, plugins), a small blocking HTTP/1.1 client with
//! incremental SSE reading, and a throwaway Postgres cluster run as the `postgres` user.
//! Every wait is bounded; processes are killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::{plugin_file, workspace};

/// How long a server may take to become ready (the first start compiles the plugins).
pub const READY_LIMIT: Duration = Duration::from_secs(90);

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            newest = newest.max(newest_mtime(&path));
        } else if path
            .extension()
            .is_some_and(|e| e == "rs" || e == "toml" || e == "sql")
        {
            newest = newest.max(
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            );
        }
    }
    newest
}

/// The built `sandbox-host` binary; refuses a missing or stale one rather than test old code.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SANDBOX_HOST_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let bin = target.join("debug/sandbox-host");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is not built: run `cargo build -p sandbox-host` first (`make test` does)",
                bin.display()
            )
        });
    for src in ["host/src", "host/migrations", "localbox/src"] {
        assert!(
            newest_mtime(&workspace().join(src)) <= built,
            "{} is older than {src}: run `cargo build -p sandbox-host` first (`make test` does)",
            bin.display()
        );
    }
    bin
}

pub fn sha256_hex(s: &str) -> String {
    sandbox_host::plugin::cache::sha256_hex(s.as_bytes())
}

/// A temp home with plugins and a config file; servers started over it share its registry.
pub struct ServeHome {
    pub dir: tempfile::TempDir,
}

impl ServeHome {
    /// `extra_config` is appended to the generated config (which sets the localbox root).
    pub fn new(plugins: &[&str], extra_config: &str) -> ServeHome {
        crate::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        // Sandbox uids open their workspace by path: every ancestor must be searchable.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        for p in plugins {
            std::fs::copy(plugin_file(p), dir.path().join(format!("plugins/{p}.wasm"))).unwrap();
        }
        let home = ServeHome { dir };
        home.write_config(extra_config);
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.path().join("plugins")
    }

    pub fn write_config(&self, extra: &str) {
        let root = self.path().join("sandboxes");
        let text = format!("[localbox]\nroot_dir = \"{}\"\n\n{extra}\n", root.display());
        std::fs::write(self.path().join("config.toml"), text).unwrap();
    }

    /// Starts `serve` on `127.0.0.1:0` and waits until `/readyz` answers 200.
    pub fn start(&self) -> Serve {
        self.start_with(&[])
    }

    pub fn start_with(&self, env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
            .arg(self.plugin_dir())
            .arg("--config")
            .arg(self.path().join("config.toml"))
            .env("SANDBOX_HOST_HOME", self.path())
            .env_remove("SANDBOX_HOST_CONFIG")
            .env_remove("SANDBOX_HOST_PLUGINS")
            .env_remove("LOCALBOX_URL")
            .env_remove("LOCALBOX_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sandbox-host serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let url = match rx.recv_timeout(READY_LIMIT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not start:\n{}", log.lock().unwrap());
            }
        };
        let serve = Serve {
            child: Some(child),
            url,
            log,
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = serve.client(None).try_request("GET", "/readyz", None, &[]) {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                started.elapsed() < READY_LIMIT,
                "serve not ready:\n{}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }
}

/// A running `serve` process.
pub struct Serve {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    pub fn client(&self, token: Option<&str>) -> Client {
        Client {
            addr: self.url.trim_start_matches("http://").to_string(),
            token: token.map(str::to_string),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc_kill(self.pid(), 15) };
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.sigterm();
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not exit within 60 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in `sigterm`; a graceful stop lets localbox kill its commands.
            unsafe { libc_kill(c.id() as i32, 15) };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The error code of a JSON error body, asserting the shape.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {v}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without message: {v}"
        );
        code.to_string()
    }
}

/// Status, headers, and the body still to read.
type Head = (u16, Vec<(String, String)>, BodyReader);

/// A blocking HTTP/1.1 client, one connection per request (`Connection: close`).
#[derive(Clone)]
pub struct Client {
    pub addr: String,
    pub token: Option<String>,
}

/// Reads a chunked or plain body incrementally.
pub struct BodyReader {
    inner: BufReader<TcpStream>,
    chunked: bool,
    left: usize,
    done: bool,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if !self.chunked {
            return self.inner.read(buf);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        Ok(n)
    }
}

impl Client {
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            addr: self.addr.clone(),
            token: Some(token.into()),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Head> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let mut has_type = false;
        for (k, v) in headers {
            has_type |= k.eq_ignore_ascii_case("content-type");
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            if !has_type {
                req.push_str("Content-Type: application/json\r\n");
            }
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        if let Some(b) = body {
            // A server may answer (413) before reading everything: a failed write is not fatal.
            let _ = s.write_all(b);
        }
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = vec![];
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_lowercase(), v.trim().to_string()));
            }
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let reader = BodyReader {
            inner: r,
            chunked,
            left: 0,
            done: len == Some(0),
        };
        Ok((status, headers, reader))
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Resp> {
        let (status, headers, mut reader) = self.send(method, path, body, headers)?;
        let mut body = vec![];
        reader.read_to_end(&mut body)?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.try_request(method, path, body, headers)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, &[])
    }
    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, None, &[])
    }
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.request("POST", path, Some(body.to_string().as_bytes()), &[])
    }
    pub fn put_bytes(&self, path: &str, data: &[u8]) -> Resp {
        self.request(
            "PUT",
            path,
            Some(data),
            &[("Content-Type", "application/octet-stream")],
        )
    }

    /// Creates a sandbox on `provider`; returns its id (asserting 201).
    pub fn create(&self, provider: &str, spec: Value) -> String {
        let r = self.post(
            "/v1/sandboxes",
            &serde_json::json!({ "provider": provider, "spec": spec }),
        );
        assert_eq!(r.status, 201, "create: {}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Opens an SSE response; events arrive on the iterator as the server sends them.
    pub fn sse(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, SseEvents) {
        let body = body.map(|b| b.to_string());
        let (status, _, reader) = self
            .send(
                method,
                path,
                body.as_deref().map(str::as_bytes),
                &[("Accept", "text/event-stream")],
            )
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (
            status,
            SseEvents {
                lines: BufReader::new(reader),
            },
        )
    }
}

/// One server-sent event, with when it arrived.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub at: Instant,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

pub struct SseEvents {
    lines: BufReader<BodyReader>,
}

impl Iterator for SseEvents {
    type Item = SseEvent;
    fn next(&mut self) -> Option<SseEvent> {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if event.is_empty() && data.is_empty() {
                    continue; // keep-alive comment block
                }
                return Some(SseEvent {
                    event,
                    data,
                    at: Instant::now(),
                });
            }
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }
}

/// A throwaway Postgres cluster: `initdb` and `postgres` run as the `postgres` user (the server
/// refuses root) on a free loopback port, data and socket in a temp dir.
pub struct Postgres {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Debian's `postgresql` server binaries, newest version first.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// The server binaries, installing Debian's `postgresql` package once per test process when
/// they are missing and we are root (as `make test` installs bubblewrap). Bounded in time.
fn ensure_pg_bin() -> Option<PathBuf> {
    static BIN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = pg_bin_dir() {
            return Some(b);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { geteuid() } != 0 || !Path::new("/usr/bin/apt-get").exists() {
            return None;
        }
        eprintln!("installing postgresql for the Postgres registry tests (apt-get)");
        let install = || {
            Command::new("timeout")
                .args(["600", "apt-get", "install", "-y", "-qq", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("timeout")
                .args(["300", "apt-get", "update", "-qq"])
                .status();
            install();
        }
        pg_bin_dir()
    })
    .clone()
}

extern "C" {
    fn geteuid() -> u32;
}

impl Postgres {
    /// None (with a loud message) when the server binaries are not installed and cannot be.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = ensure_pg_bin() else {
            eprintln!("\n*** SKIPPED: Postgres is not installed and could not be (apt-get install -y postgresql); the Postgres registry test did not run ***\n");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data = dir.path().join("data");
        let as_postgres = |program: &Path| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        };
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let pg = Postgres {
            url,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "postgres did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Accepting TCP is not accepting queries yet (recovery at start): wait for a query.
        let started = Instant::now();
        loop {
            match std::thread::spawn({
                let url = pg.url.clone();
                move || sandbox_host::registry_pg::PostgresStore::connect(&url).map(drop)
            })
            .join()
            .unwrap()
            {
                Ok(()) => break,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "postgres not ready: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: postgres' fast shutdown. runuser forwards it.
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone `sandbox-host localbox --listen` process, for several `serve` replicas that
/// must reach the same local sandboxes (as replicas reach the same cloud provider).
pub struct LocalboxProcess {
    pub url: String,
    pub token: String,
    child: Child,
}

impl LocalboxProcess {
    pub fn start(home: &ServeHome) -> LocalboxProcess {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let token = crate::localbox_support::random_hex(16);
        let child = Command::new(binary())
            .args([
                "localbox",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--token",
                &token,
                "--config",
            ])
            .arg(home.path().join("config.toml"))
            .env("SANDBOX_HOST_HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn localbox");
        let lb = LocalboxProcess {
            url: format!("http://127.0.0.1:{port}"),
            token,
            child,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "localbox did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lb
    }

    /// `[plugins.local]` pointing at it.
    pub fn config_toml(&self) -> String {
        crate::localbox_support::local_plugin_config(&self.url, &self.token)
    }
}

impl Drop for LocalboxProcess {
    fn drop(&mut self) {
        // SIGINT: its Ctrl-C handler stops it and its sandboxes' commands.
        unsafe { libc_kill(self.child.id() as i32, 2) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
