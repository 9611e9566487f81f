//! The user of [`USER_ANNOTATION`] resolved in the guest, once the container's root is
//! mounted, against the image's own `/etc/passwd` and `/etc/group` ([`super::passwd`]), then
//! set on the process: uid, gid, supplementary groups (the spec's `additionalGids` after
//! them), `HOME` when the environment has none, and for a user other than root no effective,
//! permitted or ambient capabilities (what docker gives a non-root user).
//!
//! The files are read through [`RootFiles`]: [`InRoot`] opens them with `RESOLVE_IN_ROOT`, so
//! a symlink in the image resolves inside the root and never leaves it; at most
//! [`MAX_FILE`] bytes each.

use std::ffi::CStr;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};

use moat_spec::USER_ANNOTATION;
use oci_spec::runtime::Spec;

use super::passwd::{self, ExecUser, UserError};
use super::plan::{ExecPlan, PlanError, ProcessSpec};
use super::security::CapSets;
use crate::syscall::{CStrArray, Syscall};

/// The largest `/etc/passwd` or `/etc/group` read.
pub const MAX_FILE: u64 = 4 << 20;

/// Errors resolving the container's user.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The user string is not resolvable (the message is docker's).
    #[error(transparent)]
    User(#[from] UserError),
    /// A file could not be read.
    #[error("reading {path} in the container root")]
    Read {
        /// The path in the container.
        path: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file is larger than [`MAX_FILE`].
    #[error("{0} in the container root is larger than {MAX_FILE} bytes")]
    TooLarge(&'static str),
    /// A file is not a regular file.
    #[error("{0} in the container root is not a regular file")]
    NotFile(&'static str),
    /// The environment with `HOME` cannot be passed on.
    #[error("the environment with HOME")]
    Env(#[source] PlanError),
}

/// The files of the container's root the user is resolved from.
pub trait RootFiles {
    /// The text of `path` (absolute in the container), `None` where it does not exist.
    fn read(&self, path: &'static str) -> Result<Option<String>, ResolveError>;
}

/// The container's root directory, read with `RESOLVE_IN_ROOT` through the [`Syscall`] layer.
pub struct InRoot<'a> {
    /// The system calls.
    pub sys: &'a dyn Syscall,
    /// The root, e.g. [`super::rootfs::ROOT`].
    pub root: &'a CStr,
}

impl InRoot<'_> {
    fn open(&self, path: &'static str) -> io::Result<Option<OwnedFd>> {
        let root = self.sys.open(self.root, libc::O_PATH | libc::O_DIRECTORY)?;
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        let root = unsafe { OwnedFd::from_raw_fd(root) };
        let c_path = std::ffi::CString::new(path).map_err(io::Error::other)?;
        // O_PATH: nothing of the file is touched (an image's /etc/passwd may be a device node,
        // and opening some devices acts); `read` reopens it only once it is a regular file.
        let flags = libc::O_PATH;
        match self
            .sys
            .open_in_root(std::os::fd::AsRawFd::as_raw_fd(&root), &c_path, flags)
        {
            // SAFETY: as above, a new descriptor owned by nobody else.
            Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl RootFiles for InRoot<'_> {
    fn read(&self, path: &'static str) -> Result<Option<String>, ResolveError> {
        let err = |source| ResolveError::Read { path, source };
        let Some(fd) = self.open(path).map_err(err)? else {
            return Ok(None);
        };
        let located = std::fs::File::from(fd);
        if !located.metadata().map_err(err)?.is_file() {
            return Err(ResolveError::NotFile(path));
        }
        let proc_path = std::ffi::CString::new(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&located)
        ))
        .map_err(|e| err(io::Error::other(e)))?;
        let reopened = self
            .sys
            .open(&proc_path, libc::O_RDONLY | libc::O_NOCTTY)
            .map_err(err)?;
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(reopened) });
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(ResolveError::TooLarge(path));
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// The user string of `spec`'s [`USER_ANNOTATION`], if it has one.
pub fn wanted(spec: &Spec) -> Option<&str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(USER_ANNOTATION))
        .map(String::as_str)
}

/// Checks the annotation's form before anything is mounted.
pub fn check(spec: &Spec) -> Result<(), PlanError> {
    match wanted(spec).map(passwd::check) {
        Some(Err(e)) => Err(PlanError::Field {
            field: format!("annotations[{USER_ANNOTATION}]"),
            why: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Resolves `spec` (a user string) against `/etc/passwd` and `/etc/group` of `files`.
pub fn resolve(files: &dyn RootFiles, spec: &str) -> Result<ExecUser, ResolveError> {
    let passwd = files.read("/etc/passwd")?;
    let group = files.read("/etc/group")?;
    Ok(passwd::resolve(spec, passwd.as_deref(), group.as_deref())?)
}

/// Sets the resolved `user` on the process and its plan: ids, groups (then the spec's
/// `additionalGids`), `HOME` unless the environment has one, and for a uid other than 0 no
/// effective, permitted or ambient capabilities (the spec was made for root, who the host
/// could not tell the name from).
pub fn apply(
    user: &ExecUser,
    process: &mut ProcessSpec,
    plan: &mut ExecPlan,
) -> Result<(), ResolveError> {
    let mut groups = user.groups.clone();
    for g in &process.additional_gids {
        if !groups.contains(g) {
            groups.push(*g);
        }
    }
    process.uid = user.uid;
    process.gid = user.gid;
    process.additional_gids = groups.clone();
    (plan.uid, plan.gid, plan.groups) = (user.uid, user.gid, groups);
    if !process.env.iter().any(|e| e.starts_with("HOME=")) {
        process.env.push(format!("HOME={}", user.home));
        plan.envp = envp(&process.env).map_err(ResolveError::Env)?;
    }
    if user.uid != 0 {
        non_root(&mut plan.security.caps);
        non_root(&mut plan.init_security.caps);
    }
    Ok(())
}

/// What execve leaves a non-root user without file capabilities: nothing but the bounding set
/// (the inheritable set goes too: with file-inheritable capabilities it would be regained).
fn non_root(caps: &mut CapSets) {
    caps.effective = 0;
    caps.permitted = 0;
    caps.inheritable = 0;
    caps.ambient = 0;
}

fn envp(env: &[String]) -> Result<CStrArray, PlanError> {
    let strings = env
        .iter()
        .map(|e| std::ffi::CString::new(e.as_str()).map_err(|_| PlanError::Nul("the environment")))
        .collect::<Result<_, _>>()?;
    Ok(CStrArray::new(strings))
}

#[cfg(test)]
#[path = "user_tests.rs"]
mod tests;
