//! Toolbox sessions: commands run asynchronously (`runAsync`) or to completion, their exit code,
//! and their logs in the daemon's format: each output line prefixed with `\x01\x01\x01` (stdout)
//! or `\x02\x02\x02` (stderr). Logs come back as JSON split by the server (SDK ≥ 0.163), raw with
//! markers (older SDKs, or no SDK version and `X-Daytona-Split-Output: true`), or as plain
//! combined text; `?follow=true` streams the raw log over a WebSocket until the command ends.
//!
//! Unlike the daemon, each command runs in its own `sh -c` (no shell state shared between the
//! commands of a session) and a last line without `\n` is kept as it is (the daemon adds one).
//! As in the daemon, a command's stdin stays open (no EOF) while it runs; `…/input` writes to it
//! and echoes the input into the log as stdout.

use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use localbox::{ExecEvent, ExecRequest, Stream};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::dto;
use crate::state::App;

type Ctx = State<Arc<App>>;

pub const STDOUT_PREFIX: &[u8] = b"\x01\x01\x01";
pub const STDERR_PREFIX: &[u8] = b"\x02\x02\x02";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/toolbox/{id}/process/session", post(create).get(list))
        .route(
            "/toolbox/{id}/process/session/{sid}",
            get(get_session).delete(delete),
        )
        .route("/toolbox/{id}/process/session/{sid}/exec", post(exec))
        .route(
            "/toolbox/{id}/process/session/{sid}/command/{cid}",
            get(get_command),
        )
        .route(
            "/toolbox/{id}/process/session/{sid}/command/{cid}/logs",
            get(logs),
        )
        .route(
            "/toolbox/{id}/process/session/{sid}/command/{cid}/input",
            post(input),
        )
}

/// A session: its commands in the order they were started.
#[derive(Default)]
pub struct Session {
    pub commands: Mutex<Vec<Arc<Command>>>,
}

impl Session {
    fn find(&self, cid: &str) -> Option<Arc<Command>> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.id == cid)
            .cloned()
    }
    /// Kills what still runs (dropping a localbox exec stream kills its command).
    fn kill_all(&self) {
        for c in self.commands.lock().unwrap().iter() {
            if let Some(h) = c.task.lock().unwrap().take() {
                h.abort();
            }
        }
    }
}

/// One session command and its output.
pub struct Command {
    pub id: String,
    pub command: String,
    pub out: Mutex<Output>,
    /// Woken whenever output arrives or the command ends (WebSocket followers wait on it).
    pub changed: Notify,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Its stdin while it runs (`…/input` writes here).
    stdin: tokio::sync::Mutex<Option<localbox::StdinPipe>>,
}

/// The marked-up log plus each stream on its own.
#[derive(Default)]
pub struct Output {
    pub log: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    last: Option<Stream>,
    at_line_start: bool,
}

impl Output {
    /// Appends a chunk: a marker starts every line and every switch of stream.
    pub fn append(&mut self, stream: Stream, data: &[u8]) {
        let marker = match stream {
            Stream::Stdout => STDOUT_PREFIX,
            Stream::Stderr => STDERR_PREFIX,
        };
        for piece in data.split_inclusive(|b| *b == b'\n') {
            if self.last != Some(stream) || self.at_line_start {
                self.log.extend_from_slice(marker);
            }
            self.log.extend_from_slice(piece);
            self.last = Some(stream);
            self.at_line_start = piece.ends_with(b"\n");
        }
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(data),
            Stream::Stderr => self.stderr.extend_from_slice(data),
        }
    }
}

/// The log without its stream markers (what old SDKs get).
pub fn strip_markers(log: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.len());
    let mut i = 0;
    while i < log.len() {
        if log[i..].starts_with(STDOUT_PREFIX) || log[i..].starts_with(STDERR_PREFIX) {
            i += 3;
        } else {
            out.push(log[i]);
            i += 1;
        }
    }
    out
}

/// Forgets (and kills) every session of a sandbox: it was stopped or deleted.
pub fn drop_sandbox(app: &App, id: &str) {
    let mut sessions = app.sessions.lock().unwrap();
    sessions.retain(|(sb, _), s| {
        if sb == id {
            s.kill_all();
            false
        } else {
            true
        }
    });
}

fn session(app: &App, id: &str, sid: &str) -> Result<Arc<Session>, Response> {
    crate::process::workdir(app, id)?;
    app.sessions
        .lock()
        .unwrap()
        .get(&(id.to_string(), sid.to_string()))
        .cloned()
        .ok_or_else(|| dto::daemon_error(404, "SESSION_NOT_FOUND", "session not found"))
}

fn command_json(c: &Command) -> Value {
    json!({ "id": c.id, "command": c.command, "exitCode": c.out.lock().unwrap().exit_code })
}

