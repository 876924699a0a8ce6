//! A loaded plugin: compiled once, instantiated afresh in its own Store for every call, with
//! its limits (memory, CPU budget, wall-clock timeout, concurrency) enforced around the call.

pub mod cache;
pub mod executor;
pub mod exports;
pub mod runtime;
pub mod state;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::types::PluginInfo;
use crate::config::{effective_allowlist, Config, Limits};
use crate::error::{Error, PluginFault};
use crate::outbound::client::ClientCache;
use crate::outbound::{BoundSecret, DenialHandler, Egress};
use crate::policy::allowlist::Allowlist;
use cache::{sha256_hex, CompileCache, Origin};
use exports::{Guest, GuestPre};
use runtime::{Runtime, TICK};
use state::{CallState, OutputSink};

/// The contract versions this host speaks, as export names it looks for.
pub const CONTRACT_EXPORT: &str = "sandbox:provider/provider@0.1.0";
pub const CONTRACT_VERSION: &str = "0.1.0";

/// The future a call closure returns.
pub type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>>;

pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub path: PathBuf,
    pub sha256: String,
    pub origin: Origin,
    pub limits: Limits,
    /// Effective settings (operator values over declared defaults). Not secrets.
    pub settings: Arc<BTreeMap<String, String>>,
    /// The allowlist in force.
    pub allow: Allowlist,
    /// Names of the secrets that resolved to a value (never the values).
    pub bound_secrets: Vec<String>,
    name: Arc<str>,
    pre: GuestPre,
    runtime: Arc<Runtime>,
    /// Which of the runtime's call threads runs this plugin's calls.
    thread: usize,
    egress: Arc<Egress>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Turns `.wasm` files into [`LoadedPlugin`]s under the operator's policy.
pub struct Loader {
    pub runtime: Arc<Runtime>,
    pub cache: Arc<CompileCache>,
    pub config: Arc<Config>,
    pub clients: Arc<ClientCache>,
    pub on_denied: Option<DenialHandler>,
}

fn load_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Load {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Names are used in config sections, CLI arguments and the registry.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase()
}

impl Loader {
    pub async fn load(&self, path: &Path) -> Result<LoadedPlugin, Error> {
        let bytes = tokio::fs::read(path).await.map_err(|e| load_err(path, e))?;
        self.load_bytes(path, &bytes).await
    }

    /// Compiles (or loads from cache), checks and describes a plugin, then applies the
    /// operator's policy for the name it declares.
    pub async fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<LoadedPlugin, Error> {
        let sha = sha256_hex(bytes);
        let runtime = self.runtime.clone();
        let (component, origin) = {
            let (engine, cache, sha, bytes) = (
                runtime.engine.clone(),
                self.cache.clone(),
                sha.clone(),
                bytes.to_vec(),
            );
            // Compilation is CPU-heavy: keep it off the async workers.
            tokio::task::spawn_blocking(move || cache.load(&engine, &bytes, &sha))
                .await
                .map_err(|e| load_err(path, e))?
                .map_err(|e| load_err(path, format!("not a valid component: {e:#}")))?
        };
        check_contract(&runtime, &component).map_err(|r| load_err(path, r))?;
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(path, format!("{e:#}")))?;
        let pre = GuestPre::new(pre).map_err(|e| load_err(path, e))?;

