//! The engine: owns the sandboxes, their uids and processes, and the expiry reaper.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::background::{Background, BufferSink, ProcessInfo, ProcessOutput};
use crate::config::{EngineConfig, Isolation};
use crate::confine::{confine, open_beneath, open_root, Confined, O_PATH};
use crate::error::{Error, ErrorCode, Result};
use crate::files::{self, FileStat};
use crate::isolation::{validate_env, Isolator, SandboxMounts};
use crate::process::{
    self, ChannelSink, ExecEvent, ExecOutput, ExecRequest, ExecStream, Launch, Spawned, StdinPipe,
};
use crate::sandbox::{
    check_traversable, make_layout, now_ms, Sandbox, SandboxInfo, SandboxRecord, SandboxSpec,
    SandboxState, RECORD_FILE,
};
use crate::signals;
use crate::uids::{UidAllocator, UidLease};

/// The local sandbox engine. Cheap to clone (shared state); must be used inside a Tokio runtime.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    isolator: Isolator,
    /// Present when every sandbox gets its own uid (root engine + bubblewrap on Linux).
    uids: Option<UidAllocator>,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    leases: Mutex<HashMap<String, UidLease>>,
    /// Serializes creation so name uniqueness is checked and claimed atomically.
    create_lock: tokio::sync::Mutex<()>,
    last_activity_ms: AtomicU64,
    reaper_started: AtomicBool,
}

/// How busy the engine is, for daemons that exit when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub live_sandboxes: usize,
    /// Foreground and background commands still running.
    pub running_processes: usize,
    /// Last API call (ms since the Unix epoch).
    pub last_activity_ms: u64,
}

impl Activity {
    /// True when nothing lives and nothing was asked for `period`.
    pub fn idle_for(&self, period: Duration) -> bool {
        self.live_sandboxes == 0
            && self.running_processes == 0
            && now_ms().saturating_sub(self.last_activity_ms) >= period.as_millis() as u64
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root_dir", &self.inner.config.root_dir)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens (or creates) the root directory and re-reads the sandboxes recorded in it.
    ///
    /// Isolation availability is checked when a sandbox is created, so an engine for
    /// inspection/cleanup can start anywhere.
    pub fn new(config: EngineConfig) -> Result<Engine> {
        let per_uid = config.isolation == Isolation::Bubblewrap
            && cfg!(target_os = "linux")
            && unsafe { libc::geteuid() } == 0;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&config.root_dir)
            .map_err(|e| {
                Error::internal(format!("cannot create {}: {e}", config.root_dir.display()))
            })?;
        let root_dir = std::fs::canonicalize(&config.root_dir)
            .map_err(|e| Error::internal(format!("{}: {e}", config.root_dir.display())))?;
        let uids = if per_uid {
            check_traversable(&root_dir)?;
            if config.uid_count == 0 {
                return Err(Error::invalid("uid_count must be at least 1"));
            }
            let alloc = UidAllocator::new(
                config.uid_lock_dir.clone(),
                config.uid_base,
                config.uid_count,
            )
            .map_err(|e| Error::internal(format!("uid lock directory: {e}")))?;
            Some(alloc)
        } else {
            if config.isolation == Isolation::Bubblewrap && config.limits.nproc.is_some() {
                tracing::warn!("localbox: not running as root, sandboxes share the engine's uid and RLIMIT_NPROC is not applied");
            }
            None
        };
        let config = EngineConfig { root_dir, ..config };
        let inner = Arc::new(Inner {
            isolator: Isolator::new(&config),
            config,
            uids,
            sandboxes: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
            last_activity_ms: AtomicU64::new(now_ms()),
            reaper_started: AtomicBool::new(false),
        });
        let engine = Engine { inner };
        engine.load_existing()?;
        engine.ensure_reaper();
        Ok(engine)
    }

