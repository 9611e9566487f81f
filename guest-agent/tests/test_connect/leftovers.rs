//! What an isolated agent leaves on this host when a test fails half-way: its containers'
//! cgroups (and anything still running in them). A failing test clears them as it unwinds,
//! and each isolated agent starts with none left by an earlier run that was killed, so one
//! failure does not fail the tests after it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup the isolated agent creates its containers' cgroups in (as its `main` picks
/// the hierarchy: a hybrid host's cgroup2 is under `unified`).
fn parent() -> PathBuf {
    let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    Path::new(root).join("containers")
}

/// The container cgroups under the agent's parent cgroup.
pub fn container_cgroups() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Kills what runs in every container cgroup and removes them.
pub fn clear() {
    for dir in container_cgroups() {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !empty(&dir) {
            std::thread::sleep(Duration::from_millis(10));
        }
        remove_tree(&dir);
    }
}

fn empty(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 0"))
        .unwrap_or(true)
}

/// Removes a cgroup's children, deepest first, then the cgroup.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        eprintln!("leftovers: removing {}: {e}", dir.display());
    }
}
