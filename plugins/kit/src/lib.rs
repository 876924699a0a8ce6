//! Guest kit for sandbox-host provider plugins (`sandbox:provider@0.1.0`, world
//! `provider-plugin`, built for `wasm32-wasip2`).
//!
//! It gives a plugin:
//! - the contract's types ([`Spec`], [`Sandbox`], [`Error`], ...) and the [`Plugin`] trait, whose
//!   calls all default to `unsupported`, exported with [`export!`];
//! - a blocking HTTP client over `wasi:http` ([`http::Request`], [`http::Response`]) whose
//!   failures are already the contract's [`Error`];
//! - the host's services: [`setting`], [`require_setting`], [`emit_stdout`], [`info!`] & co.,
//!   [`refresh_token`], plus clocks ([`now_ms`], [`sleep`]) and [`random_bytes`];
//! - pure helpers: [`url`], [`quote_argv`], [`b64_encode`], [`Tail`], [`ExecOutput`].
//!
//! # A minimal plugin
//!
//! ```no_run
//! use kit::http::Request;
//! use kit::{Capabilities, Error, PluginInfo, Sandbox, SandboxRef, SandboxState, Spec};
//!
//! struct Tiny;
//!
//! impl kit::Plugin for Tiny {
//!     fn describe() -> PluginInfo {
//!         PluginInfo {
//!             name: "tiny".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             contract_version: kit::CONTRACT_VERSION.into(),
//!             description: "A tiny example".into(),
//!             capabilities: Capabilities::empty(),
//!             settings: vec![kit::setting_spec("base-url", true, None, "API base URL")],
//!             credentials: vec![kit::credential("api-key", "authorization", "Bearer {}",
//!                 &["https://api.tiny.dev"], "Tiny API key")],
//!             hosts: vec!["https://api.tiny.dev".into()],
//!             options: vec![],
//!         }
//!     }
//!
//!     fn get(sandbox: SandboxRef) -> Result<Sandbox, Error> {
//!         #[derive(serde::Deserialize)]
//!         struct Box_ { id: String, state: String }
//!         let base = kit::require_setting("base-url")?;
//!         let b: Box_ = Request::get(kit::url(&base, &["boxes", &sandbox.id])).send_json()?;
//!         Ok(Sandbox {
//!             id: b.id,
//!             name: None,
//!             state: if b.state == "up" { SandboxState::Running } else { SandboxState::Unknown },
//!             workdir: "/home/user".into(),
//!             labels: vec![],
//!             image: None,
//!             created_at_ms: None,
//!             token: sandbox.token,
//!         })
//!     }
//!     // create, exec, ... : every call not written here answers `unsupported`.
//! }
//!
//! kit::export!(Tiny);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the artifact is
//! `target/wasm32-wasip2/release/<lib name>.wasm`.

use std::marker::PhantomData;
use std::time::Duration;

/// The bindings generated from `wit/` (the contract and the WASI interfaces it imports).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "sandbox:provider/provider-plugin",
        generate_all,
        // wit-bindgen 0.46's WIT parser needs this gate open to resolve the vendored WASI 0.2.12
        // `wasi:cli` world (it imports the unstable `wasi:clocks/timezone`); the world itself
        // does not import it.
        features: ["clocks-timezone"],
        pub_export_macro: true,
    });
}

pub mod connect;
pub mod error;
pub mod grpc;
pub mod http;
pub mod multipart;
pub mod util;

/// The contract's types (`sandbox:provider/types`).
pub use bindings::sandbox::provider::types;
pub use types::*;

pub use error::{
    conflict, error_from_status, forbidden, input_refused, invalid_argument, not_found, provider,
    quota_exceeded, rate_limited, timeout, unauthorized, unavailable, unsupported, Result,
};
pub use util::{
    b64_decode, b64_encode, command_argv, command_line, encode_component, encode_path, quote,
    quote_argv, url, with_query, LineSplitter, Tail,
};

