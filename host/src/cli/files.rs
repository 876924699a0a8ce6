//! Files: cp (either way, -r), files (list), rm-path, mkdir.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::pin::Pin;

use serde_json::{json, Value};

use sandbox_host::types::FileKind;
use sandbox_host::Sandbox;

use super::args::Target;
use super::{output, Ctx, Failure, Res};

/// One side of a copy.
#[derive(Clone)]
enum Loc {
    Local(PathBuf),
    /// A sandbox path, as given (relative paths are the plugin's to resolve against the workdir).
    Remote(Sandbox, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File {
        mode: u32,
    },
    Dir,
    Missing,
    /// A symlink (not followed in sandboxes) or a special file: skipped.
    Other,
}

impl Loc {
    fn describe(&self) -> String {
        match self {
            Loc::Local(p) => p.display().to_string(),
            Loc::Remote(s, p) => format!("{}:{p}", s.id()),
        }
    }

    fn join(&self, name: &str) -> Loc {
        match self {
            Loc::Local(p) => Loc::Local(p.join(name)),
            Loc::Remote(s, p) => {
                Loc::Remote(s.clone(), format!("{}/{name}", p.trim_end_matches('/')))
            }
        }
    }

    /// The last path component; None for `.`, `/` and the like (copy the contents).
    fn basename(&self) -> Option<String> {
        let name = match self {
            Loc::Local(p) => p.file_name()?.to_string_lossy().into_owned(),
            Loc::Remote(_, p) => p.trim_end_matches('/').rsplit('/').next()?.to_string(),
        };
        (!name.is_empty() && name != "." && name != "..").then_some(name)
    }

    async fn kind(&self) -> Res<Kind> {
        match self {
            Loc::Local(p) => match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => Ok(Kind::Dir),
                Ok(m) if m.is_file() => Ok(Kind::File {
                    mode: m.permissions().mode() & 0o7777,
                }),
                Ok(_) => Ok(Kind::Other),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kind::Missing),
                Err(e) => Err(Failure::host(format!("{}: {e}", p.display()))),
            },
            Loc::Remote(s, p) => match s.stat(p).await {
                Ok(st) => Ok(kind_of(st.kind, st.mode)),
                Err(e) if e.is_not_found() => Ok(Kind::Missing),
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn read(&self) -> Res<Vec<u8>> {
        match self {
            Loc::Local(p) => {
                std::fs::read(p).map_err(|e| Failure::host(format!("{}: {e}", p.display())))
            }
            Loc::Remote(s, p) => Ok(s.read_file(p).await?),
        }
    }

    async fn write(&self, data: Vec<u8>, mode: u32) -> Res<()> {
        match self {
            Loc::Local(p) => {
                let io = |e: std::io::Error| Failure::host(format!("{}: {e}", p.display()));
                std::fs::write(p, data).map_err(io)?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io)
            }
            Loc::Remote(s, p) => Ok(s.write_file(p, data, Some(mode)).await?),
        }
    }

    async fn mkdir(&self) -> Res<()> {
        match self {
            Loc::Local(p) => match std::fs::create_dir(p) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    Err(Failure::host(format!("{}: {e}", p.display())))
                }
                _ => Ok(()),
            },
            Loc::Remote(s, p) => Ok(s.mkdir(p, false).await?),
        }
    }

    /// Entries of a directory with their kinds.
    async fn list(&self) -> Res<Vec<(String, Kind)>> {
        match self {
            Loc::Local(p) => {
                let io = |e: std::io::Error| Failure::host(format!("{}: {e}", p.display()));
                let mut out = vec![];
                for entry in std::fs::read_dir(p).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    // Symlinks are not followed while walking a tree.
                    let m = entry.path().symlink_metadata().map_err(io)?;
                    let kind = if m.is_dir() {
                        Kind::Dir
                    } else if m.is_file() {
                        Kind::File {
                            mode: m.permissions().mode() & 0o7777,
                        }
                    } else {
                        Kind::Other
                    };
                    out.push((name, kind));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(out)
            }
            Loc::Remote(s, p) => Ok(s
                .list_dir(p)
                .await?
                .into_iter()
                .map(|st| (st.name, kind_of(st.kind, st.mode)))
                .collect()),
        }
    }
}

fn kind_of(kind: FileKind, mode: u32) -> Kind {
    match kind {
        FileKind::File => Kind::File {
            mode: mode & 0o7777,
        },
        FileKind::Directory => Kind::Dir,
        FileKind::Symlink | FileKind::Other => Kind::Other,
    }
}

#[derive(Default)]
struct Copied {
    files: u64,
    directories: u64,
    bytes: u64,
    skipped: Vec<String>,
}

