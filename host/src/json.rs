//! JSON shapes of the contract's types, shared by the CLI (`--json`, `docs/cli-json.md`) and
//! `serve`'s HTTP API, so both speak the same objects. The generated types have no serde, so
//! they are converted by hand. Tokens never appear in any of them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::registry::{SessionRecord, StateChange};
use crate::types::{
    Capabilities, Check, Endpoint, ExecResult, FileKind, FileStat, OutputStream, ProcessInfo,
};
use crate::SandboxInfo;

/// `{"error": {"code", "message"}}`.
pub fn error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

pub use crate::state_name;

/// Key-value pairs as a JSON object (a later duplicate key wins).
pub fn pairs(p: &[(String, String)]) -> Value {
    Value::Object(
        p.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

pub fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Record: a sandbox as the registry knows it (never its token).
pub fn record(r: &SessionRecord) -> Value {
    json!({
        "id": r.sandbox_id,
        "provider": r.provider,
        "name": r.name,
        "state": r.state,
        "workdir": r.workdir,
        "labels": string_map(&r.labels),
        "image": r.image,
        "owner": r.owner,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
    })
}

/// Sandbox: the provider's view of a sandbox (never its token).
pub fn sandbox(provider: &str, s: &SandboxInfo) -> Value {
    json!({
        "id": s.id,
        "provider": provider,
        "name": s.name,
        "state": state_name(s.state),
        "workdir": s.workdir,
        "labels": pairs(&s.labels),
        "image": s.image,
        "created_at_ms": s.created_at_ms,
    })
}

/// A Record or Sandbox with `"registered"` added (ls entries).
pub fn listed(mut v: Value, registered: bool) -> Value {
    v["registered"] = Value::Bool(registered);
    v
}

pub fn state_change(c: &StateChange) -> Value {
    json!({ "state": c.state, "detail": c.detail, "at_ms": c.at_ms })
}

/// Process: a background process.
pub fn process(p: &ProcessInfo) -> Value {
    json!({ "pid": p.pid, "command": p.command, "running": p.running, "exit_code": p.exit_code })
}

pub fn file_kind(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Other => "other",
    }
}

/// Stat: one file or directory entry.
pub fn file_stat(f: &FileStat) -> Value {
    json!({
        "path": f.path,
        "name": f.name,
        "kind": file_kind(f.kind),
        "size": f.size,
        "mode": f.mode,
        "modified_ms": f.modified_ms,
    })
}

/// Endpoint: how to reach a port.
pub fn endpoint(e: &Endpoint) -> Value {
    json!({ "url": e.url, "headers": pairs(&e.headers) })
}

/// A preflight (or doctor) check.
pub fn check(c: &Check) -> Value {
    check_parts(&c.name, if c.ok { "ok" } else { "fail" }, &c.detail)
}

/// A doctor check: `status` is `ok`, `fail` or `skip`.
pub fn check_parts(name: &str, status: &str, detail: &str) -> Value {
    json!({ "name": name, "status": status, "detail": detail })
}

pub fn stream_name(s: OutputStream) -> &'static str {
    match s {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

/// exec NDJSON: `{"type":"stdout"|"stderr","data":"<UTF-8, lossy>"}`.
pub fn output_event(stream: OutputStream, data: &[u8]) -> Value {
    json!({ "type": stream_name(stream), "data": String::from_utf8_lossy(data) })
}

/// exec NDJSON, last line: `{"type":"exit","exit_code":N,"timed_out":bool}`.
pub fn exit_event(r: &ExecResult) -> Value {
    json!({ "type": "exit", "exit_code": r.exit_code, "timed_out": r.timed_out })
}

/// run NDJSON, first line: `{"type":"created","id","provider"}`.
pub fn created_event(provider: &str, id: &str) -> Value {
    json!({ "type": "created", "id": id, "provider": provider })
}

pub fn capability_names(c: Capabilities) -> Vec<&'static str> {
    [
        (Capabilities::PAUSE_RESUME, "pause-resume"),
        (Capabilities::STREAMING, "streaming"),
        (Capabilities::STDIN, "stdin"),
        (Capabilities::BACKGROUND, "background"),
        (Capabilities::PORTS, "ports"),
        (Capabilities::SNAPSHOTS, "snapshots"),
        (Capabilities::SET_TIMEOUT, "set-timeout"),
        (Capabilities::LIST_BY_LABELS, "list-by-labels"),
        (Capabilities::IDEMPOTENT_CREATE, "idempotent-create"),
        (Capabilities::FILES, "files"),
    ]
    .into_iter()
    .filter(|(flag, _)| c.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// Plugin: a loaded provider plugin.
pub fn plugin(p: &crate::plugin::LoadedPlugin) -> Value {
    let i = &p.info;
    let spec = |s: &crate::types::SettingSpec| json!({ "name": s.name, "required": s.required, "default": s.default, "doc": s.doc });
    json!({
        "name": i.name,
        "version": i.version,
        "contract_version": i.contract_version,
        "description": i.description,
        "capabilities": capability_names(i.capabilities),
        "path": p.path.display().to_string(),
        "sha256": p.sha256,
        "allow": p.allow.0.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "settings": i.settings.iter().map(spec).collect::<Vec<_>>(),
        "options": i.options.iter().map(spec).collect::<Vec<_>>(),
        "credentials": i.credentials.iter().map(|c| json!({ "secret": c.secret, "header": c.header, "hosts": c.hosts })).collect::<Vec<_>>(),
        "bound_secrets": p.bound_secrets,
        "requested_hosts": i.hosts,
    })
}
