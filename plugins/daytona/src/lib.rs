//! `daytona`: the provider plugin for Daytona (https://daytona.io) and its local emulator
//! (`sandbox-emulator daytona`).
//!
//! - Control plane at the `api-url` setting (`DAYTONA_API_URL`, default
//!   `https://app.daytona.io/api`): sandboxes are created, polled until `started` (no
//!   Socket.IO from a plugin), listed by labels with cursor paging, stopped (`pause`), started
//!   (`resume`), given an auto-stop interval (`set-timeout`) and deleted.
//! - Toolbox at each sandbox's `toolboxProxyUrl` (kept in the sandbox token): commands through
//!   sessions (see [`exec`]), files through bulk upload/download (see [`files`]).
//! - `DAYTONA_API_KEY` is a credential binding (`Authorization: Bearer`) for the API host and the
//!   toolbox proxy host; the plugin never sees it.
//!
//! Creates are guarded: each carries the host's idempotency key as a label and a retried create
//! first looks that label up, so a lost answer never leaves a duplicate sandbox.

mod api;
mod exec;
mod files;

use std::collections::BTreeMap;
use std::time::Duration;

use kit::http::Method;
use kit::{
    Capabilities, Check, Endpoint, ExecRequest, ExecResult, FileStat, OutputChunk, Pairs,
    PluginInfo, ProcessInfo, Result, Sandbox, SandboxRef, Spec,
};
use serde::Deserialize;
use serde_json::{json, Value};

use api::{request, sandbox_url, ApiSandbox, SendExt, Token};

struct Daytona;

/// The label carrying the host's idempotency key of the create that made a sandbox.
const KEY_LABEL: &str = "sandbox-host.idempotency-key";
/// The label OpenHands puts its session id in (the stable name), to re-attach by it.
const NAME_LABEL: &str = "OpenHands_SID";
/// The SDK's label naming the code-run language.
const LANGUAGE_LABEL: &str = "code-toolbox-language";
/// How long create and start may take before giving up.
const START_LIMIT: Duration = Duration::from_secs(180);
const STOP_LIMIT: Duration = Duration::from_secs(120);
/// OpenHands' default: stop after 60 idle minutes.
const DEFAULT_AUTO_STOP_MIN: u64 = 60;

fn setting_bool(name: &str) -> bool {
    kit::setting(name).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn setting_int(name: &str) -> Result<Option<i64>> {
    match kit::setting(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            kit::invalid_argument(format!("setting `{name}`: {v:?} is not an integer"))
        }),
    }
}

fn option_int(spec: &Spec, key: &str) -> Result<Option<i64>> {
    match kit::pair(&spec.options, key) {
        None => Ok(None),
        Some(v) => {
            v.trim().parse().map(Some).map_err(|_| {
                kit::invalid_argument(format!("option `{key}`: {v:?} is not an integer"))
            })
        }
    }
}

/// MiB → whole GiB (Daytona's unit), rounded up.
fn gib(mb: u64) -> u64 {
    mb.div_ceil(1024).max(1)
}

