//! Locks in a container's state directory: `supervisor.lock`, held exclusively by the living
//! supervisor (so anyone can tell whether one runs: the lock dies with its process), and
//! `op.lock`, which CLIs hold while they change a container that has no supervisor (start,
//! remove), so that two of them never act at once.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

const SUPERVISOR_LOCK: &str = "supervisor.lock";
const OP_LOCK: &str = "op.lock";

fn open(dir: &Path, name: &str) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(name))
}

/// Takes the supervisor lock; `None` if a supervisor holds it.
pub fn supervisor_lock(dir: &Path) -> io::Result<Option<File>> {
    let file = open(dir, SUPERVISOR_LOCK)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a supervisor runs for the container in `dir`.
pub fn supervisor_alive(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(SUPERVISOR_LOCK)) else {
        return false;
    };
    matches!(
        flock(&file, FlockOperation::NonBlockingLockShared),
        Err(rustix::io::Errno::WOULDBLOCK)
    )
}

/// Waits for the operation lock of `dir`.
pub fn op_lock(dir: &Path) -> io::Result<File> {
    let file = open(dir, OP_LOCK)?;
    flock(&file, FlockOperation::LockExclusive)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn a_held_supervisor_lock_is_seen_and_dies_with_its_file() {
        let tmp = TempDir::new("locks");
        assert!(!supervisor_alive(tmp.path()));
        let held = supervisor_lock(tmp.path()).unwrap().unwrap();
        assert!(supervisor_alive(tmp.path()));
        assert!(supervisor_lock(tmp.path()).unwrap().is_none());
        drop(held);
        assert!(!supervisor_alive(tmp.path()));
        let _op = op_lock(tmp.path()).unwrap();
    }
}
