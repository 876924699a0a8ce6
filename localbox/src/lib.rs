//! localbox — the local sandbox engine of sandbox-host, plus its small HTTP API.
//!
//! A sandbox is a directory `<root_dir>/<id>/` with a `workspace/` (seen as `/workspace`, the
//! default working directory) and a private `tmp/` (seen as `/tmp`). Under
//! [`Isolation::Bubblewrap`] every command runs as the sandbox's own unprivileged uid, with
//! rlimits, inside bubblewrap's user/pid/ipc/uts/mount namespaces where the system directories
//! are read-only; file operations are confined to `/workspace` and `/tmp` with
//! `openat2(RESOLVE_BENEATH)`.
//!
//! ```no_run
//! # async fn demo() -> localbox::Result<()> {
//! use localbox::{Engine, EngineConfig, ExecRequest, SandboxSpec};
//! let engine = Engine::new(EngineConfig::new("/var/lib/localbox"))?;
//! let sbx = engine.create(SandboxSpec::default()).await?;
//! let out = engine.exec(&sbx.id, ExecRequest::shell("echo hi")).await?;
//! assert_eq!(out.stdout_tail, b"hi\n");
//! engine.destroy(&sbx.id).await?;
//! # Ok(()) }
//! ```
//!
//! The HTTP API ([`Server`], [`serve`], [`run_standalone`]) is described in `API.md`.

mod api;
mod background;
mod config;
mod confine;
mod engine;
mod error;
mod files;
mod isolation;
mod process;
mod sandbox;
mod server;
mod signals;
mod spawn;
mod uids;

pub use background::{ProcessInfo, ProcessOutput, MAX_OUTPUT_PER_POLL};
pub use config::{EngineConfig, Isolation, Limits, Network};
pub use engine::{Activity, Engine};
pub use error::{Error, ErrorCode, Result};
pub use files::{FileKind, FileStat};
pub use isolation::find_bwrap;
pub use process::{
    CommandSpec, ExecEvent, ExecOutput, ExecRequest, ExecStream, StdinPipe, Stream, TAIL_BYTES,
    TIMEOUT_EXIT_CODE,
};
pub use sandbox::{SandboxInfo, SandboxSpec, SandboxState};
pub use server::{run_standalone, serve, serve_with_shutdown, Server, ServerConfig};