    /// The configuration in effect (with `root_dir` canonicalized).
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether commands run under a per-sandbox uid (so RLIMIT_NPROC holds and sandboxes are
    /// separated by the kernel's permission checks).
    pub fn per_sandbox_uid(&self) -> bool {
        self.inner.uids.is_some()
    }

    // ----- lifecycle -------------------------------------------------------------------------

    /// Creates a sandbox. Fails with `unavailable` when the configured isolation cannot work here
    /// (e.g. bubblewrap missing), `conflict` for a duplicate name.
    pub async fn create(&self, spec: SandboxSpec) -> Result<SandboxInfo> {
        self.touch();
        self.ensure_reaper();
        self.inner.isolator.check_available()?;
        if let Some(name) = &spec.name {
            if name.is_empty() || name.len() > 256 {
                return Err(Error::invalid("name must be 1 to 256 characters"));
            }
        }
        for (k, v) in &spec.env {
            validate_env(k, v)?;
        }
        if spec.labels.keys().any(|k| k.is_empty()) {
            return Err(Error::invalid("label keys must not be empty"));
        }
        let workdir = confine(
            spec.workdir.as_deref().unwrap_or("/workspace"),
            "/workspace",
        )?;
        if !spec.workdir.as_deref().unwrap_or("/").starts_with('/')
            || workdir.rel.components().any(|c| c == Component::ParentDir)
        {
            return Err(Error::invalid(
                "workdir must be an absolute path without '..'",
            ));
        }

        let _guard = self.inner.create_lock.lock().await;
        if let Some(name) = &spec.name {
            if self
                .sandboxes()
                .iter()
                .any(|s| s.record.lock().unwrap().name.as_ref() == Some(name))
            {
                return Err(Error::conflict(format!(
                    "a sandbox named {name:?} already exists"
                )));
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let lease = match &self.inner.uids {
            Some(alloc) => {
                let in_use: HashSet<u32> = self
                    .sandboxes()
                    .iter()
                    .filter_map(|s| s.creds.map(|c| c.0))
                    .collect();
                let lease = alloc
                    .allocate(&in_use)
                    .map_err(|e| Error::unavailable(e.to_string()))?;
                // A crashed engine may have left processes under this uid.
                let uid = lease.uid;
                if !signals::pids_of_uid(uid).is_empty() {
                    blocking(move || {
                        signals::kill_all_of_uid(uid, uid)
                            .map_err(|e| Error::internal(e.to_string()))
                    })
                    .await?;
                }
                Some(lease)
            }
            None => None,
        };
        let creds = lease.as_ref().map(|l| (l.uid, l.uid));
        let dir = self.inner.config.root_dir.join(&id);
        let now = now_ms();
        let record = SandboxRecord {
            id: id.clone(),
            name: spec.name,
            image: spec.image,
            env: spec.env,
            labels: spec.labels,
            workdir: workdir.view.clone(),
            uid: creds.map(|c| c.0),
            state: SandboxState::Running,
            created_at_ms: now,
            expires_at_ms: spec.timeout_secs.map(|s| now + s.saturating_mul(1000)),
        };
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            dir: dir.clone(),
            creds,
            record: Mutex::new(record.clone()),
            procs: Mutex::new(Default::default()),
        });
        let sb = sandbox.clone();
        let made = blocking(move || {
            make_layout(&sb.dir, creds)?;
            if !workdir.rel.as_os_str().is_empty() {
                files::mkdir(&sb.mount_dir(workdir.mount), &workdir, true, creds)?;
            }
            record
                .save(&sb.dir)
                .map_err(|e| Error::internal(format!("saving sandbox record: {e}")))
        })
        .await;
        if let Err(e) = made {
            let d = dir.clone();
            let _ = blocking(move || Ok(std::fs::remove_dir_all(d))).await;
            return Err(e);
        }
        if let Some(lease) = lease {
            self.inner.leases.lock().unwrap().insert(id.clone(), lease);
        }
        self.inner
            .sandboxes
            .lock()
            .unwrap()
            .insert(id, sandbox.clone());
        Ok(sandbox.info())
    }

    /// Describes one sandbox.
    pub fn get(&self, id: &str) -> Result<SandboxInfo> {
        self.touch();
        Ok(self.sandbox(id)?.info())
    }

    /// Sandboxes whose labels include every `(key, value)` of `labels`, oldest first.
    pub fn list(&self, labels: &BTreeMap<String, String>) -> Vec<SandboxInfo> {
        self.touch();
        let mut out: Vec<SandboxInfo> = self
            .sandboxes()
            .iter()
            .map(|s| s.info())
            .filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            .collect();
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        out
    }

    /// The live sandbox with this name, if any.
    pub fn find_by_name(&self, name: &str) -> Option<SandboxInfo> {
        self.sandboxes()
            .iter()
            .map(|s| s.info())
            .find(|i| i.name.as_deref() == Some(name))
    }

    /// Kills every process of the sandbox, removes its directory and frees its uid.
    pub async fn destroy(&self, id: &str) -> Result<()> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        sandbox.procs.lock().unwrap().closed = true;
        sandbox.record.lock().unwrap().state = SandboxState::Stopped;
        self.kill_processes(&sandbox).await?;
        let dir = sandbox.dir.clone();
        blocking(move || {
            // Record first: a half-removed directory must not come back after a restart.
            match std::fs::remove_file(dir.join(RECORD_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::internal(format!("{}: {e}", dir.display())))
                }
                _ => {}
            }
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::internal(format!("removing {}: {e}", dir.display())))
        })
        .await?;
        self.inner.sandboxes.lock().unwrap().remove(id);
        self.inner.leases.lock().unwrap().remove(id);
        Ok(())
    }

    /// Stops (SIGSTOP) every process of the sandbox. New commands are refused until `resume`.
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        match sandbox.state() {
            SandboxState::Paused => return Ok(sandbox.info()),
            SandboxState::Stopped => {
                return Err(Error::conflict(format!("sandbox {id} is stopped")))
            }
            SandboxState::Running => {}
        }
        self.set_state(&sandbox, SandboxState::Paused)?;
        // Twice: a process that was mid-fork during the first pass is caught by the second.
        for _ in 0..2 {
            self.signal_all(&sandbox, libc::SIGSTOP).await?;
        }
        Ok(sandbox.info())
    }

    /// Continues (SIGCONT) the sandbox's processes.
    pub async fn resume(&self, id: &str) -> Result<SandboxInfo> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        match sandbox.state() {
            SandboxState::Running => return Ok(sandbox.info()),
            SandboxState::Stopped => {
                return Err(Error::conflict(format!("sandbox {id} is stopped")))
            }
            SandboxState::Paused => {}
        }
        self.signal_all(&sandbox, libc::SIGCONT).await?;
        self.set_state(&sandbox, SandboxState::Running)?;
        Ok(sandbox.info())
    }

    /// Makes the sandbox expire `timeout` from now (`None`: never). The reaper destroys expired
    /// sandboxes.
    pub fn set_timeout(&self, id: &str, timeout: Option<Duration>) -> Result<SandboxInfo> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        let mut rec = sandbox.record.lock().unwrap();
        rec.expires_at_ms = timeout.map(|t| now_ms() + t.as_millis() as u64);
        rec.save(&sandbox.dir)
            .map_err(|e| Error::internal(format!("saving sandbox record: {e}")))?;
        Ok(rec.info())
    }

    // ----- commands --------------------------------------------------------------------------

    /// Runs a command and streams its output. Dropping the returned stream kills the command.
    pub async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream> {
        Ok(self.start_stream(id, req, false)?.0)
    }

    /// Like [`exec_stream`](Self::exec_stream), with the command's stdin a pipe the caller
    /// writes while it runs (dropping the writer is EOF), for stdin that arrives over time.
    /// `req.stdin` must be `None`.
    pub async fn exec_stream_with_stdin(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<(ExecStream, StdinPipe)> {
        let (stream, pipe) = self.start_stream(id, req, true)?;
        Ok((stream, pipe.expect("a pipe was asked for")))
    }

    fn start_stream(
        &self,
        id: &str,
        req: ExecRequest,
        live_stdin: bool,
    ) -> Result<(ExecStream, Option<StdinPipe>)> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        let launch = self.prepare(&sandbox, &req)?;
        let (spawned, pipe) = self.spawn_tracked(&sandbox, &launch, &req, live_stdin, |_, _| {})?;
        let (tx, rx) = mpsc::channel(16);
        let timeout = req.timeout;
        let stdin = req.stdin;
        tokio::spawn(async move {
            let mut sink = ChannelSink(tx);
            let out = pump_tracked(sandbox, spawned, &mut sink, timeout, stdin).await;
            let _ = sink.0.send(ExecEvent::Exit(out)).await;
        });
        Ok((ExecStream { rx }, pipe))
    }

    /// Runs a command to its end and returns its exit code and output tails.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecOutput> {
        Ok(self.exec_stream(id, req).await?.finish().await)
    }

    /// Starts a background process owned by the engine; poll it with
    /// [`process_output`](Self::process_output).
    pub async fn start_process(&self, id: &str, req: ExecRequest) -> Result<ProcessInfo> {
        Ok(self.start_background(id, req, false)?.0)
    }

    /// Like [`start_process`](Self::start_process), with the process's stdin a pipe the
    /// caller writes while it runs (dropping the writer is EOF). `req.stdin` must be `None`.
    pub async fn start_process_with_stdin(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<(ProcessInfo, StdinPipe)> {
        let (info, pipe) = self.start_background(id, req, true)?;
        Ok((info, pipe.expect("a pipe was asked for")))
    }

    fn start_background(
        &self,
        id: &str,
        req: ExecRequest,
        live_stdin: bool,
    ) -> Result<(ProcessInfo, Option<StdinPipe>)> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        let launch = self.prepare(&sandbox, &req)?;
        let cap = self.inner.config.process_output_cap;
        let command = req.command.display();
        let mut bg = None;
        let (spawned, pipe) =
            self.spawn_tracked(&sandbox, &launch, &req, live_stdin, |table, sp| {
                let b = Arc::new(Background::new(
                    table.next_pid(),
                    command,
                    sp.pgid,
                    launch.bwrap,
                    cap,
                ));
                table.insert_background(b.clone());
                bg = Some(b);
            })?;
        let bg = bg.expect("registered by spawn_tracked");
        let info = bg.info();
        let (timeout, stdin) = (req.timeout, req.stdin);
        tokio::spawn(async move {
            let mut sink = BufferSink(bg.clone());
            let out = pump_tracked(sandbox, spawned, &mut sink, timeout, stdin).await;
            bg.finish(out.exit_code);
        });
        Ok((info, pipe))
    }

    /// Background processes of a sandbox (recent finished ones included), by pid.
    pub fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        let procs = sandbox.procs.lock().unwrap();
        Ok(procs.background.values().map(|b| b.info()).collect())
    }

    /// One background process.
    pub fn process(&self, id: &str, pid: &str) -> Result<ProcessInfo> {
        self.touch();
        Ok(self.background(id, pid)?.info())
    }

    /// Output produced since the given byte offsets (per stream), at most 4 MiB of each.
    pub fn process_output(
        &self,
        id: &str,
        pid: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<ProcessOutput> {
        self.touch();
        Ok(self
            .background(id, pid)?
            .output(stdout_offset, stderr_offset))
    }

    /// Like [`process_output`](Self::process_output), but when nothing new is there yet and the
    /// process runs, waits up to `max_wait` for output or the exit (no polling needed).
    pub async fn wait_process_output(
        &self,
        id: &str,
        pid: &str,
        stdout_offset: u64,
        stderr_offset: u64,
        max_wait: Duration,
    ) -> Result<ProcessOutput> {
        self.touch();
        let bg = self.background(id, pid)?;
        Ok(bg.wait_output(stdout_offset, stderr_offset, max_wait).await)
    }

    /// Sends signal `signal` to a background process (no-op once it exited). Under bubblewrap,
    /// the command receives it, not bubblewrap (SIGKILL takes the whole process group).
    pub fn signal_process(&self, id: &str, pid: &str, signal: i32) -> Result<()> {
        self.touch();
        if !(1..=64).contains(&signal) {
            return Err(Error::invalid(format!("invalid signal {signal}")));
        }
        let sandbox = self.sandbox(id)?;
        let bg = self.background(id, pid)?;
        // Only while the group is registered: it is unregistered (under this lock) right when
        // its leader is reaped, so a recycled process group id is never signalled.
        let procs = sandbox.procs.lock().unwrap();
        if !procs.live_groups.contains_key(&bg.pgid) {
            return Ok(());
        }
        if signal == libc::SIGKILL || !bg.bwrap {
            signals::signal_group(bg.pgid, signal);
        } else {
            signals::signal_payload(bg.pgid, bg.pgid, signal);
        }
        Ok(())
    }

    // ----- files -----------------------------------------------------------------------------

    /// Reads a regular file (paths in the sandbox view: under `/workspace` or `/tmp`, or
    /// relative to the workdir).
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        let max = self.inner.config.max_read_bytes;
        self.file_op(id, path, move |root, c, _| files::read_file(root, c, max))
            .await
    }

    /// Creates or truncates a file (its parent must exist); `mode` defaults to 0644 for new files.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        self.file_op(id, path, move |root, c, owner| {
            files::write_file(root, c, &data, mode, owner)
        })
        .await
    }

    /// Lists a directory, sorted by name.
    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<FileStat>> {
        self.file_op(id, path, |root, c, _| files::list_dir(root, c))
            .await
    }

    /// Stats a path without following a final symlink.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileStat> {
        self.file_op(id, path, |root, c, _| files::stat(root, c))
            .await
    }

    /// Removes a file, symlink or directory (non-empty ones only with `recursive`).
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<()> {
        self.file_op(id, path, move |root, c, _| {
            files::remove(root, c, recursive)
        })
        .await
    }

    /// Renames `from` to `to` within the sandbox (as rename(2); see [`files::rename`]).
    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<()> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        let workdir = sandbox.record.lock().unwrap().workdir.clone();
        let (from, to) = (confine(from, &workdir)?, confine(to, &workdir)?);
        let (from_root, to_root) = (sandbox.mount_dir(from.mount), sandbox.mount_dir(to.mount));
        blocking(move || files::rename(&from_root, &from, &to_root, &to)).await
    }

    /// Creates a directory (with `parents`, also missing ancestors; existing is then fine).
    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<()> {
        self.file_op(id, path, move |root, c, owner| {
            files::mkdir(root, c, parents, owner)
        })
        .await
    }

    // ----- engine-wide -----------------------------------------------------------------------

    /// Resolves once the engine has had no sandbox, no running command and no call for
    /// `period` (checked every second) — for daemons that exit when unused.
    pub async fn wait_idle(&self, period: Duration) {
        loop {
            if self.activity().idle_for(period) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Live sandboxes, running commands and the time of the last call.
    pub fn activity(&self) -> Activity {
        let sandboxes = self.sandboxes();
        Activity {
            live_sandboxes: sandboxes.len(),
            running_processes: sandboxes
                .iter()
                .map(|s| s.procs.lock().unwrap().live_groups.len())
                .sum(),
            last_activity_ms: self.inner.last_activity_ms.load(Ordering::Relaxed),
        }
    }

    /// Records activity now (the HTTP server calls this for every request).
    pub fn touch(&self) {
        self.inner
            .last_activity_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Kills every running command of every sandbox, keeping the sandboxes (for a clean daemon
    /// exit; a new engine on the same root directory picks them up again).
    pub async fn shutdown(&self) {
        for sandbox in self.sandboxes() {
            if let Err(e) = self.kill_processes(&sandbox).await {
                tracing::warn!(sandbox = %sandbox.id, "shutdown: {e}");
            }
        }
    }

    // ----- internals -------------------------------------------------------------------------

    fn sandboxes(&self) -> Vec<Arc<Sandbox>> {
        self.inner
            .sandboxes
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>> {
        self.inner
            .sandboxes
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("sandbox {id} not found")))
    }

    fn background(&self, id: &str, pid: &str) -> Result<Arc<Background>> {
        let sandbox = self.sandbox(id)?;
        let procs = sandbox.procs.lock().unwrap();
        pid.parse::<u64>()
            .ok()
            .and_then(|p| procs.background.get(&p).cloned())
            .ok_or_else(|| Error::not_found(format!("process {pid} not found in sandbox {id}")))
    }

    fn set_state(&self, sandbox: &Sandbox, state: SandboxState) -> Result<()> {
        let mut rec = sandbox.record.lock().unwrap();
        rec.state = state;
        rec.save(&sandbox.dir)
            .map_err(|e| Error::internal(format!("saving sandbox record: {e}")))
    }

    /// Builds the launch for `req`: checks state, cwd and env.
    fn prepare(&self, sandbox: &Sandbox, req: &ExecRequest) -> Result<Launch> {
        let (workdir, mut env) = {
            let rec = sandbox.record.lock().unwrap();
            match rec.state {
                SandboxState::Running => {}
                SandboxState::Paused => {
                    return Err(Error::conflict(format!("sandbox {} is paused", sandbox.id)))
                }
                SandboxState::Stopped => {
                    return Err(Error::conflict(format!(
                        "sandbox {} is stopped",
                        sandbox.id
                    )))
                }
            }
            (rec.workdir.clone(), rec.env.clone())
        };
        match &req.command {
            process::CommandSpec::Argv(a) if a.is_empty() || a[0].is_empty() => {
                return Err(Error::invalid("argv must not be empty"))
            }
            process::CommandSpec::Argv(a) if a.iter().any(|s| s.contains('\0')) => {
                return Err(Error::invalid("argv must not contain NUL bytes"))
            }
            process::CommandSpec::Shell(s) if s.contains('\0') => {
                return Err(Error::invalid("shell command must not contain NUL bytes"))
            }
            _ => {}
        }
        env.extend(req.env.clone());
        for (k, v) in &env {
            validate_env(k, v)?;
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let cwd = confine(req.cwd.as_deref().unwrap_or(&workdir), &workdir)?;
        check_dir(sandbox, &cwd)?;
        let workspace = sandbox.mount_dir(crate::confine::Mount::Workspace);
        let tmp = sandbox.mount_dir(crate::confine::Mount::Tmp);
        let mounts = SandboxMounts {
            workspace: &workspace,
            tmp: &tmp,
            creds: sandbox.creds,
        };
        let cwd_host = sandbox.mount_dir(cwd.mount).join(&cwd.rel);
        self.inner
            .isolator
            .launch(&mounts, &cwd.view, &cwd_host, &env, &req.command)
    }

    /// Spawns under the sandbox's process-table lock (so `destroy` either sees the new group or
    /// the spawn sees `closed`), registering the group and letting `register` add a record.
    /// Stdin is a pipe when `req` carries bytes for it (left in `Spawned` for the pump to write)
    /// or `live_stdin` asks for one (handed back; `req` must then carry no bytes).
    fn spawn_tracked(
        &self,
        sandbox: &Sandbox,
        launch: &Launch,
        req: &ExecRequest,
        live_stdin: bool,
        register: impl FnOnce(&mut crate::background::ProcessTable, &Spawned),
    ) -> Result<(Spawned, Option<StdinPipe>)> {
        if live_stdin && req.stdin.is_some() {
            return Err(Error::invalid("stdin bytes and a stdin pipe are exclusive"));
        }
        let with_stdin = live_stdin || req.stdin.is_some();
        let mut procs = sandbox.procs.lock().unwrap();
        if procs.closed {
            return Err(Error::conflict(format!(
                "sandbox {} is being destroyed",
                sandbox.id
            )));
        }
        let mut spawned =
            process::spawn(launch, &self.inner.config.limits, with_stdin).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => Error::unavailable(format!(
                        "cannot start a process in sandbox {}: process limit reached",
                        sandbox.id
                    )),
                    Some(libc::ENOENT) => Error::unavailable(format!(
                        "cannot start {}: {e}",
                        launch.program.display()
                    )),
                    _ => Error::internal(format!(
                        "cannot start a process in sandbox {}: {e}",
                        sandbox.id
                    )),
                }
            })?;
        procs.live_groups.insert(spawned.pgid, launch.bwrap);
        register(&mut procs, &spawned);
        let pipe = live_stdin.then(|| spawned.stdin.take()).flatten();
        Ok((spawned, pipe))
    }

    /// Signals everything the sandbox runs.
    async fn signal_all(&self, sandbox: &Sandbox, sig: i32) -> Result<()> {
        if let Some((uid, gid)) = sandbox.creds {
            blocking(move || {
                signals::signal_uid(uid, gid, sig).map_err(|e| Error::internal(e.to_string()))
            })
            .await
        } else {
            let procs = sandbox.procs.lock().unwrap();
            for &pgid in procs.live_groups.keys() {
                signals::signal_group(pgid, sig);
            }
            Ok(())
        }
    }

    async fn kill_processes(&self, sandbox: &Sandbox) -> Result<()> {
        {
            let procs = sandbox.procs.lock().unwrap();
            for &pgid in procs.live_groups.keys() {
                signals::signal_group(pgid, libc::SIGKILL);
            }
        }
        if let Some((uid, gid)) = sandbox.creds {
            blocking(move || {
                signals::kill_all_of_uid(uid, gid).map_err(|e| Error::internal(e.to_string()))
            })
            .await?;
        }
        Ok(())
    }

    async fn file_op<T: Send + 'static>(
        &self,
        id: &str,
        path: &str,
        op: impl FnOnce(&Path, &Confined, files::Owner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.touch();
        let sandbox = self.sandbox(id)?;
        let workdir = sandbox.record.lock().unwrap().workdir.clone();
        let c = confine(path, &workdir)?;
        let root = sandbox.mount_dir(c.mount);
        let owner = sandbox.creds;
        blocking(move || op(&root, &c, owner)).await
    }

    fn load_existing(&self) -> Result<()> {
        let root = &self.inner.config.root_dir;
        let entries = std::fs::read_dir(root)
            .map_err(|e| Error::internal(format!("{}: {e}", root.display())))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.join(RECORD_FILE).is_file() {
                continue;
            }
            let mut record = match SandboxRecord::load(&dir) {
                Ok(r) if Some(r.id.as_str()) == dir.file_name().and_then(|n| n.to_str()) => r,
                Ok(_) => {
                    tracing::warn!(dir = %dir.display(), "localbox: sandbox record id does not match its directory; skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "localbox: unreadable sandbox record ({e}); skipped");
                    continue;
                }
            };
            let mut creds = None;
            match (&self.inner.uids, record.uid) {
                (Some(alloc), Some(uid)) => match alloc.reacquire(uid) {
                    Ok(Some(lease)) if alloc.contains(uid) => {
                        creds = Some((uid, uid));
                        self.inner
                            .leases
                            .lock()
                            .unwrap()
                            .insert(record.id.clone(), lease);
                    }
                    _ => {
                        tracing::warn!(sandbox = %record.id, uid, "localbox: sandbox uid is held elsewhere or outside the range; marked stopped");
                        record.state = SandboxState::Stopped;
                    }
                },
                // Created without isolation: running it isolated now would run it as root.
                (Some(_), None) => {
                    tracing::warn!(sandbox = %record.id, "localbox: sandbox has no uid of its own; marked stopped");
                    record.state = SandboxState::Stopped;
                }
                (None, _) => {}
            }
            let sandbox = Sandbox {
                id: record.id.clone(),
                dir,
                creds,
                record: Mutex::new(record.clone()),
                procs: Mutex::new(Default::default()),
            };
            self.inner
                .sandboxes
                .lock()
                .unwrap()
                .insert(record.id, Arc::new(sandbox));
        }
        Ok(())
    }

    /// Starts the expiry reaper once a Tokio runtime is available.
    fn ensure_reaper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.reaper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.inner.config.reaper_interval;
        handle.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { break };
                let engine = Engine { inner };
                let now = now_ms();
                let expired: Vec<String> = engine
                    .sandboxes()
                    .iter()
                    .filter(|s| s.record.lock().unwrap().expires_at_ms.is_some_and(|t| t <= now))
                    .map(|s| s.id.clone())
                    .collect();
                for id in expired {
                    match engine.destroy(&id).await {
                        Ok(()) => tracing::info!(sandbox = %id, "localbox: expired sandbox destroyed"),
                        Err(e) if e.code == ErrorCode::NotFound => {}
                        Err(e) => tracing::warn!(sandbox = %id, "localbox: destroying expired sandbox: {e}"),
                    }
                }
            }
        });
    }
}

