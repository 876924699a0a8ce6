//! File operations inside a sandbox mount, all resolved through [`confine`](crate::confine).
//!
//! Every operation anchors at the mount root and resolves beneath it; operations on the final
//! component (stat, remove, mkdir) work on an fd of the parent with `*at` calls and never follow
//! a final symlink, so a sandboxed process swapping paths concurrently cannot redirect them.
//! The engine may run as root: files it creates are handed to the sandbox uid.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::confine::{cstr, open_beneath, open_root, Confined, O_PATH};
use crate::error::{Error, Result};

/// What a directory entry is (symlinks are reported as such, never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// Metadata of one path, as seen from inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStat {
    /// Absolute path in the sandbox view.
    pub path: String,
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub modified_ms: u64,
}

/// Owner given to created files and directories (`None`: leave the engine's own uid).
pub(crate) type Owner = Option<(u32, u32)>;

/// Deepest directory nesting `remove` descends into.
const MAX_REMOVE_DEPTH: usize = 512;

fn root_fd(root: &Path, c: &Confined) -> Result<OwnedFd> {
    open_root(root).map_err(|e| Error::internal(format!("{}: cannot open mount root: {e}", c.view)))
}

fn io_err(c: &Confined) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::from_io(e, &c.view)
}

/// Opens the parent directory of `c` and returns it with the final name.
fn parent_of<'a>(rootfd: &OwnedFd, c: &'a Confined) -> Result<Option<(OwnedFd, &'a OsStr)>> {
    let Some((parent, name)) = c.split_last() else {
        return Ok(None);
    };
    if name == ".." {
        return Err(Error::invalid(format!(
            "{}: path must not end in '..'",
            c.view
        )));
    }
    let pfd =
        open_beneath(rootfd.as_fd(), &parent, O_PATH | libc::O_DIRECTORY, 0).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOENT) {
                Error::not_found(format!("{}: parent directory does not exist", c.view))
            } else {
                Error::from_io(e, &c.view)
            }
        })?;
    Ok(Some((pfd, name)))
}

/// Reads a whole regular file (at most `max` bytes).
pub(crate) fn read_file(root: &Path, c: &Confined, max: u64) -> Result<Vec<u8>> {
    let rootfd = root_fd(root, c)?;
    // O_NONBLOCK: opening a FIFO planted by the sandbox must not hang the engine.
    let fd = open_beneath(rootfd.as_fd(), &c.rel, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .map_err(io_err(c))?;
    let mut f = File::from(fd);
    let meta = f.metadata().map_err(io_err(c))?;
    if meta.is_dir() {
        return Err(Error::invalid(format!("{}: is a directory", c.view)));
    }
    if !meta.is_file() {
        return Err(Error::invalid(format!("{}: not a regular file", c.view)));
    }
    if meta.len() > max {
        return Err(Error::invalid(format!(
            "{}: file is larger than {max} bytes",
            c.view
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    (&mut f)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(io_err(c))?;
    if data.len() as u64 > max {
        return Err(Error::invalid(format!(
            "{}: file is larger than {max} bytes",
            c.view
        )));
    }
    Ok(data)
}

/// Creates or truncates a regular file. The parent directory must exist.
pub(crate) fn write_file(
    root: &Path,
    c: &Confined,
    data: &[u8],
    mode: Option<u32>,
    owner: Owner,
) -> Result<()> {
    if c.split_last().is_none() {
        return Err(Error::invalid(format!("{}: is a directory", c.view)));
    }
    let rootfd = root_fd(root, c)?;
    // Resolve the parent first so a missing parent gets a clear message.
    parent_of(&rootfd, c)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK;
    let fd = open_beneath(rootfd.as_fd(), &c.rel, flags, mode.unwrap_or(0o644) & 0o777)
        .map_err(io_err(c))?;
    let meta = File::from(fd.try_clone().map_err(io_err(c))?)
        .metadata()
        .map_err(io_err(c))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!("{}: not a regular file", c.view)));
    }
    if let Some((uid, gid)) = owner {
        check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map_err(io_err(c))?;
    }
    if let Some(mode) = mode {
        // Explicit: the umask must not trim what the caller asked for.
        check(unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o777) as libc::mode_t) })
            .map_err(io_err(c))?;
    }
    let mut f = File::from(fd);
    clear_nonblock(&f).map_err(io_err(c))?;
    f.write_all(data).map_err(io_err(c))?;
    Ok(())
}

