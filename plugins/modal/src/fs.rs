//! Files through the in-sandbox fs-tools helper, as the official SDK does.

use super::*;

/// Runs the fs-tools helper with a JSON command: (exit code, stdout, stderr). stdout is
/// read only when `reads` says so; stderr (its error report) after a non-zero exit.
pub(crate) fn fs_tool(
    sandbox: &SandboxRef,
    command: serde_json::Value,
    stdin: Option<Rc<Vec<u8>>>,
    reads: Reads,
) -> Result<(i32, Vec<u8>, Vec<u8>)> {
    let token = token_for(sandbox)?;
    let run = Running::start(
        &sandbox.id,
        token,
        vec![FS_TOOLS.into(), command.to_string()],
        None,
        &vec![],
        None,
    )?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run.finish(
        stdin,
        reads,
        |b| append(&mut out, b),
        |b| append(&mut err, b),
    )?;
    Ok((code, out, err))
}

/// `b` added to `out`, taken whole when `out` is still empty (a file read in one message).
fn append(out: &mut Vec<u8>, b: Vec<u8>) {
    if out.is_empty() {
        *out = b;
    } else {
        out.extend_from_slice(&b);
    }
}

/// fs-tools' failure (`{"error_kind","message"}` on stderr) as the contract's error.
pub(crate) fn fs_error(path: &str, code: i32, stderr: &[u8]) -> kit::Error {
    #[derive(Deserialize)]
    struct Payload {
        error_kind: String,
        message: String,
    }
    match serde_json::from_slice::<Payload>(stderr) {
        Ok(p) => {
            let msg = format!("{}: {path}", p.message);
            match p.error_kind.as_str() {
                "NotFound" => kit::not_found(msg),
                "PermissionDenied" => kit::forbidden(msg),
                "DirectoryNotEmpty" | "PathAlreadyExists" | "AlreadyExists" | "IsDirectory"
                | "NotDirectory" | "IsFile" => kit::conflict(msg),
                "FileTooLarge" => kit::invalid_argument(msg),
                _ => kit::provider(0, msg),
            }
        }
        Err(_) => kit::provider(
            0,
            format!(
                "fs-tools on {path} exited {code}: {}",
                String::from_utf8_lossy(stderr)
            ),
        ),
    }
}

pub(crate) fn fs_ok(
    sandbox: &SandboxRef,
    path: &str,
    command: serde_json::Value,
    stdin: Option<Rc<Vec<u8>>>,
    reads: Reads,
) -> Result<Vec<u8>> {
    let (code, out, err) = fs_tool(sandbox, command, stdin, reads)?;
    if code != 0 {
        return Err(fs_error(path, code, &err));
    }
    Ok(out)
}

#[derive(Deserialize)]
pub(crate) struct FsEntry {
    pub(crate) name: String,
    pub(crate) path: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    #[serde(default)]
    pub(crate) modified_time: f64,
}

impl From<FsEntry> for FileStat {
    fn from(e: FsEntry) -> FileStat {
        FileStat {
            path: e.path,
            name: e.name,
            kind: match e.kind.as_str() {
                "file" => FileKind::File,
                "directory" => FileKind::Directory,
                "symlink" => FileKind::Symlink,
                _ => FileKind::Other,
            },
            size: e.size,
            mode: e.mode & 0o7777,
            modified_ms: (e.modified_time > 0.0).then_some((e.modified_time * 1000.0) as u64),
        }
    }
}

pub(crate) fn bad_json(e: serde_json::Error) -> kit::Error {
    kit::provider(0, format!("fs-tools printed invalid JSON: {e}"))
}
