//! The operator's configuration (TOML): where plugins live, and per plugin the hosts it may
//! reach, the secrets and settings it is bound to, and its limits.
//!
//! The configuration is authoritative: a plugin's `describe()` only asks. Bundled presets
//! (`presets.toml`) give each known provider the env var names its users already know
//! (`E2B_API_KEY`, `DAYTONA_API_URL`, ...); a `[plugins.NAME]` section overrides them key by key.
//!
//! ```toml
//! [host]
//! plugins_dir = "/opt/sandbox-host/plugins"
//!
//! [defaults.limits]
//! memory_mb = 256
//!
//! [plugins.e2b]
//! allow = ["https://api.e2b.app", "https://*.e2b.app"]
//! secrets.api-key = { env = "E2B_API_KEY" }
//! settings.domain = { env = "E2B_DOMAIN", default = "e2b.app" }
//! limits = { call_timeout_secs = 600 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::allowlist::{AllowedHost, Allowlist};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub host: HostSection,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    #[serde(default)]
    pub localbox: LocalboxSection,
    /// `[serve]`: the HTTP API (`sandbox-host serve`): tenants, tokens, limits, reaper.
    #[serde(default)]
    pub serve: crate::serve::config::ServeSection,
}

/// `[localbox]`: the local sandbox engine the CLI and `serve` start for the `local` plugin.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalboxSection {
    /// `bubblewrap` (default) or `none` (no isolation: commands run as the host user).
    pub isolation: Option<String>,
    /// `shared` (default: sandbox ports reachable on loopback) or `none`.
    pub network: Option<String>,
    /// Where sandboxes live (default: `/var/lib/sandbox-host/localbox-<hash of home>` as root,
    /// `$SANDBOX_HOST_HOME/localbox/sandboxes` otherwise). Every ancestor must be searchable by others.
    pub root_dir: Option<PathBuf>,
    /// The CLI's localbox daemon exits after this long with no sandboxes and no calls (default 600).
    pub idle_exit_secs: Option<u64>,
    /// Processes per sandbox (default 256).
    pub max_processes: Option<u64>,
}

/// `[host]`: settings of the host itself.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// The plugin directory (overridden by `--plugins` / `SANDBOX_HOST_PLUGINS`).
    pub plugins_dir: Option<PathBuf>,
    /// Where the session registry and the compile cache live (default `$SANDBOX_HOST_HOME`).
    pub state_dir: Option<PathBuf>,
    /// Watch the plugin directory and reload changed plugins (default true).
    pub hot_reload: Option<bool>,
    /// The session registry: unset means SQLite (`sessions.db` in the state dir); a
    /// `postgres://user@host:port/db` URL selects Postgres, so several `serve` replicas share
    /// one registry. See [`crate::registry_pg`].
    pub database_url: Option<Source>,
    /// Threads plugin calls run on when the host is driven from a multi-thread runtime
    /// (default: the cores, at most 4). See [`crate::plugin::executor`].
    pub call_threads: Option<usize>,
    /// wasmtime's pooling instance allocator (default true): instances reuse slots reserved up
    /// front (address space for 2,048), so a call pays no memory mapping or page faults.
    pub pooling: Option<bool>,
}

/// `[defaults]`: what applies to every plugin unless its own section says otherwise.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Per-plugin limits as written in the file; unset fields fall back to `[defaults.limits]`,
/// then to [`Limits::default`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Linear memory a plugin instance may grow to.
    pub memory_mb: Option<u64>,
    /// WebAssembly execution time per call, in milliseconds (time waiting on HTTP is not counted).
    pub cpu_ms: Option<u64>,
    /// Wall-clock time per call. An `exec` gets at least its command timeout plus 30 s.
    pub call_timeout_secs: Option<u64>,
    /// Largest HTTP response body a plugin may receive.
    pub response_mb: Option<u64>,
    /// Largest file buffer passed through `read-file` / `write-file`.
    pub file_mb: Option<u64>,
    /// Calls to this plugin in flight at once; more wait.
    pub max_concurrent: Option<usize>,
}

/// `[plugins.NAME]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Outbound hosts granted (`scheme://host[:port]`). None: nothing is granted.
    pub allow: Option<Vec<AllowedHost>>,
    /// Also grant the origin of these settings' values (e.g. `api-url`), so pointing a provider
    /// at an emulator through its usual env var needs no second edit.
    pub allow_from_settings: Option<Vec<String>>,
    /// Hosts spoken to with HTTP/2 prior knowledge (h2c), e.g. a local gRPC emulator.
    pub h2c: Option<Vec<AllowedHost>>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Source>,
    #[serde(default)]
    pub settings: BTreeMap<String, Source>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The plugin file's expected sha256 (hex). A file that does not match is not loaded.
    pub sha256: Option<String>,
    /// Extra PEM CA certificates trusted for this plugin's TLS connections.
    pub ca_files: Option<Vec<PathBuf>>,
}

