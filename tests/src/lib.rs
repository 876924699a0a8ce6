//! Support for the cross-crate integration tests: loopback servers, the example provider API,
//! and helpers that build a [`sandbox_host::Host`] over a temp directory with chosen plugins.

pub mod conformance;
pub mod emulator_support;
pub mod example_server;
pub mod localbox_support;
pub mod serve_support;
pub mod servers;

use std::path::{Path, PathBuf};

use sandbox_host::config::Config;
use sandbox_host::{Host, HostBuilder};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A built plugin: `target/plugins/NAME.wasm` or the fixture `target/test-plugins/NAME.wasm`.
pub fn plugin_file(name: &str) -> PathBuf {
    for dir in ["target/plugins", "target/test-plugins"] {
        let p = workspace().join(dir).join(format!("{name}.wasm"));
        if p.exists() {
            return p;
        }
    }
    panic!("plugin {name}.wasm is not built: run `make plugins` first");
}

/// A host over a fresh temp home, with copies of the named plugins in its plugin directory.
pub struct TestHost {
    pub host: Host,
    pub home: tempfile::TempDir,
}

impl TestHost {
    pub fn plugin_dir(&self) -> PathBuf {
        self.home.path().join("plugins")
    }
}

/// The provider error of a failed call, or a panic saying what happened instead.
pub fn provider_error<T: std::fmt::Debug>(
    r: Result<T, sandbox_host::Error>,
) -> sandbox_host::ProviderError {
    match r {
        Err(e) => e
            .provider_error()
            .cloned()
            .unwrap_or_else(|| panic!("not a provider error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn host_with(plugins: &[&str], config_toml: &str) -> TestHost {
    init_tracing();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for p in plugins {
        std::fs::copy(plugin_file(p), dir.join(format!("{p}.wasm"))).unwrap();
    }
    let config = Config::from_toml(config_toml, "test").unwrap();
    let host = HostBuilder::new()
        .home(home.path())
        .plugins_dir(&dir)
        .config(config)
        .cache_dir(workspace().join("target/test-cache"))
        .build()
        .await
        .unwrap();
    assert!(
        host.load_errors().is_empty(),
        "load errors: {:?}",
        host.load_errors()
    );
    TestHost { host, home }
}

/// A host with only the `hostile` fixture plugin under `config_toml`, and a sandbox from it.
pub async fn hostile_sandbox(config_toml: &str) -> (TestHost, sandbox_host::Sandbox) {
    let t = host_with(&["hostile"], config_toml).await;
    let sandbox = t
        .host
        .provider("hostile")
        .unwrap()
        .create(sandbox_host::types::Spec::default())
        .await
        .unwrap();
    (t, sandbox)
}
