//! The HTTP server around an [`Engine`]: configuration, router, and ways to run it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::EngineConfig;
use crate::engine::{Activity, Engine};

/// Settings of the HTTP API.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Bearer token every route but `GET /v1/health` requires. Must not be empty (an empty
    /// token rejects every request).
    pub token: String,
    /// Host put into port URLs (`http://<advertise_host>:<port>`). Default `127.0.0.1`.
    pub advertise_host: String,
    /// Largest accepted file-write body. Default 64 MiB.
    pub max_write_bytes: usize,
}

impl ServerConfig {
    pub fn new(token: impl Into<String>) -> Self {
        ServerConfig {
            token: token.into(),
            advertise_host: "127.0.0.1".into(),
            max_write_bytes: 64 << 20,
        }
    }
}

/// The localbox HTTP API bound to an engine.
#[derive(Debug, Clone)]
pub struct Server {
    engine: Engine,
    config: ServerConfig,
}

impl Server {
    pub fn new(engine: Engine, config: ServerConfig) -> Self {
        if config.token.is_empty() {
            tracing::warn!("localbox: empty API token, every authenticated route will answer 401");
        }
        Server { engine, config }
    }

    /// The axum router (mount it anywhere, or use [`serve`]).
    pub fn router(&self) -> Router {
        let state = AppState {
            engine: self.engine.clone(),
            token: Arc::from(self.config.token.as_str()),
            advertise_host: Arc::from(self.config.advertise_host.as_str()),
        };
        api::router(state, self.config.max_write_bytes)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Idle signal for daemons: live sandboxes, running commands, last request time.
    pub fn activity(&self) -> Activity {
        self.engine.activity()
    }
}

/// Exec output is streamed in small writes: without TCP_NODELAY, Nagle's algorithm and the
/// client's delayed ACK hold each one back ~40 ms.
fn no_delay(listener: TcpListener) -> impl axum::serve::Listener<Addr = SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, server: Server) -> std::io::Result<()> {
    axum::serve(no_delay(listener), server.router()).await
}

/// Serves the API until `shutdown` resolves, then stops accepting and lets open requests finish.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(no_delay(listener), server.router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs a standalone localbox: opens the engine, serves on `listener`, stops on Ctrl-C (or after
/// `idle_exit` without sandboxes and requests, if given), then kills running commands. The
/// sandboxes stay on disk for the next start.
pub async fn run_standalone(
    listener: TcpListener,
    engine_config: EngineConfig,
    server_config: ServerConfig,
    idle_exit: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !server_config.token.is_empty(),
        "localbox: an API token is required"
    );
    let engine = Engine::new(engine_config)?;
    tracing::info!(addr = %listener.local_addr()?, "localbox listening");
    let idle_engine = engine.clone();
    let stop = async move {
        let idle = async {
            match idle_exit {
                Some(period) => idle_engine.wait_idle(period).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = idle => tracing::info!("localbox: idle, exiting"),
        }
    };
    serve_with_shutdown(listener, Server::new(engine.clone(), server_config), stop).await?;
    engine.shutdown().await;
    Ok(())
}
