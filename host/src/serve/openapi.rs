//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from [`ROUTES`] — the same table
//! `serve::router` is checked against (a test requests every route listed here and fails on
//! one the router does not have), so the document cannot drift from what the server does.

use serde_json::{json, Map, Value};

/// Who may call a route.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Tenant,
    Admin,
}

pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// Request body schema name in `components.schemas`, if any.
    pub body: Option<&'static str>,
    /// Query parameters (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Success status and what it returns.
    pub ok: (u16, &'static str),
}

const P: &[(&str, &str)] = &[(
    "provider",
    "disambiguates an id known under several providers",
)];
const PATHQ: &[(&str, &str)] = &[
    ("path", "path in the sandbox (required)"),
    ("provider", "disambiguates the id"),
];

macro_rules! r {
    ($m:literal, $p:literal, $s:literal, $a:ident, $b:expr, $q:expr, $ok:expr) => {
        Route {
            method: $m,
            path: $p,
            summary: $s,
            access: Access::$a,
            body: $b,
            query: $q,
            ok: $ok,
        }
    };
}

pub const ROUTES: &[Route] = &[
    r!("get", "/healthz", "Liveness: the process answers", Public, None, &[], (200, "ok")),
    r!("get", "/readyz", "Readiness: plugins loaded and sessions re-attached", Public, None, &[], (200, "ready")),
    r!("get", "/metrics", "Prometheus metrics (text format)", Admin, None, &[], (200, "metrics text")),
    r!("get", "/openapi.json", "This document", Public, None, &[], (200, "OpenAPI document")),
    r!("get", "/v1/providers", "Loaded provider plugins: capabilities, settings, options", Tenant, None, &[], (200, "{providers: [Plugin]}")),
    r!("post", "/v1/providers/{name}/preflight", "Check a provider's credentials and settings", Admin, None, &[], (200, "{provider, ok, checks}")),
    r!("post", "/v1/sandboxes", "Create a sandbox", Tenant, Some("CreateSandbox"), &[], (201, "Record")),
    r!("get", "/v1/sandboxes", "The caller's sandboxes (paginated)", Tenant, None, &[("provider", "only this provider"), ("label", "k=v, repeatable: all must match"), ("limit", "page size, 1..=1000 (default 100)"), ("cursor", "next_cursor of the previous page")], (200, "{sandboxes: [Record], next_cursor}")),
    r!("get", "/v1/sandboxes/{id}", "A sandbox (state refreshed from the provider)", Tenant, None, P, (200, "Record")),
    r!("delete", "/v1/sandboxes/{id}", "Destroy a sandbox", Tenant, None, P, (204, "destroyed")),
    r!("post", "/v1/sandboxes/{id}/pause", "Pause", Tenant, None, P, (200, "Record")),
    r!("post", "/v1/sandboxes/{id}/resume", "Resume", Tenant, None, P, (200, "Record")),
    r!("post", "/v1/sandboxes/{id}/timeout", "Set the timeout from now", Tenant, Some("Timeout"), P, (200, "{id, timeout_secs}")),
    r!("post", "/v1/sandboxes/{id}/exec", "Run a command; JSON result, or SSE (stdout/stderr events, exit last) with Accept: text/event-stream", Tenant, Some("Exec"), P, (200, "{exit_code, timed_out, stdout, stderr, truncated}")),
    r!("post", "/v1/sandboxes/{id}/processes", "Start a background process", Tenant, Some("Exec"), P, (201, "Process")),
    r!("get", "/v1/sandboxes/{id}/processes", "Background processes", Tenant, None, P, (200, "{processes: [Process]}")),
    r!("get", "/v1/sandboxes/{id}/processes/{pid}", "A background process", Tenant, None, P, (200, "Process")),
    r!("get", "/v1/sandboxes/{id}/processes/{pid}/output", "Output since offsets", Tenant, None, &[("stdout_offset", "bytes already read"), ("stderr_offset", "bytes already read"), ("provider", "disambiguates the id")], (200, "{stdout, stderr, stdout_next, stderr_next, running, exit_code}")),
    r!("post", "/v1/sandboxes/{id}/processes/{pid}/kill", "Signal a background process", Tenant, Some("Kill"), P, (204, "signalled")),
    r!("get", "/v1/sandboxes/{id}/files", "Read a file (raw bytes)", Tenant, None, PATHQ, (200, "file bytes")),
    r!("put", "/v1/sandboxes/{id}/files", "Write a file (raw bytes body, capped at the file limit)", Tenant, Some("Bytes"), &[("path", "path in the sandbox (required)"), ("mode", "octal permission bits"), ("provider", "disambiguates the id")], (204, "written")),
    r!("delete", "/v1/sandboxes/{id}/files", "Remove a path", Tenant, None, &[("path", "path in the sandbox (required)"), ("recursive", "true to remove a directory tree"), ("provider", "disambiguates the id")], (204, "removed")),
    r!("get", "/v1/sandboxes/{id}/dirs", "List a directory", Tenant, None, PATHQ, (200, "{entries: [Stat]}")),
    r!("post", "/v1/sandboxes/{id}/dirs", "Make a directory (and parents)", Tenant, None, PATHQ, (201, "created")),
    r!("get", "/v1/sandboxes/{id}/ports/{port}", "A URL (and headers) reaching a port in the sandbox", Tenant, None, P, (200, "Endpoint")),
    r!("get", "/v1/events", "Status events (SSE, RuntimeStatus-shaped) of the caller's sandboxes", Tenant, None, &[("sandbox_id", "only this sandbox")], (200, "text/event-stream of status events")),
];

