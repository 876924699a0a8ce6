//! `e2b`: the provider plugin for E2B (<https://e2b.dev>), and for the E2B emulator
//! (`sandbox-emulator e2b`), which speaks the same protocol.
//!
//! - Control plane (`api-url`, default `https://api.<domain>`), REST/JSON with `X-API-Key`, which
//!   the host injects from the `api-key` secret: `POST /v2/sandboxes` (with `Idempotency-Key`,
//!   so the host may retry a create), `GET /sandboxes/{id}`, `GET /v2/sandboxes?metadata=`
//!   (paged by `X-Next-Token`), `POST /sandboxes/{id}/pause|timeout`,
//!   `POST /v2/sandboxes/{id}/connect` (resume), `DELETE /sandboxes/{id}`.
//! - envd in each sandbox, authenticated by the sandbox's `envdAccessToken` (kept in the
//!   sandbox `token` the host persists): Connect-RPC `process.Process/Start` streams for exec,
//!   `List`/`SendSignal`/`SendInput`/`CloseStdin`, `filesystem.Filesystem/*`, `/files`.
//! - Names: E2B has none; the stable name rides in the metadata key `sandbox-host.name`.
//! - Background processes: envd does not keep output, so they run under a wrapper writing
//!   their output and exit code to `/tmp/.sandbox-host/<handle>.*` (see [`process`]).

mod api;
mod config;
mod envd;
mod process;
mod token;

use kit::http::Method;
use kit::{
    Capabilities, Check, Endpoint, ExecRequest, ExecResult, FileKind, FileStat, OutputChunk, Pairs,
    PluginInfo, ProcessInfo, Result, Sandbox, SandboxRef, SandboxState, Spec,
};
use serde_json::{json, Value};

use api::{check, sandbox_path, send};
use config::api;
use envd::Envd;

struct E2b;

/// Options a spec may carry.
const OPTIONS: &[(&str, &str)] = &[
    (
        "auto-pause",
        "true: pause instead of kill when the timeout is reached",
    ),
    (
        "secure",
        "true: envd and exposed ports require the sandbox's tokens (E2B's `secure`)",
    ),
    (
        "allow-internet-access",
        "false: no outbound internet from the sandbox",
    ),
];

fn bool_option(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(kit::invalid_argument(format!(
            "option {key}: expected true or false, got {value:?}"
        ))),
    }
}

/// An `Idempotency-Key` E2B accepts (`[a-z0-9-]{1,255}`) from the host's key.
fn e2b_idempotency_key(key: &str) -> String {
    let mut k: String = key
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(255)
        .collect();
    if k.is_empty() {
        k.push('0');
    }
    k
}

fn file_stat(entry: &Value) -> FileStat {
    let s = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    FileStat {
        path: s("path"),
        name: s("name"),
        kind: match entry.get("type").and_then(Value::as_str) {
            Some("FILE_TYPE_FILE") => FileKind::File,
            Some("FILE_TYPE_DIRECTORY") => FileKind::Directory,
            Some("FILE_TYPE_SYMLINK") => FileKind::Symlink,
            _ => FileKind::Other,
        },
        // int64 is a string in proto3 JSON; accept a number too.
        size: match entry.get("size") {
            Some(Value::String(v)) => v.parse().unwrap_or(0),
            Some(v) => v.as_u64().unwrap_or(0),
            None => 0,
        },
        mode: entry.get("mode").and_then(Value::as_u64).unwrap_or(0) as u32 & 0o7777,
        modified_ms: entry
            .get("modifiedTime")
            .and_then(Value::as_str)
            .and_then(api::parse_rfc3339_ms),
    }
}

fn fs_call(envd: &Envd, method: &str, message: Value) -> Result<Value> {
    envd.call("filesystem.Filesystem", method, &message)
}

