//! Typed handles: a [`Provider`] creates and lists sandboxes; a [`Sandbox`] drives one.
//!
//! Every call picks up the current plugin version (hot reload) and the latest token from the
//! registry, and stores a token the plugin refreshed. Idempotent calls are retried per the
//! host's [`RetryPolicy`](crate::retry::RetryPolicy); `create` only when the plugin declares that
//! it forwards the idempotency key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::Store;

use crate::bindings::types::{
    Capabilities, Check, Endpoint, ExecRequest, ExecResult, FileStat, OutputChunk, PluginInfo,
    ProcessInfo, SandboxRef, SandboxState, Spec,
};
use crate::error::{Error, ProviderError};
use crate::host::{Host, RuntimeStatus};
use crate::plugin::exports::Guest;
use crate::plugin::state::{CallState, OutputSink};
use crate::plugin::CallFuture;
use crate::registry::{now_ms, SessionRecord};

pub use crate::bindings::types::Sandbox as SandboxInfo;

/// Extra wall-clock time an `exec` gets beyond its command timeout.
const EXEC_GRACE: Duration = Duration::from_secs(30);

/// A loaded provider plugin.
#[derive(Clone)]
pub struct Provider {
    pub(crate) host: Host,
    pub(crate) name: String,
}

/// The lowercase name of a state, as the registry, the CLI and JSON use it.
pub fn state_name(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Starting => "starting",
        SandboxState::Running => "running",
        SandboxState::Paused => "paused",
        SandboxState::Stopped => "stopped",
        SandboxState::Error => "error",
        SandboxState::Unknown => "unknown",
    }
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the plugin said about itself at load time.
    pub fn info(&self) -> Result<PluginInfo, Error> {
        Ok(self.host.plugin(&self.name)?.info.clone())
    }

    /// Runs a call that is not about one sandbox.
    async fn invoke<R: Send + 'static>(
        &self,
        call: &'static str,
        idempotent: bool,
        f: impl for<'a> Fn(
                &'a Guest,
                &'a mut Store<CallState>,
            ) -> CallFuture<'a, Result<R, ProviderError>>
            + Send
            + Sync
            + 'static,
    ) -> Result<R, Error> {
        let f = Arc::new(f);
        let policy = self.host.retry_policy(idempotent);
        policy
            .run(call, || async {
                let plugin = self.host.plugin(&self.name)?;
                let f = f.clone();
                let (result, _) = plugin
                    .call(call, None, Duration::ZERO, move |g, s| f(g, s))
                    .await?;
                result.map_err(|error| Error::Provider {
                    plugin: self.name.clone(),
                    call,
                    error,
                })
            })
            .await
    }

    /// Checks credentials and settings without creating anything.
    pub async fn preflight(&self) -> Result<Vec<Check>, Error> {
        self.invoke("preflight", true, move |g, s| Box::pin(g.call_preflight(s)))
            .await
    }

    /// Creates a sandbox and records it in the registry.
    pub async fn create(&self, spec: Spec) -> Result<Sandbox, Error> {
        let plugin = self.host.plugin(&self.name)?;
        let idempotent = plugin
            .info
            .capabilities
            .contains(Capabilities::IDEMPOTENT_CREATE);
        drop(plugin);
        let key = uuid::Uuid::new_v4().to_string();
        self.host.emit_status(
            &self.name,
            None,
            RuntimeStatus::Starting,
            "creating sandbox",
        );
        let created = self
            .invoke("create", idempotent, move |g, s| {
                let (spec, key) = (spec.clone(), key.clone());
                Box::pin(async move { g.call_create(s, &spec, &key).await })
            })
            .await;
        let info = match created {
            Ok(info) => info,
            Err(e) => {
                self.host
                    .emit_status(&self.name, None, RuntimeStatus::Error, e.to_string());
                return Err(e);
            }
        };
        self.host.emit_status(
            &self.name,
            Some(&info.id),
            RuntimeStatus::Started,
            "sandbox created",
        );
        let sandbox = self.record(&info, "created")?;
        self.host.emit_status(
            &self.name,
            Some(&info.id),
            RuntimeStatus::Ready,
            "sandbox ready",
        );
        Ok(sandbox)
    }

    /// Registers a sandbox that exists on the provider (created elsewhere, or found by `list`).
    pub async fn attach(&self, id: &str) -> Result<Sandbox, Error> {
        let sref = SandboxRef {
            id: id.to_string(),
            token: None,
        };
        let info = self
            .invoke("get", true, move |g, s| {
                let sref = sref.clone();
                Box::pin(async move { g.call_get(s, &sref).await })
            })
            .await?;
        self.record(&info, "attached")
    }

    fn record(&self, info: &SandboxInfo, detail: &str) -> Result<Sandbox, Error> {
        let now = now_ms();
        let store = &self.host.0.store;
        store.put(&SessionRecord {
            provider: self.name.clone(),
            sandbox_id: info.id.clone(),
            name: info.name.clone(),
            token: info.token.clone(),
            labels: info.labels.iter().cloned().collect(),
            workdir: info.workdir.clone(),
            image: info.image.clone(),
            state: state_name(info.state).to_string(),
            owner: None,
            created_at_ms: info.created_at_ms.map_or(now, |t| t as i64),
            updated_at_ms: now,
        })?;
        store.set_state(&self.name, &info.id, state_name(info.state), detail)?;
        Ok(Sandbox {
            host: self.host.clone(),
            provider: self.name.clone(),
            id: info.id.clone(),
        })
    }

    /// Sandboxes on the provider carrying all `labels` (asks the provider, not the registry).
    pub async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<SandboxInfo>, Error> {
        let pairs: Vec<(String, String)> = labels.clone().into_iter().collect();
        self.invoke("list", true, move |g, s| {
            let pairs = pairs.clone();
            Box::pin(async move { g.call_list(s, &pairs).await })
        })
        .await
    }
}