/// Where a secret's or setting's value comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Source {
    /// A literal value.
    Literal(String),
    /// `{ value = "..." }`, the same as a literal.
    Value { value: String },
    /// `{ env = "NAME", default = "..." }`: the environment variable, else the default.
    Env {
        env: String,
        #[serde(default)]
        default: Option<String>,
        /// For secrets: where the secret may be sent, overriding the plugin's declaration.
        #[serde(default)]
        hosts: Option<Vec<AllowedHost>>,
    },
    /// `{ file = "/path" }`: the file's content, trailing newline removed.
    File {
        file: PathBuf,
        #[serde(default)]
        hosts: Option<Vec<AllowedHost>>,
    },
}

impl Source {
    /// The value, or None when the env var or file is absent.
    pub fn resolve(&self) -> Result<Option<String>, ConfigError> {
        Ok(match self {
            Source::Literal(v) | Source::Value { value: v } => Some(v.clone()),
            Source::Env { env, default, .. } => std::env::var(env)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| default.clone()),
            Source::File { file, .. } => match std::fs::read_to_string(file) {
                Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(ConfigError::Read(file.clone(), e)),
            },
        })
    }

    /// The hosts the operator pinned this secret to, if any.
    pub fn hosts(&self) -> Option<&[AllowedHost]> {
        match self {
            Source::Env { hosts, .. } | Source::File { hosts, .. } => hosts.as_deref(),
            _ => None,
        }
    }

    /// How the value is sourced, for `config show` (never the secret itself).
    pub fn describe_redacted(&self) -> String {
        match self {
            Source::Literal(_) | Source::Value { .. } => "<literal>".into(),
            Source::Env { env, .. } => format!("env {env}"),
            Source::File { file, .. } => format!("file {}", file.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("invalid configuration in {0}: {1}")]
    Parse(String, String),
}

/// Limits in force for one plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub memory_bytes: usize,
    pub cpu_budget: Duration,
    pub call_timeout: Duration,
    pub response_bytes: u64,
    pub file_bytes: u64,
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 << 20,
            cpu_budget: Duration::from_secs(10),
            call_timeout: Duration::from_secs(300),
            response_bytes: 256 << 20,
            file_bytes: 64 << 20,
            max_concurrent: 1024,
        }
    }
}

impl LimitsConfig {
    /// Fields set here win over `base`.
    fn over(&self, base: &LimitsConfig) -> LimitsConfig {
        LimitsConfig {
            memory_mb: self.memory_mb.or(base.memory_mb),
            cpu_ms: self.cpu_ms.or(base.cpu_ms),
            call_timeout_secs: self.call_timeout_secs.or(base.call_timeout_secs),
            response_mb: self.response_mb.or(base.response_mb),
            file_mb: self.file_mb.or(base.file_mb),
            max_concurrent: self.max_concurrent.or(base.max_concurrent),
        }
    }

    fn resolve(&self) -> Limits {
        let d = Limits::default();
        Limits {
            memory_bytes: self
                .memory_mb
                .map_or(d.memory_bytes, |m| (m as usize) << 20),
            cpu_budget: self.cpu_ms.map_or(d.cpu_budget, Duration::from_millis),
            call_timeout: self
                .call_timeout_secs
                .map_or(d.call_timeout, Duration::from_secs),
            response_bytes: self.response_mb.map_or(d.response_bytes, |m| m << 20),
            file_bytes: self.file_mb.map_or(d.file_bytes, |m| m << 20),
            max_concurrent: self.max_concurrent.unwrap_or(d.max_concurrent).max(1),
        }
    }
}

impl PluginConfig {
    /// Keys set in `self` win over `base`; maps merge key by key.
    fn over(&self, base: &PluginConfig) -> PluginConfig {
        let merge = |a: &BTreeMap<String, Source>, b: &BTreeMap<String, Source>| {
            let mut m = b.clone();
            m.extend(a.clone());
            m
        };
        PluginConfig {
            allow: self.allow.clone().or_else(|| base.allow.clone()),
            allow_from_settings: self
                .allow_from_settings
                .clone()
                .or_else(|| base.allow_from_settings.clone()),
            h2c: self.h2c.clone().or_else(|| base.h2c.clone()),
            secrets: merge(&self.secrets, &base.secrets),
            settings: merge(&self.settings, &base.settings),
            limits: self.limits.over(&base.limits),
            sha256: self.sha256.clone().or_else(|| base.sha256.clone()),
            ca_files: self.ca_files.clone().or_else(|| base.ca_files.clone()),
        }
    }
}

