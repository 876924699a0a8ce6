//! The data of one call's Store: WASI contexts with nothing granted but HTTP, clocks and
//! randomness, the outbound hooks, the limiter, and what the host interface needs (settings,
//! the output sink, a refreshed token).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::IsTerminal;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::sandbox::provider::host::Host as HostImports;
use crate::bindings::types::{LogLevel, OutputStream};
use crate::outbound::{Egress, Hooks};

/// Receives `exec` output while the command runs.
pub type OutputSink = Box<dyn FnMut(OutputStream, &[u8]) + Send>;

pub struct CallState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    pub(crate) limiter: Limiter,
    pub(crate) cpu_ticks: u64,
    plugin: Arc<str>,
    settings: Arc<BTreeMap<String, String>>,
    sink: Option<OutputSink>,
    pub(crate) refreshed_token: Option<String>,
}

impl CallState {
    pub fn new(
        plugin: Arc<str>,
        egress: Arc<Egress>,
        settings: Arc<BTreeMap<String, String>>,
        memory_bytes: usize,
        sink: Option<OutputSink>,
    ) -> Self {
        // Defaults grant nothing: no env, args, preopens; sockets refused; name lookup off.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(LogStream {
                plugin: plugin.clone(),
                stream: "stdout",
            })
            .stderr(LogStream {
                plugin: plugin.clone(),
                stream: "stderr",
            })
            .build();
        CallState {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            hooks: Hooks(egress),
            limiter: Limiter {
                memory_bytes,
                memory_exceeded: false,
            },
            cpu_ticks: 0,
            plugin,
            settings,
            sink,
            refreshed_token: None,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Memory limit that remembers it was hit, so the error can say so instead of "trap".
pub struct Limiter {
    memory_bytes: usize,
    pub(crate) memory_exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit of {} MiB exceeded", self.memory_bytes >> 20);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        16
    }
    fn tables(&self) -> usize {
        16
    }
    fn memories(&self) -> usize {
        16
    }
}

const LOG_LINE_MAX: usize = 4096;

impl HostImports for CallState {
    async fn log(&mut self, level: LogLevel, message: String) {
        let mut message = message;
        if message.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
    }

    async fn emit(&mut self, stream: OutputStream, data: Vec<u8>) {
        if let Some(sink) = self.sink.as_mut() {
            sink(stream, &data);
        }
    }

    async fn setting(&mut self, name: String) -> Option<String> {
        self.settings.get(&name).cloned()
    }

    async fn refresh_token(&mut self, token: String) {
        self.refreshed_token = Some(token);
    }
}

impl crate::bindings::types::Host for CallState {}

/// Plugin stdout/stderr go to the host's log at debug level, line by line.
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LogWriter {
            plugin: self.plugin.clone(),
            stream: self.stream,
        })
    }
}

struct LogWriter {
    plugin: Arc<str>,
    stream: &'static str,
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let text = String::from_utf8_lossy(&buf[..buf.len().min(LOG_LINE_MAX)]);
        for line in text.lines().filter(|l| !l.is_empty()) {
            tracing::debug!(target: "plugin", plugin = &*self.plugin, stream = self.stream, "{line}");
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