        // describe() runs with no network and the default limits.
        let probe = Arc::new(Egress {
            plugin: Arc::from("(loading)"),
            allow: Allowlist::default(),
            h2c: Allowlist::default(),
            secrets: vec![],
            response_cap: 0,
            clients: self.clients.get(&[]).map_err(|e| load_err(path, e))?,
            on_denied: None,
            detached: Default::default(),
        });
        // describe() must not do I/O: tight limits keep a hostile one from stalling a load.
        let limits = Limits {
            cpu_budget: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let info = run_call(
            &runtime,
            &pre,
            "describe",
            probe,
            Arc::default(),
            &limits,
            None,
            Duration::ZERO,
            // Every export's signature is checked here, once: calls then skip the check.
            |g, s| {
                Box::pin(async move {
                    g.check_all(s)?;
                    g.call_describe(s).await
                })
            },
        )
        .await
        .map_err(|e| load_err(path, e))?
        .0;
        validate_info(&info).map_err(|r| load_err(path, r))?;

        let cfg = self.config.plugin(&info.name);
        if let Some(pin) = &cfg.sha256 {
            if !pin.eq_ignore_ascii_case(&sha) {
                return Err(load_err(
                    path,
                    format!(
                        "sha256 {sha} does not match the pinned {pin} for plugin {}",
                        info.name
                    ),
                ));
            }
        }
        let mut settings = BTreeMap::new();
        for spec in &info.settings {
            if let Some(d) = &spec.default {
                settings.insert(spec.name.clone(), d.clone());
            }
        }
        for (key, source) in &cfg.settings {
            if let Some(v) = source.resolve()? {
                settings.insert(key.clone(), v);
            }
        }
        let allow = effective_allowlist(&cfg, &settings);
        let mut secrets = vec![];
        for binding in &info.credentials {
            let Some(source) = cfg.secrets.get(&binding.secret) else {
                continue;
            };
            let Some(value) = source.resolve()? else {
                continue;
            };
            let header = HeaderName::try_from(binding.header.as_str()).map_err(|e| {
                load_err(path, format!("credential header {:?}: {e}", binding.header))
            })?;
            let value =
                HeaderValue::try_from(binding.format.replace("{}", &value)).map_err(|_| {
                    load_err(
                        path,
                        format!(
                            "secret {} does not make a valid header value",
                            binding.secret
                        ),
                    )
                })?;
            let hosts = match source.hosts() {
                Some(h) => Allowlist(h.to_vec()),
                None => Allowlist::parse(&binding.hosts).map_err(|e| load_err(path, e))?,
            };
            secrets.push(BoundSecret {
                name: binding.secret.clone(),
                header,
                value,
                hosts,
            });
        }
        self.clients.grant_names(
            allow
                .0
                .iter()
                .filter_map(|e| e.exact_name().map(str::to_string)),
        );
        let clients = self
            .clients
            .get(cfg.ca_files.as_deref().unwrap_or(&[]))
            .map_err(|e| load_err(path, format!("{e:#}")))?;
        let limits = self.config.limits(&info.name);
        let name: Arc<str> = Arc::from(info.name.as_str());
        let egress = Arc::new(Egress {
            plugin: name.clone(),
            allow: allow.clone(),
            h2c: Allowlist(cfg.h2c.clone().unwrap_or_default()),
            secrets,
            response_cap: limits.response_bytes,
            clients,
            on_denied: self.on_denied.clone(),
            detached: Default::default(),
        });
        Ok(LoadedPlugin {
            bound_secrets: egress.secrets.iter().map(|s| s.name.clone()).collect(),
            info,
            path: path.to_path_buf(),
            sha256: sha,
            origin,
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            settings: Arc::new(settings),
            allow,
            name,
            pre,
            thread: runtime.calls.assign(),
            runtime,
            egress,
        })
    }
}

/// Refuses components that do not export a contract version this host speaks, naming what
/// they do export.
fn check_contract(
    runtime: &Runtime,
    component: &wasmtime::component::Component,
) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(&runtime.engine)
        .map(|(n, _)| n.to_string())
        .collect();
    if exports.iter().any(|e| e == CONTRACT_EXPORT) {
        return Ok(());
    }
    match exports
        .iter()
        .find(|e| e.starts_with("sandbox:provider/provider@"))
    {
        Some(other) => Err(format!(
            "exports {other}, but this host supports {CONTRACT_EXPORT}"
        )),
        None => Err(format!(
            "does not export {CONTRACT_EXPORT} (exports: {})",
            exports.join(", ")
        )),
    }
}

fn validate_info(info: &PluginInfo) -> Result<(), String> {
    if !valid_name(&info.name) {
        return Err(format!(
            "plugin name {:?} must be lowercase letters, digits, '-' or '_'",
            info.name
        ));
    }
    let compatible = info
        .contract_version
        .split('.')
        .take(2)
        .eq(CONTRACT_VERSION.split('.').take(2));
    if !compatible {
        return Err(format!(
            "built for contract {}, this host speaks {CONTRACT_VERSION}",
            info.contract_version
        ));
    }
    for b in &info.credentials {
        Allowlist::parse(&b.hosts).map_err(|e| format!("credential {}: {e}", b.secret))?;
        if !b.format.contains("{}") {
            return Err(format!(
                "credential {}: format {:?} has no {{}}",
                b.secret, b.format
            ));
        }
    }
    Ok(())
}

