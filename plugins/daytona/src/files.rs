//! Files through the toolbox: bulk upload and download as multipart (binary intact), list, info,
//! folder, delete; a mode is applied with `/files/permissions` after the upload.

use kit::http::Method;
use kit::multipart::{self, Form};
use kit::{FileKind, FileStat, Result, SandboxRef};
use serde::Deserialize;
use serde_json::json;

use crate::api::{request, toolbox_base, SendExt};

/// A daemon `FileInfo`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileInfo {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    is_dir: bool,
    #[serde(default)]
    size: u64,
    /// `-rw-r--r--` (`d…` directories, `L…` symlinks).
    #[serde(default)]
    mode: String,
    /// `0644`.
    #[serde(default)]
    permissions: String,
    #[serde(default)]
    mod_time: Option<String>,
}

fn to_stat(f: FileInfo, fallback_path: String) -> FileStat {
    let kind = if f.is_dir {
        FileKind::Directory
    } else if f.mode.starts_with('L') || f.mode.starts_with('l') {
        FileKind::Symlink
    } else {
        FileKind::File
    };
    FileStat {
        path: f.path.filter(|p| !p.is_empty()).unwrap_or(fallback_path),
        kind,
        size: f.size,
        mode: u32::from_str_radix(f.permissions.trim_start_matches("0o"), 8).unwrap_or(0),
        modified_ms: f.mod_time.as_deref().and_then(crate::api::parse_rfc3339_ms),
        name: f.name,
    }
}

fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(kit::invalid_argument("empty path"));
    }
    Ok(())
}

/// Uploads one file with `POST /files/bulk-upload`.
pub fn upload(base: &str, path: &str, data: Vec<u8>) -> Result<()> {
    let form = Form::random()
        .text("files[0].path", path)
        .file_owned("files[0].file", path, data);
    request(Method::Post, kit::url(base, &["files", "bulk-upload"]))
        .header("content-type", form.content_type())
        .body_parts(form.finish_parts())
        .ok_5xx()
        .map(drop)
}

pub fn write_file(
    sandbox: &SandboxRef,
    path: &str,
    data: Vec<u8>,
    mode: Option<u32>,
) -> Result<()> {
    check_path(path)?;
    let base = toolbox_base(sandbox)?;
    upload(&base, path, data)?;
    if let Some(mode) = mode {
        request(Method::Post, kit::url(&base, &["files", "permissions"]))
            .query("path", path)
            .query("mode", format!("{:o}", mode & 0o7777))
            .ok_5xx()?;
    }
    Ok(())
}

pub fn read_file(sandbox: &SandboxRef, path: &str) -> Result<Vec<u8>> {
    check_path(path)?;
    let base = toolbox_base(sandbox)?;
    let resp = request(Method::Post, kit::url(&base, &["files", "bulk-download"]))
        .json(&json!({ "paths": [path] }))
        .ok_5xx()?;
    let boundary = resp
        .header("content-type")
        .and_then(multipart::boundary_of)
        .ok_or_else(|| kit::provider(0, "bulk-download did not answer multipart"))?;
    let parts = multipart::parse(&resp.bytes()?, &boundary)?;
    for part in parts {
        match part.name.as_str() {
            "file" => return Ok(part.data),
            "error" => {
                #[derive(Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct E {
                    status_code: Option<u16>,
                }
                let status = serde_json::from_slice::<E>(&part.data)
                    .ok()
                    .and_then(|e| e.status_code)
                    .unwrap_or(500);
                return Err(kit::error_from_status(status, None, &part.data).context(path));
            }
            _ => {}
        }
    }
    Err(kit::provider(
        0,
        format!("bulk-download returned nothing for {path}"),
    ))
}

pub fn list_dir(sandbox: &SandboxRef, path: &str) -> Result<Vec<FileStat>> {
    check_path(path)?;
    let base = toolbox_base(sandbox)?;
    let all: Vec<FileInfo> = request(Method::Get, kit::url(&base, &["files"]))
        .query("path", path)
        .json_5xx()?;
    let dir = path.trim_end_matches('/');
    Ok(all
        .into_iter()
        .map(|f| {
            let p = format!("{dir}/{}", f.name);
            to_stat(f, p)
        })
        .collect())
}

pub fn stat(sandbox: &SandboxRef, path: &str) -> Result<FileStat> {
    check_path(path)?;
    let base = toolbox_base(sandbox)?;
    let f: FileInfo = request(Method::Get, kit::url(&base, &["files", "info"]))
        .query("path", path)
        .json_5xx()?;
    Ok(to_stat(f, path.to_string()))
}

pub fn remove(sandbox: &SandboxRef, path: &str, recursive: bool) -> Result<()> {
    check_path(path)?;
    let base = toolbox_base(sandbox)?;
    request(Method::Delete, kit::url(&base, &["files"]))
        .query("path", path)
        .query("recursive", recursive.to_string())
        .ok_5xx()
        .map(drop)
}

/// The daemon always creates parents (`MkdirAll`); without `parents`, a missing parent is
/// checked first so the contract's semantics hold.
pub fn mkdir(sandbox: &SandboxRef, path: &str, parents: bool) -> Result<()> {
    check_path(path)?;
    if !parents {
        let trimmed = path.trim_end_matches('/');
        if let Some((parent, _)) = trimmed.rsplit_once('/') {
            if !parent.is_empty() {
                let st = stat(sandbox, parent)?;
                if st.kind != FileKind::Directory {
                    return Err(kit::invalid_argument(format!(
                        "{parent} is not a directory"
                    )));
                }
            }
        }
    }
    let base = toolbox_base(sandbox)?;
    request(Method::Post, kit::url(&base, &["files", "folder"]))
        .query("path", path)
        .query("mode", "755")
        .ok_5xx()
        .map(drop)
}
