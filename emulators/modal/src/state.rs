//! What the emulator remembers: apps, images, secrets, sandboxes (each backed by a localbox
//! sandbox) and the execs the router runs, plus the ids and JWTs it hands out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::exec::Exec;
use crate::proto::client as pb;

/// One emulated sandbox.
#[derive(Clone, Debug)]
pub struct SandboxRec {
    /// `sb-` + 24 hex characters: not the V1 shape (`sb-` + 22 alphanumerics), so the SDK
    /// routes it to the V2 RPCs.
    pub id: String,
    /// The localbox sandbox that really runs it.
    pub lb_id: String,
    pub app_id: String,
    /// `ta-…V`: the SDK recognises V2 task ids by the trailing `V`.
    pub task_id: String,
    pub name: Option<String>,
    pub image_id: String,
    pub tags: Vec<(String, String)>,
    /// Unix seconds, unique among sandboxes (list paging compares it strictly).
    pub created_at: f64,
    pub ports: Vec<pb::PortSpec>,
    /// Encrypted ports: container port → the loopback port of its TLS proxy.
    pub proxy_ports: HashMap<u32, u32>,
    /// Set once the sandbox ended (terminated, timed out, entrypoint exited).
    pub result: Option<pb::GenericResult>,
    /// The entrypoint's background process in localbox, if the definition had one.
    pub entrypoint_pid: Option<String>,
    pub timeout_secs: u32,
}

/// The emulator's whole state, shared by all handlers.
pub struct Emu {
    pub engine: localbox::Engine,
    pub apps: Mutex<HashMap<(String, String), String>>,
    pub images: Mutex<HashMap<String, String>>,
    pub secrets: Mutex<HashMap<String, BTreeMap<String, String>>>,
    pub sandboxes: Mutex<HashMap<String, SandboxRec>>,
    /// Create requests already answered, by `x-idempotency-key` (the SDK retries creates).
    pub creates: Mutex<HashMap<String, pb::SandboxCreateV2Response>>,
    pub execs: Mutex<HashMap<String, Arc<Exec>>>,
    /// Pending output-stream resets (fault injection): each resets one stdout
    /// `TaskExecStdioRead` after that many bytes, in the middle of a message.
    pub output_resets: Mutex<Vec<usize>>,
    /// The offsets `TaskExecStdioRead` calls asked for, in order (to observe resumption).
    pub stdio_offsets: Mutex<Vec<u64>>,
    /// Injected gRPC errors (`POST /_emulator/modal/grpc-faults`), first match wins.
    pub grpc_faults: Mutex<Vec<GrpcFault>>,
    /// Router JWTs minted before the current epoch are rejected (UNAUTHENTICATED), as expired
    /// ones would be: `POST /_emulator/modal/revoke-jwts` bumps it.
    pub jwt_epoch: std::sync::atomic::AtomicU64,
    /// The test CA and TLS proxies of encrypted tunnels (none if key generation failed).
    pub tls: Option<crate::tunnels::Tls>,
    /// The proxy tasks of each sandbox, stopped when it ends.
    pub proxies: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
    /// The authority handed out in router URLs instead of the one the client used (a router
    /// on "another host", as Modal's workers are): tests set it.
    pub router_authority: Mutex<Option<String>>,
    /// Router calls that arrived carrying the account token (`x-modal-token-*`), which only
    /// the control plane should ever see.
    pub router_calls_with_account_token: std::sync::atomic::AtomicU64,
    /// Router calls received, by method name (tests count what an operation costs).
    pub router_calls: Mutex<HashMap<String, u64>>,
    last_created: Mutex<f64>,
}

