//! The control plane under `/api`: sandboxes (create, get, list with a JSON labels filter and
//! cursor paging, start, stop, delete), labels, auto-stop/archive/delete intervals, preview URLs,
//! and a 404 on Socket.IO so the SDK falls back to polling.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::dto;
use crate::state::{now_iso, App, Sandbox};

type Ctx = State<Arc<App>>;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/socket.io", get(no_socket_io))
        .route("/api/socket.io/", get(no_socket_io))
        .route("/api/sandbox", post(create).get(list))
        .route("/api/sandbox/{id}", get(get_one).delete(delete))
        .route("/api/sandbox/{id}/start", post(start))
        .route("/api/sandbox/{id}/stop", post(stop))
        .route("/api/sandbox/{id}/labels", put(set_labels))
        .route("/api/sandbox/{id}/{setting}/{value}", post(set_interval))
        .route(
            "/api/sandbox/{id}/ports/{port}/preview-url",
            get(preview_url),
        )
        .route("/api/sandbox/{id}/toolbox-proxy-url", get(toolbox_url))
}

/// Socket.IO is not emulated: the SDK carries on with polling when the upgrade fails.
async fn no_socket_io(OriginalUri(uri): OriginalUri) -> Response {
    dto::api_error(
        404,
        "Not Found",
        "socket.io is not served by the emulator",
        uri.path(),
    )
}

fn toolbox(app: &App) -> String {
    format!("{}/toolbox", app.opts.base_url)
}

fn not_found(id: &str, path: &str) -> Response {
    dto::api_error(
        404,
        "Not Found",
        &format!("Sandbox with ID or name {id} not found"),
        path,
    )
}

fn dto_of(app: &App, sb: &Sandbox) -> Response {
    Json(dto::sandbox(sb, &toolbox(app))).into_response()
}

/// An optional strict integer field of the create body.
fn int_field(body: &Value, key: &str, default: i64) -> Result<i64, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("{key} must be an integer")),
    }
}

fn string_map(body: &Value, key: &str) -> Result<BTreeMap<String, String>, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| format!("{key} must be an object of strings")),
    }
}

async fn create(
    State(app): Ctx,
    OriginalUri(uri): OriginalUri,
    Json(body): Json<Value>,
) -> Response {
    let path = uri.path();
    let parsed = (|| -> Result<_, String> {
        Ok((
            string_map(&body, "env")?,
            string_map(&body, "labels")?,
            int_field(&body, "cpu", 1)?,
            int_field(&body, "gpu", 0)?,
            int_field(&body, "memory", 1)?,
            int_field(&body, "disk", 3)?,
            int_field(&body, "autoStopInterval", 15)?,
            int_field(&body, "autoArchiveInterval", 10080)?,
            int_field(&body, "autoDeleteInterval", -1)?,
        ))
    })();
    let (env, labels, cpu, gpu, memory, disk, auto_stop, auto_archive, auto_delete) = match parsed {
        Ok(p) => p,
        Err(m) => return dto::api_error(400, "Bad Request", &m, path),
    };
    let name = body["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    if let Some(n) = &name {
        if app.find(n).is_some() {
            return dto::api_error(
                409,
                "Conflict",
                &format!("Sandbox with name {n} already exists"),
                path,
            );
        }
    }
    let spec = localbox::SandboxSpec {
        env: env.clone(),
        labels: labels.clone(),
        image: body["snapshot"].as_str().map(str::to_string),
        ..Default::default()
    };
    let info = match app.opts.engine.create(spec).await {
        Ok(i) => i,
        Err(e) => return dto::api_error(500, "Internal Server Error", &e.to_string(), path),
    };
    let now = now_iso();
    let image = body["buildInfo"]["dockerfileContent"]
        .as_str()
        .and_then(|d| d.lines().next())
        .and_then(|l| l.strip_prefix("FROM "))
        .map(|s| s.trim().to_string());
    let sb = Sandbox {
        id: info.id.clone(),
        name: name.unwrap_or_else(|| info.id.clone()),
        snapshot: body["snapshot"].as_str().map(str::to_string).or(image),
        env,
        labels,
        public: body["public"].as_bool().unwrap_or(false),
        target: body["target"].as_str().unwrap_or("us").to_string(),
        cpu,
        gpu,
        memory,
        disk,
        state: "creating".into(),
        desired_state: "started".into(),
        error_reason: None,
        auto_stop,
        auto_archive,
        auto_delete,
        created_at: now.clone(),
        updated_at: now,
        pending: None,
        seq: app.next_seq(),
    };
    app.sandboxes.lock().unwrap().insert(sb.id.clone(), sb);
    app.transition_to(&info.id, "creating", "started");
    let sb = app.find(&info.id).expect("just inserted");
    dto_of(&app, &sb)
}

