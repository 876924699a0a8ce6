//! Engine configuration.

use std::path::PathBuf;
use std::time::Duration;

/// How commands are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Each command runs under bubblewrap (user, pid, ipc, uts, mount namespaces) as the
    /// sandbox's own unprivileged uid. Needs Linux and the `bwrap` binary.
    Bubblewrap,
    /// No isolation: commands run directly as the engine's user with their working directory in
    /// the sandbox (an explicit operator choice, like OpenHands' CLI runtime).
    None,
}

/// Network namespace policy for sandboxed commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Share the host network: a server on port P inside is at `127.0.0.1:P`.
    #[default]
    Shared,
    /// A private, empty network namespace (`--unshare-net`; bubblewrap only).
    None,
}

/// Resource limits applied with `setrlimit` to every command (soft = hard).
///
/// `None` leaves the engine's own limit in place. `nproc` only holds when commands run under a
/// per-sandbox uid (engine running as root with bubblewrap): the kernel counts processes per
/// real uid and exempts root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// RLIMIT_NPROC: processes (and threads) of the sandbox uid. Default 256.
    pub nproc: Option<u64>,
    /// RLIMIT_FSIZE: largest file a command may write, in bytes. Default 8 GiB.
    pub fsize_bytes: Option<u64>,
    /// RLIMIT_NOFILE: open files per process. Default 4096.
    pub nofile: Option<u64>,
    /// RLIMIT_CPU: CPU seconds per process. Default unlimited.
    pub cpu_secs: Option<u64>,
    /// RLIMIT_AS: address space per process, in bytes. Default unlimited (JIT runtimes reserve
    /// large virtual ranges, so a low value breaks node/java).
    pub address_space_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nproc: Some(256),
            fsize_bytes: Some(8 << 30),
            nofile: Some(4096),
            cpu_secs: None,
            address_space_bytes: None,
        }
    }
}

/// Configuration of an [`Engine`](crate::Engine).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory holding one subdirectory per sandbox. Created if missing. With per-sandbox
    /// uids, every ancestor must be searchable by others (`o+x`), because bubblewrap runs as the
    /// sandbox uid and opens the workspace by path.
    pub root_dir: PathBuf,
    pub isolation: Isolation,
    /// First uid/gid of the range reserved for sandboxes.
    pub uid_base: u32,
    /// Number of ids in the range (= max live sandboxes per machine).
    pub uid_count: u32,
    /// Directory of per-uid lock files shared by all engines on the machine, so two engines
    /// (e.g. parallel tests, emulators) never hand out the same uid. `None`: `/run/localbox/uids`.
    pub uid_lock_dir: Option<PathBuf>,
    pub limits: Limits,
    pub network: Network,
    /// Path of `bwrap`; `None` searches `PATH` and the usual locations.
    pub bwrap_path: Option<PathBuf>,
    /// Extra host directories bound read-only at the same path inside the sandbox (e.g. `/opt`).
    pub extra_ro_binds: Vec<PathBuf>,
    /// In-memory output kept per background-process stream (oldest bytes are dropped beyond it).
    pub process_output_cap: usize,
    /// Largest file `read_file` returns.
    pub max_read_bytes: u64,
    /// How often expired sandboxes are looked for.
    pub reaper_interval: Duration,
}

impl EngineConfig {
    /// Defaults for everything but the root directory: bubblewrap, uids from 200 000, shared network.
    pub fn new(root_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            root_dir: root_dir.into(),
            isolation: Isolation::Bubblewrap,
            uid_base: 200_000,
            uid_count: 10_000,
            uid_lock_dir: None,
            limits: Limits::default(),
            network: Network::Shared,
            bwrap_path: None,
            extra_ro_binds: Vec::new(),
            process_output_cap: 8 << 20,
            max_read_bytes: 64 << 20,
            reaper_interval: Duration::from_secs(1),
        }
    }
}
