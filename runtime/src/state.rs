//! The per-run state directory `/run/moat/<id>/` (0700), removed when the run ends. With the
//! jail, the VM's files (console log, vsock sockets) live in its jail root `<id>/root/`
//! (docs/jailer.md); the VMM's log and pid stay in the state directory.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where state directories live.
pub const STATE_ROOT: &str = "/run/moat";

/// Longest path a Unix socket address can hold (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Errors around the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A container with this id exists (or its state was left behind).
    #[error("a container named {id:?} already exists ({} is present)", path.display())]
    Exists {
        /// The id.
        id: String,
        /// Its state directory.
        path: PathBuf,
    },
    /// The directory could not be created.
    #[error("cannot create the state directory {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket paths would not fit in a Unix socket address.
    #[error("state directory path {} is too long for a unix socket", .0.display())]
    PathTooLong(PathBuf),
    /// The base or the jail root is unsafe or cannot be created.
    #[error(transparent)]
    Jail(#[from] moat_jail::layout::LayoutError),
}

/// A created state directory; dropping it removes the directory and everything in it.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// Where the VM's own files are: the jail root, or the state dir itself without the jail.
    vm_dir: PathBuf,
    keep_logs: Option<PathBuf>,
    /// A container's directory, which outlives its VM: dropping removes only the VM's files.
    persistent: bool,
    /// Dropping removes nothing.
    kept: bool,
}

/// The state directory of `id` and its VM's directory (the jail root, or the state dir itself
/// without the jail), refused when the agent's socket path would not fit a socket address.
fn paths(root: &Path, id: &str, jailed: bool) -> Result<(PathBuf, PathBuf), StateError> {
    let path = root.join(id);
    let vm_dir = if jailed {
        path.join("root")
    } else {
        path.clone()
    };
    let listener = vm_dir.join(format!("vsock.sock_{}", moat_protocol::AGENT_VSOCK_PORT));
    if listener.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(StateError::PathTooLong(path));
    }
    Ok((path, vm_dir))
}