fn session_json(sid: &str, s: &Session) -> Value {
    let commands: Vec<Value> = s
        .commands
        .lock()
        .unwrap()
        .iter()
        .map(|c| command_json(c))
        .collect();
    json!({ "sessionId": sid, "commands": commands })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    session_id: String,
}

async fn create(State(app): Ctx, Path(id): Path<String>, Json(b): Json<CreateBody>) -> Response {
    if let Err(r) = crate::process::workdir(&app, &id) {
        return r;
    }
    if b.session_id.is_empty() {
        return dto::daemon_error(400, "BAD_REQUEST", "sessionId is required");
    }
    let mut sessions = app.sessions.lock().unwrap();
    let key = (id, b.session_id);
    if sessions.contains_key(&key) {
        return dto::daemon_error(409, "CONFLICT", "session already exists");
    }
    sessions.insert(key, Arc::new(Session::default()));
    StatusCode::CREATED.into_response()
}

async fn list(State(app): Ctx, Path(id): Path<String>) -> Response {
    if let Err(r) = crate::process::workdir(&app, &id) {
        return r;
    }
    let sessions = app.sessions.lock().unwrap();
    let mut all: Vec<Value> = sessions
        .iter()
        .filter(|((sb, _), _)| *sb == id)
        .map(|((_, sid), s)| session_json(sid, s))
        .collect();
    all.sort_by(|a, b| a["sessionId"].as_str().cmp(&b["sessionId"].as_str()));
    Json(all).into_response()
}

async fn get_session(State(app): Ctx, Path((id, sid)): Path<(String, String)>) -> Response {
    match session(&app, &id, &sid) {
        Ok(s) => Json(session_json(&sid, &s)).into_response(),
        Err(r) => r,
    }
}

async fn delete(State(app): Ctx, Path((id, sid)): Path<(String, String)>) -> Response {
    if let Err(r) = session(&app, &id, &sid) {
        return r;
    }
    if let Some(s) = app.sessions.lock().unwrap().remove(&(id, sid)) {
        s.kill_all();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecBody {
    command: String,
    run_async: Option<bool>,
    #[serde(rename = "async")]
    async_alias: Option<bool>,
}

/// Starts `command` in the sandbox; its output lands in the command's log as it comes.
/// Starts `command` (its stdin ready for `…/input` once this returns) and follows it.
async fn spawn(app: &App, id: &str, command: &str) -> Arc<Command> {
    let started = app
        .opts
        .engine
        .exec_stream_with_stdin(id, ExecRequest::shell(command))
        .await;
    let mut out = Output::default();
    let (stream, stdin) = match started {
        Ok((stream, stdin)) => (Some(stream), Some(stdin)),
        Err(e) => {
            out.append(Stream::Stderr, format!("{e}\n").as_bytes());
            out.exit_code = Some(-1);
            (None, None)
        }
    };
    let cmd = Arc::new(Command {
        id: uuid::Uuid::new_v4().to_string(),
        command: command.to_string(),
        out: Mutex::new(out),
        changed: Notify::new(),
        task: Mutex::new(None),
        stdin: tokio::sync::Mutex::new(stdin),
    });
    let Some(mut stream) = stream else {
        return cmd;
    };
    let c = cmd.clone();
    let task = tokio::spawn(async move {
        let code = loop {
            match stream.next().await {
                Some(ExecEvent::Output(s, bytes)) => {
                    c.out.lock().unwrap().append(s, &bytes);
                    c.changed.notify_waiters();
                }
                Some(ExecEvent::Exit(o)) => break o.exit_code,
                None => break -1,
            }
        };
        c.stdin.lock().await.take();
        c.out.lock().unwrap().exit_code = Some(code);
        c.changed.notify_waiters();
    });
    *cmd.task.lock().unwrap() = Some(task.abort_handle());
    cmd
}

async fn exec(
    State(app): Ctx,
    Path((id, sid)): Path<(String, String)>,
    headers: HeaderMap,
    Json(b): Json<ExecBody>,
) -> Response {
    let s = match session(&app, &id, &sid) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let cmd = spawn(&app, &id, &b.command).await;
    s.commands.lock().unwrap().push(cmd.clone());
    if b.run_async.or(b.async_alias).unwrap_or(false) {
        return (StatusCode::ACCEPTED, Json(json!({ "cmdId": cmd.id }))).into_response();
    }
    loop {
        let notified = cmd.changed.notified();
        if cmd.out.lock().unwrap().exit_code.is_some() {
            break;
        }
        notified.await;
    }
    let out = cmd.out.lock().unwrap();
    let mode = LogMode::of(&headers);
    let output = match mode {
        LogMode::Combined => strip_markers(&out.log),
        _ => out.log.clone(),
    };
    Json(json!({
        "cmdId": cmd.id,
        "output": String::from_utf8_lossy(&output),
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
        "exitCode": out.exit_code,
    }))
    .into_response()
}

async fn get_command(
    State(app): Ctx,
    Path((id, sid, cid)): Path<(String, String, String)>,
) -> Response {
    let s = match session(&app, &id, &sid) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s.find(&cid) {
        Some(c) => Json(command_json(&c)).into_response(),
        None => dto::daemon_error(404, "COMMAND_NOT_FOUND", "command not found"),
    }
}

/// How logs are returned, from the client's headers (as the daemon decides).
#[derive(Clone, Copy, PartialEq, Debug)]
enum LogMode {
    /// Markers removed, plain text.
    Combined,
    /// The raw marked-up log, plain text.
    Raw,
    /// JSON `{output, stdout, stderr}` split by the server.
    Json,
}

impl LogMode {
    fn of(headers: &HeaderMap) -> LogMode {
        let version = headers
            .get("x-daytona-sdk-version")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_version);
        let split = headers
            .get("x-daytona-split-output")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        match version {
            None if split => LogMode::Raw,
            None => LogMode::Combined,
            Some(v) if v < (0, 27, 0) => LogMode::Combined,
            Some(v) if v < (0, 163, 0) => LogMode::Raw,
            Some(_) => LogMode::Json,
        }
    }
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        it.next()??,
        it.next().flatten().unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

#[derive(Deserialize)]
struct LogsQuery {
    follow: Option<bool>,
}

async fn logs(
    State(app): Ctx,
    Path((id, sid, cid)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
    req: axum::extract::Request,
) -> Response {
    use axum::extract::FromRequest;
    let headers = req.headers().clone();
    let ws = if headers.contains_key("upgrade") {
        match WebSocketUpgrade::from_request(req, &()).await {
            Ok(ws) => Some(ws),
            Err(r) => return r.into_response(),
        }
    } else {
        None
    };
    let s = match session(&app, &id, &sid) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(cmd) = s.find(&cid) else {
        return dto::daemon_error(404, "COMMAND_NOT_FOUND", "command not found");
    };
    let mode = LogMode::of(&headers);
    if let Some(ws) = ws {
        let follow = q.follow.unwrap_or(false);
        let mut resp = ws
            .protocols(
                headers
                    .get("x-daytona-sdk-version")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!("X-Daytona-SDK-Version~{v}")),
            )
            .on_upgrade(move |socket| stream_log(socket, cmd, follow, mode == LogMode::Combined));
        resp.headers_mut().remove("content-length");
        return resp;
    }
    let out = cmd.out.lock().unwrap();
    match mode {
        LogMode::Json => Json(json!({
            "output": String::from_utf8_lossy(&out.log),
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": String::from_utf8_lossy(&out.stderr),
        }))
        .into_response(),
        LogMode::Raw => text(out.log.clone()),
        LogMode::Combined => text(strip_markers(&out.log)),
    }
}

fn text(body: Vec<u8>) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], body).into_response()
}

