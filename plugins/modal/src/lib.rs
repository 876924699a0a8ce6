//! `modal`: the provider plugin for Modal sandboxes, speaking Modal's gRPC API over wasi:http
//! (HTTP/2: ALPN over TLS, or h2c to hosts the operator marks, e.g. the emulator).
//!
//! - Control plane `modal.client.ModalClient` at the `server-url` setting: the account token
//!   pair is a credential binding (`x-modal-token-id`, `x-modal-token-secret`) the host adds
//!   toward the control-plane hosts only; `*V2` calls also carry a short-lived
//!   `x-modal-auth-token` from `AuthTokenGet`.
//! - Exec and files go to the task's command router (`TaskCommandRouter`, a per-worker URL
//!   learned at run time) with only `authorization: Bearer <router jwt>`; files through the
//!   in-sandbox fs-tools helper, as the official SDK does.
//! - The sandbox token (opaque to the host) holds the task id, router URL and JWT and the
//!   workdir; the JWT is refreshed on UNAUTHENTICATED and handed back with `refresh-token`.
//!
//! Messages are generated with prost from the descriptor set of the pinned `modal` 1.6.4 wheel.

mod proto;
mod rpc;

use std::time::{Duration, Instant};

use kit::grpc::{code, GrpcError, PendingCall};
use kit::{
    Capabilities, Check, Command, Endpoint, ExecOutput, ExecRequest, ExecResult, FileKind,
    FileStat, Pairs, PluginInfo, Result, Sandbox, SandboxRef, SandboxState, Spec,
};
use serde::{Deserialize, Serialize};

use proto::client as pb;
use proto::task_command_router as tr;
use rpc::Router;
use tr::TaskExecStdioFileDescriptor as Fd;

struct Modal;

/// The default image when the spec names none (Modal's `debian_slim` has python3).
const DEFAULT_IMAGE: &str = "python:3.11-slim-bookworm";
const DEFAULT_WORKDIR: &str = "/workspace";
/// The seeds' default sandbox lifetime.
const DEFAULT_TIMEOUT_SECS: u64 = 3600;
const FS_TOOLS: &str = "/__modal/.bin/modal-sandbox-fs-tools";
/// Stdin and file uploads go out in pieces of this size.
const STDIN_CHUNK: usize = 4 << 20;
/// How often a broken output stream is reopened (from its byte offset) before giving up.
const STREAM_RECONNECTS: u32 = 10;

// ---------------------------------------------------------------------------------------------
// The sandbox token.

/// What the plugin remembers about a sandbox, in the host-persisted token.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct Token {
    task: String,
    url: String,
    jwt: String,
    wd: String,
}

impl Token {
    fn parse(s: &Option<String>) -> Option<Token> {
        s.as_deref().and_then(|t| serde_json::from_str(t).ok())
    }
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
    fn router(&self) -> Router {
        Router {
            url: self.url.clone(),
            jwt: self.jwt.clone(),
        }
    }
}

/// Router access for a sandbox: from its token, else from the control plane.
fn token_for(sandbox: &SandboxRef) -> Result<Token> {
    if let Some(t) = Token::parse(&sandbox.token) {
        return Ok(t);
    }
    let wd = DEFAULT_WORKDIR.to_string();
    fetch_access(&sandbox.id, wd)
}

/// Task id and fresh router access from the control plane.
fn fetch_access(sandbox_id: &str, wd: String) -> Result<Token> {
    let auth = rpc::auth_token()?;
    let task = wait_task_id(sandbox_id, &auth)?;
    let access: pb::SandboxGetCommandRouterAccessResponse = rpc::control(
        "SandboxGetCommandRouterAccess",
        Some(&auth),
        &pb::SandboxGetCommandRouterAccessRequest {
            target: Some(
                pb::sandbox_get_command_router_access_request::Target::SandboxId(
                    sandbox_id.to_string(),
                ),
            ),
        },
    )?;
    Ok(Token {
        task,
        url: access.url,
        jwt: access.jwt,
        wd,
    })
}

