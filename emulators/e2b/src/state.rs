//! The emulator's own bookkeeping on top of localbox: E2B ids and tokens, metadata, deadlines,
//! idempotency keys and envd processes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator_common::Options;
use tokio::sync::Notify;

/// Default sandbox lifetime in seconds (the v2 API's default when `timeout` is left out).
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// The emulator: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Emulator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub engine: localbox::Engine,
    pub sandboxes: Mutex<HashMap<String, SandboxMeta>>,
    /// `Idempotency-Key` → the sandbox id it created.
    pub idempotency: Mutex<HashMap<String, String>>,
    /// Create requests that made a sandbox (retries answered from the key are not counted).
    pub creates: AtomicU64,
    /// envd processes per E2B sandbox id.
    pub procs: Mutex<HashMap<String, Procs>>,
    /// Client for proxied port traffic.
    pub http: crate::proxy::Client,
    /// Serializes creates so an idempotency key is checked and claimed atomically.
    pub create_lock: tokio::sync::Mutex<()>,
    /// Filesystem watchers by id, with the sandbox each watches.
    pub watchers: Mutex<HashMap<String, crate::watch::Registered>>,
}

/// What the emulator remembers about one sandbox beyond localbox's record.
#[derive(Clone, Debug)]
pub struct SandboxMeta {
    /// E2B id: 20 characters of `[a-z0-9]`.
    pub id: String,
    /// The localbox sandbox behind it.
    pub local_id: String,
    pub template: String,
    pub client_id: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub access_token: String,
    pub started_at_ms: u64,
    /// When the sandbox will be killed (while running).
    pub end_at_ms: u64,
    pub paused: bool,
}

/// envd processes of one sandbox, by E2B pid.
#[derive(Default)]
pub(crate) struct Procs {
    pub next_pid: u32,
    pub by_pid: BTreeMap<u32, Arc<Proc>>,
}

/// One envd process.
pub(crate) struct Proc {
    pub pid: u32,
    pub tag: Option<String>,
    /// The `ProcessConfig` JSON it was started with (echoed by `List`).
    pub config: serde_json::Value,
    pub state: Mutex<ProcState>,
    /// Signalled when the process is spawned (or its spawn failed).
    pub spawned: Notify,
    pub timeout: Option<Duration>,
    /// Its stdin while open (started with `stdin: true`; `CloseStdin` drops it).
    pub stdin: tokio::sync::Mutex<Option<localbox::StdinPipe>>,
}

pub(crate) struct ProcState {
    /// localbox's background-process id, once spawned.
    pub local_pid: Option<String>,
    pub started: Option<Instant>,
    /// The spawn failed (reported to the streams waiting for it).
    pub failed: Option<String>,
}

impl Emulator {
    /// A fresh emulator over the options' engine.
    pub fn new(opts: Options) -> Emulator {
        Emulator {
            inner: Arc::new(Inner {
                engine: opts.engine,
                sandboxes: Mutex::new(HashMap::new()),
                idempotency: Mutex::new(HashMap::new()),
                creates: AtomicU64::new(0),
                procs: Mutex::new(HashMap::new()),
                http: crate::proxy::client(),
                create_lock: tokio::sync::Mutex::new(()),
                watchers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How many sandboxes create requests made (retries of a known idempotency key excluded).
    pub fn creates(&self) -> u64 {
        self.inner.creates.load(Ordering::SeqCst)
    }

    /// Live sandboxes (running or paused).
    pub fn sandboxes(&self) -> Vec<SandboxMeta> {
        let ids: Vec<String> = self
            .inner
            .sandboxes
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut out: Vec<SandboxMeta> = ids.iter().filter_map(|id| self.live(id)).collect();
        out.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        out
    }

    /// The sandbox if it still lives (the localbox reaper destroys expired ones; they are
    /// forgotten here on first sight).
    pub(crate) fn live(&self, id: &str) -> Option<SandboxMeta> {
        let meta = self.inner.sandboxes.lock().unwrap().get(id).cloned()?;
        if self.inner.engine.get(&meta.local_id).is_ok() {
            return Some(meta);
        }
        self.forget(id);
        None
    }

    pub(crate) fn forget(&self, id: &str) {
        self.inner.sandboxes.lock().unwrap().remove(id);
        self.inner.procs.lock().unwrap().remove(id);
        self.inner
            .watchers
            .lock()
            .unwrap()
            .retain(|_, (of, _)| of != id);
    }

    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut SandboxMeta)) -> Option<SandboxMeta> {
        let mut all = self.inner.sandboxes.lock().unwrap();
        let m = all.get_mut(id)?;
        f(m);
        Some(m.clone())
    }

    pub(crate) fn engine(&self) -> &localbox::Engine {
        &self.inner.engine
    }
}