/// Copies `src` (of kind `kind`) to `dst`, recursing into directories.
fn copy_entry<'a>(
    src: &'a Loc,
    kind: Kind,
    dst: &'a Loc,
    stats: &'a mut Copied,
) -> Pin<Box<dyn Future<Output = Res<()>> + 'a>> {
    Box::pin(async move {
        match kind {
            Kind::File { mode } => {
                let data = src.read().await?;
                stats.bytes += data.len() as u64;
                dst.write(data, mode).await?;
                stats.files += 1;
            }
            Kind::Dir => {
                if dst.kind().await? != Kind::Dir {
                    dst.mkdir().await?;
                }
                stats.directories += 1;
                for (name, k) in src.list().await? {
                    copy_entry(&src.join(&name), k, &dst.join(&name), stats).await?;
                }
            }
            Kind::Other => stats.skipped.push(src.describe()),
            Kind::Missing => {
                return Err(Failure::host(format!(
                    "{}: no such file or directory",
                    src.describe()
                )))
            }
        }
        Ok(())
    })
}

/// `ID:PATH` when ID is a registered sandbox id (under `provider` when given), else a local path.
fn operand(ctx: &Ctx, op: &str, provider: Option<&str>) -> Res<Loc> {
    if let Some((id, path)) = op.split_once(':') {
        let known = ctx
            .host
            .sessions()
            .find(id)?
            .into_iter()
            .any(|r| provider.is_none_or(|p| p == r.provider));
        if known {
            let sandbox = ctx.host.sandbox(id, provider)?;
            let path = if path.is_empty() {
                ".".to_string()
            } else {
                path.to_string()
            };
            return Ok(Loc::Remote(sandbox, path));
        }
    }
    Ok(Loc::Local(PathBuf::from(op)))
}

pub async fn cp(
    ctx: &Ctx,
    src: &str,
    dst: &str,
    recursive: bool,
    provider: Option<&str>,
) -> Res<i32> {
    let (src, dst) = (operand(ctx, src, provider)?, operand(ctx, dst, provider)?);
    if matches!((&src, &dst), (Loc::Local(_), Loc::Local(_))) {
        return Err(Failure::host(
            "neither operand names a sandbox: write ID:PATH (ID as `sandbox-host ls` shows it)",
        ));
    }
    let kind = src.kind().await?;
    match kind {
        Kind::Missing => {
            return Err(Failure::host(format!(
                "{}: no such file or directory",
                src.describe()
            )))
        }
        Kind::Dir if !recursive => {
            return Err(Failure::host(format!(
                "{} is a directory (use -r)",
                src.describe()
            )))
        }
        Kind::Other => {
            return Err(Failure::host(format!(
                "{} is not a regular file or directory",
                src.describe()
            )))
        }
        _ => {}
    }
    // Into an existing directory: keep the source's name (`cp f dir/` → `dir/f`).
    let target = match (dst.kind().await?, src.basename()) {
        (Kind::Dir, Some(name)) => dst.join(&name),
        _ => dst,
    };
    if kind == Kind::Dir && matches!(target.kind().await?, Kind::File { .. }) {
        return Err(Failure::host(format!(
            "cannot copy directory {} onto file {}",
            src.describe(),
            target.describe()
        )));
    }
    let mut stats = Copied::default();
    copy_entry(&src, kind, &target, &mut stats).await?;
    for s in &stats.skipped {
        output::warn(
            &format!("skipped {s}: not a regular file or directory"),
            ctx.json,
        );
    }
    if ctx.json {
        output::print_json(&json!({
            "from": src.describe(),
            "to": target.describe(),
            "files": stats.files,
            "directories": stats.directories,
            "bytes": stats.bytes,
            "skipped": stats.skipped,
        }));
    }
    Ok(0)
}

pub async fn files(ctx: &Ctx, target: &Target, path: &str) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    let stat = sandbox.stat(path).await?;
    let entries: Vec<Value> = if stat.kind == FileKind::Directory {
        sandbox
            .list_dir(path)
            .await?
            .iter()
            .map(output::file_stat)
            .collect()
    } else {
        vec![output::file_stat(&stat)]
    };
    if ctx.json {
        output::print_json(&Value::Array(entries));
    } else {
        output::out(&output::render_files(&entries));
    }
    Ok(0)
}

fn print_path_done(ctx: &Ctx, sandbox: &Sandbox, path: &str) {
    if ctx.json {
        output::print_json(
            &json!({ "id": sandbox.id(), "provider": sandbox.provider(), "path": path }),
        );
    }
}

pub async fn rm_path(ctx: &Ctx, target: &Target, path: &str, recursive: bool) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    sandbox.remove(path, recursive).await?;
    print_path_done(ctx, &sandbox, path);
    Ok(0)
}

pub async fn mkdir(ctx: &Ctx, target: &Target, path: &str) -> Res<i32> {
    let sandbox = ctx.sandbox(target)?;
    sandbox.mkdir(path, true).await?;
    print_path_done(ctx, &sandbox, path);
    Ok(0)
}
