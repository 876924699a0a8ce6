//! Files: contents through `upload_file` (multipart) and `download_file` (raw bytes), both binary
//! safe; mode, listing, stat, remove and mkdir through short commands (Runloop has no API for
//! them). Relative paths resolve against the sandbox's workdir.

use kit::http::Method;
use kit::{FileKind, FileStat, Result, SandboxRef};
use serde_json::json;

use crate::api::{devboxes, request, send, send_read};
use crate::exec::{absolute, helper};
use crate::Token;

/// Exit status the helper scripts use for "no such path".
const MISSING: i32 = 44;

/// Relative paths stay relative (Runloop resolves them against the devbox's home, where the
/// helper commands also start) unless the sandbox has its own workdir.
fn path_of(sandbox: &SandboxRef, path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(kit::invalid_argument("empty path"));
    }
    Ok(match Token::of(sandbox).workdir {
        Some(w) => absolute(&w, path),
        None => path.to_string(),
    })
}

/// `upload_file` of `data` to the absolute `path`.
pub fn upload(sandbox: &SandboxRef, path: &str, data: Vec<u8>) -> Result<()> {
    let name = path.rsplit('/').next().unwrap_or("file");
    let form = kit::multipart::Form::random()
        .text("path", path)
        .file_owned("file", name, data);
    let req = request(Method::Post, devboxes(&[&sandbox.id, "upload_file"])?)
        .header("content-type", form.content_type())
        .body_parts(form.finish_parts());
    send(req, None, &[]).map(drop)
}

pub fn read(sandbox: &SandboxRef, path: &str) -> Result<Vec<u8>> {
    let path = path_of(sandbox, path)?;
    let req = request(Method::Post, devboxes(&[&sandbox.id, "download_file"])?)
        .json(&json!({ "path": path }))
        .header("accept", "application/octet-stream");
    send_read(req, None, &[])
}

pub fn write(sandbox: &SandboxRef, path: &str, data: Vec<u8>, mode: Option<u32>) -> Result<()> {
    let path = path_of(sandbox, path)?;
    upload(sandbox, &path, data)?;
    if let Some(mode) = mode.filter(|m| *m != 0o644) {
        run_ok(
            sandbox,
            &format!("chmod {mode:o} -- {}", kit::quote(&path)),
            &path,
        )?;
    }
    Ok(())
}

/// Runs a helper; a non-zero exit is an error (`not-found` for [`MISSING`]).
fn run_ok(sandbox: &SandboxRef, script: &str, path: &str) -> Result<Vec<u8>> {
    let (code, out, err) = helper(sandbox, script)?;
    match code {
        0 => Ok(out),
        MISSING => Err(kit::not_found(format!("{path}: no such file or directory"))),
        _ => {
            let msg = String::from_utf8_lossy(&err).trim().to_string();
            if msg.contains("not empty") || msg.contains("File exists") {
                Err(kit::conflict(format!("{path}: {msg}")))
            } else {
                Err(kit::provider(0, format!("{path}: {msg} (exit {code})")))
            }
        }
    }
}

/// `find -printf` fields per entry: type, size, mode (octal), mtime, path; NUL-terminated.
const FORMAT: &str = "%y %s %m %T@ %p\\0";

fn parse_entries(out: &[u8]) -> Vec<FileStat> {
    out.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            let mut f = e.splitn(5, ' ');
            let (kind, size, mode, mtime, path) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            Some(FileStat {
                name: path.rsplit('/').next().unwrap_or(path).to_string(),
                path: path.to_string(),
                kind: match kind {
                    "f" => FileKind::File,
                    "d" => FileKind::Directory,
                    "l" => FileKind::Symlink,
                    _ => FileKind::Other,
                },
                size: size.parse().unwrap_or(0),
                mode: u32::from_str_radix(mode, 8).unwrap_or(0),
                modified_ms: mtime.parse::<f64>().ok().map(|s| (s * 1000.0) as u64),
            })
        })
        .collect()
}

fn exists_or_missing(q: &str) -> String {
    format!("if [ ! -e {q} ] && [ ! -L {q} ]; then exit {MISSING}; fi; ")
}

pub fn list_dir(sandbox: &SandboxRef, path: &str) -> Result<Vec<FileStat>> {
    let p = path_of(sandbox, path)?;
    let q = kit::quote(&p);
    let script = format!(
        "{}find {q} -mindepth 1 -maxdepth 1 -printf '{FORMAT}'",
        exists_or_missing(&q)
    );
    let mut entries = parse_entries(&run_ok(sandbox, &script, &p)?);
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

pub fn stat(sandbox: &SandboxRef, path: &str) -> Result<FileStat> {
    let p = path_of(sandbox, path)?;
    let q = kit::quote(&p);
    let script = format!(
        "{}find {q} -maxdepth 0 -printf '{FORMAT}'",
        exists_or_missing(&q)
    );
    parse_entries(&run_ok(sandbox, &script, &p)?)
        .into_iter()
        .next()
        .ok_or_else(|| kit::provider(0, format!("{p}: stat gave nothing")))
}

pub fn remove(sandbox: &SandboxRef, path: &str, recursive: bool) -> Result<()> {
    let p = path_of(sandbox, path)?;
    let q = kit::quote(&p);
    let rm = if recursive {
        format!("rm -rf -- {q}")
    } else {
        format!("if [ -d {q} ] && [ ! -L {q} ]; then rmdir -- {q}; else rm -f -- {q}; fi")
    };
    run_ok(sandbox, &format!("{}{rm}", exists_or_missing(&q)), &p).map(drop)
}

pub fn mkdir(sandbox: &SandboxRef, path: &str, parents: bool) -> Result<()> {
    let p = path_of(sandbox, path)?;
    let flag = if parents { "-p " } else { "" };
    run_ok(sandbox, &format!("mkdir {flag}-- {}", kit::quote(&p)), &p).map(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn find_output_parses() {
        let e = super::parse_entries(
            b"f 3 644 1700000000.5 /w/d/top.txt\0d 4096 755 1700000000.0 /w/d/a b\0",
        );
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].name.as_str(), e[0].size, e[0].mode),
            ("top.txt", 3, 0o644)
        );
        assert_eq!(
            (e[1].name.as_str(), e[1].kind),
            ("a b", kit::FileKind::Directory)
        );
        assert_eq!(e[0].modified_ms, Some(1_700_000_000_500));
    }
}