impl kit::Plugin for E2b {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "e2b".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "E2B cloud sandboxes (Firecracker microVMs): control plane REST + envd Connect-RPC. \
                          Also drives the E2B emulator (`sandbox-emulator e2b`)."
                .into(),
            capabilities: Capabilities::PAUSE_RESUME
                | Capabilities::STREAMING
                | Capabilities::STDIN
                | Capabilities::BACKGROUND
                | Capabilities::PORTS
                | Capabilities::SET_TIMEOUT
                | Capabilities::LIST_BY_LABELS
                | Capabilities::IDEMPOTENT_CREATE
                | Capabilities::FILES,
            settings: vec![
                kit::setting_spec(config::DOMAIN, false, Some("e2b.app"), "E2B's base domain (E2B_DOMAIN)."),
                kit::setting_spec(config::API_URL, false, None, "Control-plane URL (E2B_API_URL); default https://api.<domain>."),
                kit::setting_spec(
                    config::SANDBOX_URL,
                    false,
                    None,
                    "One envd/port origin for every sandbox, routed by the E2b-Sandbox-Id/-Port headers \
                     (E2B_SANDBOX_URL; the emulator's URL).",
                ),
                kit::setting_spec(
                    config::HOME,
                    false,
                    Some("/home/user"),
                    "The sandbox user's home, where commands start and relative paths resolve \
                     (/workspace against the emulator).",
                ),
            ],
            credentials: vec![kit::credential(
                "api-key",
                "x-api-key",
                "{}",
                &["https://api.e2b.app", "https://api.e2b.dev", "http://127.0.0.1:*", "http://localhost:*"],
                "E2B API key (E2B_API_KEY). Sent to the control plane only (and to a loopback emulator); \
                 pin other hosts with `hosts = [...]` for a custom domain.",
            )],
            hosts: vec!["https://api.e2b.app".into(), "https://*.e2b.app".into()],
            options: OPTIONS.iter().map(|(k, doc)| kit::setting_spec(k, false, None, doc)).collect(),
        }
    }

    fn preflight() -> Result<Vec<Check>> {
        let base = config::api_base();
        let mut checks = vec![kit::check("api-url", true, base.clone())];
        let probe = api(Method::Get, "/v2/sandboxes")
            .query("limit", "1")
            .send()
            .and_then(check);
        checks.push(match probe {
            Ok(_) => kit::check("api-key", true, "accepted by GET /v2/sandboxes"),
            Err(e) => kit::check("api-key", false, format!("{}: {}", e.kind(), e.message())),
        });
        Ok(checks)
    }

    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        let mut body = json!({
            "templateID": spec.image.clone().filter(|i| !i.is_empty()).unwrap_or_else(|| "base".into()),
            "envVars": spec.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        });
        let mut metadata: std::collections::BTreeMap<String, String> =
            spec.labels.iter().cloned().collect();
        if let Some(name) = &spec.name {
            // Attach-by-name finds it again; a live name is taken.
            if !api::list(&[(api::NAME_KEY.to_string(), name.clone())])?.is_empty() {
                return Err(kit::conflict(format!(
                    "a sandbox named {name:?} already exists"
                )));
            }
            metadata.insert(api::NAME_KEY.into(), name.clone());
        }
        body["metadata"] = json!(metadata);
        if let Some(t) = spec.timeout_secs {
            body["timeout"] = json!(t);
        }
        for (k, v) in &spec.options {
            match k.as_str() {
                "auto-pause" => body["autoPause"] = json!(bool_option(k, v)?),
                "secure" => body["secure"] = json!(bool_option(k, v)?),
                "allow-internet-access" => {
                    body["allow_internet_access"] = json!(bool_option(k, v)?)
                }
                other => return Err(kit::invalid_argument(format!("unknown option `{other}`"))),
            }
        }
        if spec.workdir.is_some()
            || spec.cpu.is_some()
            || spec.memory_mb.is_some()
            || spec.disk_mb.is_some()
        {
            kit::debug!("e2b: workdir/cpu/memory/disk come from the template; ignored");
        }
        let created: api::ApiSandbox = send(
            api(Method::Post, "/v2/sandboxes")
                .header("idempotency-key", e2b_idempotency_key(&idempotency_key))
                .json(&body),
        )?
        .json()?;
        let mut sandbox = created.into_sandbox(SandboxState::Running, true);
        sandbox.labels = spec.labels;
        sandbox.name = spec.name;
        sandbox.created_at_ms = Some(kit::now_ms());
        Ok(sandbox)
    }

    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        Ok(api::get(&sandbox.id)?.into_sandbox(SandboxState::Unknown, true))
    }

    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        let found = api::list(&labels)?;
        Ok(found
            .into_iter()
            .map(|s| s.into_sandbox(SandboxState::Unknown, false))
            .collect())
    }

    fn pause(sandbox: SandboxRef) -> Result<()> {
        match send(api(Method::Post, &sandbox_path(&sandbox.id, &["pause"])).json(&json!({}))) {
            Ok(_) => Ok(()),
            // 409: already paused (a retried pause) or changing state.
            Err(kit::Error::Conflict(m)) => match api::get(&sandbox.id)?.state.as_deref() {
                Some("paused") => Ok(()),
                _ => Err(kit::Error::Conflict(m)),
            },
            Err(e) => Err(e),
        }
    }

    fn resume(sandbox: SandboxRef) -> Result<Sandbox> {
        let path = format!(
            "/v2/sandboxes/{}/connect",
            kit::encode_component(&sandbox.id)
        );
        let connected: api::ApiSandbox = send(api(Method::Post, &path).json(&json!({})))?.json()?;
        kit::refresh_token(&connected.token().encode());
        Ok(api::get(&sandbox.id)?.into_sandbox(SandboxState::Running, true))
    }

    fn set_timeout(sandbox: SandboxRef, seconds: u64) -> Result<()> {
        send(
            api(Method::Post, &sandbox_path(&sandbox.id, &["timeout"]))
                .json(&json!({ "timeout": seconds })),
        )
        .map(drop)
    }

    fn destroy(sandbox: SandboxRef) -> Result<()> {
        send(api(Method::Delete, &sandbox_path(&sandbox.id, &[]))).map(drop)
    }

    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        process::exec(&Envd::of(&sandbox)?, &request)
    }

    fn start_process(sandbox: SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
        process::start(&Envd::of(&sandbox)?, &request)
    }

    fn list_processes(sandbox: SandboxRef) -> Result<Vec<ProcessInfo>> {
        let envd = Envd::of(&sandbox)?;
        Ok(process::running(&envd)?
            .into_iter()
            .map(|(pid, tag, command)| ProcessInfo {
                pid: process::handle_of(pid, &tag),
                command,
                running: true,
                exit_code: None,
            })
            .collect())
    }

    fn process_status(sandbox: SandboxRef, pid: String) -> Result<ProcessInfo> {
        process::status(&Envd::of(&sandbox)?, &pid)
    }

    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<OutputChunk> {
        let envd = Envd::of(&sandbox)?;
        // Running first: once it is not, the files hold everything it wrote.
        let info = process::status(&envd, &pid)?;
        let tail = |ext: &str, offset: u64| -> Result<Vec<u8>> {
            let all = process::state_file(&envd, &pid, ext)?.unwrap_or_default();
            Ok(all
                .get(offset.min(all.len() as u64) as usize..)
                .unwrap_or_default()
                .to_vec())
        };
        let (stdout, stderr) = (tail("out", stdout_offset)?, tail("err", stderr_offset)?);
        Ok(OutputChunk {
            stdout_next: stdout_offset + stdout.len() as u64,
            stderr_next: stderr_offset + stderr.len() as u64,
            stdout,
            stderr,
            running: info.running,
            exit_code: info.exit_code,
        })
    }

    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        let name = match signal {
            9 => "SIGNAL_SIGKILL",
            15 => "SIGNAL_SIGTERM",
            other => {
                return Err(kit::Error::Unsupported(format!(
                    "E2B sends SIGTERM (15) and SIGKILL (9) only, not {other}"
                )))
            }
        };
        let envd = Envd::of(&sandbox)?;
        let Some(os_pid) = process::pid_of(&envd, &pid)? else {
            // Already ended: nothing to signal (an unknown handle is still an error).
            return process::status(&envd, &pid).map(drop);
        };
        match envd.call(
            "process.Process",
            "SendSignal",
            &json!({ "process": { "pid": os_pid }, "signal": name }),
        ) {
            Ok(_) | Err(kit::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        Envd::of(&sandbox)?.read(&config::absolute(&path)?)
    }

    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        let envd = Envd::of(&sandbox)?;
        let path = config::absolute(&path)?;
        envd.write(&path, data)?;
        // `/files` has no mode: set it in the sandbox.
        if let Some(mode) = mode.filter(|m| *m != 0o644) {
            let chmod = ExecRequest {
                command: kit::Command::Argv(vec![
                    "chmod".into(),
                    format!("{:o}", mode & 0o7777),
                    path.clone(),
                ]),
                cwd: None,
                env: vec![],
                timeout_ms: Some(30_000),
                stdin: None,
            };
            let r = process::exec(&envd, &chmod)?;
            if r.exit_code != 0 {
                return Err(kit::provider(
                    0,
                    format!(
                        "chmod {mode:o} {path}: {}",
                        String::from_utf8_lossy(&r.stderr_tail)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<FileStat>> {
        let envd = Envd::of(&sandbox)?;
        let v = fs_call(
            &envd,
            "ListDir",
            json!({ "path": config::absolute(&path)?, "depth": 1 }),
        )?;
        Ok(v.get("entries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(file_stat)
            .collect())
    }

    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        let v = fs_call(
            &Envd::of(&sandbox)?,
            "Stat",
            json!({ "path": config::absolute(&path)? }),
        )?;
        Ok(file_stat(v.get("entry").unwrap_or(&Value::Null)))
    }

    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        let envd = Envd::of(&sandbox)?;
        let path = config::absolute(&path)?;
        // envd removes like `rm -rf`; without `recursive` a non-empty directory must stay.
        if !recursive {
            let entry = envd
                .stat(&path)?
                .ok_or_else(|| kit::not_found(format!("{path} not found")))?;
            if entry.get("type").and_then(Value::as_str) == Some("FILE_TYPE_DIRECTORY") {
                let listed = fs_call(&envd, "ListDir", json!({ "path": path, "depth": 1 }))?;
                if listed
                    .get("entries")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty())
                {
                    return Err(kit::conflict(format!("directory {path} is not empty")));
                }
            }
        }
        fs_call(&envd, "Remove", json!({ "path": path })).map(drop)
    }

    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        let envd = Envd::of(&sandbox)?;
        let path = config::absolute(&path)?;
        // envd's MakeDir always creates parents; without `parents` the parent must exist.
        if !parents {
            let parent = path
                .trim_end_matches('/')
                .rsplit_once('/')
                .map(|(p, _)| p)
                .unwrap_or("/");
            if !parent.is_empty() && envd.stat(parent)?.is_none() {
                return Err(kit::not_found(format!(
                    "parent directory {parent} does not exist"
                )));
            }
        }
        match fs_call(&envd, "MakeDir", json!({ "path": path })) {
            Ok(_) => Ok(()),
            Err(kit::Error::Conflict(_)) if parents => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        let token = sandbox
            .token
            .as_deref()
            .and_then(token::Token::decode)
            .unwrap_or_default();
        let domain = token.domain.clone().unwrap_or_else(config::domain);
        let (url, headers) = config::sandbox_base(&sandbox.id, &domain, port);
        let mut headers = if kit::setting(config::SANDBOX_URL).is_some_and(|u| !u.trim().is_empty())
        {
            // One origin for all: the routing headers are what reaches the port.
            headers
        } else {
            vec![]
        };
        if let Some(t) = token.traffic {
            headers.push(("e2b-traffic-access-token".into(), t));
        }
        Ok(Endpoint { url, headers })
    }
}

kit::export!(E2b);
