//! Commands through the task command router: start, stdin, both output streams resumed by
//! offset, the exit code; the calls after the start are sent at once.

use super::*;

/// Which output streams an exec follows while it runs. A helper's stdout or its error report
/// is all that is wanted of it; a stream not followed is never asked for, which saves a
/// router call (its output stays with the router).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Reads {
    /// stdout and stderr as they arrive (a command's output).
    Both,
    /// stdout only; stderr after a non-zero exit, where fs-tools reports its error.
    Stdout,
    /// Neither; stderr after a non-zero exit.
    Neither,
}

impl Reads {
    fn stdout(self) -> bool {
        self != Reads::Neither
    }

    fn stderr(self) -> bool {
        self == Reads::Both
    }
}

/// How long an output stream may stay open: as long as its command runs.
pub(crate) const STDIO_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A `TaskExecStdioRead` of exec `exec_id`'s `fd` from byte `offset` on.
pub(crate) fn stdio_read(
    task_id: &str,
    exec_id: &str,
    fd: Fd,
    offset: u64,
) -> tr::TaskExecStdioReadRequest {
    tr::TaskExecStdioReadRequest {
        task_id: task_id.to_string(),
        exec_id: exec_id.to_string(),
        offset,
        file_descriptor: fd as i32,
    }
}

/// An exec's calls sent ahead (see [`Running::send_ahead`]).
pub(crate) struct Ahead {
    pub(crate) stdin: Option<PendingCall>,
    pub(crate) stdout: Option<PendingCall>,
    pub(crate) stderr: Option<PendingCall>,
    pub(crate) wait: Option<PendingCall>,
}

/// A started command: its ids, for output, stdin and exit.
pub(crate) struct Running {
    pub(crate) sandbox_id: String,
    pub(crate) exec_id: String,
    pub(crate) token: Token,
}

impl Running {
    pub(crate) fn start(
        sandbox_id: &str,
        token: Token,
        argv: Vec<String>,
        cwd: Option<String>,
        env: &Pairs,
        timeout_ms: Option<u64>,
    ) -> Result<Running> {
        Running::start_as(exec_id(), sandbox_id, token, argv, cwd, env, timeout_ms)
    }

    /// [`start`](Running::start) under an exec id the caller chose.
    pub(crate) fn start_as(
        exec_id: String,
        sandbox_id: &str,
        mut token: Token,
        argv: Vec<String>,
        cwd: Option<String>,
        env: &Pairs,
        timeout_ms: Option<u64>,
    ) -> Result<Running> {
        let req = tr::TaskExecStartRequest {
            task_id: token.task.clone(),
            exec_id: exec_id.clone(),
            command_args: argv,
            stdout_config: tr::TaskExecStdoutConfig::Pipe as i32,
            stderr_config: tr::TaskExecStderrConfig::Pipe as i32,
            timeout_secs: timeout_ms.map(|ms| ms.div_ceil(1000).max(1) as u32),
            workdir: cwd,
            secret_sources: env_source(env),
            ..Default::default()
        };
        // The exec id is the idempotency key: the start may be retried.
        with_router(sandbox_id, &mut token, |r| {
            r.unary::<_, tr::TaskExecStartResponse>("TaskExecStart", &req, Duration::from_secs(60))
        })?;
        Ok(Running {
            sandbox_id: sandbox_id.to_string(),
            exec_id,
            token,
        })
    }

