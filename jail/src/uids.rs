//! Per-VM unprivileged uid/gid: slot `n` gives uid = gid = [`FIRST_ID`] + n, held by an
//! exclusive `flock` on `<dir>/<n>` for the VM's lifetime. A slot whose file nobody has locked
//! is free, so the slot of a crashed `moat` is reusable at once. The files stay (removing a lock
//! file while another process may be opening it would let two holders lock different inodes).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::layout::{self, LayoutError};
use crate::privs::Ids;

/// The first VM uid and gid.
pub const FIRST_ID: u32 = 1_000_000;
/// How many slots there are.
pub const SLOTS: u32 = 4096;

/// Errors allocating a slot.
#[derive(Debug, thiserror::Error)]
pub enum UidError {
    /// The slot directory.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A slot file could not be opened or locked.
    #[error("cannot lock the uid slot {}", path.display())]
    Lock {
        /// The slot file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Every slot is held.
    #[error("all {SLOTS} VM uid slots are in use")]
    Exhausted,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct UidSlot {
    index: u32,
    _lock: File,
}

impl UidSlot {
    /// Takes the first free slot under `dir` (created root-owned, mode 0700, if missing).
    pub fn acquire(dir: &Path) -> Result<Self, UidError> {
        layout::ensure_dir(dir, 0o700)?;
        for index in 0..SLOTS {
            let path = dir.join(index.to_string());
            let lock_err = |source| UidError::Lock {
                path: path.clone(),
                source,
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(lock_err)?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Self { index, _lock: file }),
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(lock_err(e.into())),
            }
        }
        Err(UidError::Exhausted)
    }

    /// The slot number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The VM's uid and gid.
    pub fn ids(&self) -> Ids {
        let id = FIRST_ID + self.index;
        Ids { uid: id, gid: id }
    }
}

/// Whether slot `index` under `dir` is held by someone (for tests and diagnostics).
pub fn is_held(dir: &Path, index: u32) -> bool {
    let Ok(file) = File::open(dir.join(index.to_string())) else {
        return false;
    };
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn slots_are_exclusive_and_freed_on_drop() {
        let tmp = TempDir::new("uids");
        let dir = tmp.path().join("uids");
        let a = UidSlot::acquire(&dir).unwrap();
        let b = UidSlot::acquire(&dir).unwrap();
        assert_ne!(a.index(), b.index());
        assert_eq!(a.ids().uid, FIRST_ID + a.index());
        assert!(is_held(&dir, a.index()));
        let freed = a.index();
        drop(a);
        assert!(!is_held(&dir, freed));
        let c = UidSlot::acquire(&dir).unwrap();
        assert_eq!(c.index(), freed);
        drop((b, c));
    }
}
