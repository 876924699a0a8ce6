//! Devbox lifecycle: create, retrieve, update, list, wait_for_status, shutdown, suspend,
//! resume, keep_alive, and the reaper that applies keep-alive and idle policies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::state::{new_id, now_ms, ApiError, Devbox, OnIdle};
use crate::wire::{json as json_resp, long_poll_timeout};
use crate::{long_poll, Emu, WeakEmu};

/// The longest a `wait_for_status` holds, whatever the client asks.
const MAX_HOLD: Duration = Duration::from_secs(30);
/// Runloop's default keep-alive.
const DEFAULT_KEEP_ALIVE_SECS: u64 = 3600;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct CreateBody {
    name: Option<String>,
    blueprint_id: Option<String>,
    blueprint_name: Option<String>,
    snapshot_id: Option<String>,
    environment_variables: BTreeMap<String, String>,
    metadata: Map<String, Value>,
    launch_parameters: Option<Value>,
    tunnel: Option<Value>,
    entrypoint: Option<String>,
}

/// `POST /v1/devboxes` and `/v1/devboxes/create_and_await_running`: answers at once with
/// `provisioning`; a task provisions the localbox sandbox (→ `initializing`), runs the launch
/// commands and the entrypoint, and ends in `running` (or `failure`).
pub(crate) async fn create(
    State(emu): State<Arc<Emu>>,
    body: Option<Json<CreateBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let lp = body.launch_parameters.clone().unwrap_or_else(|| json!({}));
    let keep_alive_secs = lp
        .get("keep_alive_time_seconds")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_KEEP_ALIVE_SECS);
    let idle = lp.get("after_idle").and_then(|a| {
        let secs = a.get("idle_time_seconds")?.as_u64()?;
        let on = match a.get("on_idle")?.as_str()? {
            "suspend" => OnIdle::Suspend,
            _ => OnIdle::Shutdown,
        };
        Some((secs, on))
    });
    let launch_commands: Vec<String> = lp
        .get("launch_commands")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let blueprint_id = body
        .blueprint_id
        .clone()
        .or_else(|| body.blueprint_name.as_ref().map(|n| format!("bpt_{n}")));
    let mut devbox = Devbox {
        id: new_id("dbx"),
        name: body.name.clone(),
        status: String::new(),
        create_time_ms: now_ms(),
        end_time_ms: None,
        metadata: body.metadata.clone(),
        blueprint_id,
        snapshot_id: body.snapshot_id.clone(),
        launch_parameters: lp,
        transitions: Vec::new(),
        failure_reason: None,
        shutdown_reason: None,
        tunnel: None,
        sandbox: None,
        keep_alive_secs,
        idle,
        last_active: Instant::now(),
        executions: HashMap::new(),
        execution_order: Vec::new(),
        command_ids: HashMap::new(),
    };
    devbox.set_status("provisioning", None);
    if let Some(t) = &body.tunnel {
        devbox.tunnel = Some(crate::tunnels::new_tunnel(t));
    }
    let view = devbox.view();
    let id = devbox.id.clone();
    emu.devboxes.lock().unwrap().push(devbox);
    tokio::spawn(provision(
        emu.clone(),
        id,
        body.environment_variables,
        launch_commands,
        body.entrypoint,
    ));
    Ok(json_resp(view))
}

async fn provision(
    emu: Arc<Emu>,
    id: String,
    env: BTreeMap<String, String>,
    launch: Vec<String>,
    entrypoint: Option<String>,
) {
    let engine = &emu.opts.engine;
    let spec = localbox::SandboxSpec {
        env,
        ..Default::default()
    };
    let sandbox = match engine.create(spec).await {
        Ok(s) => s.id,
        Err(e) => {
            tracing::warn!("provisioning {id}: {e}");
            emu.set_status(&id, "failure", Some("execution_failed"));
            return;
        }
    };
    let gone = emu
        .with_devbox(&id, |d| {
            d.sandbox = Some(sandbox.clone());
            Ok(d.status == "shutdown")
        })
        .unwrap_or(true);
    if gone {
        let _ = engine.destroy(&sandbox).await;
        return;
    }
    emu.set_status(&id, "initializing", None);
    for cmd in &launch {
        match engine.exec(&sandbox, crate::executions::shell(cmd)).await {
            Ok(out) if out.exit_code == 0 => {}
            other => {
                tracing::info!("launch command {cmd:?} of {id} failed: {other:?}");
                emu.set_status(&id, "failure", Some("execution_failed"));
                return;
            }
        }
    }
    if let Some(ep) = entrypoint {
        let _ = engine
            .start_process(&sandbox, crate::executions::shell(&ep))
            .await;
    }
    // Not if it was shut down meanwhile.
    let still = emu
        .with_devbox(&id, |d| Ok(d.status == "initializing"))
        .unwrap_or(false);
    if still {
        emu.set_status(&id, "running", None);
    }
}