    /// Sends what an exec asks right after the start, so that the round trips overlap each
    /// other and the command: stdin with its end (when it fits one write), the output streams
    /// `reads` follows and the wait. A call that cannot be sent, or is refused (an expired
    /// JWT, …), is simply asked again the ordinary way.
    pub(crate) fn send_ahead(&self, stdin: Option<&Rc<Vec<u8>>>, reads: Reads) -> Ahead {
        let r = self.token.router();
        let ids = (self.token.task.clone(), self.exec_id.clone());
        let read = |fd: Fd| {
            let req = stdio_read(&ids.0, &ids.1, fd, 0);
            r.start("TaskExecStdioRead", &req, STDIO_DEADLINE)
        };
        let stdin = stdin.filter(|d| d.len() <= STDIN_CHUNK).map(|stdin| {
            let req = tr::TaskExecStdinWriteRequest {
                task_id: ids.0.clone(),
                exec_id: ids.1.clone(),
                offset: 0,
                data: Vec::new(),
                eof: true,
            };
            r.start_with_bytes(
                "TaskExecStdinWrite",
                &req,
                STDIN_DATA_TAG,
                stdin.clone(),
                Duration::from_secs(120),
            )
        });
        let wait = tr::TaskExecWaitRequest {
            task_id: ids.0.clone(),
            exec_id: ids.1.clone(),
        };
        Ahead {
            stdin: stdin.flatten(),
            stdout: reads
                .stdout()
                .then(|| read(tr::TaskExecStdioFileDescriptor::Stdout))
                .flatten(),
            stderr: reads
                .stderr()
                .then(|| read(tr::TaskExecStdioFileDescriptor::Stderr))
                .flatten(),
            wait: r.start("TaskExecWait", &wait, Duration::from_secs(55)),
        }
    }

    /// Runs the command to its end: stdin written and closed (`None`: left open), the streams
    /// `reads` follows delivered in order (stdout, then stderr) as they arrive; the exit code.
    /// stderr not followed is still delivered after a non-zero exit.
    pub(crate) fn finish(
        mut self,
        stdin: Option<Rc<Vec<u8>>>,
        reads: Reads,
        mut on_stdout: impl FnMut(Vec<u8>),
        mut on_stderr: impl FnMut(Vec<u8>),
    ) -> Result<i32> {
        let ahead = self.send_ahead(stdin.as_ref(), reads);
        if let Some(data) = stdin {
            // A command may end without reading its stdin: its exit is then the result.
            match self.stdin(&data, ahead.stdin) {
                Err(e) if kit::input_refused(&e) => {
                    kit::debug!("modal: exec {} took no more stdin ({e:?})", self.exec_id)
                }
                other => other?,
            }
        }
        if reads.stdout() {
            self.read(Fd::Stdout, ahead.stdout, &mut on_stdout)?;
        }
        if reads.stderr() {
            self.read(Fd::Stderr, ahead.stderr, &mut on_stderr)?;
        }
        let code = self.wait(ahead.wait)?;
        if !reads.stderr() && code != 0 {
            self.read(Fd::Stderr, None, &mut on_stderr)?;
        }
        Ok(code)
    }

    /// Writes all of `data` to stdin by offset, then closes it; `ahead` is the same write
    /// already sent (see [`send_ahead`](Running::send_ahead)).
    pub(crate) fn stdin(&mut self, data: &[u8], ahead: Option<PendingCall>) -> Result<()> {
        if ahead.is_some_and(|call| call.unary().is_ok()) {
            return Ok(());
        }
        let mut offset = 0usize;
        loop {
            let end = (offset + STDIN_CHUNK).min(data.len());
            let req = tr::TaskExecStdinWriteRequest {
                task_id: self.token.task.clone(),
                exec_id: self.exec_id.clone(),
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                eof: end == data.len(),
            };
            with_router(&self.sandbox_id, &mut self.token, |r| {
                r.unary::<_, tr::TaskExecStdinWriteResponse>(
                    "TaskExecStdinWrite",
                    &req,
                    Duration::from_secs(120),
                )
            })?;
            offset = end;
            if offset == data.len() {
                return Ok(());
            }
        }
    }

