//! Toolbox one-shot commands: `POST /process/execute` (the command is piped to a login shell,
//! stdout and stderr combined in `result`, `timeout` seconds → HTTP 408) and
//! `POST /process/code-run`; plus `/work-dir` and `/user-home-dir`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use localbox::{CommandSpec, ExecEvent, ExecRequest};
use serde::Deserialize;
use serde_json::json;

use crate::dto;
use crate::state::App;

type Ctx = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/toolbox/{id}/process/execute", post(execute))
        .route("/toolbox/{id}/process/code-run", post(code_run))
        .route("/toolbox/{id}/work-dir", get(work_dir))
        .route("/toolbox/{id}/user-home-dir", get(work_dir))
}

/// The home directory the SDK's examples use, mapped onto the localbox workdir.
pub const HOME: &str = "/home/daytona";

/// A sandbox path as localbox sees it: `/home/daytona[/...]` is the sandbox's workdir.
pub fn sandbox_path(workdir: &str, p: &str) -> String {
    match p.strip_prefix(HOME) {
        Some("") => workdir.to_string(),
        Some(rest) if rest.starts_with('/') => format!("{}{rest}", workdir.trim_end_matches('/')),
        _ => p.to_string(),
    }
}

/// The sandbox's localbox workdir, or a daemon-style 404 for an unknown sandbox.
pub fn workdir(app: &App, id: &str) -> Result<String, Response> {
    if app.find(id).is_none() {
        return Err(dto::daemon_error(
            404,
            "SANDBOX_NOT_FOUND",
            &format!("sandbox {id} not found"),
        ));
    }
    app.opts
        .engine
        .get(id)
        .map(|i| i.workdir)
        .map_err(dto::from_localbox)
}

async fn work_dir(State(app): Ctx, Path(id): Path<String>) -> Response {
    match workdir(&app, &id) {
        Ok(dir) => Json(json!({ "dir": dir })).into_response(),
        Err(r) => r,
    }
}

/// The first of bash and sh present: the daemon's login shell (zsh is not assumed).
fn login_shell() -> &'static str {
    if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// Runs `req` and returns the combined output in arrival order, the exit code and whether it
/// timed out.
async fn run_combined(
    app: &App,
    id: &str,
    req: ExecRequest,
) -> Result<(Vec<u8>, i32, bool), Response> {
    let mut stream = app
        .opts
        .engine
        .exec_stream(id, req)
        .await
        .map_err(dto::from_localbox)?;
    let mut out = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            ExecEvent::Output(_, bytes) => out.extend_from_slice(&bytes),
            ExecEvent::Exit(o) => return Ok((out, o.exit_code, o.timed_out)),
        }
    }
    Ok((out, -1, false))
}

#[derive(Deserialize)]
struct ExecuteBody {
    command: String,
    cwd: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    timeout: Option<u64>,
}

async fn execute(State(app): Ctx, Path(id): Path<String>, Json(b): Json<ExecuteBody>) -> Response {
    let wd = match workdir(&app, &id) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let req = ExecRequest {
        command: CommandSpec::Argv(vec![login_shell().into(), "-l".into()]),
        cwd: Some(
            b.cwd
                .as_deref()
                .map_or(wd.clone(), |c| sandbox_path(&wd, c)),
        ),
        env: b.envs.unwrap_or_default(),
        timeout: b.timeout.filter(|t| *t > 0).map(Duration::from_secs),
        // One descriptor for both streams, as the daemon's combined output: two pipes read
        // side by side would reorder `echo out; echo err >&2`.
        stdin: Some(format!("exec 2>&1\n{}\n", b.command).into_bytes()),
    };
    match run_combined(&app, &id, req).await {
        Ok((_, _, true)) => dto::daemon_error(
            408,
            "PROCESS_EXECUTION_TIMEOUT",
            &format!(
                "command execution timeout after {} seconds",
                b.timeout.unwrap_or(0)
            ),
        ),
        Ok((out, code, false)) => {
            Json(json!({ "exitCode": code, "result": String::from_utf8_lossy(&out) }))
                .into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct CodeRunBody {
    code: String,
    language: Option<String>,
    argv: Option<Vec<String>>,
    envs: Option<BTreeMap<String, String>>,
    timeout: Option<u64>,
}

async fn code_run(State(app): Ctx, Path(id): Path<String>, Json(b): Json<CodeRunBody>) -> Response {
    if let Err(r) = workdir(&app, &id) {
        return r;
    }
    let mut argv: Vec<String> = match b.language.as_deref().unwrap_or("python") {
        "python" => vec!["python3".into(), "-c".into(), b.code.clone()],
        "javascript" | "typescript" => vec!["node".into(), "-e".into(), b.code.clone()],
        other => {
            return dto::daemon_error(400, "BAD_REQUEST", &format!("unsupported language {other}"))
        }
    };
    if let Some(extra) = b.argv {
        if argv[0] == "node" {
            argv.push("--".into());
        }
        argv.extend(extra);
    }
    let mut req = ExecRequest::argv(argv);
    req.env = b.envs.unwrap_or_default();
    req.timeout = b.timeout.filter(|t| *t > 0).map(Duration::from_secs);
    match run_combined(&app, &id, req).await {
        Ok((_, _, true)) => {
            dto::daemon_error(408, "PROCESS_EXECUTION_TIMEOUT", "code execution timeout")
        }
        Ok((out, code, false)) => Json(json!({
            "exitCode": code,
            "result": String::from_utf8_lossy(&out),
            "artifacts": { "stdout": String::from_utf8_lossy(&out), "charts": [] },
        }))
        .into_response(),
        Err(r) => r,
    }
}