async fn get_one(
    State(app): Ctx,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    match app.find(&id) {
        Some(sb) => dto_of(&app, &sb),
        None => not_found(&id, uri.path()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    labels: Option<String>,
    name: Option<String>,
    id: Option<String>,
    states: Option<String>,
}

async fn list(
    State(app): Ctx,
    Query(q): Query<ListQuery>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let path = uri.path();
    let want: BTreeMap<String, String> = match q.labels.as_deref().filter(|l| !l.is_empty()) {
        None => BTreeMap::new(),
        Some(l) => match serde_json::from_str(l) {
            Ok(m) => m,
            Err(_) => {
                return dto::api_error(
                    400,
                    "Bad Request",
                    "labels must be a JSON object of strings",
                    path,
                )
            }
        },
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=200).contains(&limit) {
        return dto::api_error(400, "Bad Request", "limit must be between 1 and 200", path);
    }
    let offset: usize = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => match c.parse() {
            Ok(o) => o,
            Err(_) => return dto::api_error(400, "Bad Request", "invalid cursor", path),
        },
    };
    app.settle();
    let states: Vec<&str> = q
        .states
        .as_deref()
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let mut all: Vec<Sandbox> = app
        .sandboxes
        .lock()
        .unwrap()
        .values()
        .filter(|sb| want.iter().all(|(k, v)| sb.labels.get(k) == Some(v)))
        .filter(|sb| {
            q.name
                .as_ref()
                .is_none_or(|n| sb.name.starts_with(n.as_str()))
        })
        .filter(|sb| q.id.as_ref().is_none_or(|i| sb.id.starts_with(i.as_str())))
        .filter(|sb| states.is_empty() || states.contains(&sb.state.as_str()))
        .cloned()
        .collect();
    // Newest first (the service sorts by last activity), stable by creation order.
    all.sort_by_key(|sb| std::cmp::Reverse(sb.seq));
    let tb = toolbox(&app);
    let items: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|sb| dto::list_item(sb, &tb))
        .collect();
    let next = (offset + limit < all.len()).then(|| (offset + limit).to_string());
    Json(json!({ "items": items, "nextCursor": next })).into_response()
}

async fn delete(
    State(app): Ctx,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let Some(sb) = app.find(&id) else {
        return not_found(&id, uri.path());
    };
    let _ = app.opts.engine.destroy(&sb.id).await;
    crate::sessions::drop_sandbox(&app, &sb.id);
    app.transition_to(&sb.id, "destroying", "destroyed");
    // The answer shows `destroying` even when the record is already gone.
    let mut shown = sb;
    shown.state = "destroying".into();
    shown.desired_state = "destroyed".into();
    app.settle();
    dto_of(&app, &shown)
}

async fn start(State(app): Ctx, Path(id): Path<String>, OriginalUri(uri): OriginalUri) -> Response {
    let Some(sb) = app.find(&id) else {
        return not_found(&id, uri.path());
    };
    match sb.state.as_str() {
        "started" | "starting" => return dto_of(&app, &sb),
        "stopped" | "archived" | "error" => {}
        other => {
            return dto::api_error(
                400,
                "Bad Request",
                &format!("Sandbox is {other}, cannot start"),
                uri.path(),
            )
        }
    }
    if let Err(e) = app.opts.engine.resume(&sb.id).await {
        tracing::warn!("resume {}: {e}", sb.id);
    }
    app.update(&sb.id, |s| s.error_reason = None);
    app.transition_to(&sb.id, "starting", "started");
    dto_of(&app, &app.find(&sb.id).unwrap_or(sb))
}

