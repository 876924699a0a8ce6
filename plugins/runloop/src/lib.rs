//! `runloop`: the provider plugin for Runloop devboxes (`https://api.runloop.ai`, or an
//! emulator through the `base-url` setting / `RUNLOOP_BASE_URL`).
//!
//! Mapping (see `../shared/providers/runloop.md`):
//! - create → `POST /v1/devboxes` (name; image `bpt_…` → `blueprint_id`, `snp_…` →
//!   `snapshot_id`, else `blueprint_name`; env; labels → `metadata`; cpu/memory/disk → the
//!   smallest `resource_size_request` that fits, or `CUSTOM_SIZE`; timeout → keep-alive time;
//!   options below), then `wait_for_status` long polls until `running` (408 = ask again). The
//!   idempotency key is the `x-request-id` of every attempt, so a retried create makes one devbox.
//! - get/list → retrieve / paged list (`starting_after`), labels matched against metadata here;
//!   a `shutdown` devbox is gone (`not-found`, left out of lists).
//! - pause/resume → suspend/resume + long polls; set-timeout → `keep_alive` (resets the
//!   keep-alive timer; its length is fixed at create); destroy → shutdown.
//! - exec → `execute` of a bash script (cwd, env, stdin prepared by the script) with a UUIDv7
//!   `command_id` and a 1 s optimistic hold (`exec-hold-seconds`): a command done by then costs
//!   that one request.
//!   A longer one gets its stdout SSE stream live from byte 0 (reconnecting from the byte
//!   offset reached: nothing repeated or lost), the stderr stream, and a completion wait for
//!   the exit status. A timeout kills it.
//!   Stdin bytes go up as a file first (`send_std_in` takes text only).
//! - background processes are executions (pid = execution id); output by offset from the SSE
//!   streams; any signal is `kill`. Their ids are kept in the sandbox token for listing.
//! - files → upload/download (binary safe); mode, list-dir, stat, remove, mkdir run commands.
//! - port-url → the devbox's tunnel (`enable_tunnel` if none), URL from the `tunnel-url`
//!   template, `X-Runloop-Tunnel-Authorization` when the tunnel is authenticated.

// Natively only the pure helpers are exercised (unit tests); the rest is used by the export.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod api;
mod exec;
mod files;
pub mod text;

use std::collections::BTreeMap;
use std::time::Duration;