/// Re-exported so plugins can use the same versions.
pub use base64;
pub use serde_json;

use bindings::exports::sandbox::provider::provider::Guest;
use bindings::sandbox::provider::host;

/// The contract version this kit implements; put it in `plugin-info.contract-version`.
pub const CONTRACT_VERSION: &str = "0.1.0";

// ---------------------------------------------------------------------------------------------
// The plugin trait and its export.

/// The calls a provider plugin answers. Only [`describe`](Plugin::describe) is required; every
/// other call answers `unsupported` unless the plugin overrides it. Export the implementing type
/// with [`export!`].
#[allow(unused_variables)]
pub trait Plugin {
    /// Name, version, capabilities, settings, credential bindings and hosts. Must not do I/O.
    fn describe() -> PluginInfo;
    /// Checks credentials and settings without creating anything.
    fn preflight() -> Result<Vec<Check>> {
        Err(unsupported("preflight"))
    }
    /// Creates a sandbox; forward `idempotency_key` where the provider takes one.
    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        Err(unsupported("create"))
    }
    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        Err(unsupported("get"))
    }
    /// Sandboxes carrying all the given labels (all when empty).
    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        Err(unsupported("list"))
    }
    fn pause(sandbox: SandboxRef) -> Result<()> {
        Err(unsupported("pause"))
    }
    fn resume(sandbox: SandboxRef) -> Result<Sandbox> {
        Err(unsupported("resume"))
    }
    fn set_timeout(sandbox: SandboxRef, seconds: u64) -> Result<()> {
        Err(unsupported("set-timeout"))
    }
    fn destroy(sandbox: SandboxRef) -> Result<()> {
        Err(unsupported("destroy"))
    }
    /// Runs a command to completion, streaming output with [`emit_stdout`]/[`emit_stderr`]
    /// (or an [`ExecOutput`]).
    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        Err(unsupported("exec"))
    }
    fn start_process(sandbox: SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
        Err(unsupported("start-process"))
    }
    fn list_processes(sandbox: SandboxRef) -> Result<Vec<ProcessInfo>> {
        Err(unsupported("list-processes"))
    }
    fn process_status(sandbox: SandboxRef, pid: String) -> Result<ProcessInfo> {
        Err(unsupported("process-status"))
    }
    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<OutputChunk> {
        Err(unsupported("process-output"))
    }
    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        Err(unsupported("signal-process"))
    }
    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        Err(unsupported("read-file"))
    }
    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        Err(unsupported("write-file"))
    }
    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<FileStat>> {
        Err(unsupported("list-dir"))
    }
    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        Err(unsupported("stat"))
    }
    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        Err(unsupported("remove"))
    }
    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        Err(unsupported("mkdir"))
    }
    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        Err(unsupported("port-url"))
    }
}

/// Bridges a [`Plugin`] to the generated `Guest` trait. Used by [`export!`].
#[doc(hidden)]
pub struct Adapter<T>(PhantomData<T>);