pub(crate) async fn retrieve(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json_resp(emu.with_devbox(&id, |d| Ok(d.view()))?))
}

#[derive(Deserialize)]
pub(crate) struct UpdateBody {
    name: Option<String>,
    metadata: Option<Map<String, Value>>,
}

pub(crate) async fn update(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<UpdateBody>,
) -> Result<Response, ApiError> {
    Ok(json_resp(emu.with_devbox(&id, |d| {
        if let Some(n) = b.name {
            d.name = Some(n);
        }
        if let Some(m) = b.metadata {
            d.metadata = m;
        }
        Ok(d.view())
    })?))
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    starting_after: Option<String>,
    status: Option<String>,
    include_total_count: Option<bool>,
}

/// Newest first; `starting_after` is the last id of the previous page.
pub(crate) async fn list(
    State(emu): State<Arc<Emu>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 5000);
    let all = emu.devboxes.lock().unwrap();
    let matching: Vec<&Devbox> = all
        .iter()
        .rev()
        .filter(|d| q.status.as_deref().is_none_or(|s| d.status == s))
        .collect();
    let start = match &q.starting_after {
        Some(after) => matching
            .iter()
            .position(|d| &d.id == after)
            .map(|i| i + 1)
            .ok_or_else(|| ApiError::bad(format!("starting_after {after}: no such devbox")))?,
        None => 0,
    };
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|d| d.view())
        .collect();
    let has_more = start + page.len() < matching.len();
    let mut v = json!({ "devboxes": page, "has_more": has_more });
    if q.include_total_count == Some(true) {
        v["total_count"] = json!(matching.len());
    }
    Ok(json_resp(v))
}

#[derive(Deserialize)]
pub(crate) struct WaitBody {
    statuses: Vec<String>,
    timeout_seconds: Option<f64>,
}

/// The hold of a long poll: what the client asked, at most [`MAX_HOLD`].
pub(crate) fn hold(timeout_seconds: Option<f64>) -> Duration {
    Duration::from_secs_f64(
        timeout_seconds
            .unwrap_or(30.0)
            .clamp(0.0, MAX_HOLD.as_secs_f64()),
    )
}

/// 200 with the view once the status is one of `statuses`; 408 when `timeout_seconds` pass.
pub(crate) async fn wait_for_status(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<WaitBody>,
) -> Result<Response, ApiError> {
    emu.with_devbox(&id, |_| Ok(()))?;
    let found = long_poll(&emu.changed, hold(b.timeout_seconds), || {
        emu.with_devbox(&id, |d| {
            Ok(b.statuses.contains(&d.status).then(|| d.view()))
        })
        .ok()
        .flatten()
    })
    .await;
    Ok(found.map(json_resp).unwrap_or_else(long_poll_timeout))
}

pub(crate) async fn shutdown(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = shut_down(&emu, &id, "api_shutdown").await?;
    Ok(json_resp(view))
}

/// Destroys the sandbox; the devbox stays listed with status `shutdown`.
async fn shut_down(emu: &Emu, id: &str, reason: &str) -> Result<Value, ApiError> {
    let sandbox = emu.with_devbox(id, |d| {
        if d.status == "shutdown" {
            return Ok(None);
        }
        d.shutdown_reason = Some(reason.to_string());
        d.set_status("shutdown", None);
        Ok(d.sandbox.take())
    })?;
    emu.changed.notify_waiters();
    if let Some(s) = sandbox {
        let _ = emu.opts.engine.destroy(&s).await;
    }
    // Executions end with the devbox.
    let exes: Vec<_> = emu.with_devbox(id, |d| {
        Ok(d.executions.values().cloned().collect::<Vec<_>>())
    })?;
    for e in exes {
        e.finish(137);
    }
    emu.with_devbox(id, |d| Ok(d.view()))
}