/// The `CreateSandbox` body for a spec.
fn create_body(spec: &Spec, key: &str) -> Result<Value> {
    const KNOWN: [&str; 6] = [
        "snapshot",
        "image",
        "public",
        "auto-archive-minutes",
        "auto-delete-minutes",
        "language",
    ];
    if let Some((k, _)) = spec
        .options
        .iter()
        .find(|(k, _)| !KNOWN.contains(&k.as_str()))
    {
        return Err(kit::invalid_argument(format!("unknown option `{k}`")));
    }
    let env: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut labels: BTreeMap<String, String> = spec.labels.iter().cloned().collect();
    let language = kit::pair(&spec.options, "language")
        .map(str::to_string)
        .or_else(|| kit::setting("language"))
        .unwrap_or_else(|| "python".into());
    labels.insert(LANGUAGE_LABEL.into(), language);
    labels.insert(KEY_LABEL.into(), key.into());
    if let Some(name) = &spec.name {
        labels
            .entry(NAME_LABEL.into())
            .or_insert_with(|| name.clone());
    }
    let auto_stop = if setting_bool("disable-auto-stop") {
        0
    } else if let Some(secs) = spec.timeout_secs {
        secs.div_ceil(60).max(1)
    } else {
        setting_int("auto-stop-minutes")?.map_or(DEFAULT_AUTO_STOP_MIN, |m| m.max(0) as u64)
    };
    let mut body = json!({
        "env": env,
        "labels": labels,
        "volumes": [],
        "autoStopInterval": auto_stop,
    });
    if let Some(name) = &spec.name {
        body["name"] = json!(name);
    }
    if let Some(target) = kit::setting("target").filter(|t| !t.is_empty()) {
        body["target"] = json!(target);
    }
    if let Some(m) =
        option_int(spec, "auto-archive-minutes")?.or(setting_int("auto-archive-minutes")?)
    {
        body["autoArchiveInterval"] = json!(m);
    }
    let delete_minutes =
        option_int(spec, "auto-delete-minutes")?.or(setting_int("auto-delete-minutes")?);
    if let Some(m) = delete_minutes {
        body["autoDeleteInterval"] = json!(m);
    }
    if kit::pair(&spec.options, "public") == Some("true") {
        body["public"] = json!(true);
    }
    // An image is built (`FROM image`) and takes resources; otherwise a snapshot is used.
    let image = kit::pair(&spec.options, "image").map(str::to_string);
    let snapshot = kit::pair(&spec.options, "snapshot")
        .map(str::to_string)
        .or_else(|| spec.image.clone().filter(|_| image.is_none()))
        .or_else(|| kit::setting("snapshot").filter(|s| !s.is_empty()));
    if let Some(image) = image {
        body["buildInfo"] = json!({ "dockerfileContent": format!("FROM {image}\n") });
        if let Some(cpu) = spec.cpu {
            body["cpu"] = json!(cpu.ceil().max(1.0) as u64);
        }
        if let Some(mb) = spec.memory_mb {
            body["memory"] = json!(gib(mb));
        }
        if let Some(mb) = spec.disk_mb {
            body["disk"] = json!(gib(mb));
        }
    } else {
        if spec.cpu.is_some() || spec.memory_mb.is_some() || spec.disk_mb.is_some() {
            kit::debug!("daytona: cpu/memory/disk apply to image builds only (option `image`); the snapshot's are used");
        }
        if let Some(s) = snapshot {
            body["snapshot"] = json!(s);
        }
    }
    Ok(body)
}

/// Sandboxes carrying all `labels`, following the cursor.
fn list_labelled(labels: &BTreeMap<String, String>) -> Result<Vec<ApiSandbox>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        items: Vec<ApiSandbox>,
        next_cursor: Option<String>,
    }
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut req = request(Method::Get, sandbox_url(&[])?).query("limit", "200");
        if !labels.is_empty() {
            req = req.query("labels", serde_json::to_string(labels)?);
        }
        if let Some(c) = &cursor {
            req = req.query("cursor", c.clone());
        }
        let page: Page = req.json_5xx()?;
        all.extend(page.items);
        match page.next_cursor.filter(|c| !c.is_empty()) {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
    Err(kit::provider(0, "list: more than 1000 pages"))
}

/// The toolbox's working directory for a started sandbox (best effort).
fn workdir(toolbox: Option<&str>, id: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Dir {
        dir: String,
    }
    let base = toolbox.filter(|t| !t.is_empty())?;
    let url = kit::url(base.trim_end_matches('/'), &[id, "work-dir"]);
    request(Method::Get, url)
        .json_5xx::<Dir>()
        .ok()
        .map(|d| d.dir)
}

/// Waits for `started` and builds the record with a token holding the toolbox URL and workdir.
fn started(id: &str) -> Result<Sandbox> {
    let s = api::wait_for(id, &["started"], START_LIMIT)?
        .ok_or_else(|| kit::not_found(format!("sandbox {id} was destroyed while starting")))?;
    let token = Token {
        toolbox: s.toolbox_proxy_url.clone().filter(|u| !u.is_empty()),
        workdir: workdir(s.toolbox_proxy_url.as_deref(), &s.id),
    };
    Ok(api::to_sandbox(s, token))
}

