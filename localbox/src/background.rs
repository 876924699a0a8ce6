//! Background processes: commands that belong to the engine (not to the request that started
//! them), with their output kept in memory for polling by byte offset.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::process::{OutputSink, Stream};

/// Most bytes of each stream returned by one output poll.
pub const MAX_OUTPUT_PER_POLL: usize = 4 << 20;
/// Finished processes remembered per sandbox (the oldest are forgotten first).
const KEEP_FINISHED: usize = 64;

/// State of a background process.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    /// Sandbox-local process id (a decimal string; not an OS pid).
    pub pid: String,
    pub command: String,
    pub running: bool,
    pub exit_code: Option<i32>,
}

/// Output of a background process since the requested offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Offset to pass next time to continue stdout where this poll ended.
    pub stdout_next: u64,
    pub stderr_next: u64,
    pub running: bool,
    pub exit_code: Option<i32>,
}

/// A stream's output: absolute offsets, only the last `cap` bytes retained.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    data: VecDeque<u8>,
    /// Absolute offset of `data[0]`.
    start: u64,
    cap: usize,
}

impl OutputBuffer {
    pub(crate) fn new(cap: usize) -> Self {
        OutputBuffer {
            data: VecDeque::new(),
            start: 0,
            cap,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.data.extend(bytes);
        let overflow = self.data.len().saturating_sub(self.cap);
        if overflow > 0 {
            self.data.drain(..overflow);
            self.start += overflow as u64;
        }
    }

    /// Bytes from `offset` (clamped to what is retained), at most `max`, and the next offset.
    pub(crate) fn read_from(&self, offset: u64, max: usize) -> (Vec<u8>, u64) {
        let end = self.start + self.data.len() as u64;
        let from = offset.clamp(self.start, end);
        let skip = (from - self.start) as usize;
        let out: Vec<u8> = self.data.range(skip..).take(max).copied().collect();
        let next = from + out.len() as u64;
        (out, next)
    }
}

#[derive(Debug)]
pub(crate) struct BgState {
    pub stdout: OutputBuffer,
    pub stderr: OutputBuffer,
    pub running: bool,
    pub exit_code: Option<i32>,
}

/// One background process.
#[derive(Debug)]
pub(crate) struct Background {
    pub pid: u64,
    pub command: String,
    /// Process group (= OS pid of the spawned leader, bwrap itself under isolation).
    pub pgid: i32,
    pub bwrap: bool,
    pub state: Mutex<BgState>,
    /// Woken on new output and on exit, so readers need not poll.
    changed: Notify,
}

impl Background {
    pub(crate) fn new(pid: u64, command: String, pgid: i32, bwrap: bool, cap: usize) -> Self {
        Background {
            pid,
            command,
            pgid,
            bwrap,
            state: Mutex::new(BgState {
                stdout: OutputBuffer::new(cap),
                stderr: OutputBuffer::new(cap),
                running: true,
                exit_code: None,
            }),
            changed: Notify::new(),
        }
    }

    pub(crate) fn info(&self) -> ProcessInfo {
        let st = self.state.lock().unwrap();
        ProcessInfo {
            pid: self.pid.to_string(),
            command: self.command.clone(),
            running: st.running,
            exit_code: st.exit_code,
        }
    }

    pub(crate) fn output(&self, stdout_offset: u64, stderr_offset: u64) -> ProcessOutput {
        let st = self.state.lock().unwrap();
        let (stdout, stdout_next) = st.stdout.read_from(stdout_offset, MAX_OUTPUT_PER_POLL);
        let (stderr, stderr_next) = st.stderr.read_from(stderr_offset, MAX_OUTPUT_PER_POLL);
        ProcessOutput {
            stdout,
            stderr,
            stdout_next,
            stderr_next,
            running: st.running,
            exit_code: st.exit_code,
        }
    }

    /// Like [`output`](Self::output), but when there is nothing new yet and the process runs,
    /// waits up to `max_wait` for output or the exit.
    pub(crate) async fn wait_output(
        &self,
        stdout_offset: u64,
        stderr_offset: u64,
        max_wait: Duration,
    ) -> ProcessOutput {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            // Registered before looking, so a change between the look and the wait wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let out = self.output(stdout_offset, stderr_offset);
            if !out.stdout.is_empty() || !out.stderr.is_empty() || !out.running {
                return out;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return out;
            }
        }
    }

    pub(crate) fn finish(&self, exit_code: i32) {
        let mut st = self.state.lock().unwrap();
        st.running = false;
        st.exit_code = Some(exit_code);
        drop(st);
        self.changed.notify_waiters();
    }
}

/// Sink that appends to a background process's buffers.
pub(crate) struct BufferSink(pub Arc<Background>);

impl OutputSink for BufferSink {
    async fn deliver(&mut self, stream: Stream, data: &[u8]) -> bool {
        let mut st = self.0.state.lock().unwrap();
        match stream {
            Stream::Stdout => st.stdout.push(data),
            Stream::Stderr => st.stderr.push(data),
        }
        drop(st);
        self.0.changed.notify_waiters();
        true
    }
    async fn gone(&self) {
        std::future::pending().await
    }
}

/// Processes of one sandbox: background records plus every live process group (foreground
/// and background) so they can be signalled when isolation gives no uid to signal by.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    next_pid: u64,
    pub background: BTreeMap<u64, Arc<Background>>,
    /// Live process groups (leader pid) → started through bubblewrap.
    pub live_groups: BTreeMap<i32, bool>,
    /// Set once destruction began: no new process may start.
    pub closed: bool,
}

impl ProcessTable {
    pub(crate) fn next_pid(&mut self) -> u64 {
        self.next_pid += 1;
        self.next_pid
    }

    pub(crate) fn insert_background(&mut self, bg: Arc<Background>) {
        self.background.insert(bg.pid, bg);
        let finished: Vec<u64> = self
            .background
            .values()
            .filter(|b| !b.state.lock().unwrap().running)
            .map(|b| b.pid)
            .collect();
        for pid in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            self.background.remove(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_offsets_survive_trimming() {
        let mut b = OutputBuffer::new(8);
        b.push(b"0123456789");
        assert_eq!(b.read_from(0, 100), (b"23456789".to_vec(), 10));
        assert_eq!(b.read_from(5, 2), (b"56".to_vec(), 7));
        assert_eq!(b.read_from(10, 100), (Vec::new(), 10));
        assert_eq!(b.read_from(99, 100), (Vec::new(), 10));
        b.push(b"ab");
        assert_eq!(b.read_from(10, 100), (b"ab".to_vec(), 12));
    }
}