impl StateDir {
    /// Creates `<root>/<id>` with mode 0700 (and `root` if missing), refusing an existing one;
    /// with `jailed`, also checks `root` (a root-owned real directory, mode 0700) and creates
    /// the jail root `<id>/root` (0711).
    pub fn create(root: &Path, id: &str, jailed: bool) -> Result<Self, StateError> {
        let (path, vm_dir) = paths(root, id, jailed)?;
        let create_err = |path: &Path, source| StateError::Create {
            path: path.to_owned(),
            source,
        };
        if jailed {
            moat_jail::layout::check_base(root)?;
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| create_err(root, e))?;
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists {
                    id: id.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(create_err(&path, e)),
        }
        let dir = Self {
            path,
            vm_dir,
            keep_logs: None,
            persistent: false,
            kept: false,
        };
        // The umask may only have removed bits; set the mode exactly anyway.
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| create_err(&dir.path, e))?;
        if jailed {
            moat_jail::layout::ensure_dir(&dir.vm_dir, moat_jail::layout::ROOT_MODE)?;
        }
        Ok(dir)
    }

    /// Leaves the directory in place when dropped (a container's, made by the CLI for its
    /// supervisor) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        self.path.clone()
    }

    /// Opens the existing directory of container `id` for one boot of its VM: a stale jail root
    /// is replaced by a fresh one; dropping it removes the VM's files only (the jail root, the
    /// VMM's pid, packed directories), after copying the console log into the directory.
    pub fn open_existing(root: &Path, id: &str, jailed: bool) -> Result<Self, StateError> {
        let (path, vm_dir) = paths(root, id, jailed)?;
        if jailed {
            moat_jail::layout::check_base(root)?;
            match std::fs::remove_dir_all(&vm_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Create {
                        path: vm_dir,
                        source,
                    })
                }
            }
            moat_jail::layout::ensure_dir(&vm_dir, moat_jail::layout::ROOT_MODE)?;
        }
        Ok(Self {
            path,
            vm_dir,
            keep_logs: None,
            persistent: true,
            kept: false,
        })
    }

    /// Whether this is a container's directory that outlives its VM.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    fn remove_vm_files(&self) {
        if self.vm_dir != self.path {
            let _ = std::fs::copy(self.console_log(), self.path.join(CONSOLE_COPY));
            let _ = std::fs::remove_dir_all(&self.vm_dir);
        }
        let _ = std::fs::remove_file(self.vmm_pid());
        let _ = std::fs::remove_file(self.agent_listener());
        let _ = std::fs::remove_file(self.vsock_uds());
        let packed = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten();
        for entry in packed {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "rootfs.ext4" || (name.starts_with("volume-") && name.ends_with(".ext4")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Before the directory is removed, copy the console and VMM logs into `dir` (for tests and
    /// debugging: `MOAT_LOG_DIR`).
    pub fn keep_logs_in(&mut self, dir: PathBuf) {
        self.keep_logs = Some(dir);
    }

    fn copy_logs(&self, dir: &Path) {
        for log in [self.console_log(), self.vmm_log()] {
            let Some(name) = log.file_name() else {
                continue;
            };
            if let Err(e) = std::fs::copy(&log, dir.join(name)) {
                tracing::debug!(log = %log.display(), error = %e, "log not kept");
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the VM's files: the jail root, or the state dir without the jail.
    pub fn vm_dir(&self) -> &Path {
        &self.vm_dir
    }

    /// The VMM's vsock Unix socket (`--vsock-uds`), as the host sees it.
    pub fn vsock_uds(&self) -> PathBuf {
        self.vm_dir.join(moat_jail::layout::VSOCK)
    }

    /// The runtime's listener for the agent's connection: `<vsock uds>_<port>`.
    pub fn agent_listener(&self) -> PathBuf {
        self.vm_dir
            .join(format!("vsock.sock_{}", moat_protocol::AGENT_VSOCK_PORT))
    }

    /// The VMM's control socket (`--control-uds`), as the host sees it.
    pub fn control_uds(&self) -> PathBuf {
        self.vm_dir.join(moat_jail::layout::CONTROL)
    }

    /// The guest's serial console log, as the host sees it.
    pub fn console_log(&self) -> PathBuf {
        self.vm_dir.join(moat_jail::layout::CONSOLE_LOG)
    }

    /// The VMM's pid as the host sees it, written once it started (for tests and debugging).
    pub fn vmm_pid(&self) -> PathBuf {
        self.path.join("vmm.pid")
    }

    /// The VMM's own stdout and stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }
}

/// Where a container's directory keeps its last VM's console log.
pub const CONSOLE_COPY: &str = "console.log";

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.keep_logs {
            self.copy_logs(dir);
        }
        if self.kept {
            return;
        }
        if self.persistent {
            self.remove_vm_files();
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove state directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn created_private_refused_twice_removed_on_drop() {
        let tmp = TempDir::new("state");
        let root = tmp.path().join("run/moat");
        let dir = StateDir::create(&root, "c1", false).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(dir.agent_listener(), root.join("c1/vsock.sock_1024"));
        assert_eq!(dir.vsock_uds(), root.join("c1/vsock.sock"));
        std::fs::write(dir.console_log(), b"log").unwrap();
        let err = StateDir::create(&root, "c1", false).unwrap_err();
        assert!(matches!(err, StateError::Exists { .. }), "{err}");
        // The refused attempt must not have removed the first one.
        assert!(dir.path().exists());
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
        assert!(root.exists());
    }

    #[test]
    fn long_paths_are_refused() {
        let tmp = TempDir::new("state-long");
        let root = tmp.path().join("x".repeat(100));
        assert!(matches!(
            StateDir::create(&root, "c1", false),
            Err(StateError::PathTooLong(_))
        ));
    }

    #[test]
    fn jailed_runs_keep_the_vm_files_in_the_jail_root() {
        let tmp = TempDir::new("state-jail");
        let root = tmp.path().join("run/moat");
        let dir = StateDir::create(&root, "c1", true).unwrap();
        assert_eq!(dir.vm_dir(), root.join("c1/root"));
        let meta = std::fs::metadata(dir.vm_dir()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o711);
        assert_eq!(dir.agent_listener(), root.join("c1/root/vsock.sock_1024"));
        assert_eq!(dir.console_log(), root.join("c1/root/console.log"));
        assert_eq!(dir.vmm_log(), root.join("c1/vmm.log"));
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
        // An unsafe base is refused.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            StateDir::create(&root, "c2", true),
            Err(StateError::Jail(_))
        ));
    }
}
