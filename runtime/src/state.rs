//! The per-run state directory `/run/moat/<id>/` (0700), removed when the run ends.

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
}

/// A created state directory; dropping it removes the directory and everything in it.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    keep_logs: Option<PathBuf>,
}

impl StateDir {
    /// Creates `<root>/<id>` with mode 0700 (and `root` if missing), refusing an existing one.
    pub fn create(root: &Path, id: &str) -> Result<Self, StateError> {
        let path = root.join(id);
        let listener = path.join(format!("vsock.sock_{}", moat_protocol::AGENT_VSOCK_PORT));
        if listener.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(StateError::PathTooLong(path));
        }
        let create_err = |path: &Path, source| StateError::Create {
            path: path.to_owned(),
            source,
        };
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
            keep_logs: None,
        };
        // The umask may only have removed bits; set the mode exactly anyway.
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| create_err(&dir.path, e))?;
        Ok(dir)
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

    /// The VMM's vsock Unix socket (`--vsock-uds`).
    pub fn vsock_uds(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// The runtime's listener for the agent's connection: `<vsock uds>_<port>`.
    pub fn agent_listener(&self) -> PathBuf {
        self.path
            .join(format!("vsock.sock_{}", moat_protocol::AGENT_VSOCK_PORT))
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// The VMM's own stdout and stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.keep_logs {
            self.copy_logs(dir);
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
        let dir = StateDir::create(&root, "c1").unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(dir.agent_listener(), root.join("c1/vsock.sock_1024"));
        assert_eq!(dir.vsock_uds(), root.join("c1/vsock.sock"));
        std::fs::write(dir.console_log(), b"log").unwrap();
        let err = StateDir::create(&root, "c1").unwrap_err();
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
            StateDir::create(&root, "c1"),
            Err(StateError::PathTooLong(_))
        ));
    }
}
