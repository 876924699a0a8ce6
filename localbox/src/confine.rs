//! Path confinement: map a path in the sandbox's own view onto one of its writable mounts and
//! open it without ever leaving that mount.
//!
//! Only `/workspace` and `/tmp` are file-operation roots. Resolution beneath a root uses
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so `..`, absolute symlinks and symlinks
//! pointing outside are refused by the kernel atomically (a sandboxed process racing to swap a
//! directory for a symlink cannot win). Where `openat2` is missing (old kernels, non-Linux) a
//! component-wise `O_NOFOLLOW` walk is used instead, which refuses every symlink and every `..`.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `O_PATH` where it exists (an anchor fd that cannot read or write); plain read-only elsewhere.
#[cfg(target_os = "linux")]
pub(crate) const O_PATH: i32 = libc::O_PATH;
#[cfg(not(target_os = "linux"))]
pub(crate) const O_PATH: i32 = libc::O_RDONLY;

/// The writable mount a sandbox path lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mount {
    Workspace,
    Tmp,
}

impl Mount {
    /// Where the mount appears inside the sandbox.
    pub(crate) fn view_root(self) -> &'static str {
        match self {
            Mount::Workspace => "/workspace",
            Mount::Tmp => "/tmp",
        }
    }
}

/// A sandbox path split into its mount and a path relative to the mount root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Confined {
    pub mount: Mount,
    /// Relative to the mount root; empty for the root itself. May contain `..` components, which
    /// the kernel-side resolution keeps beneath the root.
    pub rel: PathBuf,
    /// The path as the sandbox sees it (absolute, `.` components dropped), for messages and stats.
    pub view: String,
}

impl Confined {
    /// The final component, or `None` for the mount root.
    pub(crate) fn split_last(&self) -> Option<(PathBuf, &OsStr)> {
        let name = self.rel.file_name()?;
        let parent = self.rel.parent().map(Path::to_path_buf).unwrap_or_default();
        Some((parent, name))
    }
}

/// Maps `path` (absolute in the sandbox view, or relative to `workdir`, itself an absolute view
/// path) to a mount. Anything outside `/workspace` and `/tmp` is refused.
pub(crate) fn confine(path: &str, workdir: &str) -> Result<Confined> {
    if path.is_empty() {
        return Err(Error::invalid("path must not be empty"));
    }
    if path.contains('\0') {
        return Err(Error::invalid("path must not contain NUL bytes"));
    }
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{workdir}/{path}")
    };
    let mut comps = Path::new(&full)
        .components()
        .filter(|c| !matches!(c, Component::CurDir));
    if comps.next() != Some(Component::RootDir) {
        return Err(Error::invalid(format!(
            "{path}: not an absolute sandbox path"
        )));
    }
    let mount = match comps.next() {
        Some(Component::Normal(n)) if n == "workspace" => Mount::Workspace,
        Some(Component::Normal(n)) if n == "tmp" => Mount::Tmp,
        _ => {
            return Err(Error::forbidden(format!(
                "{path}: only paths under /workspace and /tmp are accessible"
            )))
        }
    };
    let rel: PathBuf = comps.collect();
    let mut view = mount.view_root().to_string();
    for c in rel.components() {
        view.push('/');
        view.push_str(&c.as_os_str().to_string_lossy());
    }
    Ok(Confined { mount, rel, view })
}

/// Opens a mount root directory (host path) as an `O_PATH` anchor for later resolution.
pub(crate) fn open_root(dir: &Path) -> io::Result<OwnedFd> {
    let c = cstr(dir.as_os_str())?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` beneath `root` with `flags` (`O_CLOEXEC` is added), never leaving `root`.
/// An empty `rel` opens the root itself.
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let rel_os: &OsStr = if rel.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        rel.as_os_str()
    };
    #[cfg(target_os = "linux")]
    {
        match openat2_beneath(root, rel_os, flags, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            other => return other,
        }
    }
    walk_nofollow(root, Path::new(rel_os), flags, mode)
}

#[cfg(target_os = "linux")]
fn openat2_beneath(
    root: BorrowedFd<'_>,
    rel: &OsStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    // Same layout as the kernel's `struct open_how` (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let c = cstr(rel)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        // The kernel rejects a mode without O_CREAT/O_TMPFILE.
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let err = io::Error::last_os_error();
        // RESOLVE_BENEATH may report EAGAIN when a concurrent rename races the lookup.
        if err.raw_os_error() != Some(libc::EAGAIN) && err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Fallback: open one component at a time with `O_NOFOLLOW`; refuses `..` and every symlink.
fn walk_nofollow(root: BorrowedFd<'_>, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let comps: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::CurDir => None,
            _ => Some(Err(())),
        })
        .collect::<Result<_, ()>>()
        .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
    let dup = unsafe { libc::fcntl(root.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = unsafe { OwnedFd::from_raw_fd(dup) };
    if comps.is_empty() {
        let c = cstr(OsStr::new("."))?;
        return openat_raw(cur.as_raw_fd(), &c, flags | libc::O_NOFOLLOW, mode);
    }
    for (i, comp) in comps.iter().enumerate() {
        let c = cstr(comp)?;
        let last = i + 1 == comps.len();
        let f = if last {
            flags | libc::O_NOFOLLOW
        } else {
            O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW
        };
        cur = openat_raw(cur.as_raw_fd(), &c, f, mode)?;
    }
    Ok(cur)
}

fn openat_raw(dir: i32, name: &CString, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_views_to_mounts() {
        let c = confine("/workspace/a/./b.txt", "/workspace").unwrap();
        assert_eq!(c.mount, Mount::Workspace);
        assert_eq!(c.rel, PathBuf::from("a/b.txt"));
        assert_eq!(c.view, "/workspace/a/b.txt");
        let c = confine("x", "/tmp/w").unwrap();
        assert_eq!(
            (c.mount, c.rel, c.view.as_str()),
            (Mount::Tmp, PathBuf::from("w/x"), "/tmp/w/x")
        );
        let c = confine("/workspace", "/workspace").unwrap();
        assert!(c.rel.as_os_str().is_empty());
        assert!(c.split_last().is_none());
    }

    #[test]
    fn refuses_other_roots() {
        for p in ["/etc/passwd", "/", "/workspacex/a", "/proc/self"] {
            let e = confine(p, "/workspace").unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::Forbidden, "{p}");
        }
        assert_eq!(
            confine("", "/workspace").unwrap_err().code,
            crate::ErrorCode::InvalidArgument
        );
    }
}
