//! The task command router, `modal.task_command_router.TaskCommandRouter`: commands started by
//! exec id, output read by byte offset (so a client reconnects without losing or repeating
//! bytes), stdin written by offset, exit status waited for or polled.
//!
//! Commands really run in localbox. Modal writes stdin *after* the start, while localbox takes
//! it up front, so each command reads its stdin from a FIFO in the sandbox's `/tmp` that the
//! emulator holds open (read-write, so opening never blocks) and closes on the client's EOF.
//! The fs-tools helper (`/__modal/.bin/modal-sandbox-fs-tools`) is answered natively.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::fs_tools;
use crate::grpc::{self, code, decode_one, split_frames, unary, GrpcResult, Status};
use crate::proto::task_command_router as pb;
use crate::state::{parse_jwt, Emu};

/// The in-sandbox helper the SDK's `sandbox.filesystem` execs.
pub const FS_TOOLS: &str = "/__modal/.bin/modal-sandbox-fs-tools";
/// Largest message of an output stream.
const READ_CHUNK: usize = 64 * 1024;

/// Where a command's stdin goes.
pub enum StdinSink {
    /// The command's stdin pipe (dropping it is EOF).
    Pipe(localbox::StdinPipe),
    /// Collected for a native fs-tools op, which runs at EOF.
    Buffer(Vec<u8>),
    Closed,
}

/// Output, exit status and stdin of one exec.
#[derive(Default)]
pub struct ExecState {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The exit code once the command ended.
    pub exit: Option<i32>,
    pub stdin_written: u64,
    pub stdin_closed: bool,
}

/// One exec: its state, a change signal for readers and waiters, and its stdin.
pub struct Exec {
    pub task_id: String,
    pub state: Mutex<ExecState>,
    pub changed: watch::Sender<()>,
    pub stdin: tokio::sync::Mutex<StdinSink>,
    /// For fs-tools `WriteFile`: the op to run at stdin EOF.
    pub on_eof: Mutex<Option<fs_tools::Op>>,
}

impl Exec {
    fn new(task_id: &str, stdin: StdinSink) -> Arc<Exec> {
        Arc::new(Exec {
            task_id: task_id.to_string(),
            state: Mutex::new(ExecState::default()),
            changed: watch::channel(()).0,
            stdin: tokio::sync::Mutex::new(stdin),
            on_eof: Mutex::new(None),
        })
    }

    /// Appends output and wakes readers.
    pub fn push(&self, fd: i32, data: &[u8]) {
        let mut s = self.state.lock().unwrap();
        if fd == pb::TaskExecStdioFileDescriptor::Stderr as i32 {
            s.stderr.extend_from_slice(data);
        } else {
            s.stdout.extend_from_slice(data);
        }
        drop(s);
        self.changed.send_replace(());
    }

    /// Records the exit code and wakes everyone.
    pub fn finish(&self, code: i32) {
        self.state.lock().unwrap().exit = Some(code);
        self.changed.send_replace(());
    }
}

/// Drops the execs of a terminated sandbox's task.
pub fn forget_task(emu: &Emu, task_id: &str) {
    emu.execs
        .lock()
        .unwrap()
        .retain(|_, e| e.task_id != task_id);
}

/// Router calls carry `authorization: Bearer <jwt>` for the task (never the account token).
fn check_jwt(emu: &Emu, headers: &HeaderMap) -> GrpcResult<String> {
    if headers.contains_key("x-modal-token-id") || headers.contains_key("x-modal-token-secret") {
        emu.router_calls_with_account_token
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <router jwt>"))?;
    if crate::state::jwt_epoch(token) < emu.jwt_epoch.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Status::unauthenticated("router jwt expired"));
    }
    match parse_jwt(token) {
        Some((sub, exp)) if exp as f64 > crate::state::now_secs() => Ok(sub),
        Some(_) => Err(Status::unauthenticated("router jwt expired")),
        None => Err(Status::unauthenticated("malformed router jwt")),
    }
}