pub(crate) async fn suspend(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = start_suspend(&emu, &id)?;
    Ok(json_resp(view))
}

/// `running` → `suspending` now, → `suspended` once localbox paused it.
fn start_suspend(emu: &Arc<Emu>, id: &str) -> Result<Value, ApiError> {
    let sandbox = emu.with_devbox(id, |d| match d.status.as_str() {
        "running" => {
            d.set_status("suspending", None);
            Ok(d.sandbox.clone())
        }
        "suspending" | "suspended" => Ok(None),
        s => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("devbox {id} is {s}; only a running devbox can be suspended"),
        )),
    })?;
    emu.changed.notify_waiters();
    if let Some(s) = sandbox {
        let (emu2, id2) = (emu.clone(), id.to_string());
        tokio::spawn(async move {
            match emu2.opts.engine.pause(&s).await {
                Ok(_) => emu2.set_status(&id2, "suspended", None),
                Err(e) => {
                    tracing::warn!("suspending {id2}: {e}");
                    emu2.set_status(&id2, "failure", Some("health_check_failed"));
                }
            }
        });
    }
    emu.with_devbox(id, |d| Ok(d.view()))
}

/// `suspended` → `resuming` now, → `running` once localbox resumed it.
pub(crate) async fn resume(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let sandbox = emu.with_devbox(&id, |d| match d.status.as_str() {
        "suspended" => {
            d.set_status("resuming", None);
            d.last_active = Instant::now();
            Ok(d.sandbox.clone())
        }
        "resuming" | "running" => Ok(None),
        s => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            format!("devbox {id} is {s}; only a suspended devbox can be resumed"),
        )),
    })?;
    emu.changed.notify_waiters();
    if let Some(s) = sandbox {
        let (emu2, id2) = (emu.clone(), id.clone());
        tokio::spawn(async move {
            match emu2.opts.engine.resume(&s).await {
                Ok(_) => emu2.set_status(&id2, "running", None),
                Err(e) => {
                    tracing::warn!("resuming {id2}: {e}");
                    emu2.set_status(&id2, "failure", Some("health_check_failed"));
                }
            }
        });
    }
    Ok(json_resp(emu.with_devbox(&id, |d| Ok(d.view()))?))
}

pub(crate) async fn keep_alive(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    emu.with_devbox(&id, |d| {
        if d.status == "shutdown" {
            return Err(ApiError::bad(format!("devbox {id} is shut down")));
        }
        d.last_active = Instant::now();
        Ok(())
    })?;
    Ok(json_resp(json!({})))
}

/// Every second: a running devbox past its idle time (`after_idle`) or keep-alive is suspended
/// or shut down.
pub(crate) fn spawn_reaper(emu: WeakEmu) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(emu) = emu.upgrade() else { return };
            let due: Vec<(String, Option<OnIdle>)> = emu
                .devboxes
                .lock()
                .unwrap()
                .iter()
                .filter(|d| d.status == "running")
                .filter_map(|d| {
                    let idle = d.last_active.elapsed().as_secs();
                    match &d.idle {
                        Some((secs, on)) if idle >= *secs => Some((d.id.clone(), Some(on.clone()))),
                        None if idle >= d.keep_alive_secs => Some((d.id.clone(), None)),
                        _ => None,
                    }
                })
                .collect();
            for (id, on) in due {
                match on {
                    Some(OnIdle::Suspend) => {
                        let _ = start_suspend(&emu, &id);
                    }
                    Some(OnIdle::Shutdown) => {
                        let _ = shut_down(&emu, &id, "idle").await;
                    }
                    None => {
                        let _ = shut_down(&emu, &id, "keep_alive_timeout").await;
                    }
                }
            }
        }
    });
}

/// Marks activity on a devbox (commands, files), which defers its idle policy.
pub(crate) fn touch(emu: &Emu, id: &str) {
    let _ = emu.with_devbox(id, |d| {
        d.last_active = Instant::now();
        Ok(())
    });
}