fn wait_task_id(sandbox_id: &str, auth: &str) -> Result<String> {
    let started = Instant::now();
    loop {
        let r: pb::SandboxGetTaskIdResponse = rpc::control(
            "SandboxGetTaskIdV2",
            Some(auth),
            &pb::SandboxGetTaskIdRequest {
                sandbox_id: sandbox_id.into(),
                ..Default::default()
            },
        )?;
        if let Some(t) = r.task_id.filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        if r.task_result.is_some_and(|res| res.status != 0) {
            return Err(kit::not_found(format!("sandbox {sandbox_id} has finished")));
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(kit::timeout(format!(
                "sandbox {sandbox_id} did not start within 300 s"
            )));
        }
        kit::sleep(Duration::from_millis(200));
    }
}

/// Runs a router call; on UNAUTHENTICATED, refreshes the JWT once (persisting the new token).
fn with_router<T>(
    sandbox_id: &str,
    token: &mut Token,
    f: impl Fn(&Router) -> std::result::Result<T, GrpcError>,
) -> Result<T> {
    match f(&token.router()) {
        Err(e) if e.code() == code::UNAUTHENTICATED => {
            *token = fetch_access(sandbox_id, token.wd.clone())?;
            kit::refresh_token(&token.encode());
            Ok(f(&token.router())?)
        }
        other => Ok(other?),
    }
}

// ---------------------------------------------------------------------------------------------
// Settings.

fn environment() -> Result<String> {
    kit::require_setting("environment")
}

fn app_name() -> String {
    kit::setting("app-name")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "sandbox-host".into())
}

fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref().map(str::trim), Some("1" | "true" | "yes"))
}

/// The seed's rule: an environment must be set, and not `prod` unless explicitly allowed.
fn environment_checks() -> Vec<Check> {
    let env = kit::setting("environment").filter(|s| !s.trim().is_empty());
    let mut checks = vec![kit::check(
        "environment",
        env.is_some(),
        match &env {
            Some(e) => format!("environment {e:?}"),
            None => {
                "no Modal environment configured (setting `environment`, MODAL_ENVIRONMENT)".into()
            }
        },
    )];
    if let Some(e) = env {
        let prod =
            e.trim().eq_ignore_ascii_case("prod") || e.trim().eq_ignore_ascii_case("production");
        let allowed = truthy(kit::setting("allow-prod"));
        checks.push(kit::check(
            "not-prod",
            !prod || allowed,
            if prod && !allowed {
                "environment is `prod`: refused unless the setting `allow-prod` is true".to_string()
            } else {
                "ok".to_string()
            },
        ));
    }
    checks
}

/// Refuses (before any network call) when the environment checks fail.
fn require_environment() -> Result<String> {
    if let Some(bad) = environment_checks().into_iter().find(|c| !c.ok) {
        return Err(kit::invalid_argument(bad.detail));
    }
    environment()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn exec_id() -> String {
    let b = kit::random_bytes(16);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A path in the sandbox: absolute as is, relative against the workdir.
fn abs_path(token: &Token, path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(kit::invalid_argument("empty path"));
    }
    Ok(if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", token.wd.trim_end_matches('/'), path)
    })
}

fn env_source(env: &Pairs) -> Vec<pb::SecretSource> {
    if env.is_empty() {
        return vec![];
    }
    vec![pb::SecretSource {
        source: Some(pb::secret_source::Source::Env(pb::StringMap {
            contents: env.iter().cloned().collect(),
        })),
    }]
}

fn labels_of(tags: &[pb::SandboxTag]) -> Pairs {
    tags.iter()
        .map(|t| (t.tag_name.clone(), t.tag_value.clone()))
        .collect()
}

/// A started command: its ids, for output, stdin and exit.
/// An exec's calls sent ahead (see [`Running::send_ahead`]).
struct Ahead {
    stdin: Option<PendingCall>,
    stdout: Option<PendingCall>,
    stderr: Option<PendingCall>,
    wait: Option<PendingCall>,
}

struct Running {
    sandbox_id: String,
    exec_id: String,
    token: Token,
}

impl Running {
    fn start(
        sandbox_id: &str,
        mut token: Token,
        argv: Vec<String>,
        cwd: Option<String>,
        env: &Pairs,
        timeout_ms: Option<u64>,
    ) -> Result<Running> {
        let exec_id = exec_id();
        let req = tr::TaskExecStartRequest {
            task_id: token.task.clone(),
            exec_id: exec_id.clone(),
            command_args: argv,
            stdout_config: tr::TaskExecStdoutConfig::Pipe as i32,
            stderr_config: tr::TaskExecStderrConfig::Pipe as i32,
            timeout_secs: timeout_ms.map(|ms| ms.div_ceil(1000).max(1) as u32),
            workdir: cwd,
            secret_sources: env_source(env),
            ..Default::default()
        };
        // The exec id is the idempotency key: the start may be retried.
        with_router(sandbox_id, &mut token, |r| {
            r.unary::<_, tr::TaskExecStartResponse>("TaskExecStart", &req, Duration::from_secs(60))
        })?;
        Ok(Running {
            sandbox_id: sandbox_id.to_string(),
            exec_id,
            token,
        })
    }

