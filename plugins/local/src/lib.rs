//! `local`: the provider plugin for localbox, sandbox-host's local sandbox engine (a directory
//! per sandbox, every command under bubblewrap; see `localbox/API.md`).
//!
//! The CLI and `serve` start localbox in-process on a loopback port and point this plugin at it
//! (`localbox-url` setting, `localbox-token` secret); a standalone localbox is reached by setting
//! `LOCALBOX_URL` / `LOCALBOX_TOKEN`. The token is sent by the host as `authorization: Bearer`,
//! never seen here.
//!
//! API (all under `<localbox-url>/v1`, errors `{"error": {"code", "message"}}` with the matching
//! HTTP status, which the kit maps to the contract's error cases):
//! - `GET /health` (no auth);
//! - `POST|GET /sandboxes` (`?label=k=v`), `GET|DELETE /sandboxes/{id}`,
//!   `POST /sandboxes/{id}/pause|resume|timeout`;
//! - `POST /sandboxes/{id}/exec` → NDJSON `{"stdout":b64}`, `{"stderr":b64}`, then
//!   `{"exit_code","timed_out"}`;
//! - `POST|GET /sandboxes/{id}/processes`, `GET .../processes/{pid}`,
//!   `GET .../processes/{pid}/output?stdout_offset&stderr_offset`, `POST .../processes/{pid}/signal`;
//! - `GET|PUT|DELETE /sandboxes/{id}/files?path=`, `GET .../files/list|stat?path=`,
//!   `POST .../files/mkdir?path=&parents=`;
//! - `GET /sandboxes/{id}/ports/{port}` → `{"url"}`.
//!
//! Sandboxes need no per-sandbox token: every call carries the sandbox id only.

use std::collections::BTreeMap;
use std::time::Duration;

use kit::http::{Method, Request, Response};
use kit::{
    Capabilities, Check, Command, Endpoint, ExecOutput, ExecRequest, ExecResult, FileKind,
    FileStat, OutputChunk, Pairs, PluginInfo, ProcessInfo, Result, Sandbox, SandboxRef, Spec,
};
use serde::Deserialize;
use serde_json::{json, Value};

struct Local;

/// The setting holding localbox's base URL, e.g. `http://127.0.0.1:7070`.
const URL_SETTING: &str = "localbox-url";
/// localbox is on loopback (or a LAN): a connection that takes longer is not coming.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence allowed on an exec stream without a command timeout (a quiet `sleep`, a build).
/// The host's per-call timeout still bounds the whole call.
const EXEC_IDLE: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------------
// Wire types.

/// A sandbox as localbox describes it.
#[derive(Deserialize)]
struct ApiSandbox {
    id: String,
    name: Option<String>,
    state: String,
    workdir: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    image: Option<String>,
    created_at_ms: Option<u64>,
}

impl From<ApiSandbox> for Sandbox {
    fn from(s: ApiSandbox) -> Sandbox {
        Sandbox {
            id: s.id,
            name: s.name,
            state: kit::sandbox_state(&s.state),
            workdir: s.workdir,
            labels: s.labels.into_iter().collect(),
            image: s.image,
            created_at_ms: s.created_at_ms,
            token: None,
        }
    }
}

/// One NDJSON line of an exec: a chunk of output, or the final status.
#[derive(Deserialize)]
struct ExecLine {
    stdout: Option<String>,
    stderr: Option<String>,
    exit_code: Option<i32>,
    #[serde(default)]
    timed_out: bool,
}

#[derive(Deserialize)]
struct ApiProcess {
    pid: String,
    command: String,
    running: bool,
    exit_code: Option<i32>,
}

impl From<ApiProcess> for ProcessInfo {
    fn from(p: ApiProcess) -> ProcessInfo {
        ProcessInfo {
            pid: p.pid,
            command: p.command,
            running: p.running,
            exit_code: p.exit_code,
        }
    }
}