impl<T: Plugin> Guest for Adapter<T> {
    fn describe() -> PluginInfo {
        T::describe()
    }
    fn preflight() -> Result<Vec<Check>> {
        T::preflight()
    }
    fn create(spec: Spec, idempotency_key: String) -> Result<Sandbox> {
        T::create(spec, idempotency_key)
    }
    fn get(sandbox: SandboxRef) -> Result<Sandbox> {
        T::get(sandbox)
    }
    fn list(labels: Pairs) -> Result<Vec<Sandbox>> {
        T::list(labels)
    }
    fn pause(sandbox: SandboxRef) -> Result<()> {
        T::pause(sandbox)
    }
    fn resume(sandbox: SandboxRef) -> Result<Sandbox> {
        T::resume(sandbox)
    }
    fn set_timeout(sandbox: SandboxRef, seconds: u64) -> Result<()> {
        T::set_timeout(sandbox, seconds)
    }
    fn destroy(sandbox: SandboxRef) -> Result<()> {
        T::destroy(sandbox)
    }
    fn exec(sandbox: SandboxRef, request: ExecRequest) -> Result<ExecResult> {
        T::exec(sandbox, request)
    }
    fn start_process(sandbox: SandboxRef, request: ExecRequest) -> Result<ProcessInfo> {
        T::start_process(sandbox, request)
    }
    fn list_processes(sandbox: SandboxRef) -> Result<Vec<ProcessInfo>> {
        T::list_processes(sandbox)
    }
    fn process_status(sandbox: SandboxRef, pid: String) -> Result<ProcessInfo> {
        T::process_status(sandbox, pid)
    }
    fn process_output(
        sandbox: SandboxRef,
        pid: String,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<OutputChunk> {
        T::process_output(sandbox, pid, stdout_offset, stderr_offset)
    }
    fn signal_process(sandbox: SandboxRef, pid: String, signal: i32) -> Result<()> {
        T::signal_process(sandbox, pid, signal)
    }
    fn read_file(sandbox: SandboxRef, path: String) -> Result<Vec<u8>> {
        T::read_file(sandbox, path)
    }
    fn write_file(
        sandbox: SandboxRef,
        path: String,
        data: Vec<u8>,
        mode: Option<u32>,
    ) -> Result<()> {
        T::write_file(sandbox, path, data, mode)
    }
    fn list_dir(sandbox: SandboxRef, path: String) -> Result<Vec<FileStat>> {
        T::list_dir(sandbox, path)
    }
    fn stat(sandbox: SandboxRef, path: String) -> Result<FileStat> {
        T::stat(sandbox, path)
    }
    fn remove(sandbox: SandboxRef, path: String, recursive: bool) -> Result<()> {
        T::remove(sandbox, path, recursive)
    }
    fn mkdir(sandbox: SandboxRef, path: String, parents: bool) -> Result<()> {
        T::mkdir(sandbox, path, parents)
    }
    fn port_url(sandbox: SandboxRef, port: u16) -> Result<Endpoint> {
        T::port_url(sandbox, port)
    }
}

/// Exports a [`Plugin`] implementation as the component's `sandbox:provider/provider`.
/// Use it once per plugin crate: `kit::export!(MyProvider);`.
///
/// (To implement the generated `Guest` trait directly instead, use
/// `kit::bindings::export!(MyType with_types_in kit::bindings);`.)
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        type __KitExportedPlugin = $crate::Adapter<$plugin>;
        $crate::bindings::export!(__KitExportedPlugin with_types_in $crate::bindings);
    };
}

// ---------------------------------------------------------------------------------------------
// Describe helpers.

/// A [`SettingSpec`].
pub fn setting_spec(name: &str, required: bool, default: Option<&str>, doc: &str) -> SettingSpec {
    SettingSpec {
        name: name.into(),
        required,
        default: default.map(Into::into),
        doc: doc.into(),
    }
}

/// A [`CredentialBinding`]: the host sets `header` to `format` (`{}` = the secret named
/// `secret`) on requests to `hosts`.
pub fn credential(
    secret: &str,
    header: &str,
    format: &str,
    hosts: &[&str],
    doc: &str,
) -> CredentialBinding {
    CredentialBinding {
        secret: secret.into(),
        header: header.into(),
        format: format.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        doc: doc.into(),
    }
}

/// A passing or failing preflight [`Check`].
pub fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// The value of `key` in key-value pairs (first match).
pub fn pair<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// Host services.

/// A setting's value from the operator's configuration (or its declared default).
pub fn setting(name: &str) -> Option<String> {
    host::setting(name)
}

/// A setting that must be present and non-empty; otherwise `invalid-argument`.
pub fn require_setting(name: &str) -> Result<String> {
    match host::setting(name) {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(invalid_argument(format!(
            "setting `{name}` is required but not configured"
        ))),
    }
}