    /// Sends what an exec asks right after the start, so that the round trips overlap each
    /// other and the command: stdin with its end (when it fits one write), both output streams
    /// and the wait. A call that cannot be sent, or is refused (an expired JWT, …), is simply
    /// asked again the ordinary way.
    fn send_ahead(&self, stdin: Option<&[u8]>) -> Ahead {
        let r = self.token.router();
        let ids = (self.token.task.clone(), self.exec_id.clone());
        let read = |fd: tr::TaskExecStdioFileDescriptor| {
            let req = tr::TaskExecStdioReadRequest {
                task_id: ids.0.clone(),
                exec_id: ids.1.clone(),
                offset: 0,
                file_descriptor: fd as i32,
            };
            r.start("TaskExecStdioRead", &req, Duration::from_secs(24 * 3600))
        };
        let stdin = stdin.filter(|d| d.len() <= STDIN_CHUNK).map(|stdin| {
            let req = tr::TaskExecStdinWriteRequest {
                task_id: ids.0.clone(),
                exec_id: ids.1.clone(),
                offset: 0,
                data: stdin.to_vec(),
                eof: true,
            };
            r.start("TaskExecStdinWrite", &req, Duration::from_secs(120))
        });
        let wait = tr::TaskExecWaitRequest {
            task_id: ids.0.clone(),
            exec_id: ids.1.clone(),
        };
        Ahead {
            stdin: stdin.flatten(),
            stdout: read(tr::TaskExecStdioFileDescriptor::Stdout),
            stderr: read(tr::TaskExecStdioFileDescriptor::Stderr),
            wait: r.start("TaskExecWait", &wait, Duration::from_secs(55)),
        }
    }

    /// Runs the command to its end: stdin written and closed (`None`: left open), stdout and
    /// stderr delivered in that order as they arrive; the exit code.
    fn finish(
        mut self,
        stdin: Option<&[u8]>,
        mut on_stdout: impl FnMut(&[u8]),
        mut on_stderr: impl FnMut(&[u8]),
    ) -> Result<i32> {
        let ahead = self.send_ahead(stdin);
        if let Some(data) = stdin {
            self.stdin(data, ahead.stdin)?;
        }
        self.read(Fd::Stdout, ahead.stdout, &mut on_stdout)?;
        self.read(Fd::Stderr, ahead.stderr, &mut on_stderr)?;
        self.wait(ahead.wait)
    }

    /// Writes all of `data` to stdin by offset, then closes it; `ahead` is the same write
    /// already sent (see [`send_ahead`](Running::send_ahead)).
    fn stdin(&mut self, data: &[u8], ahead: Option<PendingCall>) -> Result<()> {
        if ahead.is_some_and(|call| call.unary().is_ok()) {
            return Ok(());
        }
        let mut offset = 0usize;
        loop {
            let end = (offset + STDIN_CHUNK).min(data.len());
            let req = tr::TaskExecStdinWriteRequest {
                task_id: self.token.task.clone(),
                exec_id: self.exec_id.clone(),
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                eof: end == data.len(),
            };
            with_router(&self.sandbox_id, &mut self.token, |r| {
                r.unary::<_, tr::TaskExecStdinWriteResponse>(
                    "TaskExecStdinWrite",
                    &req,
                    Duration::from_secs(120),
                )
            })?;
            offset = end;
            if offset == data.len() {
                return Ok(());
            }
        }
    }

