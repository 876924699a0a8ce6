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

mod create;
mod exec;
mod fs;
mod procs;
mod proto;
mod rpc;
mod settings;
mod token;

use std::rc::Rc;
use std::time::{Duration, Instant};

use kit::grpc::{code, GrpcError, PendingCall};
use kit::{
    Capabilities, Check, Command, Endpoint, ExecOutput, ExecRequest, ExecResult, FileKind,
    FileStat, Pairs, PluginInfo, ProcessInfo, Result, Sandbox, SandboxRef, SandboxState, Spec,
};
use serde::{Deserialize, Serialize};

use proto::client as pb;
use proto::task_command_router as tr;
use rpc::Router;
use tr::TaskExecStdioFileDescriptor as Fd;

use create::*;
use exec::*;
use fs::*;
use settings::*;
use token::*;

struct Modal;

/// The default image when the spec names none (Modal's `debian_slim` has python3).
const DEFAULT_IMAGE: &str = "python:3.11-slim-bookworm";
const DEFAULT_WORKDIR: &str = "/workspace";
/// The seeds' default sandbox lifetime.
const DEFAULT_TIMEOUT_SECS: u64 = 3600;
const FS_TOOLS: &str = "/__modal/.bin/modal-sandbox-fs-tools";
/// Stdin and file uploads go out in pieces of this size.
const STDIN_CHUNK: usize = 4 << 20;
/// `TaskExecStdinWriteRequest.data`: sent from the caller's buffer (see `Router::start_with_bytes`).
const STDIN_DATA_TAG: u32 = 4;
/// How often a broken output stream is reopened (from its byte offset) before giving up.
const STREAM_RECONNECTS: u32 = 10;

// ---------------------------------------------------------------------------------------------
// Helpers.

fn exec_id() -> String {
    let h = kit::random_hex(16);
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

impl kit::Plugin for Modal {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "modal".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "Modal sandboxes over Modal's gRPC API (HTTP/2)".into(),
            capabilities: Capabilities::STREAMING
                | Capabilities::STDIN
                | Capabilities::BACKGROUND
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
        // The contract's stdin is closed after its bytes (none: closed at once), so a command
        // that reads stdin ends instead of waiting forever as it would on Modal. A shell
        // command without stdin gets /dev/null from its shell, which spares the router call
        // that closes the pipe; otherwise the bytes (if any) are written and the pipe closed.
        let stdin = request.stdin.filter(|s| !s.is_empty());
        let (argv, stdin) = match &request.command {
            Command::Argv(a) if a.is_empty() => return Err(kit::invalid_argument("empty argv")),
            Command::Argv(a) => (a.clone(), Some(Rc::new(stdin.unwrap_or_default()))),
            Command::Shell(s) => match stdin {
                None => (
                    kit::command_argv(&Command::Shell(format!("exec </dev/null; {s}"))),
                    None,
                ),
                Some(data) => (kit::command_argv(&request.command), Some(Rc::new(data))),
            },
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
        let out = std::cell::RefCell::new(ExecOutput::new());
        let code = run.finish(
            stdin,
            Reads::Both,
            |b| out.borrow_mut().stdout(&b),
            |b| out.borrow_mut().stderr(&b),
        )?;
        let out = out.into_inner();
        let timed_out = request.timeout_ms.is_some_and(|ms| {
            code == 124 && started.elapsed() >= Duration::from_millis(ms.saturating_sub(100))
        });
        Ok(out.finish(code, timed_out))
    }

    fn start_process(sandbox: SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
        procs::start(&sandbox, request)
    }

    fn list_processes(sandbox: SandboxRef) -> Result<Vec<ProcessInfo>> {
        procs::list(&sandbox)
    }

    fn process_status(sandbox: SandboxRef, pid: String) -> Result<ProcessInfo> {
        procs::status(&sandbox, &pid)
    }

    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<kit::OutputChunk> {
        procs::output(&sandbox, &pid, stdout_offset, stderr_offset)
    }

    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        procs::signal(&sandbox, &pid, signal)
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"ReadFile": {"path": p}}),
            None,
            Reads::Stdout,
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
            Some(Rc::new(data)),
            Reads::Neither,
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
            let code = run.finish(None, Reads::Neither, |_| {}, |b| err.extend_from_slice(&b))?;
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
            Reads::Stdout,
        )?;
        let entries: Vec<FsEntry> = serde_json::from_slice(&out).map_err(bad_json)?;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        let p = abs_path(&token_for(&sandbox)?, &path)?;
        let out = fs_ok(
            &sandbox,
            &p,
            serde_json::json!({"Stat": {"path": p}}),
            None,
            Reads::Stdout,
        )?;
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
            Reads::Neither,
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
            Reads::Neither,
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