/// The gRPC deadline of a call (`grpc-timeout`), if any.
fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Answers one router method.
pub async fn handle(emu: &Arc<Emu>, method: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    *emu.router_calls
        .lock()
        .unwrap()
        .entry(method.to_string())
        .or_default() += 1;
    let subject = match check_jwt(emu, headers) {
        Ok(s) => s,
        Err(s) => return grpc::error_response(&s),
    };
    let result = route(emu, method, headers, body, &subject).await;
    match result {
        Ok(resp) => resp,
        Err(s) => grpc::error_response(&s),
    }
}

async fn route(
    emu: &Arc<Emu>,
    method: &str,
    headers: &HeaderMap,
    body: &[u8],
    subject: &str,
) -> GrpcResult<Response> {
    // The JWT is minted for one task: it must match the task the call names.
    let for_task = |task_id: &str| -> GrpcResult<()> {
        if task_id != subject {
            return Err(Status::new(
                code::PERMISSION_DENIED,
                "router jwt is for another task",
            ));
        }
        Ok(())
    };
    Ok(match method {
        "TaskExecStart" => {
            let r: pb::TaskExecStartRequest = decode_one(body)?;
            for_task(&r.task_id)?;
            unary(exec_start(emu, r).await)
        }
        "TaskExecStdioRead" => {
            let r: pb::TaskExecStdioReadRequest = decode_one(body)?;
            for_task(&r.task_id)?;
            let exec = find_exec(emu, &r.exec_id)?;
            emu.stdio_offsets.lock().unwrap().push(r.offset);
            // Resets hit stdout reads only: a client reading stderr at the same time must not
            // take (and waste) the one meant for the command's output.
            let stdout = r.file_descriptor == pb::TaskExecStdioFileDescriptor::Stdout as i32;
            let reset_after = stdout
                .then(|| emu.output_resets.lock().unwrap().pop())
                .flatten();
            stdio_read(exec, r.offset, r.file_descriptor, reset_after)
        }
        "TaskExecWait" | "TaskExecPoll" => {
            let r: pb::TaskExecWaitRequest = decode_one(body)?;
            for_task(&r.task_id)?;
            let exec = find_exec(emu, &r.exec_id)?;
            let code = if method == "TaskExecPoll" {
                exec.state.lock().unwrap().exit
            } else {
                // Below the client's deadline, so it sees a clean status and retries.
                let limit = deadline(headers).map_or(Duration::from_secs(50), |d| {
                    d.saturating_sub(Duration::from_millis(500))
                });
                match wait_exit(&exec, limit).await {
                    Some(c) => Some(c),
                    None => {
                        return Err(Status::new(
                            code::DEADLINE_EXCEEDED,
                            "the command is still running",
                        ))
                    }
                }
            };
            if method == "TaskExecPoll" {
                use pb::task_exec_poll_response::ExitStatus;
                unary(Ok(pb::TaskExecPollResponse {
                    exit_status: code.map(ExitStatus::Code),
                }))
            } else {
                use pb::task_exec_wait_response::ExitStatus;
                unary(Ok(pb::TaskExecWaitResponse {
                    exit_status: code.map(ExitStatus::Code),
                }))
            }
        }
        "TaskExecStdinWrite" => {
            let r: pb::TaskExecStdinWriteRequest = decode_one(body)?;
            for_task(&r.task_id)?;
            let exec = find_exec(emu, &r.exec_id)?;
            stdin_write(emu, &exec, r.offset, &r.data, r.eof).await?;
            unary(Ok(pb::TaskExecStdinWriteResponse {}))
        }
        "TaskExecStdinWriteStream" => {
            use pb::task_exec_stdin_write_stream_request::Payload;
            let mut exec = None;
            let mut offset = 0;
            for frame in split_frames(body)? {
                let m = <pb::TaskExecStdinWriteStreamRequest as prost::Message>::decode(frame)
                    .map_err(|e| Status::invalid(format!("malformed message: {e}")))?;
                match m.payload {
                    Some(Payload::Start(s)) => {
                        for_task(&s.task_id)?;
                        exec = Some(find_exec(emu, &s.exec_id)?);
                        offset = s.offset;
                    }
                    Some(Payload::Data(d)) => {
                        let e = exec
                            .as_ref()
                            .ok_or_else(|| Status::invalid("data before start"))?;
                        stdin_write(emu, e, offset, &d, false).await?;
                        offset += d.len() as u64;
                    }
                    Some(Payload::End(_)) => {
                        let e = exec
                            .as_ref()
                            .ok_or_else(|| Status::invalid("end before start"))?;
                        stdin_write(emu, e, offset, &[], true).await?;
                    }
                    None => {}
                }
            }
            unary(Ok(pb::TaskExecStdinWriteStreamResponse {}))
        }
        "TaskExecStdinStatus" => {
            let r: pb::TaskExecStdinStatusRequest = decode_one(body)?;
            for_task(&r.task_id)?;
            let exec = find_exec(emu, &r.exec_id)?;
            let s = exec.state.lock().unwrap();
            unary(Ok(pb::TaskExecStdinStatusResponse {
                num_bytes_written: s.stdin_written,
                closed: s.stdin_closed,
            }))
        }
        _ => {
            return Err(Status::new(
                code::UNIMPLEMENTED,
                format!("the emulator does not implement {method}"),
            ))
        }
    })
}