#[derive(Deserialize)]
struct ApiOutput {
    stdout_b64: String,
    stderr_b64: String,
    stdout_next: u64,
    stderr_next: u64,
    running: bool,
    exit_code: Option<i32>,
}

#[derive(Deserialize)]
struct ApiFileStat {
    path: String,
    name: String,
    kind: String,
    size: u64,
    mode: u32,
    modified_ms: Option<u64>,
}

impl From<ApiFileStat> for FileStat {
    fn from(f: ApiFileStat) -> FileStat {
        FileStat {
            path: f.path,
            name: f.name,
            kind: match f.kind.as_str() {
                "file" => FileKind::File,
                "directory" => FileKind::Directory,
                "symlink" => FileKind::Symlink,
                _ => FileKind::Other,
            },
            size: f.size,
            mode: f.mode,
            modified_ms: f.modified_ms,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// `<localbox-url>/v1/sandboxes/<segments...>`, each segment percent-encoded.
fn api(segments: &[&str]) -> Result<String> {
    let base = kit::require_setting(URL_SETTING)?;
    let mut all = vec!["v1", "sandboxes"];
    all.extend_from_slice(segments);
    Ok(kit::url(&base, &all))
}

/// A request with this plugin's connect timeout.
fn http(method: Method, url: String) -> Request {
    Request::new(method, url).connect_timeout(CONNECT_TIMEOUT)
}

fn http_get(url: String) -> Request {
    http(Method::Get, url)
}

fn http_post(url: String) -> Request {
    http(Method::Post, url)
}

/// A sandbox-scoped file route with `?path=`.
fn files(sandbox: &SandboxRef, route: Option<&str>, method: Method, path: &str) -> Result<Request> {
    if path.is_empty() {
        return Err(kit::invalid_argument("empty path"));
    }
    let mut segments = vec![sandbox.id.as_str(), "files"];
    segments.extend(route);
    Ok(http(method, api(&segments)?).query("path", path))
}

/// The JSON body of `exec` and `start-process`.
fn command_body(request: &ExecRequest) -> Value {
    let env: BTreeMap<&str, &str> = request
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut body = json!({ "env": env });
    match &request.command {
        Command::Argv(argv) => body["argv"] = json!(argv),
        Command::Shell(script) => body["shell"] = json!(script),
    }
    if let Some(cwd) = &request.cwd {
        body["cwd"] = json!(cwd);
    }
    if let Some(ms) = request.timeout_ms {
        body["timeout_ms"] = json!(ms);
    }
    if let Some(stdin) = &request.stdin {
        body["stdin_b64"] = json!(kit::b64_encode(stdin));
    }
    body
}

/// Sends, checks the status, and drops the body (for routes answering 204 or an ignored JSON).
fn send(req: Request) -> Result<()> {
    req.send_ok().map(drop)
}

/// One preflight step as a check: `ok` with `detail`, or failing with the error's message.
fn probe(name: &str, detail: &str, result: Result<Response>) -> Check {
    match result.and_then(Response::error_for_status) {
        Ok(_) => kit::check(name, true, detail),
        Err(e) => kit::check(name, false, format!("{}: {}", e.kind(), e.message())),
    }
}

// ---------------------------------------------------------------------------------------------
// The provider.

impl kit::Plugin for Local {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "local".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "Local sandboxes: a directory per sandbox, every command isolated with \
                          bubblewrap, served by localbox (started by the CLI and `serve`)."
                .into(),
            capabilities: Capabilities::PAUSE_RESUME
                | Capabilities::STREAMING
                | Capabilities::STDIN
                | Capabilities::BACKGROUND
                | Capabilities::PORTS
                | Capabilities::SET_TIMEOUT
                | Capabilities::LIST_BY_LABELS
                | Capabilities::FILES,
            settings: vec![kit::setting_spec(
                URL_SETTING,
                true,
                None,
                "Base URL of localbox, e.g. http://127.0.0.1:7070. Set by the CLI and `serve` \
                 when they start localbox; LOCALBOX_URL for a standalone one.",
            )],
            credentials: vec![kit::credential(
                "localbox-token",
                "authorization",
                "Bearer {}",
                &["http://127.0.0.1:*", "http://localhost:*"],
                "localbox's API token (set by the CLI and `serve`; LOCALBOX_TOKEN for a \
                 standalone localbox). Sent to loopback only unless the operator pins other hosts.",
            )],
            hosts: vec!["http://127.0.0.1:*".into()],
            options: vec![],
        }
    }

    fn preflight() -> Result<Vec<Check>> {
        let Some(base) = kit::setting(URL_SETTING).filter(|b| !b.trim().is_empty()) else {
            return Ok(vec![kit::check(
                URL_SETTING,
                false,
                "not configured (LOCALBOX_URL)",
            )]);
        };
        let health = http_get(kit::url(&base, &["v1", "health"])).send();
        let reachable = health.is_ok();
        let mut checks = vec![
            kit::check(URL_SETTING, true, base.as_str()),
            probe("localbox", "GET /v1/health answered", health),
        ];
        if reachable {
            checks.push(probe(
                "localbox-token",
                "accepted by GET /v1/sandboxes",
                http_get(api(&[])?).send(),
            ));
        }
        Ok(checks)
    }

    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        if let Some((key, _)) = spec.options.first() {
            return Err(kit::invalid_argument(format!(
                "unknown option `{key}` (local has none)"
            )));
        }
        if spec.cpu.is_some() || spec.memory_mb.is_some() || spec.disk_mb.is_some() {
            kit::debug!("local: cpu/memory/disk are not per-sandbox in localbox; ignored");
        }
        let map = |pairs: &Pairs| -> BTreeMap<String, String> { pairs.iter().cloned().collect() };
        let body = json!({
            "name": spec.name,
            "image": spec.image,
            "env": map(&spec.env),
            "labels": map(&spec.labels),
            "timeout_secs": spec.timeout_secs,
            "workdir": spec.workdir,
        });
        // localbox does not deduplicate by key (so no `idempotent-create`); sent for its logs.
        let created: ApiSandbox = http_post(api(&[])?)
            .header("idempotency-key", &idempotency_key)
            .json(&body)
            .send_json()?;
        Ok(created.into())
    }

    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        Ok(http_get(api(&[&sandbox.id])?)
            .send_json::<ApiSandbox>()?
            .into())
    }

    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        #[derive(Deserialize)]
        struct List {
            sandboxes: Vec<ApiSandbox>,
        }
        let mut req = http_get(api(&[])?);
        for (k, v) in &labels {
            req = req.query("label", format!("{k}={v}"));
        }
        let list: List = req.send_json()?;
        Ok(list.sandboxes.into_iter().map(Into::into).collect())
    }

    fn pause(sandbox: SandboxRef) -> Result<()> {
        send(http_post(api(&[&sandbox.id, "pause"])?))
    }

    fn resume(sandbox: SandboxRef) -> Result<Sandbox> {
        Ok(http_post(api(&[&sandbox.id, "resume"])?)
            .send_json::<ApiSandbox>()?
            .into())
    }

    /// localbox destroys the sandbox `seconds` from now; 0 clears the timeout.
    fn set_timeout(sandbox: SandboxRef, seconds: u64) -> Result<()> {
        send(http_post(api(&[&sandbox.id, "timeout"])?).json(&json!({ "seconds": seconds })))
    }

    fn destroy(sandbox: SandboxRef) -> Result<()> {
        send(http(Method::Delete, api(&[&sandbox.id])?))
    }

    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        // The stream may be silent as long as the command is; the command timeout (plus slack)
        // or, without one, the host's call timeout bounds it.
        let idle = request.timeout_ms.map_or(EXEC_IDLE, |ms| {
            Duration::from_millis(ms) + Duration::from_secs(60)
        });
        let mut response = http_post(api(&[&sandbox.id, "exec"])?)
            .first_byte_timeout(Duration::from_secs(60))
            .between_bytes_timeout(idle)
            .json(&command_body(&request))
            .send_ok()?;
        let mut output = ExecOutput::new();
        // Each line is emitted to the caller as soon as it arrives.
        for line in response.json_lines::<ExecLine>() {
            let line = line?;
            if let Some(data) = line.stdout {
                output.stdout(&kit::b64_decode(data)?);
            }
            if let Some(data) = line.stderr {
                output.stderr(&kit::b64_decode(data)?);
            }
            if let Some(code) = line.exit_code {
                return Ok(output.finish(code, line.timed_out));
            }
        }
        Err(kit::unavailable(
            "exec: localbox's output ended without an exit status",
        ))
    }

    fn start_process(sandbox: SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
        let url = api(&[&sandbox.id, "processes"])?;
        Ok(http_post(url)
            .json(&command_body(&request))
            .send_json::<ApiProcess>()?
            .into())
    }

    fn list_processes(sandbox: SandboxRef) -> Result<Vec<ProcessInfo>> {
        #[derive(Deserialize)]
        struct List {
            processes: Vec<ApiProcess>,
        }
        let list: List = http_get(api(&[&sandbox.id, "processes"])?).send_json()?;
        Ok(list.processes.into_iter().map(Into::into).collect())
    }

    fn process_status(sandbox: SandboxRef, pid: String) -> Result<ProcessInfo> {
        Ok(http_get(api(&[&sandbox.id, "processes", &pid])?)
            .send_json::<ApiProcess>()?
            .into())
    }

    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<OutputChunk> {
        let o: ApiOutput = http_get(api(&[&sandbox.id, "processes", &pid, "output"])?)
            .query("stdout_offset", stdout_offset.to_string())
            .query("stderr_offset", stderr_offset.to_string())
            .send_json()?;
        Ok(OutputChunk {
            stdout: kit::b64_decode(o.stdout_b64)?,
            stderr: kit::b64_decode(o.stderr_b64)?,
            stdout_next: o.stdout_next,
            stderr_next: o.stderr_next,
            running: o.running,
            exit_code: o.exit_code,
        })
    }

    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        let url = api(&[&sandbox.id, "processes", &pid, "signal"])?;
        send(http_post(url).json(&json!({ "signal": signal })))
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        files(&sandbox, None, Method::Get, &path)?
            .send_ok()?
            .bytes()
    }

    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        let mut req = files(&sandbox, None, Method::Put, &path)?
            .header("content-type", "application/octet-stream")
            .body(data);
        if let Some(mode) = mode {
            req = req.query("mode", format!("0o{mode:o}"));
        }
        send(req)
    }

    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<FileStat>> {
        #[derive(Deserialize)]
        struct List {
            entries: Vec<ApiFileStat>,
        }
        let list: List = files(&sandbox, Some("list"), Method::Get, &path)?.send_json()?;
        Ok(list.entries.into_iter().map(Into::into).collect())
    }

    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        let req = files(&sandbox, Some("stat"), Method::Get, &path)?;
        Ok(req.send_json::<ApiFileStat>()?.into())
    }

    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        let req = files(&sandbox, None, Method::Delete, &path)?;
        send(req.query("recursive", recursive.to_string()))
    }

    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        let req = files(&sandbox, Some("mkdir"), Method::Post, &path)?;
        send(req.query("parents", parents.to_string()))
    }

    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        #[derive(Deserialize)]
        struct Url {
            url: String,
        }
        let port = port.to_string();
        let u: Url = http_get(api(&[&sandbox.id, "ports", &port])?).send_json()?;
        Ok(Endpoint {
            url: u.url,
            headers: vec![],
        })
    }
}

kit::export!(Local);
