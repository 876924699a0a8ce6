//! The emulator's memory: devboxes (with their status history, tunnel and executions) and the
//! per-execution output logs that SSE streams replay by byte offset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, watch};

use crate::wire::escape_bytes;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh id with Runloop's prefix style (`dbx_…`, `exe_…`).
pub(crate) fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &u[..24])
}

/// An API error: status and message, rendered as `{"message": …}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<localbox::Error> for ApiError {
    fn from(e: localbox::Error) -> Self {
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.message)
    }
}

/// A tunnel (V2): one key serves every port of the devbox.
#[derive(Clone, Debug)]
pub(crate) struct Tunnel {
    pub key: String,
    pub auth_mode: String,
    pub auth_token: Option<String>,
    pub create_time_ms: u64,
    pub http_keep_alive: bool,
    pub wake_on_http: bool,
}

impl Tunnel {
    pub fn view(&self) -> Value {
        json!({
            "tunnel_key": self.key,
            "auth_mode": self.auth_mode,
            "auth_token": self.auth_token,
            "create_time_ms": self.create_time_ms,
            "http_keep_alive": self.http_keep_alive,
            "wake_on_http": self.wake_on_http,
        })
    }
}

/// What happens when a devbox has been idle for its idle time.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OnIdle {
    Shutdown,
    Suspend,
}

/// One devbox.
pub(crate) struct Devbox {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub create_time_ms: u64,
    pub end_time_ms: Option<u64>,
    pub metadata: Map<String, Value>,
    pub blueprint_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub launch_parameters: Value,
    pub transitions: Vec<Value>,
    pub failure_reason: Option<String>,
    pub shutdown_reason: Option<String>,
    pub tunnel: Option<Tunnel>,
    /// The localbox sandbox backing it, once provisioned.
    pub sandbox: Option<String>,
    /// Keep-alive: shut down this long after the last keep-alive (or creation).
    pub keep_alive_secs: u64,
    /// `after_idle`, which wins over keep-alive.
    pub idle: Option<(u64, OnIdle)>,
    /// Last keep-alive / activity, for the reaper.
    pub last_active: Instant,
    pub executions: HashMap<String, Arc<Execution>>,
    /// Execution ids in start order (for logs).
    pub execution_order: Vec<String>,
    /// `execute`'s `command_id` → execution id: a retried `execute` runs its command once.
    pub command_ids: HashMap<String, String>,
}

impl Devbox {
    /// Moves to `status`, recording the transition.
    pub fn set_status(&mut self, status: &str, failure: Option<&str>) {
        self.status = status.to_string();
        self.transitions.push(json!({
            "status": status,
            "transition_time_ms": now_ms(),
            "failure_reason": failure,
        }));
        if let Some(f) = failure {
            self.failure_reason = Some(f.to_string());
        }
        if matches!(status, "shutdown" | "failure") {
            self.end_time_ms = Some(now_ms());
        }
    }

    /// The DevboxView.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "create_time_ms": self.create_time_ms,
            "end_time_ms": self.end_time_ms,
            "capabilities": [],
            "launch_parameters": self.launch_parameters,
            "metadata": self.metadata,
            "blueprint_id": self.blueprint_id,
            "snapshot_id": self.snapshot_id,
            "state_transitions": self.transitions,
            "failure_reason": self.failure_reason,
            "shutdown_reason": self.shutdown_reason,
            "initiator_id": null,
            "initiator_type": "api_key",
            "tunnel": self.tunnel.as_ref().map(Tunnel::view),
        })
    }

    /// The localbox sandbox when the devbox can run commands, else the API's refusal.
    pub fn running_sandbox(&self) -> Result<String, ApiError> {
        match (self.status.as_str(), &self.sandbox) {
            ("running", Some(s)) => Ok(s.clone()),
            (status, _) => Err(ApiError::bad(format!(
                "devbox {} is {status}, not running",
                self.id
            ))),
        }
    }
}

/// The output of one stream of an execution: all bytes, and where each chunk started (so a
/// replay sends the chunks as they were produced).
#[derive(Default)]
pub(crate) struct OutputLog {
    pub bytes: Vec<u8>,
    pub starts: Vec<usize>,
}

impl OutputLog {
    pub fn push(&mut self, data: &[u8]) {
        if !data.is_empty() {
            self.starts.push(self.bytes.len());
            self.bytes.extend_from_slice(data);
        }
    }