/// Streams output of the running `exec` to the caller.
pub fn emit(stream: OutputStream, data: &[u8]) {
    if !data.is_empty() {
        host::emit(stream, data);
    }
}
pub fn emit_stdout(data: &[u8]) {
    emit(OutputStream::Stdout, data)
}
pub fn emit_stderr(data: &[u8]) {
    emit(OutputStream::Stderr, data)
}

/// Replaces the token of the sandbox the current call is about (the host persists it).
pub fn refresh_token(token: &str) {
    host::refresh_token(token)
}

/// Writes to the host's log, tagged with the plugin's name. See also [`info!`] and friends.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message)
}

/// `kit::trace!("format {}", args)`: [`log`] at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Trace, &::std::format!($($arg)*)) };
}
/// `kit::debug!("format {}", args)`: [`log`] at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Debug, &::std::format!($($arg)*)) };
}
/// `kit::info!("format {}", args)`: [`log`] at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Info, &::std::format!($($arg)*)) };
}
/// `kit::warn!("format {}", args)`: [`log`] at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Warn, &::std::format!($($arg)*)) };
}
/// `kit::error!("format {}", args)`: [`log`] at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::LogLevel::Error, &::std::format!($($arg)*)) };
}

/// Collects an exec's output: every chunk is emitted to the caller at once and its tail kept
/// for the [`ExecResult`].
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Tail,
    pub stderr: Tail,
}

impl ExecOutput {
    /// Tails of [`util::DEFAULT_TAIL_BYTES`] each.
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_tail(bytes: usize) -> Self {
        ExecOutput {
            stdout: Tail::new(bytes),
            stderr: Tail::new(bytes),
        }
    }
    pub fn push(&mut self, stream: OutputStream, data: &[u8]) {
        emit(stream, data);
        match stream {
            OutputStream::Stdout => self.stdout.push(data),
            OutputStream::Stderr => self.stderr.push(data),
        }
    }
    pub fn stdout(&mut self, data: &[u8]) {
        self.push(OutputStream::Stdout, data)
    }
    pub fn stderr(&mut self, data: &[u8]) {
        self.push(OutputStream::Stderr, data)
    }
    pub fn finish(self, exit_code: i32, timed_out: bool) -> ExecResult {
        ExecResult {
            exit_code,
            timed_out,
            stdout_tail: self.stdout.into_vec(),
            stderr_tail: self.stderr.into_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
/// The contract's state for the lowercase names most APIs use (`running`, `paused`, …);
/// anything else is `unknown`.
pub fn sandbox_state(name: &str) -> SandboxState {
    match name {
        "starting" | "pending" | "creating" => SandboxState::Starting,
        "running" | "started" => SandboxState::Running,
        "paused" => SandboxState::Paused,
        "stopped" | "destroyed" => SandboxState::Stopped,
        "error" | "failed" => SandboxState::Error,
        _ => SandboxState::Unknown,
    }
}

// Clocks and randomness.

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    let t = bindings::wasi::clocks::wall_clock::now();
    t.seconds.saturating_mul(1000) + u64::from(t.nanoseconds / 1_000_000)
}

/// Monotonic clock in nanoseconds (for measuring durations).
pub fn monotonic_ns() -> u64 {
    bindings::wasi::clocks::monotonic_clock::now()
}

/// Blocks for `d` (e.g. between polls). The host's call timeout still applies.
pub fn sleep(d: Duration) {
    let ns = d.as_nanos().min(u64::MAX as u128) as u64;
    bindings::wasi::clocks::monotonic_clock::subscribe_duration(ns).block();
}

/// `n` cryptographically secure random bytes from the host.
pub fn random_bytes(n: usize) -> Vec<u8> {
    bindings::wasi::random::random::get_random_bytes(n as u64)
}

/// `n` random bytes as lowercase hex (`2n` characters): ids, request ids, UUID material.
pub fn random_hex(n: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * n);
    for b in random_bytes(n) {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}
