//! Files: `write_file_contents`/`read_file_contents` (UTF-8 text), `upload_file` (multipart)
//! and `download_file` (raw bytes). Paths are the devbox's: relative ones start at its home;
//! `/home/user` and `~` are aliases of localbox's `/workspace` (see the crate docs).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::devboxes::touch;
use crate::state::ApiError;
use crate::wire::{json as json_resp, multipart};
use crate::Emu;

/// The devbox path as localbox sees it.
pub(crate) fn sandbox_path(path: &str) -> Result<String, ApiError> {
    let p = path.trim();
    if p.is_empty() {
        return Err(ApiError::bad("empty path"));
    }
    for home in ["/home/user", "~"] {
        if p == home {
            return Ok("/workspace".into());
        }
        if let Some(rest) = p.strip_prefix(home).and_then(|r| r.strip_prefix('/')) {
            return Ok(format!("/workspace/{rest}"));
        }
    }
    Ok(p.to_string())
}

fn running(emu: &Arc<Emu>, id: &str) -> Result<String, ApiError> {
    let s = emu.with_devbox(id, |d| d.running_sandbox())?;
    touch(emu, id);
    Ok(s)
}

/// Creates missing parent directories (Runloop's writes do).
async fn write(emu: &Emu, sandbox: &str, path: &str, data: Vec<u8>) -> Result<(), ApiError> {
    let engine = &emu.opts.engine;
    if let Some((parent, _)) = path.rsplit_once('/') {
        if !parent.is_empty() && parent != "/workspace" && parent != "/tmp" {
            engine.mkdir(sandbox, parent, true).await?;
        }
    }
    engine.write_file(sandbox, path, data, None).await?;
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct WriteBody {
    file_path: String,
    contents: String,
}

pub(crate) async fn write_contents(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<WriteBody>,
) -> Result<Response, ApiError> {
    let sandbox = running(&emu, &id)?;
    write(
        &emu,
        &sandbox,
        &sandbox_path(&b.file_path)?,
        b.contents.into_bytes(),
    )
    .await?;
    Ok(json_resp(
        json!({ "devbox_id": id, "exit_status": 0, "stdout": "", "stderr": "" }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ReadBody {
    file_path: String,
}

pub(crate) async fn read_contents(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<ReadBody>,
) -> Result<Response, ApiError> {
    let sandbox = running(&emu, &id)?;
    let data = emu
        .opts
        .engine
        .read_file(&sandbox, &sandbox_path(&b.file_path)?)
        .await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        String::from_utf8_lossy(&data).into_owned(),
    )
        .into_response())
}

pub(crate) async fn upload(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sandbox = running(&emu, &id)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parts = multipart(ct, &body)?;
    let path = parts
        .iter()
        .find(|p| p.name == "path")
        .map(|p| String::from_utf8_lossy(&p.data).into_owned())
        .ok_or_else(|| ApiError::bad("multipart field `path` missing"))?;
    let file = parts
        .into_iter()
        .find(|p| p.name == "file")
        .ok_or_else(|| ApiError::bad("multipart file part `file` missing"))?;
    write(&emu, &sandbox, &sandbox_path(&path)?, file.data).await?;
    Ok(json_resp(json!({})))
}

#[derive(Deserialize)]
pub(crate) struct DownloadBody {
    path: String,
}

pub(crate) async fn download(
    State(emu): State<Arc<Emu>>,
    Path(id): Path<String>,
    Json(b): Json<DownloadBody>,
) -> Result<Response, ApiError> {
    let sandbox = running(&emu, &id)?;
    let data = emu
        .opts
        .engine
        .read_file(&sandbox, &sandbox_path(&b.path)?)
        .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        data,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn home_aliases() {
        assert_eq!(
            super::sandbox_path("/home/user/a.txt").unwrap(),
            "/workspace/a.txt"
        );
        assert_eq!(super::sandbox_path("~/x").unwrap(), "/workspace/x");
        assert_eq!(
            super::sandbox_path("/home/username").unwrap(),
            "/home/username"
        );
        assert_eq!(super::sandbox_path("rel/a").unwrap(), "rel/a");
    }
}