fn schemas() -> Value {
    let strmap = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    json!({
        "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
        "Spec": { "type": "object", "additionalProperties": false, "properties": {
            "image": { "type": "string" }, "name": { "type": "string" }, "env": strmap, "labels": strmap,
            "timeout_secs": { "type": "integer", "minimum": 0 }, "cpu": { "type": "number" },
            "memory_mb": { "type": "integer", "minimum": 0 }, "disk_mb": { "type": "integer", "minimum": 0 },
            "workdir": { "type": "string" }, "ports": { "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 65535 } },
            "options": strmap } },
        "CreateSandbox": { "type": "object", "required": ["provider"], "additionalProperties": false, "properties": { "provider": { "type": "string" }, "spec": { "$ref": "#/components/schemas/Spec" } } },
        "Exec": { "type": "object", "additionalProperties": false, "properties": {
            "command": { "type": "string", "description": "shell string (exclusive with argv)" },
            "argv": { "type": "array", "items": { "type": "string" }, "minItems": 1 },
            "cwd": { "type": "string" }, "env": strmap, "timeout_secs": { "type": "number", "exclusiveMinimum": 0 },
            "stdin": { "type": "string" }, "stdin_base64": { "type": "string", "contentEncoding": "base64" } } },
        "Timeout": { "type": "object", "required": ["seconds"], "additionalProperties": false, "properties": { "seconds": { "type": "integer", "minimum": 0 } } },
        "Kill": { "type": "object", "additionalProperties": false, "properties": { "signal": { "type": "integer", "minimum": 1, "maximum": 64 } } },
        "Bytes": { "type": "string", "contentMediaType": "application/octet-stream" },
    })
}

fn operation(r: &Route) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": if name == "port" { "integer" } else { "string" } } }))
        .collect();
    params.extend(r.query.iter().map(|(name, doc)| {
        json!({ "name": name, "in": "query", "required": *name == "path", "description": doc, "schema": { "type": "string" } })
    }));
    let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let mut responses = Map::new();
    responses.insert(r.ok.0.to_string(), json!({ "description": r.ok.1 }));
    responses.insert("4XX".into(), err.clone());
    responses.insert("5XX".into(), err);
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{}_{}", r.method, r.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
        "parameters": params,
        "responses": responses,
    });
    if r.access != Access::Public {
        op["security"] = json!([{ "bearer": [] }]);
    }
    if let Some(b) = r.body {
        let content = if b == "Bytes" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        op["requestBody"] = json!({ "required": b != "Kill", "content": { content: { "schema": { "$ref": format!("#/components/schemas/{b}") } } } });
    }
    op
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let entry = paths.entry(r.path).or_insert_with(|| json!({}));
        entry[r.method] = operation(r);
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "sandbox-host", "version": env!("CARGO_PKG_VERSION"), "description": "Sandboxes on any provider through sandboxed wasm plugins." },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}
