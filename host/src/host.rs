//! The embeddable host: [`HostBuilder`] → [`Host`] → [`Provider`](crate::Provider) and
//! [`Sandbox`](crate::Sandbox) handles.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandbox_host::Error> {
//! use sandbox_host::{HostBuilder, types::{Command, ExecRequest, Spec}};
//! let host = HostBuilder::new().plugins_dir("target/plugins").build().await?;
//! let sandbox = host.provider("local")?.create(Spec::default()).await?;
//! let result = sandbox
//!     .exec(ExecRequest::shell("echo hi"), Some(Box::new(|_stream, bytes: &[u8]| print!("{}", String::from_utf8_lossy(bytes)))))
//!     .await?;
//! assert_eq!(result.exit_code, 0);
//! sandbox.destroy().await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::Config;
use crate::error::Error;
use crate::outbound::client::ClientCache;
use crate::outbound::DenialHandler;
use crate::plugin::cache::CompileCache;
use crate::plugin::runtime::{EngineOptions, Runtime};
use crate::plugin::{LoadedPlugin, Loader};
use crate::plugins::{PluginEvent, PluginSet};
use crate::registry::SessionStore;
use crate::retry::RetryPolicy;
use crate::sandbox::{Provider, Sandbox};

/// Where sandbox-host keeps its state: `$SANDBOX_HOST_HOME`, else the XDG data dir.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SANDBOX_HOST_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(d).join("sandbox-host");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/sandbox-host")
}

/// The plugin directories searched when none is given: `$SANDBOX_HOST_HOME/plugins`, then
/// `plugins/` beside the executable's directory (so `target/release/sandbox-host` finds
/// `target/plugins/`).
pub fn default_plugin_dirs(home: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![home.join("plugins")];
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("plugins")))
    {
        if beside.is_dir() && !dirs.contains(&beside) {
            dirs.push(beside);
        }
    }
    dirs
}

/// The status of a sandbox as callers see it, shaped like OpenHands' `RuntimeStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeStatus {
    Building,
    Starting,
    Started,
    SettingUpWorkspace,
    Ready,
    Error,
    Disconnected,
}

/// A status change of a sandbox (or of one being created, before it has an id).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusEvent {
    pub provider: String,
    pub sandbox_id: Option<String>,
    pub status: RuntimeStatus,
    pub message: String,
}

/// Builds a [`Host`].
#[derive(Default)]
pub struct HostBuilder {
    config: Option<Config>,
    config_file: Option<PathBuf>,
    plugin_dirs: Vec<PathBuf>,
    home: Option<PathBuf>,
    store: Option<Arc<dyn SessionStore>>,
    hot_reload: Option<bool>,
    engine: Option<EngineOptions>,
    retry: Option<RetryPolicy>,
    on_denied: Option<DenialHandler>,
    no_cache: bool,
    cache_dir: Option<PathBuf>,
}

impl HostBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses this configuration (instead of reading a file).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Reads the configuration from this file (it must exist).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Adds a plugin directory. When none is added, the defaults apply (`default_plugin_dirs`).
    pub fn plugins_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_dirs.push(dir.into());
        self
    }

    /// The state directory (registry, compile cache). Default: [`default_home`].
    pub fn home(mut self, dir: impl Into<PathBuf>) -> Self {
        self.home = Some(dir.into());
        self
    }

    /// Uses this session store instead of SQLite in the home directory.
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Watch plugin directories and reload changed plugins (default: on, unless the config says otherwise).
    pub fn hot_reload(mut self, on: bool) -> Self {
        self.hot_reload = Some(on);
        self
    }

    /// Engine options; unset, they come from the configuration's `[host]` section.
    pub fn engine_options(mut self, opts: EngineOptions) -> Self {
        self.engine = Some(opts);
        self
    }

    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Called with (plugin, URL without query) for every outbound request the policy denies.
    pub fn on_denied(mut self, f: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_denied = Some(Arc::new(f));
        self
    }

    /// Where compiled plugins are cached (default `<state dir>/cache`). Several hosts may share one.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Disables the compile cache (always compile; for benchmarks).
    pub fn without_compile_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Loads the configuration and every plugin. A plugin that fails to load is logged and
    /// skipped; see [`Host::load_errors`].
    pub async fn build(self) -> Result<Host, Error> {
        let home = self.home.unwrap_or_else(default_home);
        let config = match (self.config, &self.config_file) {
            (Some(c), _) => c,
            (None, Some(path)) => Config::load(path, false)?,
            (None, None) => Config::load(&home.join("config.toml"), true)?,
        };
        let state_dir = config
            .host
            .state_dir
            .clone()
            .unwrap_or_else(|| home.clone());
        let mut plugin_dirs = self.plugin_dirs;
        if plugin_dirs.is_empty() {
            plugin_dirs = match &config.host.plugins_dir {
                Some(d) => vec![d.clone()],
                None => default_plugin_dirs(&home),
            };
        }
        let engine = self.engine.unwrap_or_else(|| EngineOptions {
            pooling: config.host.pooling.unwrap_or(true),
            call_threads: config.host.call_threads.unwrap_or(0),
        });
        let runtime =
            Arc::new(Runtime::new(&engine).map_err(|e| Error::Internal(format!("engine: {e:#}")))?);
        let cache_dir =
            (!self.no_cache).then(|| self.cache_dir.unwrap_or_else(|| state_dir.join("cache")));
        let fingerprint = runtime.fingerprint();
        let config = Arc::new(config);
        let loader = Loader {
            runtime,
            cache: Arc::new(CompileCache::new(cache_dir, fingerprint)),
            config: config.clone(),
            clients: Arc::new(ClientCache::default()),
            on_denied: self.on_denied,
        };
        let plugins = Arc::new(PluginSet::new(loader));
        let mut load_errors = vec![];
        for dir in &plugin_dirs {
            if !dir.is_dir() {
                tracing::debug!(dir = %dir.display(), "plugin directory does not exist");
                continue;
            }
            load_errors.extend(
                plugins
                    .load_dir(dir)
                    .await
                    .into_iter()
                    .map(|e| e.to_string()),
            );
        }
        if self.hot_reload.or(config.host.hot_reload).unwrap_or(true) {
            for dir in plugin_dirs.iter().filter(|d| d.is_dir()) {
                plugins.watch(dir)?;
            }
        }
        let store = match self.store {
            Some(s) => s,
            None => crate::registry_pg::open_configured(&config, &state_dir)?,
        };
        Ok(Host(Arc::new(Inner {
            config,
            plugins,
            plugin_dirs,
            store,
            retry: self.retry.unwrap_or_default(),
            status: broadcast::channel(1024).0,
            load_errors,
        })))
    }
}

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pub(crate) plugins: Arc<PluginSet>,
    pub(crate) plugin_dirs: Vec<PathBuf>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) retry: RetryPolicy,
    pub(crate) status: broadcast::Sender<StatusEvent>,
    load_errors: Vec<String>,
}

