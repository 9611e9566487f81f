//! Inside the VMM's own mount namespace: make every mount private, bind the VM's files over
//! their placeholders, `pivot_root` into the jail root and detach the old root.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{self, MountFlags, MountPropagationFlags, UnmountFlags};

/// Errors setting up the jail's mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount operation failed.
    #[error("cannot {what} {}", path.display())]
    Mount {
        /// The operation.
        what: &'static str,
        /// Its target.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// One file bound into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host file.
    pub source: PathBuf,
    /// The placeholder it goes over, relative to the jail root.
    pub name: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// A device node (keeps device access; everything else is `nodev`).
    pub device: bool,
}

fn op<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> MountError + 'a {
    move |e| MountError::Mount {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Binds `bind.source` over its placeholder under `root`, then remounts it with its flags
/// (`nosuid`, `noexec`, `nodev` unless a device, `ro` if read-only).
fn bind_file(root: &Path, bind: &Bind) -> Result<(), MountError> {
    let target = root.join(&bind.name);
    mount::mount_bind(&bind.source, &target).map_err(op("bind-mount onto", &target))?;
    let mut flags = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NOEXEC;
    if !bind.device {
        flags |= MountFlags::NODEV;
    }
    if bind.read_only {
        flags |= MountFlags::RDONLY;
    }
    mount::mount_remount(&target, flags, "").map_err(op("remount", &target))
}

/// Must run in a fresh mount namespace, as root. Makes every mount private (nothing propagates
/// back to the host), turns `root` into a mount point, binds `binds` into it, and makes it the
/// process's `/` with the old root detached: afterwards only the jail's files are reachable.
pub fn enter(root: &Path, binds: &[Bind]) -> Result<(), MountError> {
    let slash = Path::new("/");
    mount::mount_change(
        slash,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(op("make private", slash))?;
    mount::mount_bind(root, root).map_err(op("bind-mount", root))?;
    mount::mount_remount(
        root,
        MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )
    .map_err(op("remount", root))?;
    for bind in binds {
        bind_file(root, bind)?;
    }
    rustix::process::chdir(root).map_err(op("enter", root))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the
    // jail root alone, with no directory to keep the old root around in.
    rustix::process::pivot_root(".", ".").map_err(op("pivot_root into", root))?;
    mount::unmount(".", UnmountFlags::DETACH).map_err(op("detach the old root", slash))?;
    rustix::process::chdir(slash).map_err(op("enter", slash))
}