/// One sandbox known to the registry.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) host: Host,
    pub(crate) provider: String,
    pub(crate) id: String,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sandbox({}:{})", self.provider, self.id)
    }
}

impl Sandbox {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The registry's record (token included).
    pub fn record(&self) -> Result<SessionRecord, Error> {
        self.host
            .0
            .store
            .get(&self.provider, &self.id)?
            .ok_or_else(|| Error::UnknownSandbox(self.id.clone()))
    }

    /// Runs a sandbox-scoped call with the latest token; persists a refreshed one.
    async fn invoke<R: Send + 'static>(
        &self,
        call: &'static str,
        idempotent: bool,
        sink: Option<OutputSink>,
        extra_time: Duration,
        f: impl for<'a> Fn(
                &'a Guest,
                &'a mut Store<CallState>,
                SandboxRef,
            ) -> CallFuture<'a, Result<R, ProviderError>>
            + Send
            + Sync
            + 'static,
    ) -> Result<R, Error> {
        let f = Arc::new(f);
        let policy = self.host.retry_policy(idempotent);
        let sink = Mutex::new(sink);
        let result = policy
            .run(call, || async {
                let plugin = self.host.plugin(&self.provider)?;
                let sref = SandboxRef {
                    id: self.id.clone(),
                    token: self
                        .host
                        .0
                        .store
                        .token(&self.provider, &self.id)?
                        .ok_or_else(|| Error::UnknownSandbox(self.id.clone()))?,
                };
                let sink = sink.lock().unwrap().take();
                let f = f.clone();
                let (result, refreshed) = plugin
                    .call(call, sink, extra_time, move |g, s| f(g, s, sref))
                    .await?;
                if let Some(token) = refreshed {
                    self.host
                        .0
                        .store
                        .set_token(&self.provider, &self.id, &token)?;
                }
                result.map_err(|error| Error::Provider {
                    plugin: self.provider.clone(),
                    call,
                    error,
                })
            })
            .await;
        if let Err(Error::Provider {
            error: ProviderError::Unavailable(m),
            ..
        }) = &result
        {
            self.host.emit_status(
                &self.provider,
                Some(&self.id),
                RuntimeStatus::Disconnected,
                m.clone(),
            );
        }
        result
    }

    /// The provider's current view of the sandbox; updates the registry's state.
    pub async fn info(&self) -> Result<SandboxInfo, Error> {
        let info = self
            .invoke("get", true, None, Duration::ZERO, move |g, s, r| {
                Box::pin(async move { g.call_get(s, &r).await })
            })
            .await?;
        let state = state_name(info.state);
        if self.record()?.state != state {
            self.host
                .0
                .store
                .set_state(&self.provider, &self.id, state, "observed")?;
        }
        Ok(info)
    }

    /// Runs a command to completion. `on_output` receives output while it runs.
    pub async fn exec(
        &self,
        request: ExecRequest,
        on_output: Option<OutputSink>,
    ) -> Result<ExecResult, Error> {
        let extra = request
            .timeout_ms
            .map_or(Duration::ZERO, |ms| Duration::from_millis(ms) + EXEC_GRACE);
        self.invoke("exec", false, on_output, extra, move |g, s, r| {
            let request = request.clone();
            Box::pin(async move { g.call_exec(s, &r, &request).await })
        })
        .await
    }

    /// Starts a command in the background.
    pub async fn start_process(&self, request: ExecRequest) -> Result<ProcessInfo, Error> {
        self.invoke(
            "start-process",
            false,
            None,
            Duration::ZERO,
            move |g, s, r| {
                let request = request.clone();
                Box::pin(async move { g.call_start_process(s, &r, &request).await })
            },
        )
        .await
    }

    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, Error> {
        self.invoke(
            "list-processes",
            true,
            None,
            Duration::ZERO,
            move |g, s, r| Box::pin(async move { g.call_list_processes(s, &r).await }),
        )
        .await
    }

    pub async fn process_status(&self, pid: &str) -> Result<ProcessInfo, Error> {
        let pid = pid.to_string();
        self.invoke(
            "process-status",
            true,
            None,
            Duration::ZERO,
            move |g, s, r| {
                let pid = pid.clone();
                Box::pin(async move { g.call_process_status(s, &r, &pid).await })
            },
        )
        .await
    }

    /// Output of a background process from the given offsets on.
    pub async fn process_output(
        &self,
        pid: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<OutputChunk, Error> {
        let pid = pid.to_string();
        self.invoke(
            "process-output",
            true,
            None,
            Duration::ZERO,
            move |g, s, r| {
                let pid = pid.clone();
                Box::pin(async move {
                    g.call_process_output(s, &r, &pid, stdout_offset, stderr_offset)
                        .await
                })
            },
        )
        .await
    }

    pub async fn signal_process(&self, pid: &str, signal: i32) -> Result<(), Error> {
        let pid = pid.to_string();
        self.invoke(
            "signal-process",
            false,
            None,
            Duration::ZERO,
            move |g, s, r| {
                let pid = pid.clone();
                Box::pin(async move { g.call_signal_process(s, &r, &pid, signal).await })
            },
        )
        .await
    }

    fn file_cap(&self) -> Result<u64, Error> {
        Ok(self.host.plugin(&self.provider)?.limits.file_bytes)
    }

    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let path = path.to_string();
        let data = self
            .invoke("read-file", true, None, Duration::ZERO, move |g, s, r| {
                let path = path.clone();
                Box::pin(async move { g.call_read_file(s, &r, &path).await })
            })
            .await?;
        let cap = self.file_cap()?;
        if data.len() as u64 > cap {
            return Err(Error::InvalidArgument(format!(
                "file is larger than the {} MiB file limit",
                cap >> 20
            )));
        }
        Ok(data)
    }

    pub async fn write_file(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<(), Error> {
        let cap = self.file_cap()?;
        if data.len() as u64 > cap {
            return Err(Error::InvalidArgument(format!(
                "{} bytes is more than the {} MiB file limit",
                data.len(),
                cap >> 20
            )));
        }
        let path = path.to_string();
        let data = std::sync::Arc::new(data);
        self.invoke("write-file", true, None, Duration::ZERO, move |g, s, r| {
            let (path, data) = (path.clone(), data.clone());
            Box::pin(async move { g.call_write_file(s, &r, &path, &data, mode).await })
        })
        .await
    }

    pub async fn list_dir(&self, path: &str) -> Result<Vec<FileStat>, Error> {
        let path = path.to_string();
        self.invoke("list-dir", true, None, Duration::ZERO, move |g, s, r| {
            let path = path.clone();
            Box::pin(async move { g.call_list_dir(s, &r, &path).await })
        })
        .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat, Error> {
        let path = path.to_string();
        self.invoke("stat", true, None, Duration::ZERO, move |g, s, r| {
            let path = path.clone();
            Box::pin(async move { g.call_stat(s, &r, &path).await })
        })
        .await
    }

    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), Error> {
        let path = path.to_string();
        self.invoke("remove", true, None, Duration::ZERO, move |g, s, r| {
            let path = path.clone();
            Box::pin(async move { g.call_remove(s, &r, &path, recursive).await })
        })
        .await
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), Error> {
        let path = path.to_string();
        self.invoke("mkdir", true, None, Duration::ZERO, move |g, s, r| {
            let path = path.clone();
            Box::pin(async move { g.call_mkdir(s, &r, &path, parents).await })
        })
        .await
    }

    /// A URL (and headers) that reaches `port` inside the sandbox.
    pub async fn port_url(&self, port: u16) -> Result<Endpoint, Error> {
        self.invoke("port-url", true, None, Duration::ZERO, move |g, s, r| {
            Box::pin(async move { g.call_port_url(s, &r, port).await })
        })
        .await
    }

    pub async fn pause(&self) -> Result<(), Error> {
        self.invoke("pause", true, None, Duration::ZERO, move |g, s, r| {
            Box::pin(async move { g.call_pause(s, &r).await })
        })
        .await?;
        self.host
            .0
            .store
            .set_state(&self.provider, &self.id, "paused", "paused")
    }

    pub async fn resume(&self) -> Result<SandboxInfo, Error> {
        let info = self
            .invoke("resume", true, None, Duration::ZERO, move |g, s, r| {
                Box::pin(async move { g.call_resume(s, &r).await })
            })
            .await?;
        if let Some(token) = &info.token {
            self.host
                .0
                .store
                .set_token(&self.provider, &self.id, token)?;
        }
        self.host
            .0
            .store
            .set_state(&self.provider, &self.id, state_name(info.state), "resumed")?;
        Ok(info)
    }

    /// Seconds from now until the provider may stop the sandbox.
    pub async fn set_timeout(&self, seconds: u64) -> Result<(), Error> {
        self.invoke("set-timeout", true, None, Duration::ZERO, move |g, s, r| {
            Box::pin(async move { g.call_set_timeout(s, &r, seconds).await })
        })
        .await
    }

    /// Destroys the sandbox and forgets it. A sandbox the provider no longer knows is forgotten too.
    pub async fn destroy(&self) -> Result<(), Error> {
        match self
            .invoke("destroy", true, None, Duration::ZERO, move |g, s, r| {
                Box::pin(async move { g.call_destroy(s, &r).await })
            })
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        self.host.emit_status(
            &self.provider,
            Some(&self.id),
            RuntimeStatus::Disconnected,
            "destroyed",
        );
        self.host.0.store.remove(&self.provider, &self.id)
    }
}
