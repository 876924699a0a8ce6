//! The emulator's memory: sandbox records (the control plane's view, backed by localbox
//! sandboxes) with lazily applied state transitions, and the toolbox sessions.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator_common::Options;

use crate::sessions::Session;

/// One sandbox as the control plane knows it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub snapshot: Option<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub public: bool,
    pub target: String,
    pub cpu: i64,
    pub gpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub state: String,
    pub desired_state: String,
    pub error_reason: Option<String>,
    pub auto_stop: i64,
    pub auto_archive: i64,
    pub auto_delete: i64,
    pub created_at: String,
    pub updated_at: String,
    /// A transition under way: the state it reaches and when.
    pub pending: Option<(String, Instant)>,
    /// Monotonic creation order (list paging is stable by it).
    pub seq: u64,
}

/// Shared emulator state.
pub struct App {
    pub opts: Options,
    pub sandboxes: Mutex<BTreeMap<String, Sandbox>>,
    /// Toolbox sessions per (sandbox id, session id).
    pub sessions: Mutex<HashMap<(String, String), Arc<Session>>>,
    transition_ms: AtomicU64,
    seq: AtomicU64,
}

impl App {
    pub fn new(opts: Options) -> App {
        App {
            opts,
            sandboxes: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            transition_ms: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        }
    }

    pub fn set_transition_ms(&self, ms: u64) {
        self.transition_ms.store(ms, Ordering::Relaxed);
    }

    /// How long lifecycle transitions take (0: immediate).
    pub fn transition(&self) -> Duration {
        Duration::from_millis(self.transition_ms.load(Ordering::Relaxed))
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Applies due transitions; a sandbox whose `destroying` finished is removed.
    pub fn settle(&self) {
        let now = Instant::now();
        let mut map = self.sandboxes.lock().unwrap();
        let mut gone = vec![];
        for sb in map.values_mut() {
            if let Some((target, at)) = sb.pending.clone() {
                if now >= at {
                    sb.pending = None;
                    if target == "destroyed" {
                        gone.push(sb.id.clone());
                    }
                    sb.state = target;
                    sb.updated_at = now_iso();
                }
            }
        }
        for id in gone {
            map.remove(&id);
        }
    }

    /// A sandbox by id or name, after settling transitions.
    pub fn find(&self, id_or_name: &str) -> Option<Sandbox> {
        self.settle();
        let map = self.sandboxes.lock().unwrap();
        map.get(id_or_name)
            .or_else(|| map.values().find(|s| s.name == id_or_name))
            .cloned()
    }

    /// Updates a sandbox in place (by id).
    pub fn update<T>(&self, id: &str, f: impl FnOnce(&mut Sandbox) -> T) -> Option<T> {
        let mut map = self.sandboxes.lock().unwrap();
        map.get_mut(id).map(|sb| {
            let out = f(sb);
            sb.updated_at = now_iso();
            out
        })
    }

    /// Starts a transition: `now` is shown at once, `target` after the configured delay
    /// (immediately when the delay is 0).
    pub fn transition_to(&self, id: &str, now: &str, target: &str) {
        let delay = self.transition();
        if delay.is_zero() && target == "destroyed" {
            self.sandboxes.lock().unwrap().remove(id);
            return;
        }
        self.update(id, |sb| {
            sb.desired_state = match target {
                "destroyed" => "destroyed",
                "stopped" => "stopped",
                _ => "started",
            }
            .into();
            if delay.is_zero() {
                sb.state = target.into();
                sb.pending = None;
            } else {
                sb.state = now.into();
                sb.pending = Some((target.into(), Instant::now() + delay));
            }
        });
    }
}

/// The current time as RFC 3339 UTC with milliseconds (`2025-01-01T00:00:00.000Z`).
pub fn now_iso() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    iso_from_ms(now.as_millis() as u64)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn iso_from_ms(ms: u64) -> String {
    let now = std::time::Duration::from_millis(ms);
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