/// The bundled presets, parsed once.
pub fn presets() -> &'static BTreeMap<String, PluginConfig> {
    static PRESETS: std::sync::OnceLock<BTreeMap<String, PluginConfig>> =
        std::sync::OnceLock::new();
    PRESETS.get_or_init(|| {
        let cfg: Config =
            toml::from_str(include_str!("presets.toml")).expect("bundled presets.toml is valid");
        cfg.plugins
    })
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(origin.to_string(), e.to_string()))
    }

    /// Reads a file; a missing file is an empty configuration only when `optional`.
    pub fn load(path: &Path, optional: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, &path.display().to_string()),
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(ConfigError::Read(path.to_path_buf(), e)),
        }
    }

    /// The effective section for a plugin: its own over the preset of that name.
    pub fn plugin(&self, name: &str) -> PluginConfig {
        let own = self.plugins.get(name).cloned().unwrap_or_default();
        match presets().get(name) {
            Some(preset) => own.over(preset),
            None => own,
        }
    }

    /// The limits in force for a plugin.
    pub fn limits(&self, name: &str) -> Limits {
        self.plugin(name)
            .limits
            .over(&self.defaults.limits)
            .resolve()
    }
}

/// Resolves an allowlist from a config section plus origins of the named settings.
pub fn effective_allowlist(cfg: &PluginConfig, settings: &BTreeMap<String, String>) -> Allowlist {
    let mut list = cfg.allow.clone().unwrap_or_default();
    for key in cfg.allow_from_settings.iter().flatten() {
        let Some(value) = settings.get(key) else {
            continue;
        };
        let Ok(uri) = value.parse::<http::Uri>() else {
            continue;
        };
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            continue;
        };
        if let Ok(entry) = format!("{scheme}://{authority}").parse() {
            list.push(entry);
        }
    }
    Allowlist(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_overrides_preset_key_by_key() {
        let cfg = Config::from_toml(
            r#"
            [defaults.limits]
            memory_mb = 32
            cpu_ms = 100
            [plugins.e2b]
            allow = ["https://example.com"]
            secrets.api-key = "literal"
            limits = { cpu_ms = 7 }
            "#,
            "test",
        )
        .unwrap();
        let e2b = cfg.plugin("e2b");
        assert_eq!(e2b.allow.unwrap()[0].to_string(), "https://example.com:443");
        assert_eq!(e2b.secrets["api-key"], Source::Literal("literal".into()));
        // Settings from the preset survive.
        assert!(e2b.settings.contains_key("domain"));
        let limits = cfg.limits("e2b");
        assert_eq!(limits.memory_bytes, 32 << 20);
        assert_eq!(limits.cpu_budget, Duration::from_millis(7));
        assert_eq!(cfg.limits("other").cpu_budget, Duration::from_millis(100));
    }

    #[test]
    fn sources_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(
            Source::File {
                file: f,
                hosts: None
            }
            .resolve()
            .unwrap()
            .as_deref(),
            Some("s3cret")
        );
        let missing = Source::Env {
            env: "SANDBOX_HOST_TEST_UNSET_VAR".into(),
            default: Some("d".into()),
            hosts: None,
        };
        assert_eq!(missing.resolve().unwrap().as_deref(), Some("d"));
        assert_eq!(
            missing.describe_redacted(),
            "env SANDBOX_HOST_TEST_UNSET_VAR"
        );
    }

    #[test]
    fn engine_knobs_parse() {
        let c = Config::from_toml("[host]\ncall_threads = 2\npooling = true\n", "t").unwrap();
        assert_eq!((c.host.call_threads, c.host.pooling), (Some(2), Some(true)));
        assert!(Config::from_toml("[host]\ncall_threads = -1\n", "t").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_hosts_are_errors() {
        assert!(Config::from_toml("[plugins.x]\nallowed = []", "t").is_err());
        assert!(Config::from_toml("[plugins.x]\nallow = [\"api.e2b.app\"]", "t").is_err());
    }

    #[test]
    fn allow_from_settings_grants_the_origin_only() {
        let cfg = PluginConfig {
            allow_from_settings: Some(vec!["api-url".into()]),
            ..Default::default()
        };
        let settings = BTreeMap::from([(
            "api-url".to_string(),
            "http://127.0.0.1:4010/api".to_string(),
        )]);
        let list = effective_allowlist(&cfg, &settings);
        assert!(list.allows_uri(&"http://127.0.0.1:4010/api/sandbox".parse().unwrap()));
        assert!(!list.allows_uri(&"http://127.0.0.1:4011/".parse().unwrap()));
    }

    #[test]
    fn presets_parse() {
        assert!(presets().contains_key("e2b"));
        assert!(presets().contains_key("local"));
    }
}
