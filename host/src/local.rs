//! Wiring between the host and localbox, the engine behind the `local` plugin: its engine
//! configuration from `[localbox]`, and pointing the `local` plugin at a running instance.

use std::path::{Path, PathBuf};

use crate::config::{Config, LocalboxSection, Source};
use crate::error::Error;

/// Where sandboxes live by default. As root, each sandbox runs as its own uid, which must be
/// able to reach its directory by path, so the root cannot sit under a private home such as
/// `/root`: it goes under `/var/lib/sandbox-host`, one directory per host home.
pub fn default_root_dir(home: &Path) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let tag = crate::plugin::cache::sha256_hex(home.as_os_str().as_encoded_bytes());
        PathBuf::from("/var/lib/sandbox-host").join(format!("localbox-{}", &tag[..16]))
    } else {
        home.join("localbox/sandboxes")
    }
}

/// The localbox engine configuration from `[localbox]`.
pub fn engine_config(
    section: &LocalboxSection,
    home: &Path,
) -> Result<localbox::EngineConfig, Error> {
    let root = section
        .root_dir
        .clone()
        .unwrap_or_else(|| default_root_dir(home));
    let mut cfg = localbox::EngineConfig::new(root);
    cfg.isolation = match section.isolation.as_deref().unwrap_or("bubblewrap") {
        "bubblewrap" | "bwrap" => localbox::Isolation::Bubblewrap,
        "none" => localbox::Isolation::None,
        other => {
            return Err(Error::InvalidArgument(format!(
                "[localbox] isolation = {other:?}: expected \"bubblewrap\" or \"none\""
            )))
        }
    };
    cfg.network = match section.network.as_deref().unwrap_or("shared") {
        "shared" => localbox::Network::Shared,
        "none" => localbox::Network::None,
        other => {
            return Err(Error::InvalidArgument(format!(
                "[localbox] network = {other:?}: expected \"shared\" or \"none\""
            )))
        }
    };
    if let Some(n) = section.max_processes {
        cfg.limits.nproc = Some(n);
    }
    Ok(cfg)
}

/// Whether the operator pointed the `local` plugin at a localbox of their own (env or config).
pub fn operator_localbox(config: &Config) -> bool {
    let local = config.plugin("local");
    local
        .settings
        .get("localbox-url")
        .is_some_and(|s| s.resolve().ok().flatten().is_some())
}

/// Points the `local` plugin at `url` with `token`, unless the operator configured one.
pub fn configure_local_plugin(config: &mut Config, url: &str, token: &str) {
    if operator_localbox(config) {
        return;
    }
    let section = config.plugins.entry("local".to_string()).or_default();
    section
        .settings
        .insert("localbox-url".into(), Source::Literal(url.to_string()));
    section
        .secrets
        .insert("localbox-token".into(), Source::Literal(token.to_string()));
}