    /// The chunks at or after byte `offset` (a chunk cut by `offset` gives its rest), as
    /// `(start offset, bytes)`.
    pub fn chunks_from(&self, offset: usize) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
            if end <= offset {
                continue;
            }
            let from = start.max(offset);
            out.push((from, self.bytes[from..end].to_vec()));
        }
        out
    }

    /// The last `n` lines as escaped JSON-ready text.
    pub fn last_lines(&self, n: usize) -> (Vec<u8>, bool) {
        let b = &self.bytes;
        let body = b.strip_suffix(b"\n").unwrap_or(b);
        let mut count = 0;
        let mut cut = 0;
        for (i, &c) in body.iter().enumerate().rev() {
            if c == b'\n' {
                count += 1;
                if count == n {
                    cut = i + 1;
                    break;
                }
            }
        }
        if n == 0 {
            return (Vec::new(), !b.is_empty());
        }
        (b[cut..].to_vec(), cut > 0)
    }
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Which {
    Stdout,
    Stderr,
}

/// The mutable part of an execution.
#[derive(Default)]
pub(crate) struct ExecState {
    pub stdout: OutputLog,
    pub stderr: OutputLog,
    pub completed: bool,
    pub exit_status: Option<i32>,
}

/// One command run through `execute*`.
pub(crate) struct Execution {
    pub id: String,
    pub devbox_id: String,
    pub command: String,
    pub started_ms: u64,
    pub state: Mutex<ExecState>,
    /// Bumped on every change (output or completion); streams and waits subscribe.
    pub version: watch::Sender<u64>,
    /// Fired by `kill`.
    pub kill: Mutex<Option<oneshot::Sender<()>>>,
    /// Whether the command was started with `attach_stdin`.
    pub attached_stdin: bool,
    /// The command's stdin pipe while it is open (`attach_stdin`; EOF drops it).
    pub stdin: tokio::sync::Mutex<Option<localbox::StdinPipe>>,
}

impl Execution {
    pub fn new(
        devbox_id: &str,
        command: &str,
        stdin: Option<localbox::StdinPipe>,
    ) -> (Arc<Execution>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let exe = Arc::new(Execution {
            id: new_id("exe"),
            devbox_id: devbox_id.to_string(),
            command: command.to_string(),
            started_ms: now_ms(),
            state: Mutex::new(ExecState::default()),
            version: watch::channel(0).0,
            kill: Mutex::new(Some(tx)),
            attached_stdin: stdin.is_some(),
            stdin: tokio::sync::Mutex::new(stdin),
        });
        (exe, rx)
    }

    pub fn push(&self, which: Which, data: &[u8]) {
        {
            let mut s = self.state.lock().unwrap();
            match which {
                Which::Stdout => s.stdout.push(data),
                Which::Stderr => s.stderr.push(data),
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn finish(&self, exit: i32) {
        {
            let mut s = self.state.lock().unwrap();
            if s.completed {
                return;
            }
            s.completed = true;
            s.exit_status = Some(exit);
        }
        self.version.send_modify(|v| *v += 1);
    }

    pub fn is_completed(&self) -> bool {
        self.state.lock().unwrap().completed
    }

    /// The execution view (JSON text); output (last `last_n` lines) only once completed.
    /// Written by hand: output bytes that are not UTF-8 travel as `\udcXX` escapes, which
    /// serde_json cannot produce.
    pub fn view(&self, last_n: usize) -> String {
        let s = self.state.lock().unwrap();
        let head = format!(
            r#"{{"devbox_id":{},"execution_id":{},"status":"{}""#,
            Value::String(self.devbox_id.clone()),
            Value::String(self.id.clone()),
            if s.completed { "completed" } else { "running" },
        );
        if !s.completed {
            return head + "}";
        }
        let (out, out_cut) = s.stdout.last_lines(last_n);
        let (err, err_cut) = s.stderr.last_lines(last_n);
        format!(
            r#"{head},"exit_status":{},"stdout":{},"stderr":{},"stdout_truncated":{out_cut},"stderr_truncated":{err_cut}}}"#,
            s.exit_status.map_or("null".to_string(), |c| c.to_string()),
            escape_bytes(&out),
            escape_bytes(&err),
        )
    }
}
