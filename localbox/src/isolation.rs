//! What a sandboxed command is actually run as: the bubblewrap command line, or the direct
//! (unisolated) command for `Isolation::None`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::{EngineConfig, Isolation, Network};
use crate::error::{Error, Result};
use crate::process::{CommandSpec, Launch};

/// PATH given to sandboxed commands.
pub(crate) const SANDBOX_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Runs an argv with shell exit-code conventions (127 not found, 126 not executable) without
/// involving a shell's parsing, and accepts argv[0] starting with `-`.
const ENV_SHIM: &str = "/usr/bin/env";

/// `name` as an executable file: itself when absolute, else the first match on `path`.
fn find_program(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.starts_with('/') {
        return Some(PathBuf::from(name)).filter(|p| executable(p));
    }
    if name.is_empty() || name.contains('/') {
        return None;
    }
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(name))
        .find(|p| executable(p))
}

/// The parts of a sandbox a launch needs.
pub(crate) struct SandboxMounts<'a> {
    pub workspace: &'a Path,
    pub tmp: &'a Path,
    /// `(uid, gid)` to run as; `None` keeps the engine's user.
    pub creds: Option<(u32, u32)>,
}

/// Builds launches according to the engine's isolation mode.
#[derive(Debug)]
pub(crate) struct Isolator {
    isolation: Isolation,
    network: Network,
    bwrap: Option<PathBuf>,
    /// Read-only system mounts, computed once from the host layout.
    system_args: Vec<OsString>,
}

impl Isolator {
    pub(crate) fn new(config: &EngineConfig) -> Self {
        let bwrap = config.bwrap_path.clone().or_else(find_bwrap);
        Isolator {
            isolation: config.isolation,
            network: config.network,
            bwrap,
            system_args: system_mount_args(&config.extra_ro_binds),
        }
    }

    /// Fails with an actionable message when the configured isolation cannot work here.
    pub(crate) fn check_available(&self) -> Result<()> {
        if self.isolation == Isolation::None {
            return Ok(());
        }
        if !cfg!(target_os = "linux") {
            return Err(Error::unavailable(format!(
                "bubblewrap isolation needs Linux namespaces, which {} does not have; \
                 choose isolation \"none\" to run commands unisolated",
                std::env::consts::OS
            )));
        }
        if !self.bwrap.as_deref().is_some_and(Path::is_file) {
            return Err(Error::unavailable(
                "bubblewrap (bwrap) is not installed: install the `bubblewrap` package \
                 (`apt-get install bubblewrap`, `dnf install bubblewrap`) or choose isolation \"none\"",
            ));
        }
        Ok(())
    }

