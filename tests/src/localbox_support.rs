//! An in-process localbox for tests: a real engine (bubblewrap) over a temp root directory,
//! its HTTP API on `127.0.0.1:0`, and the `[plugins.local]` configuration pointing at it.
//!
//! ```no_run
//! # async fn demo() {
//! use sandbox_tests::localbox_support::LocalboxServer;
//! let lb = LocalboxServer::start().await;
//! let t = sandbox_tests::host_with(&["local"], &lb.config_toml()).await;
//! let sandbox = t.host.provider("local").unwrap().create(Default::default()).await.unwrap();
//! # let _ = sandbox;
//! lb.shutdown().await;
//! # }
//! ```

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use localbox::{Engine, EngineConfig, Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running localbox. Dropping it stops the server and kills the sandboxes' commands; prefer
/// [`shutdown`](LocalboxServer::shutdown), which also waits for both.
pub struct LocalboxServer {
    pub addr: SocketAddr,
    pub token: String,
    pub engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    // Last: removed after the engine let go of it.
    root: tempfile::TempDir,
}

/// A random hex string (for tokens and unique names).
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalboxServer {
    /// Starts an engine with the default configuration (bubblewrap, shared network) over a
    /// fresh temp directory, and its API with a random token.
    pub async fn start() -> LocalboxServer {
        Self::start_with(|_| {}).await
    }

    /// Like [`start`](Self::start), with the engine configuration adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut EngineConfig)) -> LocalboxServer {
        crate::init_tracing();
        let root = tempfile::tempdir().expect("temp dir");
        // Sandbox uids open their workspace by path: every ancestor must be searchable.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = EngineConfig::new(root.path().join("sandboxes"));
        configure(&mut config);
        let engine = Engine::new(config).expect("localbox engine");
        let token = random_hex(16);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::new(engine.clone(), ServerConfig::new(token.clone()));
        let task = tokio::spawn(localbox::serve_with_shutdown(listener, server, async {
            let _ = stopped.await;
        }));
        LocalboxServer {
            addr,
            token,
            engine,
            stop: Some(stop),
            task: Some(task),
            root,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the sandboxes live on the host.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The host configuration that points the `local` plugin at this localbox.
    pub fn config_toml(&self) -> String {
        local_plugin_config(&self.url(), &self.token)
    }

    /// Stops the server (open requests finish), kills every sandbox command, and waits.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
        self.engine.shutdown().await;
    }
}

impl Drop for LocalboxServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Best effort on an early exit (a failed test): no sandbox command outlives the test.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                let engine = self.engine.clone();
                tokio::task::block_in_place(|| handle.block_on(engine.shutdown()));
            }
        }
    }
}

/// `[plugins.local]` with a literal URL and token.
pub fn local_plugin_config(url: &str, token: &str) -> String {
    format!("[plugins.local]\nsettings.localbox-url = \"{url}\"\nsecrets.localbox-token = \"{token}\"\n")
}
