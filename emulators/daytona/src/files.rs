//! Toolbox file routes: bulk upload and download (multipart, binary intact), list, info,
//! folder creation, permissions, delete. Paths are the sandbox's view; `/home/daytona` is the
//! workdir and relative paths resolve against it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use localbox::{FileKind, FileStat};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::dto;
use crate::multipart::MultipartWriter;
use crate::process::{sandbox_path, workdir};
use crate::state::App;

type Ctx = State<Arc<App>>;

/// Largest upload accepted (the host's default file cap is 64 MiB).
const MAX_UPLOAD: usize = 1 << 30;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/toolbox/{id}/files/bulk-upload",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/toolbox/{id}/files/bulk-download", post(download))
        .route(
            "/toolbox/{id}/files",
            axum::routing::get(list).delete(remove),
        )
        .route("/toolbox/{id}/files/info", axum::routing::get(info))
        .route("/toolbox/{id}/files/folder", post(folder))
        .route("/toolbox/{id}/files/permissions", post(permissions))
        .route("/toolbox/{id}/files/move", post(move_file))
        .route(
            "/toolbox/{id}/files/find",
            axum::routing::get(find_in_files),
        )
        .route(
            "/toolbox/{id}/files/search",
            axum::routing::get(search_files),
        )
        .route("/toolbox/{id}/files/replace", post(replace_in_files))
}

/// `-rw-r--r--` from a kind and permission bits.
fn mode_string(kind: FileKind, mode: u32) -> String {
    let mut s = String::from(match kind {
        FileKind::Directory => "d",
        FileKind::Symlink => "L",
        _ => "-",
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// A daemon `FileInfo`, with paths shown as the client named them.
fn file_info(st: &FileStat, shown_path: &str) -> Value {
    let mod_time = crate::state::iso_from_ms(st.modified_ms);
    json!({
        "name": st.name,
        "path": shown_path,
        "isDir": st.kind == FileKind::Directory,
        "size": st.size,
        "mode": mode_string(st.kind, st.mode),
        "permissions": format!("{:04o}", st.mode & 0o7777),
        "owner": "daytona",
        "group": "daytona",
        "modTime": mod_time,
        "modifiedAt": mod_time,
    })
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
    recursive: Option<bool>,
    mode: Option<String>,
}

fn resolve(app: &App, id: &str, p: &str) -> Result<String, Response> {
    let wd = workdir(app, id)?;
    if p.is_empty() {
        return Err(dto::daemon_error(400, "BAD_REQUEST", "path is required"));
    }
    Ok(sandbox_path(&wd, p))
}

async fn upload(State(app): Ctx, Path(id): Path<String>, mut form: Multipart) -> Response {
    if let Err(r) = workdir(&app, &id) {
        return r;
    }
    // files[i].path names where files[i].file goes; a file part's filename is the fallback.
    let mut paths: HashMap<String, String> = HashMap::new();
    let mut files: Vec<(String, Option<String>, bytes::Bytes)> = Vec::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return dto::daemon_error(400, "BAD_REQUEST", &format!("multipart: {e}")),
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) => return dto::daemon_error(400, "BAD_REQUEST", &format!("multipart: {e}")),
        };
        if let Some(index) = name.strip_suffix(".path") {
            paths.insert(
                index.to_string(),
                String::from_utf8_lossy(&data).into_owned(),
            );
        } else if let Some(index) = name.strip_suffix(".file") {
            files.push((index.to_string(), filename, data));
        }
    }
    let mut errors = Vec::new();
    let mut written = Vec::new();
    for (index, filename, data) in files {
        let Some(dst) = paths.get(&index).cloned().or(filename) else {
            errors.push(format!("{index}: no destination path"));
            continue;
        };
        let target = match resolve(&app, &id, &dst) {
            Ok(t) => t,
            Err(r) => return r,
        };
        match app
            .opts
            .engine
            .write_file(&id, &target, data.to_vec(), None)
            .await
        {
            Ok(()) => written.push(dst),
            Err(e) => errors.push(format!("{dst}: {e}")),
        }
    }
    if !errors.is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({ "errors": errors }))).into_response();
    }
    Json(json!({ "files": written })).into_response()
}

#[derive(Deserialize)]
struct DownloadBody {
    paths: Vec<String>,
}

async fn download(
    State(app): Ctx,
    Path(id): Path<String>,
    Json(b): Json<DownloadBody>,
) -> Response {
    let mut w = MultipartWriter::new();
    for p in &b.paths {
        let target = match resolve(&app, &id, p) {
            Ok(t) => t,
            Err(r) => return r,
        };
        match app.opts.engine.read_file(&id, &target).await {
            Ok(data) => w.part("file", p, "application/octet-stream", &data),
            Err(e) => {
                let (status, code) = dto::localbox_status(&e);
                let body = dto::daemon_error_body(status, code, &e.to_string());
                w.part("error", p, "application/json", body.to_string().as_bytes());
            }
        }
    }
    let ct = w.content_type();
    ([("content-type", ct)], w.finish()).into_response()
}