    /// The command that runs `command` in the sandbox with working directory `cwd_view`
    /// (sandbox view) / `cwd_host` (the same directory on the host).
    pub(crate) fn launch(
        &self,
        mounts: &SandboxMounts<'_>,
        cwd_view: &str,
        cwd_host: &Path,
        env: &[(String, String)],
        command: &CommandSpec,
    ) -> Result<Launch> {
        let payload: Vec<OsString> = match command {
            CommandSpec::Argv(argv) => std::iter::once(ENV_SHIM.into())
                .chain(std::iter::once("--".into()))
                .chain(argv.iter().map(Into::into))
                .collect(),
            CommandSpec::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.into()],
        };
        match self.isolation {
            Isolation::None => {
                let mut full_env = vec![
                    ("PATH".to_string(), SANDBOX_PATH.to_string()),
                    (
                        "HOME".to_string(),
                        mounts.workspace.to_string_lossy().into_owned(),
                    ),
                    (
                        "TMPDIR".to_string(),
                        mounts.tmp.to_string_lossy().into_owned(),
                    ),
                ];
                full_env.extend(env.iter().cloned());
                // Unisolated, a program found on the command's PATH is started directly: one
                // exec instead of two (the shim's exit codes matter only when it is missing).
                let payload = match command {
                    CommandSpec::Argv(argv) => match argv.first().and_then(|p| {
                        let path = full_env.iter().rev().find(|(k, _)| k == "PATH")?;
                        find_program(p, &path.1)
                    }) {
                        Some(program) => std::iter::once(program.into_os_string())
                            .chain(argv[1..].iter().map(Into::into))
                            .collect(),
                        None => payload,
                    },
                    CommandSpec::Shell(_) => payload,
                };
                let mut payload = payload.into_iter();
                Ok(Launch {
                    program: payload.next().map(PathBuf::from).unwrap_or_default(),
                    args: payload.collect(),
                    env: full_env,
                    cwd: cwd_host.to_path_buf(),
                    creds: None,
                    bwrap: false,
                })
            }
            Isolation::Bubblewrap => {
                self.check_available()?;
                let bwrap = self.bwrap.clone().unwrap_or_default();
                let mut a: Vec<OsString> = Vec::with_capacity(64);
                fn push(a: &mut Vec<OsString>, items: &[&str]) {
                    a.extend(items.iter().map(OsString::from));
                }
                push(
                    &mut a,
                    &[
                        "--unshare-user",
                        "--unshare-pid",
                        "--unshare-ipc",
                        "--unshare-uts",
                        "--unshare-cgroup-try",
                    ],
                );
                if self.network == Network::None {
                    push(&mut a, &["--unshare-net"]);
                }
                push(&mut a, &["--die-with-parent", "--hostname", "sandbox"]);
                a.extend(self.system_args.iter().cloned());
                push(&mut a, &["--proc", "/proc", "--dev", "/dev"]);
                a.extend([
                    "--bind".into(),
                    mounts.workspace.into(),
                    "/workspace".into(),
                ]);
                a.extend(["--bind".into(), mounts.tmp.into(), "/tmp".into()]);
                a.extend(["--chdir".into(), cwd_view.into(), "--clearenv".into()]);
                let base = [("PATH", SANDBOX_PATH), ("HOME", "/workspace")];
                for (k, v) in base
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .chain(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                {
                    a.extend(["--setenv".into(), k.into(), v.into()]);
                }
                a.push("--".into());
                a.extend(payload);
                Ok(Launch {
                    program: bwrap,
                    args: a,
                    env: Vec::new(),
                    cwd: PathBuf::from("/"),
                    creds: mounts.creds,
                    bwrap: true,
                })
            }
        }
    }
}

/// `--ro-bind` for system directories and `--symlink` for merged-/usr links, as they exist here.
fn system_mount_args(extra: &[PathBuf]) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    for dir in [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
    ]
    .iter()
    .map(Path::new)
    .chain(extra.iter().map(PathBuf::as_path))
    {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(dir) {
                    a.extend(["--symlink".into(), target.into(), dir.into()]);
                }
            }
            Ok(m) if m.is_dir() => a.extend(["--ro-bind".into(), dir.into(), dir.into()]),
            _ => {}
        }
    }
    a
}

/// Where bubblewrap is: `PATH`, then the usual directories.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/bin", "/usr/local/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join("bwrap"))
        .find(|p| p.is_file())
}

/// Checks an environment variable for use on a command line.
pub(crate) fn validate_env(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
        return Err(Error::invalid(format!(
            "invalid environment variable {key:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::find_program;

    #[test]
    fn programs_are_found_on_the_given_path_only() {
        let sh = find_program("sh", "/nonexistent:/usr/bin:/bin").expect("sh on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert_eq!(find_program("sh", "/nonexistent"), None);
        assert_eq!(find_program("sh", "relative/dir"), None);
        assert_eq!(find_program("./sh", "/usr/bin:/bin"), None);
        assert_eq!(find_program("", "/usr/bin:/bin"), None);
        assert_eq!(find_program("/bin/sh", ""), Some("/bin/sh".into()));
        // Not executable, or a directory: left to the shim (126/127 semantics).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), "x").unwrap();
        let dir_path = dir.path().to_str().unwrap();
        assert_eq!(find_program("data", dir_path), None);
        assert_eq!(find_program(&format!("{dir_path}/data"), ""), None);
        assert_eq!(find_program("bin", "/usr:/"), None);
    }
}