impl LoadedPlugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one call in a fresh instance. `extra_time` extends the wall-clock limit (an `exec`
    /// with a long command timeout); `sink` receives `emit`ted output. Returns the call's result
    /// and the token the plugin refreshed, if any.
    pub async fn call<R: Send + 'static>(
        &self,
        call: &'static str,
        sink: Option<OutputSink>,
        extra_time: Duration,
        f: impl for<'a> FnOnce(&'a Guest, &'a mut Store<CallState>) -> CallFuture<'a, R>
            + Send
            + 'static,
    ) -> Result<(R, Option<String>), Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("plugin unloaded".into()))?;
        let (runtime, pre, egress, settings, limits) = (
            self.runtime.clone(),
            self.pre.clone(),
            self.egress.clone(),
            self.settings.clone(),
            self.limits.clone(),
        );
        let run = async move {
            let _permit = permit;
            run_call(
                &runtime, &pre, call, egress, settings, &limits, sink, extra_time, f,
            )
            .await
        };
        // A caller on a current-thread runtime already keeps a call's tasks on one thread:
        // handing the call over would only add two thread switches.
        let on_one_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let outcome = if on_one_thread {
            run.await
        } else {
            self.runtime
                .calls
                .run(self.thread, run)
                .await
                .unwrap_or_else(|| {
                    Err(PluginFault::Trap(
                        "the call was cancelled or panicked".into(),
                    ))
                })
        };
        outcome.map_err(|fault| Error::Plugin {
            plugin: self.name.to_string(),
            call,
            fault,
        })
    }
}

impl LoadedPlugin {
    /// Waits (at most `timeout`) for the requests this plugin let go of to finish.
    pub async fn settle_detached(&self, timeout: Duration) -> bool {
        self.egress.detached.settle(timeout).await
    }

    /// How many times the engine's epoch ticker went to sleep for want of calls (tests).
    #[doc(hidden)]
    pub fn epoch_ticker_parks(&self) -> usize {
        self.runtime.ticker.parks()
    }

    /// Instantiates the plugin and keeps the instance alive, for measuring memory per idle
    /// instance (benchmarks). Not used to serve calls.
    #[doc(hidden)]
    pub async fn idle_instance(&self) -> wasmtime::Result<Store<CallState>> {
        let state = CallState::new(
            self.name.clone(),
            self.egress.clone(),
            self.settings.clone(),
            self.limits.memory_bytes,
            None,
        );
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(u64::MAX / 2);
        let guest = self.pre.instantiate(&mut store).await?;
        guest.call_describe(&mut store).await?;
        Ok(store)
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_call<R: Send>(
    runtime: &Runtime,
    pre: &GuestPre,
    _call: &'static str,
    egress: Arc<Egress>,
    settings: Arc<BTreeMap<String, String>>,
    limits: &Limits,
    sink: Option<OutputSink>,
    extra_time: Duration,
    f: impl for<'a> FnOnce(&'a Guest, &'a mut Store<CallState>) -> CallFuture<'a, R> + Send,
) -> Result<(R, Option<String>), PluginFault> {
    // The epoch must advance while this call's wasm runs (its CPU budget).
    let _awake = runtime.ticker.awake();
    let state = CallState::new(
        egress.plugin.clone(),
        egress,
        settings,
        limits.memory_bytes,
        sink,
    );
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.limiter);
    let budget_ticks = (limits.cpu_budget.as_millis() / TICK.as_millis()).max(1) as u64;
    store.epoch_deadline_callback(move |mut ctx| {
        let s = ctx.data_mut();
        s.cpu_ticks += 1;
        if s.cpu_ticks > budget_ticks {
            Ok(UpdateDeadline::Interrupt)
        } else {
            // Yield so a busy plugin shares the worker thread with other calls.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    // A new Store's deadline is 0: set it before instantiating.
    store.set_epoch_deadline(1);
    let wall = limits.call_timeout + extra_time;
    let outcome = tokio::time::timeout(wall, async {
        let guest = pre.instantiate(&mut store).await?;
        f(&guest, &mut store).await
    })
    .await;
    let state = store.data();
    match outcome {
        Err(_) => Err(PluginFault::Timeout(wall)),
        Ok(Ok(r)) => Ok((r, store.into_data().refreshed_token)),
        Ok(Err(e)) => Err(if state.limiter.memory_exceeded {
            PluginFault::MemoryLimit(limits.memory_bytes)
        } else if state.cpu_ticks > budget_ticks
            && e.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
        {
            PluginFault::CpuBudget(limits.cpu_budget)
        } else {
            PluginFault::Trap(format!("{e:#}"))
        }),
    }
}