async fn list(State(app): Ctx, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let target = match resolve(&app, &id, &q.path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match app.opts.engine.list_dir(&id, &target).await {
        Ok(entries) => {
            let base = q.path.trim_end_matches('/');
            let all: Vec<Value> = entries
                .iter()
                .map(|st| file_info(st, &format!("{base}/{}", st.name)))
                .collect();
            Json(all).into_response()
        }
        Err(e) => dto::from_localbox(e),
    }
}

async fn info(State(app): Ctx, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let target = match resolve(&app, &id, &q.path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match app.opts.engine.stat(&id, &target).await {
        Ok(st) => Json(file_info(&st, &q.path)).into_response(),
        Err(e) => dto::from_localbox(e),
    }
}

async fn folder(State(app): Ctx, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let target = match resolve(&app, &id, &q.path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    // The daemon creates parents (os.MkdirAll); an existing directory is fine.
    match app.opts.engine.mkdir(&id, &target, true).await {
        Ok(()) => {
            if let Some(mode) = q.mode.as_deref() {
                let _ = chmod(&app, &id, &target, mode).await;
            }
            StatusCode::CREATED.into_response()
        }
        Err(e) => dto::from_localbox(e),
    }
}

async fn remove(State(app): Ctx, Path(id): Path<String>, Query(q): Query<PathQuery>) -> Response {
    let target = match resolve(&app, &id, &q.path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match app
        .opts
        .engine
        .remove(&id, &target, q.recursive.unwrap_or(false))
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => dto::from_localbox(e),
    }
}

/// `chmod MODE PATH` run in the sandbox (localbox has no chmod of its own).
async fn chmod(app: &App, id: &str, target: &str, mode: &str) -> Result<(), Response> {
    if mode.is_empty() || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(dto::daemon_error(
            400,
            "BAD_REQUEST",
            &format!("invalid mode {mode:?}"),
        ));
    }
    let out = app
        .opts
        .engine
        .exec(id, localbox::ExecRequest::argv(["chmod", mode, target]))
        .await
        .map_err(dto::from_localbox)?;
    if out.exit_code != 0 {
        let msg = String::from_utf8_lossy(&out.stderr_tail).into_owned();
        let status = if msg.contains("No such file") {
            404
        } else {
            400
        };
        return Err(dto::daemon_error(status, "FILE_NOT_FOUND", msg.trim()));
    }
    Ok(())
}

async fn permissions(
    State(app): Ctx,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
) -> Response {
    let target = match resolve(&app, &id, &q.path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(mode) = q.mode.as_deref() {
        if let Err(r) = chmod(&app, &id, &target, mode).await {
            return r;
        }
    }
    StatusCode::OK.into_response()
}

#[derive(Deserialize)]
struct MoveQuery {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

/// `POST /files/move?source=&destination=`: as the daemon, 404 for a missing source or
/// destination parent, 409 when the destination exists, else a rename.
async fn move_file(
    State(app): Ctx,
    Path(id): Path<String>,
    Query(q): Query<MoveQuery>,
) -> Response {
    if q.source.is_empty() || q.destination.is_empty() {
        return dto::daemon_error(
            400,
            "BAD_REQUEST",
            "source and destination paths are required",
        );
    }
    let (from, to) = match (
        resolve(&app, &id, &q.source),
        resolve(&app, &id, &q.destination),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let engine = &app.opts.engine;
    if engine.stat(&id, &to).await.is_ok() {
        return dto::daemon_error(409, "CONFLICT", "destination already exists");
    }
    match engine.rename(&id, &from, &to).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => dto::from_localbox(e),
    }
}

/// Regular files under `base` (the client's path) as (the client's path, the sandbox's path),
/// in name order; a directory that cannot be read is skipped, as the daemon does.
async fn walk_files(app: &App, id: &str, base: &str) -> Result<Vec<(String, String)>, Response> {
    let target = resolve(app, id, base)?;
    let engine = &app.opts.engine;
    let root = engine.stat(id, &target).await.map_err(dto::from_localbox)?;
    match root.kind {
        FileKind::Directory => {}
        FileKind::File => return Ok(vec![(base.to_string(), target)]),
        _ => return Ok(Vec::new()),
    }
    let entries = match emulator_common::walk(engine, id, &target, true).await {
        Ok(e) => e,
        // Too many entries; any other failure is the root being unreadable: nothing found.
        Err(e) if e.code == localbox::ErrorCode::InvalidArgument => {
            return Err(dto::from_localbox(e))
        }
        Err(_) => Vec::new(),
    };
    let shown = base.trim_end_matches('/');
    let mut files: Vec<(String, String)> = entries
        .into_iter()
        .filter(|(_, st)| st.kind == FileKind::File)
        .map(|(rel, st)| (format!("{shown}/{rel}"), st.path))
        .collect();
    files.sort();
    Ok(files)
}

#[derive(Deserialize)]
struct PatternQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    pattern: String,
}

fn path_and_pattern(q: &PatternQuery) -> Result<(), Response> {
    if q.path.is_empty() || q.pattern.is_empty() {
        return Err(dto::daemon_error(
            400,
            "BAD_REQUEST",
            "path and pattern are required",
        ));
    }
    Ok(())
}

/// `GET /files/find?path=&pattern=`: lines containing `pattern` (plain text) in the text files
/// under `path` (a NUL in the first 512 bytes marks a file binary, skipped).
async fn find_in_files(
    State(app): Ctx,
    Path(id): Path<String>,
    Query(q): Query<PatternQuery>,
) -> Response {
    if let Err(r) = path_and_pattern(&q) {
        return r;
    }
    let files = match walk_files(&app, &id, &q.path).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut matches = Vec::new();
    for (shown, target) in files {
        let Ok(data) = app.opts.engine.read_file(&id, &target).await else {
            continue;
        };
        if data.iter().take(512).any(|b| *b == 0) {
            continue;
        }
        let text = String::from_utf8_lossy(&data);
        for (i, line) in text.lines().enumerate() {
            if line.contains(q.pattern.as_str()) {
                matches.push(json!({ "file": shown, "line": i + 1, "content": line }));
            }
        }
    }
    Json(matches).into_response()
}

/// `GET /files/search?path=&pattern=`: files whose path relative to `path` matches the glob
/// (`*` within a directory, `**` across them, `?`, `{a,b}`).
async fn search_files(
    State(app): Ctx,
    Path(id): Path<String>,
    Query(q): Query<PatternQuery>,
) -> Response {
    if let Err(r) = path_and_pattern(&q) {
        return r;
    }
    let glob = match globset::GlobBuilder::new(&q.pattern)
        .literal_separator(true)
        .build()
    {
        Ok(g) => g.compile_matcher(),
        Err(_) => {
            let m = format!("invalid glob pattern: {}", q.pattern);
            return dto::daemon_error(400, "BAD_REQUEST", &m);
        }
    };
    let files = match walk_files(&app, &id, &q.path).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let base = format!("{}/", q.path.trim_end_matches('/'));
    let found: Vec<String> = files
        .into_iter()
        .map(|(shown, _)| shown)
        .filter(|shown| glob.is_match(shown.strip_prefix(&base).unwrap_or(shown)))
        .collect();
    Json(json!({ "files": found })).into_response()
}

#[derive(Deserialize)]
struct ReplaceBody {
    files: Vec<String>,
    pattern: String,
    #[serde(rename = "newValue")]
    new_value: String,
}

/// `POST /files/replace`: every occurrence of `pattern` (plain text) in each file replaced; a
/// result per file, failures included rather than failing the request.
async fn replace_in_files(
    State(app): Ctx,
    Path(id): Path<String>,
    Json(b): Json<ReplaceBody>,
) -> Response {
    let mut results = Vec::new();
    for file in b.files {
        let target = match resolve(&app, &id, &file) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let engine = &app.opts.engine;
        let done = async {
            let data = engine.read_file(&id, &target).await?;
            let replaced = replace_all(&data, b.pattern.as_bytes(), b.new_value.as_bytes());
            engine.write_file(&id, &target, replaced, None).await
        }
        .await;
        results.push(match done {
            Ok(()) => json!({ "file": file, "success": true }),
            Err(e) => json!({ "file": file, "success": false, "error": e.to_string() }),
        });
    }
    Json(results).into_response()
}

/// `data` with every occurrence of `from` replaced by `to`, bytes kept as they are (an empty
/// `from` replaces nothing).
fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut at = 0;
    while let Some(i) = emulator_common::find(data, from, at) {
        out.extend_from_slice(&data[at..i]);
        out.extend_from_slice(to);
        at = i + from.len();
    }
    out.extend_from_slice(&data[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::replace_all;

    #[test]
    fn replace_all_keeps_other_bytes() {
        assert_eq!(replace_all(b"a-b-\xffc-", b"-", b"+="), b"a+=b+=\xffc+=");
        assert_eq!(replace_all(b"aaa", b"aa", b"b"), b"ba");
        assert_eq!(replace_all(b"abc", b"", b"x"), b"abc");
    }
}