fn find_exec(emu: &Emu, exec_id: &str) -> GrpcResult<Arc<Exec>> {
    emu.execs
        .lock()
        .unwrap()
        .get(exec_id)
        .cloned()
        .ok_or_else(|| Status::not_found(format!("exec {exec_id} not found")))
}

async fn wait_exit(exec: &Exec, limit: Duration) -> Option<i32> {
    let mut rx = exec.changed.subscribe();
    let waited = tokio::time::timeout(limit, async {
        loop {
            if let Some(c) = exec.state.lock().unwrap().exit {
                return c;
            }
            if rx.changed().await.is_err() {
                return -1;
            }
        }
    });
    waited.await.ok()
}

/// Streams one fd's output from `offset` until the command ended and everything was sent.
/// With `reset_after`, the stream is reset once that many bytes went out, mid-message.
fn stdio_read(exec: Arc<Exec>, mut offset: u64, fd: i32, reset_after: Option<usize>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut changes = exec.changed.subscribe();
        let mut sent = 0usize;
        loop {
            let (chunk, ended) = {
                let s = exec.state.lock().unwrap();
                let buf = if fd == pb::TaskExecStdioFileDescriptor::Stderr as i32 {
                    &s.stderr
                } else {
                    &s.stdout
                };
                let start = (offset as usize).min(buf.len());
                let end = (start + READ_CHUNK).min(buf.len());
                (
                    buf[start..end].to_vec(),
                    s.exit.is_some() && end == buf.len(),
                )
            };
            if !chunk.is_empty() {
                offset += chunk.len() as u64;
                let msg = pb::TaskExecStdioReadResponse { data: chunk };
                let frame = grpc::frame(&msg);
                if let Some(limit) = reset_after.filter(|l| sent + frame.len() > *l) {
                    // Up to the limit (cutting this message), let it reach the client, reset.
                    let _ = tx.send(Ok(frame.slice(..limit - sent))).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx.send(Err(Status::new(grpc::RESET, ""))).await;
                    return;
                }
                sent += frame.len();
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
                continue;
            }
            if ended {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    grpc::streaming(rx)
}

async fn stdin_write(
    emu: &Arc<Emu>,
    exec: &Arc<Exec>,
    offset: u64,
    data: &[u8],
    eof: bool,
) -> GrpcResult<()> {
    let mut sink = exec.stdin.lock().await;
    let written = exec.state.lock().unwrap().stdin_written;
    // Resumed writes may repeat bytes already taken: skip them; a gap is an error.
    if offset > written {
        return Err(Status::invalid(format!(
            "stdin offset {offset} is past the {written} bytes written"
        )));
    }
    let skip = ((written - offset) as usize).min(data.len());
    let data = &data[skip..];
    if !data.is_empty() {
        match &mut *sink {
            StdinSink::Pipe(pipe) => {
                if pipe.write_all(data).await.is_err() {
                    return Err(Status::new(
                        code::FAILED_PRECONDITION,
                        "the command no longer reads its stdin",
                    ));
                }
            }
            StdinSink::Buffer(buf) => buf.extend_from_slice(data),
            StdinSink::Closed => {
                return Err(Status::new(code::FAILED_PRECONDITION, "stdin is closed"))
            }
        }
        exec.state.lock().unwrap().stdin_written += data.len() as u64;
    }
    if eof {
        let previous = std::mem::replace(&mut *sink, StdinSink::Closed);
        exec.state.lock().unwrap().stdin_closed = true;
        if let StdinSink::Buffer(buf) = previous {
            if let Some(op) = exec.on_eof.lock().unwrap().take() {
                let (emu, exec) = (emu.clone(), exec.clone());
                tokio::spawn(async move { fs_tools::run_write(&emu, &exec, op, buf).await });
            }
        }
    }
    Ok(())
}

async fn exec_start(
    emu: &Arc<Emu>,
    r: pb::TaskExecStartRequest,
) -> GrpcResult<pb::TaskExecStartResponse> {
    if emu.execs.lock().unwrap().contains_key(&r.exec_id) {
        // The exec id is the idempotency key of a retried start.
        return Ok(pb::TaskExecStartResponse {});
    }
    let sb = emu
        .sandbox_by_task(&r.task_id)
        .ok_or_else(|| Status::not_found(format!("task {} not found", r.task_id)))?;
    if sb.result.is_some() {
        return Err(Status::not_found(format!(
            "task {} has finished",
            r.task_id
        )));
    }
    if r.command_args.is_empty() {
        return Err(Status::invalid("command_args must not be empty"));
    }
    if r.command_args[0] == FS_TOOLS {
        let exec = Exec::new(&r.task_id, StdinSink::Buffer(Vec::new()));
        emu.execs
            .lock()
            .unwrap()
            .insert(r.exec_id.clone(), exec.clone());
        fs_tools::start(
            emu,
            &sb,
            &exec,
            r.command_args.get(1).map(String::as_str).unwrap_or(""),
        )
        .await;
        return Ok(pb::TaskExecStartResponse {});
    }
    let mut env: std::collections::BTreeMap<String, String> = r.env.into_iter().collect();
    for src in r.secret_sources {
        match src.source {
            Some(crate::proto::client::secret_source::Source::Env(m)) => env.extend(m.contents),
            Some(crate::proto::client::secret_source::Source::SecretId(id)) => {
                if let Some(s) = emu.secrets.lock().unwrap().get(&id) {
                    env.extend(s.clone());
                }
            }
            None => {}
        }
    }
    let req = localbox::ExecRequest {
        command: localbox::CommandSpec::Argv(r.command_args),
        cwd: r.workdir,
        env,
        timeout: r
            .timeout_secs
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64)),
        stdin: None,
    };
    let (mut stream, stdin) = emu.engine.exec_stream_with_stdin(&sb.lb_id, req).await?;
    let exec = Exec::new(&r.task_id, StdinSink::Pipe(stdin));
    emu.execs.lock().unwrap().insert(r.exec_id, exec.clone());
    tokio::spawn(async move {
        let code = loop {
            match stream.next().await {
                Some(localbox::ExecEvent::Output(s, bytes)) => {
                    let fd = match s {
                        localbox::Stream::Stdout => pb::TaskExecStdioFileDescriptor::Stdout,
                        localbox::Stream::Stderr => pb::TaskExecStdioFileDescriptor::Stderr,
                    };
                    exec.push(fd as i32, &bytes);
                }
                Some(localbox::ExecEvent::Exit(out)) => break out.exit_code,
                None => break -1,
            }
        };
        *exec.stdin.lock().await = StdinSink::Closed;
        exec.finish(code);
    });
    Ok(pb::TaskExecStartResponse {})
}
