//! `sandbox-host serve`: the host as an HTTP service for agent servers in any language.
//!
//! One process keeps plugins hot (hot reload on), owns the API keys, and serves many tenants:
//! a versioned JSON API under `/v1` (routes and their documentation in [`openapi::ROUTES`]),
//! exec output and status events as Server-Sent Events, bearer tokens bound to tenants
//! ([`auth`]), Prometheus metrics, health. The `local` provider runs on a localbox engine
//! started in-process on a loopback port, unless the operator points it elsewhere.
//!
//! Start-up re-attaches every recorded sandbox (or marks it `lost`); SIGTERM stops accepting,
//! lets in-flight calls finish (bounded by `shutdown_grace_secs`) and the requests plugins let
//! go of (10 s), then stops localbox's commands; the registry is written as calls complete, so
//! nothing is left to persist.

mod auth;
pub mod config;
mod error;
mod events;
mod exec;
mod files;
pub mod metrics;
pub mod openapi;
mod providers;
mod reaper;
mod sandboxes;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::digest as token_digest;
use auth::Caller;
use error::ApiError;
use metrics::Metrics;
use state::AppState;

use crate::config::Config;
use crate::plugins::PluginEvent;
use crate::HostBuilder;

/// How to run the server.
pub struct ServeOptions {
    /// Overrides `[serve] listen`.
    pub listen: Option<String>,
    /// State directory (registry, compile cache, localbox sandboxes).
    pub home: PathBuf,
    pub config: Config,
    /// Plugin directory (default: from the config, else the default directories).
    pub plugins_dir: Option<PathBuf>,
    /// Compile cache directory (default `<state dir>/cache`).
    pub cache_dir: Option<PathBuf>,
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Begins a graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?
    }
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let running = start(opts).await?;
    eprintln!("sandbox-host serve: listening on http://{}", running.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight calls"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing in-flight calls"),
    }
    running.shutdown();
    running.wait().await
}

/// In-process localbox for the `local` plugin: (engine, its server's stop signal and task).
type Localbox = (
    localbox::Engine,
    CancellationToken,
    JoinHandle<std::io::Result<()>>,
);

async fn start_localbox(
    config: &mut Config,
    home: &std::path::Path,
) -> anyhow::Result<Option<Localbox>> {
    if crate::local::operator_localbox(config) {
        return Ok(None);
    }
    let engine = localbox::Engine::new(crate::local::engine_config(&config.localbox, home)?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    crate::local::configure_local_plugin(config, &url, &token);
    let stop = CancellationToken::new();
    let server = localbox::Server::new(engine.clone(), localbox::ServerConfig::new(token));
    let task = tokio::spawn(localbox::serve_with_shutdown(
        listener,
        server,
        stop.clone().cancelled_owned(),
    ));
    Ok(Some((engine, stop, task)))
}

/// Starts the server in the background and returns once it is listening.
pub async fn start(opts: ServeOptions) -> anyhow::Result<Running> {
    let mut config = opts.config;
    let cfg = config.serve.clone();
    let listen = opts
        .listen
        .or_else(|| cfg.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("listen address {listen:?}: expected IP:PORT"))?;
    let auth = auth::Auth::from_config(&cfg)?;
    if !cfg.has_tokens() && !addr.ip().is_loopback() {
        bail!("refusing to listen on {addr} without tokens: configure [serve] admin_token_sha256 or [serve.tenants.NAME] token_sha256, or listen on a loopback address");
    }
    match cfg.idle_action.as_deref() {
        None | Some("pause") | Some("destroy") => {}
        Some(other) => bail!("[serve] idle_action = {other:?}: expected \"pause\" or \"destroy\""),
    }
    let localbox = start_localbox(&mut config, &opts.home).await?;
    let metrics = Arc::new(Metrics::default());
    let denied = metrics.clone();
    let hot_reload = config.host.hot_reload.unwrap_or(true);
    let mut builder = HostBuilder::new()
        .home(&opts.home)
        .config(config)
        // New providers appear without a restart unless the operator turned reload off.
        .hot_reload(hot_reload)
        .on_denied(move |plugin, _url| denied.denied(plugin));
    if let Some(d) = &opts.plugins_dir {
        builder = builder.plugins_dir(d);
    }
    if let Some(d) = &opts.cache_dir {
        builder = builder.cache_dir(d);
    }
    let host = builder.build().await?;
    for e in host.load_errors() {
        tracing::warn!("{e}");
    }
    for p in host.plugins() {
        metrics.plugin_event("loaded", p.name());
    }
    let stop = CancellationToken::new();
    let st = Arc::new(AppState {
        tenants: auth::tenant_states(&cfg),
        host: host.clone(),
        cfg: cfg.clone(),
        auth,
        metrics: metrics.clone(),
        events: broadcast::channel(1024).0,
        activity: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(false),
        shutdown: stop.clone(),
    });
    tokio::spawn(count_plugin_events(host.plugin_events(), metrics.clone()));
    tokio::spawn(events::forward_host_events(st.clone()));
    tokio::spawn(reaper::reattach(st.clone()));
    tokio::spawn(reaper::idle_reaper(st.clone()));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let grace = Duration::from_secs(cfg.shutdown_grace_secs.unwrap_or(300));
    let app = router(st.clone());
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let server =
            axum::serve(listener, app).with_graceful_shutdown(stopped.clone().cancelled_owned());
        let deadline = async {
            stopped.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = server => r.context("server")?,
            _ = deadline => tracing::warn!("in-flight calls still running after {grace:?}: exiting anyway"),
        }
        // Cleanup plugins left to the host after their calls (e.g. session deletions).
        if !st.host.settle(Duration::from_secs(10)).await {
            tracing::warn!("requests plugins left to finish were still running at exit");
        }
        if let Some((engine, lb_stop, lb_task)) = localbox {
            lb_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), lb_task).await;
            engine.shutdown().await;
        }
        drop(st);
        Ok(())
    });
    Ok(Running { addr, stop, task })
}