    /// Reads one output stream to its end, from byte offset 0, reconnecting from the current
    /// offset when the stream breaks (no byte lost or repeated).
    pub(crate) fn read(
        &mut self,
        fd: tr::TaskExecStdioFileDescriptor,
        mut ahead: Option<PendingCall>,
        mut sink: impl FnMut(Vec<u8>),
    ) -> Result<()> {
        let mut offset = 0u64;
        let mut failures = 0;
        loop {
            let req = stdio_read(&self.token.task, &self.exec_id, fd, offset);
            let opened = match ahead.take().map(PendingCall::open) {
                Some(Ok(stream)) => Ok(stream),
                _ => with_router(&self.sandbox_id, &mut self.token, |r| {
                    r.open("TaskExecStdioRead", &req, STDIO_DEADLINE)
                }),
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(e)
                    if matches!(e, kit::Error::Unavailable(_)) && failures < STREAM_RECONNECTS =>
                {
                    failures += 1;
                    kit::sleep(Duration::from_millis(10 << failures.min(6)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            loop {
                match stream.next_message() {
                    Ok(Some(bytes)) => {
                        let data = stdio_data(bytes)?;
                        offset += data.len() as u64;
                        sink(data);
                    }
                    Ok(None) => return Ok(()),
                    Err(e) if e.is_retryable() && failures < STREAM_RECONNECTS => {
                        failures += 1;
                        kit::debug!("output stream broke at offset {offset}: {e}; reconnecting");
                        kit::sleep(Duration::from_millis(10 << failures.min(6)));
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// Waits for the exit code (a signal `n` as 128 + n).
    pub(crate) fn wait(&mut self, mut ahead: Option<PendingCall>) -> Result<i32> {
        let req = tr::TaskExecWaitRequest {
            task_id: self.token.task.clone(),
            exec_id: self.exec_id.clone(),
        };
        loop {
            let answered = ahead.take().map(PendingCall::unary).and_then(|r| r.ok());
            let r = match answered
                .map(|b| <tr::TaskExecWaitResponse as prost::Message>::decode(b.as_slice()))
            {
                Some(Ok(resp)) => Ok(resp),
                _ => with_router(&self.sandbox_id, &mut self.token, |r| {
                    r.unary::<_, tr::TaskExecWaitResponse>(
                        "TaskExecWait",
                        &req,
                        Duration::from_secs(55),
                    )
                }),
            };
            match r {
                Ok(resp) => {
                    use tr::task_exec_wait_response::ExitStatus;
                    return Ok(match resp.exit_status {
                        Some(ExitStatus::Code(c)) => c,
                        Some(ExitStatus::Signal(s)) => 128 + s,
                        None => -1,
                    });
                }
                // The server's long-poll ended while the command still runs: ask again.
                Err(kit::Error::Timeout(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The output bytes of a `TaskExecStdioReadResponse`. Its only field is `data` (1, bytes): a
/// message that is just that field gives up its own buffer, the 2–6 byte field head shifted
/// out in place (a large chunk is not copied into a new one); anything else is decoded.
pub(crate) fn stdio_data(mut message: Vec<u8>) -> Result<Vec<u8>> {
    if let Some(head) = data_field_head(&message) {
        message.drain(..head);
        return Ok(message);
    }
    <tr::TaskExecStdioReadResponse as prost::Message>::decode(message.as_slice())
        .map(|m| m.data)
        .map_err(|e| kit::provider(0, format!("malformed output message: {e}")))
}

/// The length of the head of field 1 (bytes) when it spans exactly the rest of `message`.
fn data_field_head(message: &[u8]) -> Option<usize> {
    if message.first() != Some(&0x0a) {
        return None;
    }
    let mut len = 0u64;
    for (i, b) in message.iter().enumerate().skip(1).take(10) {
        len |= u64::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let head = i + 1;
            return (head as u64 + len == message.len() as u64).then_some(head);
        }
    }
    None
}

#[cfg(test)]
mod stdio_tests {
    use super::*;
    use prost::Message;

    #[test]
    fn output_messages_give_up_their_buffers() {
        for n in [0usize, 5, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let wire = tr::TaskExecStdioReadResponse { data: data.clone() }.encode_to_vec();
            if n > 0 {
                assert!(data_field_head(&wire).is_some(), "{n}");
            }
            assert_eq!(stdio_data(wire).unwrap(), data, "{n}");
        }
        // A field the fast path does not know: decoded the ordinary way.
        let mut wire = tr::TaskExecStdioReadResponse {
            data: b"ab".to_vec(),
        }
        .encode_to_vec();
        wire.extend_from_slice(&[0x10, 0x01]);
        assert_eq!(data_field_head(&wire), None);
        assert_eq!(stdio_data(wire).unwrap(), b"ab");
    }
}