/// Lists a directory, sorted by name.
pub(crate) fn list_dir(root: &Path, c: &Confined) -> Result<Vec<FileStat>> {
    let rootfd = root_fd(root, c)?;
    let fd = open_beneath(
        rootfd.as_fd(),
        &c.rel,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(io_err(c))?;
    let mut names = read_dir_fd(&fd).map_err(io_err(c))?;
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let st = match stat_at(fd.as_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // removed meanwhile
            Err(e) => return Err(Error::from_io(e, &c.view)),
        };
        let path = format!(
            "{}/{}",
            c.view.trim_end_matches('/'),
            name.to_string_lossy()
        );
        out.push(file_stat(path, &name, &st));
    }
    Ok(out)
}

/// `lstat` of a path (a final symlink is reported, not followed).
pub(crate) fn stat(root: &Path, c: &Confined) -> Result<FileStat> {
    let rootfd = root_fd(root, c)?;
    match parent_of(&rootfd, c)? {
        None => {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            check(unsafe { libc::fstat(rootfd.as_raw_fd(), &mut st) }).map_err(io_err(c))?;
            let name = OsStr::new(c.view.trim_start_matches('/'));
            Ok(file_stat(c.view.clone(), name, &st))
        }
        Some((pfd, name)) => {
            let st = stat_at(pfd.as_fd(), name).map_err(io_err(c))?;
            Ok(file_stat(c.view.clone(), name, &st))
        }
    }
}

/// Removes a file, symlink or (empty, or with `recursive` any) directory.
pub(crate) fn remove(root: &Path, c: &Confined, recursive: bool) -> Result<()> {
    let rootfd = root_fd(root, c)?;
    let Some((pfd, name)) = parent_of(&rootfd, c)? else {
        return Err(Error::forbidden(format!(
            "{}: cannot remove a mount root",
            c.view
        )));
    };
    let st = stat_at(pfd.as_fd(), name).map_err(io_err(c))?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let res = if is_dir && recursive {
        remove_tree(pfd.as_fd(), name, 0)
    } else {
        unlink_at(pfd.as_fd(), name, is_dir)
    };
    res.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
            Error::conflict(format!("{}: directory not empty (use recursive)", c.view))
        }
        _ => Error::from_io(e, &c.view),
    })
}

/// Renames `from` to `to` (as rename(2): a file replaces a file, a directory an empty
/// directory; a symlink is moved, not followed). Both stay confined to their mounts.
pub(crate) fn rename(
    from_root: &Path,
    from: &Confined,
    to_root: &Path,
    to: &Confined,
) -> Result<()> {
    let root_err = |c: &Confined| Error::forbidden(format!("{}: cannot move a mount root", c.view));
    let from_rootfd = root_fd(from_root, from)?;
    let (from_dir, from_name) = parent_of(&from_rootfd, from)?.ok_or_else(|| root_err(from))?;
    let to_rootfd = root_fd(to_root, to)?;
    let (to_dir, to_name) = parent_of(&to_rootfd, to)?.ok_or_else(|| root_err(to))?;
    let (f, t) = (
        cstr(from_name).map_err(io_err(from))?,
        cstr(to_name).map_err(io_err(to))?,
    );
    // SAFETY: two open directory descriptors and NUL-terminated names.
    check(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            f.as_ptr(),
            to_dir.as_raw_fd(),
            t.as_ptr(),
        )
    })
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::not_found(format!("{}: no such file or directory", from.view)),
        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => {
            Error::conflict(format!("{}: directory not empty", to.view))
        }
        Some(libc::EISDIR) | Some(libc::ENOTDIR) | Some(libc::EINVAL) => {
            Error::invalid(format!("cannot move {} to {}: {e}", from.view, to.view))
        }
        _ => Error::from_io(e, &from.view),
    })
}