    /// Reads one output stream to its end, from byte offset 0, reconnecting from the current
    /// offset when the stream breaks (no byte lost or repeated).
    fn read(
        &mut self,
        fd: tr::TaskExecStdioFileDescriptor,
        mut ahead: Option<PendingCall>,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<()> {
        let mut offset = 0u64;
        let mut failures = 0;
        loop {
            let req = tr::TaskExecStdioReadRequest {
                task_id: self.token.task.clone(),
                exec_id: self.exec_id.clone(),
                offset,
                file_descriptor: fd as i32,
            };
            let opened = match ahead.take().map(PendingCall::open) {
                Some(Ok(stream)) => Ok(stream),
                _ => with_router(&self.sandbox_id, &mut self.token, |r| {
                    r.open("TaskExecStdioRead", &req, Duration::from_secs(24 * 3600))
                }),
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(e)
                    if matches!(e, kit::Error::Unavailable(_)) && failures < STREAM_RECONNECTS =>
                {
                    failures += 1;
                    kit::sleep(Duration::from_millis(10 << failures.min(6)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            loop {
                match stream.next_message() {
                    Ok(Some(bytes)) => {
                        let m = <tr::TaskExecStdioReadResponse as prost::Message>::decode(
                            bytes.as_slice(),
                        )
                        .map_err(|e| kit::provider(0, format!("malformed output message: {e}")))?;
                        offset += m.data.len() as u64;
                        sink(&m.data);
                    }
                    Ok(None) => return Ok(()),
                    Err(e) if e.is_retryable() && failures < STREAM_RECONNECTS => {
                        failures += 1;
                        kit::debug!("output stream broke at offset {offset}: {e}; reconnecting");
                        kit::sleep(Duration::from_millis(10 << failures.min(6)));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// Waits for the exit code (a signal `n` as 128 + n).
    fn wait(&mut self, mut ahead: Option<PendingCall>) -> Result<i32> {
        let req = tr::TaskExecWaitRequest {
            task_id: self.token.task.clone(),
            exec_id: self.exec_id.clone(),
        };
        loop {
            let answered = ahead.take().map(PendingCall::unary).and_then(|r| r.ok());
            let r = match answered
                .map(|b| <tr::TaskExecWaitResponse as prost::Message>::decode(b.as_slice()))
            {
                Some(Ok(resp)) => Ok(resp),
                _ => with_router(&self.sandbox_id, &mut self.token, |r| {
                    r.unary::<_, tr::TaskExecWaitResponse>(
                        "TaskExecWait",
                        &req,
                        Duration::from_secs(55),
                    )
                }),
            };
            match r {
                Ok(resp) => {
                    use tr::task_exec_wait_response::ExitStatus;
                    return Ok(match resp.exit_status {
                        Some(ExitStatus::Code(c)) => c,
                        Some(ExitStatus::Signal(s)) => 128 + s,
                        None => -1,
                    });
                }
                // The server's long-poll ended while the command still runs: ask again.
                Err(kit::Error::Timeout(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Runs the fs-tools helper with a JSON command: (exit code, stdout, stderr).
fn fs_tool(
    sandbox: &SandboxRef,
    command: serde_json::Value,
    stdin: Option<&[u8]>,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let token = token_for(sandbox)?;
    let run = Running::start(
        &sandbox.id,
        token,
        vec![FS_TOOLS.into(), command.to_string()],
        None,
        &vec![],
        None,
    )?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run.finish(
        stdin,
        |b| out.extend_from_slice(b),
        |b| err.extend_from_slice(b),
    )?;
    Ok((code, out, err))
}

/// fs-tools' failure (`{"error_kind","message"}` on stderr) as the contract's error.
fn fs_error(path: &str, code: i32, stderr: &[u8]) -> kit::Error {
    #[derive(Deserialize)]
    struct Payload {
        error_kind: String,
        message: String,
    }
    match serde_json::from_slice::<Payload>(stderr) {
        Ok(p) => {
            let msg = format!("{}: {path}", p.message);
            match p.error_kind.as_str() {
                "NotFound" => kit::not_found(msg),
                "PermissionDenied" => kit::forbidden(msg),
                "DirectoryNotEmpty" | "PathAlreadyExists" | "AlreadyExists" | "IsDirectory"
                | "NotDirectory" | "IsFile" => kit::conflict(msg),
                "FileTooLarge" => kit::invalid_argument(msg),
                _ => kit::provider(0, msg),
            }
        }
        Err(_) => kit::provider(
            0,
            format!(
                "fs-tools on {path} exited {code}: {}",
                String::from_utf8_lossy(stderr)
            ),
        ),
    }
}

fn fs_ok(
    sandbox: &SandboxRef,
    path: &str,
    command: serde_json::Value,
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let (code, out, err) = fs_tool(sandbox, command, stdin)?;
    if code != 0 {
        return Err(fs_error(path, code, &err));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct FsEntry {
    name: String,
    path: String,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
    mode: u32,
    #[serde(default)]
    modified_time: f64,
}

impl From<FsEntry> for FileStat {
    fn from(e: FsEntry) -> FileStat {
        FileStat {
            path: e.path,
            name: e.name,
            kind: match e.kind.as_str() {
                "file" => FileKind::File,
                "directory" => FileKind::Directory,
                "symlink" => FileKind::Symlink,
                _ => FileKind::Other,
            },
            size: e.size,
            mode: e.mode & 0o7777,
            modified_ms: (e.modified_time > 0.0).then_some((e.modified_time * 1000.0) as u64),
        }
    }
}

fn bad_json(e: serde_json::Error) -> kit::Error {
    kit::provider(0, format!("fs-tools printed invalid JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Create.

/// Image id for a registry tag: get-or-create, then follow the build until it has a result.
fn image_id(tag: &str, app_id: &str, env: &str) -> Result<String> {
    let envr: pb::EnvironmentGetOrCreateResponse = rpc::control(
        "EnvironmentGetOrCreate",
        None,
        &pb::EnvironmentGetOrCreateRequest {
            deployment_name: env.into(),
            ..Default::default()
        },
    )?;
    let builder = envr
        .metadata
        .and_then(|m| m.settings)
        .map(|s| s.image_builder_version)
        .unwrap_or_default();
    let req = pb::ImageGetOrCreateRequest {
        image: Some(pb::Image {
            dockerfile_commands: vec![format!("FROM {tag}")],
            ..Default::default()
        }),
        app_id: app_id.into(),
        namespace: pb::DeploymentNamespace::Workspace as i32,
        builder_version: builder,
        ..Default::default()
    };
    let resp: pb::ImageGetOrCreateResponse = rpc::control("ImageGetOrCreate", None, &req)?;
    let mut status = resp.result.map(|r| r.status).unwrap_or(0);
    let mut last_entry = String::new();
    let started = Instant::now();
    while status == 0 {
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(kit::timeout(format!(
                "image {tag} did not build within 30 minutes"
            )));
        }
        let join = pb::ImageJoinStreamingRequest {
            image_id: resp.image_id.clone(),
            timeout: 55.0,
            last_entry_id: last_entry.clone(),
            ..Default::default()
        };
        let mut stream = rpc::control_stream("ImageJoinStreaming", None, &join)?;
        loop {
            match stream.next_message() {
                Ok(Some(bytes)) => {
                    let m: pb::ImageJoinStreamingResponse =
                        prost::Message::decode(bytes.as_slice()).map_err(|e| {
                            kit::provider(0, format!("malformed image build message: {e}"))
                        })?;
                    if !m.entry_id.is_empty() {
                        last_entry = m.entry_id;
                    }
                    if let Some(r) = m.result.filter(|r| r.status != 0) {
                        status = r.status;
                        if r.status != pb::generic_result::GenericStatus::Success as i32 {
                            return Err(kit::invalid_argument(format!(
                                "image {tag} failed to build: {}",
                                r.exception
                            )));
                        }
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_retryable() => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(resp.image_id)
}

fn open_ports(spec: &Spec) -> Result<Option<pb::sandbox::OpenPortsOneof>> {
    let unencrypted: Vec<u16> = match kit::pair(&spec.options, "unencrypted-ports") {
        Some(list) => list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim().parse::<u16>().map_err(|_| {
                    kit::invalid_argument(format!("unencrypted-ports: {s:?} is not a port"))
                })
            })
            .collect::<Result<_>>()?,
        None => vec![],
    };
    let mut ports: Vec<pb::PortSpec> = spec
        .ports
        .iter()
        .filter(|p| !unencrypted.contains(p))
        .map(|p| pb::PortSpec {
            port: *p as u32,
            unencrypted: false,
            tunnel_type: None,
        })
        .collect();
    ports.extend(unencrypted.iter().map(|p| pb::PortSpec {
        port: *p as u32,
        unencrypted: true,
        tunnel_type: None,
    }));
    Ok(
        (!ports.is_empty()).then_some(pb::sandbox::OpenPortsOneof::OpenPorts(pb::PortSpecs {
            ports,
        })),
    )
}

impl kit::Plugin for Modal {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "modal".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "Modal sandboxes over Modal's gRPC API (HTTP/2)".into(),
            capabilities: Capabilities::STREAMING
                | Capabilities::STDIN
                | Capabilities::PORTS
                | Capabilities::LIST_BY_LABELS
                | Capabilities::IDEMPOTENT_CREATE
                | Capabilities::FILES,
            settings: vec![
                kit::setting_spec(
                    "server-url",
                    false,
                    Some("https://api.modal.com"),
                    "Modal's control plane (MODAL_SERVER_URL)",
                ),
                kit::setting_spec(
                    "environment",
                    true,
                    None,
                    "The Modal environment (MODAL_ENVIRONMENT); `prod` needs allow-prod",
                ),
                kit::setting_spec(
                    "allow-prod",
                    false,
                    Some("false"),
                    "Allow the `prod` environment",
                ),
                kit::setting_spec(
                    "app-name",
                    false,
                    Some("sandbox-host"),
                    "The app sandboxes are created in (created if missing)",
                ),
            ],
            credentials: vec![
                kit::credential(
                    "token-id",
                    "x-modal-token-id",
                    "{}",
                    &["https://api.modal.com", "https://api.modal2.com"],
                    "Modal token id (MODAL_TOKEN_ID, ak-…)",
                ),
                kit::credential(
                    "token-secret",
                    "x-modal-token-secret",
                    "{}",
                    &["https://api.modal.com", "https://api.modal2.com"],
                    "Modal token secret (MODAL_TOKEN_SECRET, as-…)",
                ),
            ],
            hosts: vec![
                "https://api.modal.com".into(),
                "https://*.modal.com".into(),
                "https://*.modal.host".into(),
            ],
            options: vec![
                kit::setting_spec(
                    "unencrypted-ports",
                    false,
                    None,
                    "Comma-separated ports exposed as plain TCP tunnels instead of TLS",
                ),
                kit::setting_spec(
                    "idle-timeout-secs",
                    false,
                    None,
                    "Stop the sandbox after this many idle seconds",
                ),
            ],
        }
    }

    fn preflight() -> Result<Vec<Check>> {
        let mut checks = environment_checks();
        if checks.iter().any(|c| !c.ok) {
            // Refused before any network call.
            return Ok(checks);
        }
        let hello: Result<pb::ClientHelloResponse> = rpc::control("ClientHello", None, &());
        checks.push(match hello {
            Ok(_) => kit::check("token", true, "the control plane accepted the token"),
            Err(kit::Error::Unauthorized(m)) => {
                kit::check("token", false, format!("token missing or rejected: {m}"))
            }
            Err(e) => kit::check("token", false, format!("control plane unreachable: {e:?}")),
        });
        Ok(checks)
    }

    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        let env = require_environment()?;
        let workdir = spec
            .workdir
            .clone()
            .unwrap_or_else(|| DEFAULT_WORKDIR.into());
        if !workdir.starts_with('/') {
            return Err(kit::invalid_argument(format!(
                "workdir {workdir:?} must be absolute"
            )));
        }
        for (k, _) in &spec.options {
            if k != "unencrypted-ports" && k != "idle-timeout-secs" {
                return Err(kit::invalid_argument(format!("unknown option {k:?}")));
            }
        }
        let app: pb::AppGetOrCreateResponse = rpc::control(
            "AppGetOrCreate",
            None,
            &pb::AppGetOrCreateRequest {
                app_name: app_name(),
                environment_name: env.clone(),
                object_creation_type: pb::ObjectCreationType::CreateIfMissing as i32,
            },
        )?;
        let tag = spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into());
        let image_id = image_id(&tag, &app.app_id, &env)?;
        let idle = match kit::pair(&spec.options, "idle-timeout-secs") {
            Some(v) => Some(
                v.parse::<u32>()
                    .map_err(|_| kit::invalid_argument(format!("idle-timeout-secs: {v:?}")))?,
            ),
            None => None,
        };
        let definition = pb::Sandbox {
            entrypoint_args: vec!["sleep".into(), "infinity".into()],
            image_id,
            resources: Some(pb::Resources {
                memory_mb: spec.memory_mb.unwrap_or(0) as u32,
                milli_cpu: spec.cpu.map(|c| (c * 1000.0) as u32).unwrap_or(0),
                ..Default::default()
            }),
            timeout_secs: spec.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS) as u32,
            idle_timeout_secs: idle,
            workdir: Some(workdir.clone()),
            name: spec.name.clone(),
            open_ports_oneof: open_ports(&spec)?,
            ..Default::default()
        };
        let req = pb::SandboxCreateV2Request {
            app_id: app.app_id.clone(),
            definition: Some(definition),
            tags: spec
                .labels
                .iter()
                .map(|(k, v)| pb::SandboxTag {
                    tag_name: k.clone(),
                    tag_value: v.clone(),
                })
                .collect(),
            secret_sources: env_source(&spec.env),
            ..Default::default()
        };
        let auth = rpc::auth_token()?;
        // The same key on every retry (ours and the host's): the server dedupes creates.
        let resp: pb::SandboxCreateV2Response = rpc::control_with(
            "SandboxCreateV2",
            Some(&auth),
            &[("x-idempotency-key", &idempotency_key)],
            &req,
        )?;
        let token = match resp.command_router_access {
            Some(a) if !resp.task_id.is_empty() => Token {
                task: resp.task_id,
                url: a.url,
                jwt: a.jwt,
                wd: workdir.clone(),
            },
            _ => fetch_access(&resp.sandbox_id, workdir.clone())?,
        };
        Ok(Sandbox {
            id: resp.sandbox_id,
            name: spec.name,
            state: SandboxState::Running,
            workdir,
            labels: spec.labels,
            image: Some(tag),
            created_at_ms: Some(kit::now_ms()),
            token: Some(token.encode()),
        })
    }

    fn get(mut sandbox: SandboxRef) -> Result<Sandbox> {
        let auth = rpc::auth_token()?;
        let mut name = None;
        if !sandbox.id.starts_with("sb-") {
            // Not an id: attach by the sandbox's name (in this plugin's app).
            let found: pb::SandboxGetFromNameResponse = rpc::control(
                "SandboxGetFromNameV2",
                Some(&auth),
                &pb::SandboxGetFromNameRequest {
                    sandbox_name: sandbox.id.clone(),
                    environment_name: require_environment()?,
                    app_name: app_name(),
                    include_terminated: false,
                },
            )?;
            name = Some(std::mem::replace(&mut sandbox.id, found.sandbox_id));
            sandbox.token = None;
        }
        let wait: pb::SandboxWaitResponse = rpc::control(
            "SandboxWaitV2",
            Some(&auth),
            &pb::SandboxWaitRequest {
                sandbox_id: sandbox.id.clone(),
                timeout: 0.0,
            },
        )?;
        if let Some(r) = wait.result.filter(|r| r.status != 0) {
            // A finished Modal sandbox cannot be used again: for callers it is gone.
            return Err(kit::not_found(format!(
                "sandbox {} has finished (status {}, exit {})",
                sandbox.id, r.status, r.exitcode
            )));
        }
        let tags: pb::SandboxTagsGetResponse = rpc::control(
            "SandboxTagsGetV2",
            Some(&auth),
            &pb::SandboxTagsGetRequest {
                sandbox_id: sandbox.id.clone(),
            },
        )?;
        let token = match Token::parse(&sandbox.token) {
            Some(t) => t,
            None => fetch_access(&sandbox.id, DEFAULT_WORKDIR.into())?,
        };
        Ok(Sandbox {
            id: sandbox.id,
            name,
            state: SandboxState::Running,
            workdir: token.wd.clone(),
            labels: labels_of(&tags.tags),
            image: None,
            created_at_ms: None,
            token: Some(token.encode()),
        })
    }

    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        let env = require_environment()?;
        let auth = rpc::auth_token()?;
        let tags: Vec<pb::SandboxTag> = labels
            .iter()
            .map(|(k, v)| pb::SandboxTag {
                tag_name: k.clone(),
                tag_value: v.clone(),
            })
            .collect();
        let mut out = Vec::new();
        let mut before = 0.0;
        // Pages until an empty one (the server pages by `created_at`, strictly before).
        for _ in 0..1000 {
            let page: pb::SandboxListResponse = rpc::control(
                "SandboxListV2",
                Some(&auth),
                &pb::SandboxListRequest {
                    before_timestamp: before,
                    environment_name: env.clone(),
                    include_finished: false,
                    tags: tags.clone(),
                    ..Default::default()
                },
            )?;
            let Some(last) = page.sandboxes.last() else {
                break;
            };
            before = last.created_at;
            for s in page.sandboxes {
                out.push(Sandbox {
                    id: s.id,
                    name: (!s.name.is_empty()).then_some(s.name),
                    state: SandboxState::Running,
                    workdir: DEFAULT_WORKDIR.into(),
                    labels: labels_of(&s.tags),
                    image: None,
                    created_at_ms: Some((s.created_at * 1000.0) as u64),
                    token: None,
                });
            }
        }
        Ok(out)
    }

    fn destroy(sandbox: SandboxRef) -> Result<()> {
        let auth = rpc::auth_token()?;
        let _: pb::SandboxTerminateResponse = rpc::control(
            "SandboxTerminateV2",
            Some(&auth),
            &pb::SandboxTerminateRequest {
                sandbox_id: sandbox.id,
            },
        )?;
        Ok(())
    }

    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        let token = token_for(&sandbox)?;
        let argv = match &request.command {
            Command::Argv(a) if a.is_empty() => return Err(kit::invalid_argument("empty argv")),
            Command::Argv(a) => a.clone(),
            Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        };
        let cwd = match &request.cwd {
            Some(c) => Some(abs_path(&token, c)?),
            None => None,
        };
        let started = Instant::now();
        let run = Running::start(
            &sandbox.id,
            token,
            argv,
            cwd,
            &request.env,
            request.timeout_ms,
        )?;
        // The contract's stdin is closed after its bytes (none: closed at once), so a command
        // that reads stdin ends instead of waiting forever as it would on Modal.
        let out = std::cell::RefCell::new(ExecOutput::new());
        let stdin = request.stdin.as_deref().unwrap_or(&[]);
        let code = run.finish(
            Some(stdin),
            |b| out.borrow_mut().stdout(b),
            |b| out.borrow_mut().stderr(b),
        )?;
        let out = out.into_inner();
        let timed_out = request.timeout_ms.is_some_and(|ms| {
            code == 124 && started.elapsed() >= Duration::from_millis(ms.saturating_sub(100))
        });
        Ok(out.finish(code, timed_out))
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"ReadFile": {"path": p}}),
            None,
        )
    }

    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"WriteFile": {"path": p}}),
            Some(&data),
        )?;
        if let Some(mode) = mode {
            // fs-tools has no mode: set it with chmod.
            let token = token_for(&sandbox)?;
            let run = Running::start(
                &sandbox.id,
                token,
                vec!["chmod".into(), format!("{mode:o}"), p.clone()],
                None,
                &vec![],
                None,
            )?;
            let mut err = Vec::new();
            let code = run.finish(None, |_| {}, |b| err.extend_from_slice(b))?;
            if code != 0 {
                return Err(kit::provider(
                    0,
                    format!("chmod {mode:o} {p}: {}", String::from_utf8_lossy(&err)),
                ));
            }
        }
        Ok(())
    }

    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<FileStat>> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        let out = fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"ListFiles": {"path": p}}),
            None,
        )?;
        let entries: Vec<FsEntry> = serde_json::from_slice(&out).map_err(bad_json)?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        let out = fs_ok(&sandbox, &p, serde_json::json!({"Stat": {"path": p}}), None)?;
        let entry: FsEntry = serde_json::from_slice(&out).map_err(bad_json)?;
        Ok(entry.into())
    }

    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"Remove": {"path": p, "recursive": recursive}}),
            None,
        )
        .map(|_| ())
    }

    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"MakeDirectory": {"path": p, "parents": parents}}),
            None,
        )
        .map(|_| ())
    }

    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        let auth = rpc::auth_token()?;
        let resp: pb::SandboxGetTunnelsResponse = rpc::control(
            "SandboxGetTunnelsV2",
            Some(&auth),
            &pb::SandboxGetTunnelsRequest {
                sandbox_id: sandbox.id.clone(),
                timeout: 50.0,
            },
        )?;
        let t = resp
            .tunnels
            .into_iter()
            .find(|t| t.container_port == port as u32)
            .ok_or_else(|| {
                kit::not_found(format!(
                    "port {port} of sandbox {} is not exposed (declare it in spec.ports)",
                    sandbox.id
                ))
            })?;
        let url = match (t.unencrypted_host, t.unencrypted_port) {
            (Some(h), Some(p)) if !h.is_empty() => format!("http://{h}:{p}"),
            _ if t.port == 443 => format!("https://{}", t.host),
            _ => format!("https://{}:{}", t.host, t.port),
        };
        Ok(Endpoint {
            url,
            headers: vec![],
        })
    }
}

kit::export!(Modal);
