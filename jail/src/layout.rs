//! Where a jail lives: base `/run/moat` (root-owned, 0700), state dir `<base>/<id>/` (the
//! runtime's: `vmm.log`, `vmm.pid`), jail root `<base>/<id>/root/` (what the VMM sees as `/`).

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::id::JailId;

/// The default base directory.
pub const DEFAULT_BASE: &str = "/run/moat";
/// Names inside the jail root.
pub const KERNEL: &str = "vmlinux";
/// The initramfs in the jail root.
pub const INITRAMFS: &str = "initramfs";
/// The KVM device in the jail root.
pub const KVM: &str = "dev/kvm";
/// The directory of [`KVM`].
pub const DEV_DIR: &str = "dev";
/// The VMM's vsock socket in the jail root.
pub const VSOCK: &str = "vsock.sock";
/// The VMM's control socket, in the jail root (docs/vmm-control.md).
pub const CONTROL: &str = "control.sock";
/// The serial console log in the jail root.
pub const CONSOLE_LOG: &str = "console.log";
/// Mode of the jail root: the VM's uid may traverse it (to reach the runtime's listener) but
/// neither list nor change it.
pub const ROOT_MODE: u32 = 0o711;

/// Errors about the base and state directories.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A directory could not be created or inspected.
    #[error("cannot create or inspect {}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A directory is a symlink.
    #[error("{} is a symlink; refusing it", .0.display())]
    Symlink(PathBuf),
    /// A directory is not a directory.
    #[error("{} is not a directory", .0.display())]
    NotDir(PathBuf),
    /// A directory is not owned by root.
    #[error("{} is not owned by root", .0.display())]
    NotRootOwned(PathBuf),
    /// The base is open to others.
    #[error("{} must have mode 0700 (has {mode:o})", path.display())]
    Mode {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// The paths of one jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    base: PathBuf,
    id: JailId,
}

impl Layout {
    /// The jail `id` under `base`.
    pub fn new(base: &Path, id: JailId) -> Self {
        Self {
            base: base.to_owned(),
            id,
        }
    }

    /// The base.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The id.
    pub fn id(&self) -> &JailId {
        &self.id
    }

    /// `<base>/<id>`: the runtime's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.base.join(self.id.as_str())
    }

    /// `<base>/<id>/root`: the jail root.
    pub fn root(&self) -> PathBuf {
        self.state_dir().join("root")
    }

    /// `<root>/<name>`.
    pub fn in_root(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }
}

/// The name of the `index`th disk in the jail root.
pub fn disk_name(index: usize) -> String {
    format!("disk{index}")
}

/// Creates `path` (mode `mode`) unless it exists; an existing one must be a real directory
/// owned by root. Returns whether it was created.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<bool, LayoutError> {
    let io_err = |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    };
    let created = match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_err(e)),
    };
    let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    if meta.file_type().is_symlink() {
        return Err(LayoutError::Symlink(path.to_owned()));
    }
    if !meta.is_dir() {
        return Err(LayoutError::NotDir(path.to_owned()));
    }
    if meta.uid() != 0 {
        return Err(LayoutError::NotRootOwned(path.to_owned()));
    }
    if created {
        // The umask may have removed bits: set the mode exactly.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    }
    Ok(created)
}

/// Creates the base if missing and checks it: a real directory, owned by root, mode 0700.
pub fn check_base(base: &Path) -> Result<(), LayoutError> {
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| LayoutError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    ensure_dir(base, 0o700)?;
    let mode = std::fs::symlink_metadata(base)
        .map_err(|source| LayoutError::Io {
            path: base.to_owned(),
            source,
        })?
        .mode()
        & 0o7777;
    if mode != 0o700 {
        return Err(LayoutError::Mode {
            path: base.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn paths() {
        let layout = Layout::new(Path::new("/run/moat"), JailId::new("c1").unwrap());
        assert_eq!(layout.state_dir(), Path::new("/run/moat/c1"));
        assert_eq!(layout.root(), Path::new("/run/moat/c1/root"));
        assert_eq!(layout.in_root(KVM), Path::new("/run/moat/c1/root/dev/kvm"));
        assert_eq!(disk_name(1), "disk1");
    }

    #[test]
    fn base_is_created_private_and_checked() {
        let tmp = TempDir::new("layout");
        let base = tmp.path().join("run/moat");
        check_base(&base).unwrap();
        let meta = std::fs::metadata(&base).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        check_base(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(check_base(&base), Err(LayoutError::Mode { .. })));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert!(matches!(check_base(&link), Err(LayoutError::Symlink(_))));
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(check_base(&file), Err(LayoutError::NotDir(_))));
    }

    #[test]
    fn foreign_owned_dirs_are_refused() {
        let tmp = TempDir::new("layout-owner");
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(1234)), None).unwrap();
        assert!(matches!(
            ensure_dir(&dir, 0o700),
            Err(LayoutError::NotRootOwned(_))
        ));
    }
}