async fn stop(State(app): Ctx, Path(id): Path<String>, OriginalUri(uri): OriginalUri) -> Response {
    let Some(sb) = app.find(&id) else {
        return not_found(&id, uri.path());
    };
    match sb.state.as_str() {
        "stopped" | "stopping" => return dto_of(&app, &sb),
        "started" => {}
        other => {
            return dto::api_error(
                400,
                "Bad Request",
                &format!("Sandbox is {other}, cannot stop"),
                uri.path(),
            )
        }
    }
    // A stopped Daytona sandbox runs no processes; its files stay.
    crate::sessions::drop_sandbox(&app, &sb.id);
    if let Err(e) = app.opts.engine.pause(&sb.id).await {
        tracing::warn!("pause {}: {e}", sb.id);
    }
    app.transition_to(&sb.id, "stopping", "stopped");
    dto_of(&app, &app.find(&sb.id).unwrap_or(sb))
}

async fn set_labels(
    State(app): Ctx,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    Json(body): Json<Value>,
) -> Response {
    let labels = match string_map(&body, "labels") {
        Ok(l) => l,
        Err(m) => return dto::api_error(400, "Bad Request", &m, uri.path()),
    };
    let Some(sb) = app.find(&id) else {
        return not_found(&id, uri.path());
    };
    app.update(&sb.id, |s| s.labels = labels.clone());
    Json(json!({ "labels": labels })).into_response()
}

async fn set_interval(
    State(app): Ctx,
    Path((id, setting, value)): Path<(String, String, String)>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let Some(sb) = app.find(&id) else {
        return not_found(&id, uri.path());
    };
    let path = uri.path();
    let int = || {
        value
            .parse::<i64>()
            .map_err(|_| dto::api_error(400, "Bad Request", "interval must be an integer", path))
    };
    let result = match setting.as_str() {
        "autostop" => int().map(|n| app.update(&sb.id, |s| s.auto_stop = n.max(0))),
        "autoarchive" => {
            int().map(|n| app.update(&sb.id, |s| s.auto_archive = if n == 0 { 43200 } else { n }))
        }
        "autodelete" => int().map(|n| app.update(&sb.id, |s| s.auto_delete = n)),
        "autopause" | "ttl" => int().map(|_| Some(())),
        "public" => match value.as_str() {
            "true" | "false" => Ok(app.update(&sb.id, |s| s.public = value == "true")),
            _ => Err(dto::api_error(
                400,
                "Bad Request",
                "public must be true or false",
                path,
            )),
        },
        _ => return dto::api_error(404, "Not Found", &format!("Cannot POST {path}"), path),
    };
    match result {
        Ok(_) => dto_of(&app, &app.find(&sb.id).unwrap_or(sb)),
        Err(r) => r,
    }
}

/// Sandboxes share the host's network under localbox, so a server on port P in the sandbox is
/// reached at `127.0.0.1:P`; the token is what a private sandbox's preview would require.
async fn preview_url(
    State(app): Ctx,
    Path((id, port)): Path<(String, u16)>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let Some(sb) = app.find(&id) else {
        return not_found(&id, uri.path());
    };
    let token: String = uuid::Uuid::new_v4().simple().to_string();
    Json(json!({
        "sandboxId": sb.id,
        "url": format!("http://127.0.0.1:{port}"),
        "token": token,
    }))
    .into_response()
}

async fn toolbox_url(
    State(app): Ctx,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    match app.find(&id) {
        Some(_) => Json(json!({ "url": toolbox(&app) })).into_response(),
        None => not_found(&id, uri.path()),
    }
}