/// [`process::pump`] for a command [`Engine::spawn_tracked`] started in `sandbox`: once the
/// command is reaped its process group is forgotten (spawn_tracked recorded it).
async fn pump_tracked<S: process::OutputSink>(
    sandbox: Arc<Sandbox>,
    spawned: Spawned,
    sink: &mut S,
    timeout: Option<Duration>,
    stdin: Option<Vec<u8>>,
) -> ExecOutput {
    let pgid = spawned.pgid;
    process::pump(spawned, sink, timeout, stdin, move || {
        sandbox.procs.lock().unwrap().live_groups.remove(&pgid);
    })
    .await
}

/// Checks that a command's working directory exists (confined, so no symlink leads out).
fn check_dir(sandbox: &Sandbox, cwd: &Confined) -> Result<()> {
    let root = open_root(&sandbox.mount_dir(cwd.mount))
        .map_err(|e| Error::internal(format!("{}: {e}", cwd.view)))?;
    open_beneath(root.as_fd(), &cwd.rel, O_PATH | libc::O_DIRECTORY, 0).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
                Error::invalid(format!("cwd {}: no such directory", cwd.view))
            }
            _ => Error::from_io(e, &format!("cwd {}", cwd.view)),
        }
    })?;
    Ok(())
}

/// Runs blocking filesystem/syscall work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker failed: {e}")))?
}