use kit::http::Method;
use kit::{
    Capabilities, Check, Endpoint, Error, Pairs, PluginInfo, Result, Sandbox, SandboxRef,
    SandboxState, Spec,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use api::{devboxes, get_json, post_empty, post_json, request, send};

struct Runloop;

/// Where commands start and relative paths resolve, unless the spec chose another workdir.
const WORKDIR: &str = "workdir";
/// The tunnel URL template: `{port}`, `{key}` and `{base}` (the API base URL) are replaced.
const TUNNEL_URL: &str = "tunnel-url";
const DEFAULT_TUNNEL_URL: &str = "https://{port}-{key}.tunnel.runloop.ai";
/// How long create and resume wait for `running`.
const START_LIMIT: Duration = Duration::from_secs(600);
/// How long pause waits for `suspended`.
const SUSPEND_LIMIT: Duration = Duration::from_secs(300);
/// Server hold per long poll (the server's maximum).
const LONG_POLL: Duration = Duration::from_secs(30);

/// Runloop's sizes: (name, cpu cores, memory GiB).
const SIZES: &[(&str, f64, u64)] = &[
    ("X_SMALL", 0.5, 1),
    ("SMALL", 1.0, 2),
    ("MEDIUM", 2.0, 4),
    ("LARGE", 2.0, 8),
    ("X_LARGE", 4.0, 16),
    ("XX_LARGE", 8.0, 32),
];

// ---------------------------------------------------------------------------------------------
// Wire types and the token.

#[derive(Deserialize)]
struct Devbox {
    id: String,
    name: Option<String>,
    status: String,
    create_time_ms: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
    blueprint_id: Option<String>,
    snapshot_id: Option<String>,
    failure_reason: Option<String>,
    tunnel: Option<TunnelView>,
}

#[derive(Deserialize, Clone)]
struct TunnelView {
    tunnel_key: String,
    auth_token: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    devboxes: Vec<Devbox>,
    #[serde(default)]
    has_more: bool,
}

/// What the plugin keeps in the sandbox token: the workdir, and recent background executions.
#[derive(Serialize, Deserialize, Default, Clone)]
pub(crate) struct Token {
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    workdir: Option<String>,
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    processes: Vec<(String, String)>,
}

/// Background executions remembered in the token.
const KEEP_PROCESSES: usize = 64;

impl Token {
    pub(crate) fn of(sandbox: &SandboxRef) -> Token {
        sandbox
            .token
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }
    fn encode(&self) -> Option<String> {
        (self.workdir.is_some() || !self.processes.is_empty())
            .then(|| serde_json::to_string(self).unwrap_or_default())
    }
    /// The sandbox's workdir: its own, else the setting's.
    pub(crate) fn workdir(&self) -> String {
        self.workdir.clone().unwrap_or_else(default_workdir)
    }
    pub(crate) fn remember(&mut self, pid: &str, command: &str) {
        self.processes
            .push((pid.to_string(), command.chars().take(200).collect()));
        let extra = self.processes.len().saturating_sub(KEEP_PROCESSES);
        self.processes.drain(..extra);
        if let Some(t) = self.encode() {
            kit::refresh_token(&t);
        }
    }
}

fn default_workdir() -> String {
    kit::setting(WORKDIR)
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/home/user".into())
}

fn state(status: &str) -> SandboxState {
    match status {
        "queued" | "scheduled" | "provisioning" | "initializing" | "resuming" => {
            SandboxState::Starting
        }
        "running" => SandboxState::Running,
        "suspending" | "suspended" => SandboxState::Paused,
        "shutdown" => SandboxState::Stopped,
        "failure" => SandboxState::Error,
        _ => SandboxState::Unknown,
    }
}

impl Devbox {
    fn into_sandbox(self, token: &Token) -> Sandbox {
        Sandbox {
            state: state(&self.status),
            labels: self
                .metadata
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
            image: self.blueprint_id.or(self.snapshot_id),
            created_at_ms: self.create_time_ms,
            workdir: token.workdir(),
            token: token.encode(),
            name: self.name,
            id: self.id,
        }
    }

    fn has_labels(&self, labels: &Pairs) -> bool {
        let meta = self.metadata.as_ref();
        labels
            .iter()
            .all(|(k, v)| meta.and_then(|m| m.get(k)).and_then(Value::as_str) == Some(v.as_str()))
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle helpers.

/// Long-polls `wait_for_status` until the devbox is in one of `statuses` (or `limit` passes).
fn wait_for(id: &str, statuses: &[&str], limit: Duration) -> Result<Devbox> {
    let url = devboxes(&[id, "wait_for_status"])?;
    let started = kit::monotonic_ns();
    loop {
        let spent = Duration::from_nanos(kit::monotonic_ns() - started);
        let Some(left) = limit.checked_sub(spent).filter(|d| !d.is_zero()) else {
            return Err(kit::timeout(format!(
                "devbox {id} did not become {} within {limit:?}",
                statuses.join("/")
            )));
        };
        let hold = left.min(LONG_POLL);
        let resp = send(
            request(Method::Post, url.clone())
                .first_byte_timeout(hold + Duration::from_secs(10))
                .json(&json!({ "statuses": statuses, "timeout_seconds": hold.as_secs_f64() })),
            None,
            &[408],
        );
        match resp {
            Ok(r) if r.status() == 408 => continue,
            Ok(r) => return r.json(),
            // The hold outlived the connection: ask again.
            Err(Error::Timeout(_)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits for `running`; a devbox that failed or was shut down instead is an error.
fn await_running(id: &str) -> Result<Devbox> {
    let d = wait_for(id, &["running", "failure", "shutdown"], START_LIMIT)?;
    match d.status.as_str() {
        "running" => Ok(d),
        s => Err(kit::provider(
            0,
            format!(
                "devbox {id} ended {s} instead of running ({})",
                d.failure_reason.as_deref().unwrap_or("no reason given")
            ),
        )),
    }
}

fn retrieve(id: &str) -> Result<Devbox> {
    get_json(devboxes(&[id])?)
}

/// The `launch_parameters` of a spec.
fn launch_parameters(spec: &Spec) -> Result<Map<String, Value>> {
    let mut lp = Map::new();
    if spec.cpu.is_some() || spec.memory_mb.is_some() || spec.disk_mb.is_some() {
        let cpu = spec.cpu.unwrap_or(0.0);
        let gib = spec.memory_mb.map_or(0, |m| m.div_ceil(1024));
        match SIZES
            .iter()
            .find(|(_, c, m)| *c >= cpu && *m >= gib)
            .filter(|_| spec.disk_mb.is_none())
        {
            Some((name, _, _)) => {
                lp.insert("resource_size_request".into(), json!(name));
            }
            None => {
                lp.insert("resource_size_request".into(), json!("CUSTOM_SIZE"));
                lp.insert("custom_cpu_cores".into(), json!(cpu.ceil().max(1.0) as u64));
                lp.insert("custom_gb_memory".into(), json!(gib.max(1)));
                if let Some(d) = spec.disk_mb {
                    lp.insert("custom_disk_size".into(), json!(d.div_ceil(1024)));
                }
            }
        }
    }
    if let Some(t) = spec.timeout_secs {
        lp.insert("keep_alive_time_seconds".into(), json!(t));
    }
    let mut launch: Vec<String> = Vec::new();
    if let Some(w) = &spec.workdir {
        launch.push(format!("mkdir -p {}", kit::quote(w)));
    }
    for (k, v) in &spec.options {
        match k.as_str() {
            "resource_size" => {
                lp.insert("resource_size_request".into(), json!(v));
            }
            "idle_seconds" => {
                let secs: u64 = v.parse().map_err(|_| {
                    kit::invalid_argument(format!("option idle_seconds={v:?} is not a number"))
                })?;
                let on_idle = kit::pair(&spec.options, "on_idle").unwrap_or("suspend");
                lp.insert(
                    "after_idle".into(),
                    json!({ "idle_time_seconds": secs, "on_idle": on_idle }),
                );
            }
            "on_idle" if v == "suspend" || v == "shutdown" => {}
            "launch_command" => launch.push(v.clone()),
            "architecture" => {
                lp.insert("architecture".into(), json!(v));
            }
            "entrypoint" | "blueprint_name" | "blueprint_id" | "snapshot_id" => {}
            other => return Err(kit::invalid_argument(format!("unknown option `{other}`"))),
        }
    }
    if !launch.is_empty() {
        lp.insert("launch_commands".into(), json!(launch));
    }
    Ok(lp)
}

// ---------------------------------------------------------------------------------------------
// The provider.

impl kit::Plugin for Runloop {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "runloop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "Runloop devboxes (api.runloop.ai): exec with streamed output, files, \
                          tunnels, suspend/resume."
                .into(),
            capabilities: Capabilities::PAUSE_RESUME
                | Capabilities::STREAMING
                | Capabilities::STDIN
                | Capabilities::BACKGROUND
                | Capabilities::PORTS
                | Capabilities::SET_TIMEOUT
                | Capabilities::IDEMPOTENT_CREATE
                | Capabilities::FILES,
            settings: vec![
                kit::setting_spec(api::BASE_URL, true, Some("https://api.runloop.ai"), "The API's base URL (RUNLOOP_BASE_URL)."),
                kit::setting_spec(WORKDIR, false, Some("/home/user"), "The devboxes' home: where commands start and relative paths resolve (the emulator's is /workspace)."),
                kit::setting_spec(
                    TUNNEL_URL,
                    false,
                    Some(DEFAULT_TUNNEL_URL),
                    "Template of a port's URL: {port}, {key} (the devbox's tunnel key) and {base} (the API base URL). The emulator's: {base}/tunnel/{key}/{port}.",
                ),
                kit::setting_spec(
                    exec::EXEC_HOLD_SETTING,
                    false,
                    Some("1"),
                    "Seconds (0-25) an exec's start waits for the command to end: one request for a command done by then, whose output comes whole; a longer one streams from then on. 0 streams from the first byte (two requests per command).",
                ),
            ],
            credentials: vec![kit::credential(
                "api-key",
                "authorization",
                "Bearer {}",
                // Loopback too, for an emulator: the key only goes where `base-url` points.
                &["https://api.runloop.ai", "http://127.0.0.1:*", "http://localhost:*"],
                "Runloop API key (RUNLOOP_API_KEY).",
            )],
            hosts: vec!["https://api.runloop.ai".into()],
            options: vec![
                kit::setting_spec("resource_size", false, None, "X_SMALL, SMALL, MEDIUM, LARGE, X_LARGE, XX_LARGE (overrides cpu/memory)."),
                kit::setting_spec("idle_seconds", false, None, "after_idle: idle seconds before on_idle."),
                kit::setting_spec("on_idle", false, Some("suspend"), "suspend or shutdown."),
                kit::setting_spec("launch_command", false, None, "A command run before the devbox is running (repeatable)."),
                kit::setting_spec("architecture", false, None, "x86_64 or arm64."),
                kit::setting_spec("entrypoint", false, None, "The devbox's entrypoint command."),
                kit::setting_spec("blueprint_name", false, None, "Boot from this blueprint (instead of image)."),
                kit::setting_spec("blueprint_id", false, None, "Boot from this blueprint id."),
                kit::setting_spec("snapshot_id", false, None, "Boot from this disk snapshot."),
            ],
        }
    }

    fn preflight() -> Result<Vec<Check>> {
        let base = kit::setting(api::BASE_URL).unwrap_or_default();
        if base.trim().is_empty() {
            return Ok(vec![kit::check(
                api::BASE_URL,
                false,
                "not configured (RUNLOOP_BASE_URL)",
            )]);
        }
        let probe = kit::http::Request::get(kit::with_query(&devboxes(&[])?, &[("limit", "1")]))
            .connect_timeout(Duration::from_secs(10))
            .send();
        let api_check = match probe.and_then(|r| r.error_for_status()) {
            Ok(_) => kit::check("api-key", true, "accepted by GET /v1/devboxes"),
            Err(e) => kit::check("api-key", false, format!("{}: {}", e.kind(), e.message())),
        };
        Ok(vec![kit::check(api::BASE_URL, true, base), api_check])
    }

    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        let mut body = json!({
            "environment_variables": spec.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            "metadata": spec.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            "launch_parameters": launch_parameters(&spec)?,
        });
        if let Some(n) = &spec.name {
            body["name"] = json!(n);
        }
        let opt = |k: &str| kit::pair(&spec.options, k).map(str::to_string);
        match (
            &spec.image,
            opt("blueprint_id"),
            opt("blueprint_name"),
            opt("snapshot_id"),
        ) {
            (_, Some(b), _, _) => body["blueprint_id"] = json!(b),
            (_, _, Some(b), _) => body["blueprint_name"] = json!(b),
            (_, _, _, Some(s)) => body["snapshot_id"] = json!(s),
            (Some(i), ..) if i.starts_with("bpt_") => body["blueprint_id"] = json!(i),
            (Some(i), ..) if i.starts_with("snp_") => body["snapshot_id"] = json!(i),
            (Some(i), ..) => body["blueprint_name"] = json!(i),
            _ => {}
        }
        if let Some(e) = opt("entrypoint") {
            body["entrypoint"] = json!(e);
        }
        if !spec.ports.is_empty() {
            body["tunnel"] = json!({ "auth_mode": "open" });
        }
        let created: Devbox = post_json(devboxes(&[])?, &body, Some(&idempotency_key))?;
        let token = Token {
            workdir: spec
                .workdir
                .clone()
                .map(|w| exec::absolute(&default_workdir(), &w)),
            processes: vec![],
        };
        let running = if created.status == "running" {
            created
        } else {
            await_running(&created.id)?
        };
        Ok(running.into_sandbox(&token))
    }

    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        let d = retrieve(&sandbox.id)?;
        if d.status == "shutdown" {
            return Err(kit::not_found(format!(
                "devbox {} is shut down",
                sandbox.id
            )));
        }
        Ok(d.into_sandbox(&Token::of(&sandbox)))
    }

    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        // Bounded: 100 pages of 100.
        for _ in 0..100 {
            let mut url = kit::with_query(&devboxes(&[])?, &[("limit", "100")]);
            if let Some(a) = &after {
                url = kit::with_query(&url, &[("starting_after", a.as_str())]);
            }
            let page: Page = get_json(url)?;
            after = page.devboxes.last().map(|d| d.id.clone());
            let done = !page.has_more || page.devboxes.is_empty();
            out.extend(
                page.devboxes
                    .into_iter()
                    .filter(|d| d.status != "shutdown" && d.has_labels(&labels))
                    .map(|d| d.into_sandbox(&Token::default())),
            );
            if done {
                return Ok(out);
            }
        }
        Ok(out)
    }

    fn pause(sandbox: SandboxRef) -> Result<()> {
        let d: Devbox = post_empty(devboxes(&[&sandbox.id, "suspend"])?)?;
        if d.status == "suspended" {
            return Ok(());
        }
        let d = wait_for(
            &sandbox.id,
            &["suspended", "failure", "shutdown"],
            SUSPEND_LIMIT,
        )?;
        match d.status.as_str() {
            "suspended" => Ok(()),
            s => Err(kit::provider(
                0,
                format!("devbox {} ended {s} instead of suspended", sandbox.id),
            )),
        }
    }

    fn resume(sandbox: SandboxRef) -> Result<Sandbox> {
        let d: Devbox = post_empty(devboxes(&[&sandbox.id, "resume"])?)?;
        let d = if d.status == "running" {
            d
        } else {
            await_running(&sandbox.id)?
        };
        Ok(d.into_sandbox(&Token::of(&sandbox)))
    }

    /// Runloop's keep-alive length is fixed at create; this resets its timer.
    fn set_timeout(sandbox: SandboxRef, seconds: u64) -> Result<()> {
        kit::debug!(
            "runloop: keep_alive resets the timer; {seconds} s is not settable after create"
        );
        let _: Value = post_empty(devboxes(&[&sandbox.id, "keep_alive"])?)?;
        Ok(())
    }

    fn destroy(sandbox: SandboxRef) -> Result<()> {
        let _: Value = post_empty(devboxes(&[&sandbox.id, "shutdown"])?)?;
        Ok(())
    }

    fn exec(sandbox: SandboxRef, request: kit::ExecRequest) -> Result<kit::ExecResult> {
        exec::run(&sandbox, &request)
    }

    fn start_process(sandbox: SandboxRef, request: kit::ExecRequest) -> Result<kit::ProcessInfo> {
        exec::start_process(&sandbox, &request)
    }

    fn list_processes(sandbox: SandboxRef) -> Result<Vec<kit::ProcessInfo>> {
        exec::list_processes(&sandbox)
    }

    fn process_status(sandbox: SandboxRef, pid: String) -> Result<kit::ProcessInfo> {
        exec::process_status(&sandbox, &pid, None)
    }

    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<kit::OutputChunk> {
        exec::process_output(&sandbox, &pid, stdout_offset, stderr_offset)
    }

    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        kit::debug!("runloop: signal {signal} becomes kill (the only signal Runloop offers)");
        exec::kill(&sandbox, &pid)
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        files::read(&sandbox, &path)
    }

    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        files::write(&sandbox, &path, data, mode)
    }

    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<kit::FileStat>> {
        files::list_dir(&sandbox, &path)
    }

    fn stat(sandbox: SandboxRef, path: String) -> Result<kit::FileStat> {
        files::stat(&sandbox, &path)
    }

    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        files::remove(&sandbox, &path, recursive)
    }

    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        files::mkdir(&sandbox, &path, parents)
    }

    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        let tunnel = match retrieve(&sandbox.id)?.tunnel {
            Some(t) => t,
            None => post_json::<TunnelView>(
                devboxes(&[&sandbox.id, "enable_tunnel"])?,
                &json!({}),
                None,
            )?,
        };
        let base = kit::require_setting(api::BASE_URL)?;
        let template = kit::setting(TUNNEL_URL)
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_TUNNEL_URL.into());
        let url = template
            .replace("{port}", &port.to_string())
            .replace("{key}", &tunnel.tunnel_key)
            .replace("{base}", base.trim_end_matches('/'));
        let headers = tunnel
            .auth_token
            .map(|t| {
                vec![(
                    "X-Runloop-Tunnel-Authorization".to_string(),
                    format!("Bearer {t}"),
                )]
            })
            .unwrap_or_default();
        Ok(Endpoint { url, headers })
    }
}

// Exported on wasm only, so the pure parts are unit-tested natively (`cargo test -p runloop`).
#[cfg(target_arch = "wasm32")]
kit::export!(Runloop);