impl kit::Plugin for Daytona {
    fn describe() -> PluginInfo {
        let s = kit::setting_spec;
        PluginInfo {
            name: "daytona".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "Daytona sandboxes: control plane + toolbox (sessions, multipart files, \
                          preview URLs). Works with `sandbox-emulator daytona` too."
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
                s(api::API_URL, true, Some("https://app.daytona.io/api"), "Daytona API base (DAYTONA_API_URL)."),
                s("target", false, None, "Region to create sandboxes in (DAYTONA_TARGET)."),
                s("snapshot", false, None, "Snapshot used when the spec names no image."),
                s("disable-auto-stop", false, Some("false"), "Never auto-stop sandboxes (DAYTONA_DISABLE_AUTO_STOP)."),
                s("auto-stop-minutes", false, Some("60"), "Idle minutes before Daytona stops a sandbox when the spec has no timeout."),
                s("auto-archive-minutes", false, None, "Minutes a stopped sandbox waits before it is archived."),
                s("auto-delete-minutes", false, None, "Minutes a stopped sandbox waits before it is deleted (-1 never)."),
                s("delete-on-close", false, Some("true"), "`destroy` deletes the sandbox; `false` only stops it (DAYTONA_DELETE_ON_CLOSE)."),
                s("language", false, Some("python"), "The code-toolbox language label (python, typescript, javascript)."),
            ],
            credentials: vec![kit::credential(
                "api-key",
                "authorization",
                "Bearer {}",
                &["https://app.daytona.io", "https://*.daytona.io"],
                "Daytona API key (DAYTONA_API_KEY), for the API and the toolbox proxy.",
            )],
            hosts: vec!["https://app.daytona.io".into(), "https://*.daytona.io".into()],
            options: vec![
                s("snapshot", false, None, "Snapshot to create from (overrides the spec's image)."),
                s("image", false, None, "Build the sandbox from this image (cpu/memory/disk apply)."),
                s("public", false, Some("false"), "`true`: preview URLs need no token."),
                s("auto-archive-minutes", false, None, "Auto-archive interval."),
                s("auto-delete-minutes", false, None, "Auto-delete interval (-1 never, 0 on stop)."),
                s("language", false, Some("python"), "The code-toolbox language label."),
            ],
        }
    }

    fn preflight() -> Result<Vec<Check>> {
        let Some(base) = kit::setting(api::API_URL).filter(|b| !b.trim().is_empty()) else {
            return Ok(vec![kit::check(
                api::API_URL,
                false,
                "not configured (DAYTONA_API_URL)",
            )]);
        };
        let probe = request(Method::Get, sandbox_url(&[])?)
            .query("limit", "1")
            .ok_5xx();
        Ok(vec![
            kit::check(api::API_URL, true, base),
            match probe {
                Ok(_) => kit::check("api-key", true, "accepted by GET /sandbox"),
                Err(e) => kit::check("api-key", false, format!("{}: {}", e.kind(), e.message())),
            },
        ])
    }

    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        let body = create_body(&spec, &idempotency_key)?;
        // A retry of a create whose answer was lost finds the sandbox it made.
        let guard = BTreeMap::from([(KEY_LABEL.to_string(), idempotency_key.clone())]);
        if let Some(existing) = list_labelled(&guard)?.into_iter().next() {
            kit::info!(
                "daytona: create {idempotency_key} already made {}",
                existing.id
            );
            return started(&existing.id);
        }
        let created: ApiSandbox = match request(Method::Post, sandbox_url(&[])?)
            .json(&body)
            .json_5xx()
        {
            Ok(c) => c,
            Err(kit::Error::Conflict(m)) => {
                // The name is taken: ours if it carries this create's key.
                let name = spec.name.as_deref().unwrap_or_default();
                match api::get(name) {
                    Ok(s) if s.labels.get(KEY_LABEL) == Some(&idempotency_key) => s,
                    _ => return Err(kit::Error::Conflict(m)),
                }
            }
            Err(e) => return Err(e),
        };
        started(&created.id)
    }

    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        let mut token = Token::parse(sandbox.token.as_deref());
        let s = api::get(&sandbox.id)?;
        if token.workdir.is_none() && s.state() == "started" {
            token.workdir = workdir(s.toolbox_proxy_url.as_deref(), &s.id);
        }
        Ok(api::to_sandbox(s, token))
    }

    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        let wanted: BTreeMap<String, String> = labels.into_iter().collect();
        Ok(list_labelled(&wanted)?
            .into_iter()
            .filter(|s| s.state() != "destroyed")
            .map(|s| api::to_sandbox(s, Token::default()))
            .collect())
    }

    fn pause(sandbox: SandboxRef) -> Result<()> {
        request(Method::Post, sandbox_url(&[&sandbox.id, "stop"])?)
            .query("force", "false")
            .ok_5xx()?;
        api::wait_for(&sandbox.id, &["stopped"], STOP_LIMIT).map(drop)
    }

    fn resume(sandbox: SandboxRef) -> Result<Sandbox> {
        let token = Token::parse(sandbox.token.as_deref());
        request(Method::Post, sandbox_url(&[&sandbox.id, "start"])?).ok_5xx()?;
        let s = api::wait_for(&sandbox.id, &["started"], START_LIMIT)?
            .ok_or_else(|| kit::not_found(format!("sandbox {} is gone", sandbox.id)))?;
        Ok(api::to_sandbox(s, token))
    }

    /// Daytona stops a sandbox after an idle interval in minutes (0 = never).
    fn set_timeout(sandbox: SandboxRef, seconds: u64) -> Result<()> {
        let minutes = seconds.div_ceil(60).to_string();
        request(
            Method::Post,
            sandbox_url(&[&sandbox.id, "autostop", &minutes])?,
        )
        .ok_5xx()
        .map(drop)
    }

    fn destroy(sandbox: SandboxRef) -> Result<()> {
        if kit::setting("delete-on-close").is_some_and(|v| v.trim().eq_ignore_ascii_case("false")) {
            return Self::pause(sandbox);
        }
        match request(Method::Delete, sandbox_url(&[&sandbox.id])?).ok_5xx() {
            Ok(_) => {}
            Err(kit::Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        api::wait_for(&sandbox.id, &["destroyed"], STOP_LIMIT).map(drop)
    }

    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        exec::exec(&sandbox, request)
    }
    fn start_process(sandbox: SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
        exec::start_process(&sandbox, request)
    }
    fn list_processes(sandbox: SandboxRef) -> Result<Vec<ProcessInfo>> {
        exec::list_processes(&sandbox)
    }
    fn process_status(sandbox: SandboxRef, pid: String) -> Result<ProcessInfo> {
        exec::process_status(&sandbox, &pid)
    }
    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<OutputChunk> {
        exec::process_output(&sandbox, &pid, stdout_offset, stderr_offset)
    }
    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        exec::signal_process(&sandbox, &pid, signal)
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        files::read_file(&sandbox, &path)
    }
    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        files::write_file(&sandbox, &path, data, mode)
    }
    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<FileStat>> {
        files::list_dir(&sandbox, &path)
    }
    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        files::stat(&sandbox, &path)
    }
    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        files::remove(&sandbox, &path, recursive)
    }
    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        files::mkdir(&sandbox, &path, parents)
    }

    /// The preview URL; a private sandbox's needs `X-Daytona-Preview-Token`.
    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        #[derive(Deserialize)]
        struct Preview {
            url: String,
            #[serde(default)]
            token: Option<String>,
        }
        let port = port.to_string();
        let p: Preview = request(
            Method::Get,
            sandbox_url(&[&sandbox.id, "ports", &port, "preview-url"])?,
        )
        .json_5xx()?;
        Ok(Endpoint {
            url: p.url,
            headers: p
                .token
                .filter(|t| !t.is_empty())
                .map(|t| ("x-daytona-preview-token".to_string(), t))
                .into_iter()
                .collect(),
        })
    }
}

kit::export!(Daytona);