impl Emu {
    pub fn new(engine: localbox::Engine) -> Emu {
        Emu {
            engine,
            apps: Default::default(),
            images: Default::default(),
            secrets: Default::default(),
            sandboxes: Default::default(),
            creates: Default::default(),
            execs: Default::default(),
            output_resets: Default::default(),
            stdio_offsets: Default::default(),
            grpc_faults: Default::default(),
            jwt_epoch: Default::default(),
            tls: match crate::tunnels::Tls::generate() {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("no TLS for encrypted tunnels: {e:#}");
                    None
                }
            },
            proxies: Default::default(),
            router_authority: Default::default(),
            router_calls_with_account_token: Default::default(),
            router_calls: Default::default(),
            last_created: Mutex::new(0.0),
        }
    }

    /// A creation time strictly after every earlier one.
    pub fn next_created_at(&self) -> f64 {
        let mut last = self.last_created.lock().unwrap();
        let now = now_secs().max(*last + 0.000_001);
        *last = now;
        now
    }

    pub fn sandbox(&self, id: &str) -> Option<SandboxRec> {
        self.sandboxes.lock().unwrap().get(id).cloned()
    }

    pub fn sandbox_by_task(&self, task_id: &str) -> Option<SandboxRec> {
        self.sandboxes
            .lock()
            .unwrap()
            .values()
            .find(|s| s.task_id == task_id)
            .cloned()
    }

    /// The sandbox's end result, refreshing it from localbox (timeout expiry, entrypoint exit).
    pub fn result_of(&self, id: &str) -> Option<pb::GenericResult> {
        let rec = self.sandbox(id)?;
        if rec.result.is_some() {
            return rec.result;
        }
        let ended = match self.engine.get(&rec.lb_id) {
            Err(_) => Some(generic(pb::generic_result::GenericStatus::Timeout, 0)),
            Ok(_) => match &rec.entrypoint_pid {
                Some(pid) => match self.engine.process(&rec.lb_id, pid) {
                    Ok(p) if !p.running => {
                        let code = p.exit_code.unwrap_or(-1);
                        let status = if code == 0 {
                            pb::generic_result::GenericStatus::Success
                        } else {
                            pb::generic_result::GenericStatus::Failure
                        };
                        Some(generic(status, code))
                    }
                    _ => None,
                },
                None => None,
            },
        };
        if let Some(r) = &ended {
            if let Some(s) = self.sandboxes.lock().unwrap().get_mut(id) {
                s.result = Some(r.clone());
            }
        }
        ended
    }
}

/// An injected gRPC error: calls to `method` (any when empty) answer `code`, `count` times.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct GrpcFault {
    #[serde(default)]
    pub method: String,
    pub code: i32,
    #[serde(default)]
    pub message: String,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Emu {
    /// The first injected fault for `method`, consuming one use.
    pub fn take_grpc_fault(&self, method: &str) -> Option<GrpcFault> {
        let mut faults = self.grpc_faults.lock().unwrap();
        let i = faults
            .iter()
            .position(|f| f.method.is_empty() || f.method == method)?;
        let f = faults[i].clone();
        faults[i].count = faults[i].count.saturating_sub(1);
        if faults[i].count == 0 {
            faults.remove(i);
        }
        Some(f)
    }

    /// A router JWT for `task_id` in the current epoch.
    pub fn router_jwt(&self, task_id: &str, ttl: u64) -> String {
        jwt_with(
            task_id,
            ttl,
            self.jwt_epoch.load(std::sync::atomic::Ordering::SeqCst),
        )
    }
}

/// A `GenericResult` with this status and exit code.
pub fn generic(status: pb::generic_result::GenericStatus, exitcode: i32) -> pb::GenericResult {
    pb::GenericResult {
        status: status as i32,
        exitcode,
        ..Default::default()
    }
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `prefix` + 24 random hex characters.
pub fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &hex[..24])
}

/// An unsigned JWT (the SDK only reads `exp`; nobody checks signatures) valid `ttl` seconds.
pub fn jwt(subject: &str, ttl: u64) -> String {
    jwt_with(subject, ttl, 0)
}

fn jwt_with(subject: &str, ttl: u64, epoch: u64) -> String {
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = now_secs() as u64 + ttl;
    format!(
        "{}.{}.{}",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::json!({"sub": subject, "exp": exp, "epoch": epoch})),
        "emulator"
    )
}

/// The subject and expiry of a JWT minted by [`jwt`].
pub fn parse_jwt(token: &str) -> Option<(String, u64)> {
    let v = jwt_claims(token)?;
    Some((v.get("sub")?.as_str()?.to_string(), v.get("exp")?.as_u64()?))
}

/// The epoch a JWT was minted in.
pub fn jwt_epoch(token: &str) -> u64 {
    jwt_claims(token)
        .and_then(|v| v.get("epoch")?.as_u64())
        .unwrap_or(0)
}

fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