/// A running host. Cheap to clone; all clones share plugins, registry and events.
#[derive(Clone)]
pub struct Host(pub(crate) Arc<Inner>);

impl Host {
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// How a call is retried: per the host's policy when it is idempotent, else never.
    pub(crate) fn retry_policy(&self, idempotent: bool) -> RetryPolicy {
        if idempotent {
            self.0.retry.clone()
        } else {
            RetryPolicy::none()
        }
    }

    pub fn plugin_dirs(&self) -> &[PathBuf] {
        &self.0.plugin_dirs
    }

    /// Every loaded plugin, sorted by name.
    pub fn plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        self.0.plugins.all()
    }

    /// Waits (at most `timeout` in all) for requests plugins let go of to finish: cleanup a
    /// plugin left to the host after a call (see `kit::http::Request::send_detached`). A
    /// process about to exit calls this, or that cleanup is lost with it. Whether all ended.
    pub async fn settle(&self, timeout: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        let mut all = true;
        for p in self.plugins() {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            all &= p.settle_detached(left).await;
        }
        all
    }

    /// Why plugins found at start-up did not load.
    pub fn load_errors(&self) -> &[String] {
        &self.0.load_errors
    }

    /// Plugin load, reload and unload events (hot reload).
    pub fn plugin_events(&self) -> broadcast::Receiver<PluginEvent> {
        self.0.plugins.subscribe()
    }

    /// Sandbox status events.
    pub fn status_events(&self) -> broadcast::Receiver<StatusEvent> {
        self.0.status.subscribe()
    }

    /// Loads (or reloads) one plugin file now, without waiting for the watcher.
    pub async fn load_plugin(&self, path: &Path) -> Result<Arc<LoadedPlugin>, Error> {
        self.0.plugins.load_path(path).await
    }

    /// The session registry.
    pub fn sessions(&self) -> &dyn SessionStore {
        &*self.0.store
    }

    pub(crate) fn plugin(&self, name: &str) -> Result<Arc<LoadedPlugin>, Error> {
        self.0
            .plugins
            .get(name)
            .ok_or_else(|| Error::UnknownProvider(name.to_string()))
    }

    pub(crate) fn emit_status(
        &self,
        provider: &str,
        sandbox_id: Option<&str>,
        status: RuntimeStatus,
        message: impl Into<String>,
    ) {
        let _ = self.0.status.send(StatusEvent {
            provider: provider.to_string(),
            sandbox_id: sandbox_id.map(str::to_string),
            status,
            message: message.into(),
        });
    }

    /// A handle to a loaded provider.
    pub fn provider(&self, name: &str) -> Result<Provider, Error> {
        self.plugin(name)?;
        Ok(Provider {
            host: self.clone(),
            name: name.to_string(),
        })
    }

    /// A handle to a sandbox in the registry. `provider` disambiguates an id known under several.
    pub fn sandbox(&self, id: &str, provider: Option<&str>) -> Result<Sandbox, Error> {
        let found = match provider {
            Some(p) => self.0.store.get(p, id)?.into_iter().collect::<Vec<_>>(),
            None => self.0.store.find(id)?,
        };
        match found.as_slice() {
            [] => Err(Error::UnknownSandbox(id.to_string())),
            [one] => Ok(Sandbox {
                host: self.clone(),
                provider: one.provider.clone(),
                id: id.to_string(),
            }),
            many => Err(Error::AmbiguousSandbox {
                id: id.to_string(),
                providers: many
                    .iter()
                    .map(|r| r.provider.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Sandbox records in the registry (no provider calls).
    pub fn registered(
        &self,
        provider: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<crate::registry::SessionRecord>, Error> {
        self.0.store.list(provider, labels)
    }
}
