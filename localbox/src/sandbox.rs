//! A sandbox: its public description, its persisted record and its on-disk layout.
//!
//! Layout of `<root_dir>/<id>/` (mode 0700, owned by the sandbox uid so no other sandbox uid can
//! enter it even outside the mount namespace):
//! - `sandbox.json` — the record, owned by the engine's user, so a restarted engine finds it;
//! - `workspace/` — mounted as `/workspace`;
//! - `tmp/` — mounted as `/tmp`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::background::ProcessTable;
use crate::confine::Mount;
use crate::error::{Error, Result};

pub(crate) const RECORD_FILE: &str = "sandbox.json";

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Running,
    Paused,
    /// Being destroyed, or unusable (its uid is held by another engine).
    Stopped,
}

/// What to create.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct SandboxSpec {
    /// Unique among live sandboxes of the engine.
    pub name: Option<String>,
    /// Recorded only (commands run on the host's system directories).
    pub image: Option<String>,
    /// Environment of every command (request env overrides it).
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Destroy the sandbox this many seconds after creation.
    pub timeout_secs: Option<u64>,
    /// Default working directory (sandbox view, under `/workspace` or `/tmp`; created if
    /// missing). Default `/workspace`.
    pub workdir: Option<String>,
}

/// Public description of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub name: Option<String>,
    pub state: SandboxState,
    pub workdir: String,
    pub labels: BTreeMap<String, String>,
    pub image: Option<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

/// The persisted record (`sandbox.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SandboxRecord {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub workdir: String,
    /// Uid/gid commands run as; `None` when the engine ran them as its own user.
    pub uid: Option<u32>,
    pub state: SandboxState,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl SandboxRecord {
    pub(crate) fn info(&self) -> SandboxInfo {
        SandboxInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            state: self.state,
            workdir: self.workdir.clone(),
            labels: self.labels.clone(),
            image: self.image.clone(),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// Atomically replaces `<dir>/sandbox.json`.
    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_data()?;
        std::fs::rename(&tmp, dir.join(RECORD_FILE))
    }

    pub(crate) fn load(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(dir.join(RECORD_FILE))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// A live sandbox inside the engine.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub id: String,
    pub dir: PathBuf,
    /// `(uid, gid)` commands run as (`None`: the engine's user).
    pub creds: Option<(u32, u32)>,
    pub record: Mutex<SandboxRecord>,
    pub procs: Mutex<ProcessTable>,
}

impl Sandbox {
    pub(crate) fn mount_dir(&self, mount: Mount) -> PathBuf {
        match mount {
            Mount::Workspace => self.dir.join("workspace"),
            Mount::Tmp => self.dir.join("tmp"),
        }
    }

    pub(crate) fn info(&self) -> SandboxInfo {
        self.record.lock().unwrap().info()
    }

    pub(crate) fn state(&self) -> SandboxState {
        self.record.lock().unwrap().state
    }
}

/// Creates `<dir>` (0700), `workspace/` (0755) and `tmp/` (1777), owned by `creds`.
pub(crate) fn make_layout(dir: &Path, creds: Option<(u32, u32)>) -> Result<()> {
    let err =
        |p: &Path, e: std::io::Error| Error::internal(format!("creating {}: {e}", p.display()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(dir, e))?;
    for (sub, mode) in [("workspace", 0o755), ("tmp", 0o1777)] {
        let p = dir.join(sub);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(|e| err(&p, e))?;
        if let Some((uid, gid)) = creds {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| err(&p, e))?;
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| err(&p, e))?;
    }
    if let Some((uid, gid)) = creds {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| err(dir, e))?;
    }
    Ok(())
}

/// With per-sandbox uids, bubblewrap (running as the sandbox uid) opens the workspace by path,
/// so every ancestor of the root directory must be searchable by others.
pub(crate) fn check_traversable(root: &Path) -> Result<()> {
    let mut p = PathBuf::new();
    for comp in root.components() {
        p.push(comp);
        let mode = std::fs::metadata(&p)
            .map_err(|e| Error::internal(format!("{}: {e}", p.display())))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            if p == root {
                std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o711),
                )
                .map_err(|e| Error::internal(format!("{}: {e}", p.display())))?;
                continue;
            }
            return Err(Error::invalid(format!(
                "root_dir {} is not reachable by sandbox uids: {} (mode {:o}) is not searchable by others; \
                 choose a root_dir such as /var/lib/localbox, or `chmod o+x {}`",
                root.display(),
                p.display(),
                mode & 0o7777,
                p.display()
            )));
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
