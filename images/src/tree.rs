//! A directory tree reached only through file descriptors: a path is walked from the root one
//! component at a time with `O_NOFOLLOW | O_DIRECTORY`, and every change is made relative to the
//! directory that holds the final component, never following a symlink there either. Nothing a
//! layer put in the tree can make a later operation land outside it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Why an operation in the tree failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeError {
    /// A parent component is a symlink.
    #[error("the path passes through the symlink {0:?}")]
    Symlink(String),
    /// A parent component is neither a directory nor a symlink.
    #[error("{0:?} is not a directory")]
    NotDirectory(String),
    /// A system call failed.
    #[error("cannot {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// Wraps an errno from `op`.
pub(crate) fn io_err(op: &'static str) -> impl FnOnce(Errno) -> TreeError {
    move |e| TreeError::Io {
        op,
        source: e.into(),
    }
}

/// Flags to open a directory of the tree.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The tree: its root directory, open.
pub(crate) struct Tree {
    root: OwnedFd,
}

impl Tree {
    /// Opens the root directory `root` (itself not a symlink).
    pub(crate) fn open(root: &Path) -> std::io::Result<Tree> {
        let root = rustix::fs::open(root, DIR_FLAGS, Mode::empty())?;
        Ok(Tree { root })
    }

    /// Opens the directory at `rel` (normal components only; empty for the root). Missing
    /// directories are made (0755, owned by the caller) when `create` is set.
    pub(crate) fn dir(&self, rel: &Path, create: bool) -> Result<OwnedFd, TreeError> {
        let mut dir = rustix::fs::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(io_err("open the root"))?;
        let mut walked = PathBuf::new();
        for name in rel.iter() {
            walked.push(name);
            dir = open_child(&dir, name, create, &walked)?;
        }
        Ok(dir)
    }
}

/// Opens the directory `name` in `dir`, making it if missing and `create` is set.
fn open_child(
    dir: &OwnedFd,
    name: &OsStr,
    create: bool,
    walked: &Path,
) -> Result<OwnedFd, TreeError> {
    match rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) if create => {}
        Err(Errno::LOOP | Errno::NOTDIR) => return Err(not_a_directory(dir, name, walked)),
        Err(e) => return Err(io_err("open a directory")(e)),
    }
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_err("make a parent directory")(e)),
    }
    rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(io_err("open a directory"))
}

/// The error for `name` in `dir`, found not to be a directory.
fn not_a_directory(dir: &OwnedFd, name: &OsStr, walked: &Path) -> TreeError {
    let shown = walked.to_string_lossy().into_owned();
    match stat(dir, name) {
        Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            TreeError::Symlink(shown)
        }
        _ => TreeError::NotDirectory(shown),
    }
}

/// `name` in `dir`, not following a symlink; `None` if there is nothing there.
pub(crate) fn stat(dir: &impl AsFd, name: &OsStr) -> Result<Option<Stat>, TreeError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io_err("stat an entry")(e)),
    }
}

/// Whether `st` is a directory's.
pub(crate) fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Removes `name` from `dir` if it exists, a directory with all it holds; symlinks are removed,
/// never followed.
pub(crate) fn remove(dir: &OwnedFd, name: &OsStr) -> Result<(), TreeError> {
    let Some(st) = stat(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let child = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
            .map_err(io_err("open a directory to remove"))?;
        empty_dir(&child)?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io_err("remove a directory"))
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io_err("remove an entry"))
    }
}

/// Removes everything in the directory `dir`.
pub(crate) fn empty_dir(dir: &OwnedFd) -> Result<(), TreeError> {
    for name in list(dir)? {
        remove(dir, OsStr::from_bytes(&name))?;
    }
    Ok(())
}

/// The names in the directory `dir`, without `.` and `..`.
pub(crate) fn list(dir: &OwnedFd) -> Result<Vec<Vec<u8>>, TreeError> {
    let read = rustix::fs::Dir::read_from(dir).map_err(io_err("read a directory"))?;
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(io_err("read a directory"))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Sets the extended attribute `key` of `name` in `dir` without following a symlink at `name`
/// (`lsetxattr` through the directory's `/proc/self/fd` link, which only the directory crosses).
pub(crate) fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &OsStr,
    value: &[u8],
) -> Result<(), TreeError> {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    rustix::fs::lsetxattr(&path, key, value, rustix::fs::XattrFlags::empty())
        .map_err(io_err("set an extended attribute"))
}
