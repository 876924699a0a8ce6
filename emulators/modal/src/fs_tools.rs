//! The in-sandbox `modal-sandbox-fs-tools` helper, answered natively with localbox's file
//! operations: the JSON command in argv[1], file data on stdin (WriteFile) or stdout, entries
//! as JSON on stdout, failures as exit 1 with `{"error_kind","message"}` on stderr.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::exec::Exec;
use crate::proto::task_command_router::TaskExecStdioFileDescriptor as Fd;
use crate::state::{Emu, SandboxRec};

/// A parsed fs-tools command.
#[derive(Debug, Clone)]
pub struct Op {
    kind: String,
    args: Value,
    lb_id: String,
}

impl Op {
    fn path(&self) -> String {
        self.args
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
    fn flag(&self, name: &str) -> bool {
        self.args
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// Starts an op: everything but WriteFile runs now; WriteFile waits for stdin's EOF.
pub async fn start(emu: &Arc<Emu>, sb: &SandboxRec, exec: &Arc<Exec>, json: &str) {
    let parsed: Option<(String, Value)> = serde_json::from_str::<Value>(json).ok().and_then(|v| {
        v.as_object()
            .and_then(|o| o.iter().next().map(|(k, a)| (k.clone(), a.clone())))
    });
    let Some((kind, args)) = parsed else {
        fail(
            exec,
            "InvalidArgument",
            &format!("cannot parse command {json:?}"),
        );
        return;
    };
    let op = Op {
        kind,
        args,
        lb_id: sb.lb_id.clone(),
    };
    if op.kind == "WriteFile" {
        *exec.on_eof.lock().unwrap() = Some(op);
        return;
    }
    let (emu, exec) = (emu.clone(), exec.clone());
    tokio::spawn(async move {
        match run(&emu, &op).await {
            Ok(out) => {
                exec.push(Fd::Stdout as i32, &out);
                exec.finish(0);
            }
            Err(e) => fail(&exec, &error_kind(&op, &e), &e.message),
        }
    });
}

/// WriteFile at stdin's EOF.
pub async fn run_write(emu: &Emu, exec: &Exec, op: Op, data: Vec<u8>) {
    match emu
        .engine
        .write_file(&op.lb_id, &op.path(), data, None)
        .await
    {
        Ok(()) => exec.finish(0),
        Err(e) => fail(exec, &error_kind(&op, &e), &e.message),
    }
}

fn fail(exec: &Exec, kind: &str, message: &str) {
    let body = json!({"error_kind": kind, "message": message}).to_string();
    exec.push(Fd::Stderr as i32, body.as_bytes());
    exec.finish(1);
}

/// The fs-tools error kind closest to a localbox error for this op.
fn error_kind(op: &Op, e: &localbox::Error) -> String {
    use localbox::ErrorCode as C;
    let msg = e.message.to_ascii_lowercase();
    match e.code {
        C::NotFound => "NotFound",
        C::Forbidden | C::Unauthorized => "PermissionDenied",
        C::Conflict if op.kind == "Remove" => "DirectoryNotEmpty",
        C::Conflict if op.kind == "MakeDirectory" => "PathAlreadyExists",
        _ if msg.contains("not empty") => "DirectoryNotEmpty",
        _ if msg.contains("is a directory") => "IsDirectory",
        _ if msg.contains("not a directory") => "NotDirectory",
        _ if msg.contains("exists") => "PathAlreadyExists",
        _ => "Other",
    }
    .to_string()
}

async fn run(emu: &Emu, op: &Op) -> Result<Vec<u8>, localbox::Error> {
    let path = op.path();
    match op.kind.as_str() {
        "ReadFile" => emu.engine.read_file(&op.lb_id, &path).await,
        "ListFiles" => {
            let entries = emu.engine.list_dir(&op.lb_id, &path).await?;
            Ok(Value::Array(entries.iter().map(entry).collect())
                .to_string()
                .into_bytes())
        }
        "Stat" => Ok(entry(&emu.engine.stat(&op.lb_id, &path).await?)
            .to_string()
            .into_bytes()),
        "MakeDirectory" => emu
            .engine
            .mkdir(&op.lb_id, &path, op.flag("parents"))
            .await
            .map(|()| Vec::new()),
        "Remove" => emu
            .engine
            .remove(&op.lb_id, &path, op.flag("recursive"))
            .await
            .map(|()| Vec::new()),
        other => Err(localbox::Error::invalid(format!(
            "fs-tools command {other:?} is not emulated"
        ))),
    }
}

/// One entry as fs-tools prints it (the SDK's `FileInfo` fields).
fn entry(f: &localbox::FileStat) -> Value {
    let kind = match f.kind {
        localbox::FileKind::File => "file",
        localbox::FileKind::Directory => "directory",
        localbox::FileKind::Symlink => "symlink",
        _ => "file",
    };
    let mut perms = String::new();
    for shift in [6, 3, 0] {
        let bits = (f.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    json!({
        "name": f.name,
        "path": f.path,
        "type": kind,
        "size": f.size,
        "mode": f.mode,
        "permissions": perms,
        "owner": "root",
        "group": "root",
        "modified_time": f.modified_ms as f64 / 1000.0,
        "symlink_target": null,
    })
}