/// Creates a directory; with `parents`, also missing ancestors, and an existing directory is fine.
pub(crate) fn mkdir(root: &Path, c: &Confined, parents: bool, owner: Owner) -> Result<()> {
    let rootfd = root_fd(root, c)?;
    if !parents {
        let Some((pfd, name)) = parent_of(&rootfd, c)? else {
            return Err(Error::conflict(format!("{}: already exists", c.view)));
        };
        return mkdir_at(pfd.as_fd(), name, owner).map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => Error::conflict(format!("{}: already exists", c.view)),
            _ => Error::from_io(e, &c.view),
        });
    }
    let comps: Vec<&OsStr> = c.rel.iter().collect();
    for i in 1..=comps.len() {
        let prefix: PathBuf = comps[..i].iter().collect();
        match open_beneath(rootfd.as_fd(), &prefix, O_PATH | libc::O_DIRECTORY, 0) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(Error::conflict(format!(
                    "{}: a path component is not a directory",
                    c.view
                )))
            }
            Err(e) => return Err(Error::from_io(e, &c.view)),
        }
        let parent: PathBuf = comps[..i - 1].iter().collect();
        let pfd = open_beneath(rootfd.as_fd(), &parent, O_PATH | libc::O_DIRECTORY, 0)
            .map_err(io_err(c))?;
        match mkdir_at(pfd.as_fd(), comps[i - 1], owner) {
            Ok(()) => {}
            // Created concurrently: fine if it is a directory, which the next open checks.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                open_beneath(rootfd.as_fd(), &prefix, O_PATH | libc::O_DIRECTORY, 0)
                    .map_err(io_err(c))?;
            }
            Err(e) => return Err(Error::from_io(e, &c.view)),
        }
    }
    Ok(())
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, owner: Owner) -> io::Result<()> {
    let n = cstr(name)?;
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), n.as_ptr(), 0o755) })?;
    if let Some((uid, gid)) = owner {
        // NOFOLLOW: if the sandbox swapped the new dir for a symlink, only the link is touched.
        check(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                n.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
    }
    Ok(())
}

fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let n = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), n.as_ptr(), flags) })
}

fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    if depth > MAX_REMOVE_DEPTH {
        return Err(io::Error::other("directory tree too deep to remove"));
    }
    let n = cstr(name)?;
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            n.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    for entry in read_dir_fd(&dir)? {
        let st = match stat_at(dir.as_fd(), &entry) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            remove_tree(dir.as_fd(), &entry, depth + 1)?;
        } else {
            match unlink_at(dir.as_fd(), &entry, false) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            }
        }
    }
    unlink_at(parent, name, true)
}

fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let n = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            n.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Entry names of an open directory (without `.` and `..`).
fn read_dir_fd(fd: &OwnedFd) -> io::Result<Vec<OsString>> {
    let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // fdopendir takes ownership of `dup`; closedir closes it.
    let dirp = unsafe { libc::fdopendir(dup) };
    if dirp.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(e);
    }
    unsafe { libc::rewinddir(dirp) };
    let mut names = Vec::new();
    let result = loop {
        unsafe { *errno_location() = 0 };
        let ent = unsafe { libc::readdir(dirp) };
        if ent.is_null() {
            let errno = unsafe { *errno_location() };
            break if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(errno))
            };
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." {
            names.push(OsStr::from_bytes(bytes).to_os_string());
        }
    };
    unsafe { libc::closedir(dirp) };
    result.map(|_| names)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn errno_location() -> *mut i32 {
    libc::__errno_location()
}
#[cfg(not(any(target_os = "linux", target_os = "android")))]
unsafe fn errno_location() -> *mut i32 {
    libc::__error()
}

// The casts are needed on platforms where these stat fields have other widths.
#[allow(clippy::unnecessary_cast)]
fn file_stat(path: String, name: &OsStr, st: &libc::stat) -> FileStat {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    let modified_ms =
        (st.st_mtime as i64).max(0) as u64 * 1000 + (st.st_mtime_nsec as u64) / 1_000_000;
    FileStat {
        path,
        name: name.to_string_lossy().into_owned(),
        kind,
        size: st.st_size as u64,
        mode: (st.st_mode & 0o7777) as u32,
        modified_ms,
    }
}

fn clear_nonblock(f: &File) -> io::Result<()> {
    let fd = f.as_raw_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