/// Sends the log from the start as binary frames, then (with `follow`) what arrives until the
/// command ends, then a normal close.
async fn stream_log(mut socket: WebSocket, cmd: Arc<Command>, follow: bool, combined: bool) {
    let mut sent = 0usize;
    loop {
        let notified = cmd.changed.notified();
        let (chunk, done) = {
            let out = cmd.out.lock().unwrap();
            (out.log[sent..].to_vec(), out.exit_code.is_some())
        };
        sent += chunk.len();
        if !chunk.is_empty() {
            // Markers never straddle two appends, so stripping per chunk is exact.
            let data = if combined {
                strip_markers(&chunk)
            } else {
                chunk
            };
            if socket.send(Message::Binary(data.into())).await.is_err() {
                return;
            }
        }
        if done || !follow {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

#[derive(Deserialize)]
struct InputBody {
    data: String,
}

/// Writes to a running command's stdin (a newline added if missing, as the daemon does) and
/// echoes the input into its log as stdout; 410 once the command ended.
async fn input(
    State(app): Ctx,
    Path((id, sid, cid)): Path<(String, String, String)>,
    Json(b): Json<InputBody>,
) -> Response {
    let s = match session(&app, &id, &sid) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(c) = s.find(&cid) else {
        return dto::daemon_error(404, "COMMAND_NOT_FOUND", "command not found");
    };
    let gone = |code: i32| {
        dto::daemon_error(
            410,
            "GONE",
            &format!("command has already completed with exit code {code}"),
        )
    };
    if let Some(code) = c.out.lock().unwrap().exit_code {
        return gone(code);
    }
    let mut data = b.data.into_bytes();
    if !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    let mut stdin = c.stdin.lock().await;
    let written = match stdin.as_mut() {
        Some(pipe) => tokio::io::AsyncWriteExt::write_all(pipe, &data)
            .await
            .is_ok(),
        None => false,
    };
    if !written {
        let code = c.out.lock().unwrap().exit_code.unwrap_or(-1);
        return gone(code);
    }
    c.out.lock().unwrap().append(Stream::Stdout, &data);
    c.changed.notify_waiters();
    StatusCode::NO_CONTENT.into_response()
}
