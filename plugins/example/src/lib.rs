//! `example`: a provider plugin for the tiny sandbox API of `tests/src/example_server.rs`.
//! It is the worked example of the README's "write your own provider plugin": everything a
//! provider plugin does is here, in a little over 200 lines.
//!
//! API (every request carries `authorization: Bearer <api-key>`, set by the host, never seen here):
//! `POST /sandboxes`, `GET /sandboxes?label=k=v`, `GET|DELETE /sandboxes/{id}`,
//! `POST /sandboxes/{id}/exec` (NDJSON output), `PUT|GET /sandboxes/{id}/files/{path}`,
//! `GET /sandboxes/{id}/ports/{port}`.

use std::collections::BTreeMap;

use kit::http::Request;
use kit::{
    Capabilities, Check, Command, Endpoint, ExecOutput, ExecRequest, ExecResult, Pairs, PluginInfo,
    Result, Sandbox, SandboxRef, Spec,
};
use serde::Deserialize;
use serde_json::json;

struct Example;

/// A sandbox as the API returns it.
#[derive(Deserialize)]
struct ApiSandbox {
    id: String,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    state: String,
    workdir: String,
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
            image: None,
            created_at_ms: s.created_at_ms,
            token: None,
        }
    }
}

/// One line of the exec output stream.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ExecLine {
    Stdout { data: String },
    Stderr { data: String },
    Exit { code: i32, timed_out: bool },
}

/// `<base-url>/sandboxes/<segments...>`, each segment percent-encoded.
fn endpoint(segments: &[&str]) -> Result<String> {
    let base = kit::require_setting("base-url")?;
    let mut all = vec!["sandboxes"];
    all.extend_from_slice(segments);
    Ok(kit::url(&base, &all))
}

/// The URL of a file: the path keeps its `/`s (an absolute path gives `files//abs/path`).
fn file_url(sandbox: &SandboxRef, path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(kit::invalid_argument("empty path"));
    }
    Ok(format!(
        "{}/{}",
        endpoint(&[&sandbox.id, "files"])?,
        kit::encode_path(path)
    ))
}

fn to_map(pairs: &Pairs) -> BTreeMap<&str, &str> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

impl kit::Plugin for Example {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: kit::CONTRACT_VERSION.into(),
            description: "The example sandbox API (tests/src/example_server.rs); a template for new providers.".into(),
            capabilities: Capabilities::STREAMING
                | Capabilities::STDIN
                | Capabilities::FILES
                | Capabilities::PORTS
                | Capabilities::LIST_BY_LABELS
                | Capabilities::IDEMPOTENT_CREATE,
            settings: vec![kit::setting_spec(
                "base-url",
                true,
                None,
                "Base URL of the example API, e.g. http://127.0.0.1:8080",
            )],
            credentials: vec![kit::credential(
                "api-key",
                "authorization",
                "Bearer {}",
                &["http://127.0.0.1:*"],
                "API key of the example server",
            )],
            hosts: vec!["http://127.0.0.1:*".into()],
            options: vec![],
        }
    }

    fn preflight() -> Result<Vec<Check>> {
        let base = kit::require_setting("base-url")?;
        // Lists nothing in particular: only proves the key is accepted.
        Request::get(endpoint(&[])?).send_ok()?;
        Ok(vec![
            kit::check("base-url", true, base),
            kit::check("api-key", true, "accepted by GET /sandboxes"),
        ])
    }

    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        if spec.image.is_some() {
            kit::debug!("example: the image {:?} is ignored", spec.image);
        }
        let body = json!({
            "name": spec.name,
            "labels": to_map(&spec.labels),
            "env": to_map(&spec.env),
        });
        let created: ApiSandbox = Request::post(endpoint(&[])?)
            .header("idempotency-key", &idempotency_key)
            .json(&body)
            .send_json()?;
        Ok(created.into())
    }

    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        let s: ApiSandbox = Request::get(endpoint(&[&sandbox.id])?).send_json()?;
        Ok(s.into())
    }

    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        let mut req = Request::get(endpoint(&[])?);
        for (k, v) in &labels {
            req = req.query("label", format!("{k}={v}"));
        }
        let all: Vec<ApiSandbox> = req.send_json()?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    fn destroy(sandbox: SandboxRef) -> Result<()> {
        Request::delete(endpoint(&[&sandbox.id])?).send_ok()?;
        Ok(())
    }

    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        let mut body = json!({
            "cwd": request.cwd,
            "env": to_map(&request.env),
            "timeout_ms": request.timeout_ms,
            "stdin": request.stdin.as_ref().map(kit::b64_encode),
        });
        match &request.command {
            Command::Argv(argv) => body["argv"] = json!(argv),
            Command::Shell(cmd) => body["cmd"] = json!(cmd),
        }
        let mut response = Request::post(endpoint(&[&sandbox.id, "exec"])?)
            .json(&body)
            .send_ok()?;
        let mut output = ExecOutput::new();
        // Output reaches the caller line by line, while the command runs.
        for line in response.json_lines::<ExecLine>() {
            match line? {
                ExecLine::Stdout { data } => output.stdout(&kit::b64_decode(data)?),
                ExecLine::Stderr { data } => output.stderr(&kit::b64_decode(data)?),
                ExecLine::Exit { code, timed_out } => return Ok(output.finish(code, timed_out)),
            }
        }
        Err(kit::unavailable("exec output ended without an exit status"))
    }

    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        Request::get(file_url(&sandbox, &path)?).send_ok()?.bytes()
    }

    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        Request::put(file_url(&sandbox, &path)?)
            .query("mode", format!("{:o}", mode.unwrap_or(0o644)))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send_ok()?;
        Ok(())
    }

    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        #[derive(Deserialize)]
        struct Url {
            url: String,
        }
        let port = port.to_string();
        let u: Url = Request::get(endpoint(&[&sandbox.id, "ports", &port])?).send_json()?;
        Ok(Endpoint {
            url: u.url,
            headers: vec![],
        })
    }
}

kit::export!(Example);