async fn count_plugin_events(mut rx: broadcast::Receiver<PluginEvent>, metrics: Arc<Metrics>) {
    loop {
        match rx.recv().await {
            Ok(PluginEvent::Loaded { name, .. }) => metrics.plugin_event("loaded", &name),
            Ok(PluginEvent::Reloaded { name, .. }) => metrics.plugin_event("reloaded", &name),
            Ok(PluginEvent::Unloaded { name, .. }) => metrics.plugin_event("unloaded", &name),
            Ok(PluginEvent::Failed { path, .. }) => metrics.plugin_event(
                "failed",
                &path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The API's routes (see [`openapi::ROUTES`] for their documentation).
pub fn router(st: Arc<AppState>) -> Router {
    let json_limit = st.cfg.max_json_kib.unwrap_or(16 << 10) as usize * 1024;
    let authed = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/v1/providers", get(providers::list))
        .route("/v1/providers/{name}/preflight", post(providers::preflight))
        .route(
            "/v1/sandboxes",
            post(sandboxes::create).get(sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::destroy),
        )
        .route("/v1/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/v1/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/v1/sandboxes/{id}/timeout", post(sandboxes::timeout))
        .route("/v1/sandboxes/{id}/ports/{port}", get(sandboxes::port))
        .route("/v1/sandboxes/{id}/exec", post(exec::exec))
        .route(
            "/v1/sandboxes/{id}/processes",
            post(exec::start_process).get(exec::list_processes),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}",
            get(exec::process_status),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/output",
            get(exec::process_output),
        )
        .route("/v1/sandboxes/{id}/processes/{pid}/kill", post(exec::kill))
        .route(
            "/v1/sandboxes/{id}/files",
            get(files::read).put(files::write).delete(files::remove),
        )
        .route(
            "/v1/sandboxes/{id}/dirs",
            get(files::list_dir).post(files::mkdir),
        )
        .route("/v1/events", get(events::events))
        .route_layer(middleware::from_fn_with_state(
            st.clone(),
            auth::require_caller,
        ));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .merge(authed)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no such route (see /openapi.json)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route (see /openapi.json)",
            )
        })
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(middleware::from_fn_with_state(st.clone(), count_status))
        .with_state(st)
}

async fn count_status(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    st.metrics.http_status(r.status().as_u16());
    r
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.shutdown.is_cancelled() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "shutting down",
        )
        .into_response();
    }
    if !st.is_ready() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "re-attaching recorded sandboxes",
        )
        .into_response();
    }
    Json(serde_json::json!({ "status": "ready", "providers": st.host.plugins().len() }))
        .into_response()
}

async fn metrics_text(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    if !caller.admin {
        return ApiError::forbidden("metrics need the admin token").into_response();
    }
    let sessions = st
        .host
        .registered(None, &Default::default())
        .map_or(0, |r| r.len());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(sessions),
    )
        .into_response()
}
