//! The containers under a state root (`/run/moat`, `moat --root`): making a new one's
//! directory, finding one by name, id or id prefix, listing them, and cleaning up after one
//! whose supervisor died.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lock;
use super::record::{self, Plan, State, Status, PLAN_FILE, STATE_FILE};
use crate::state::{StateDir, StateError};

/// Errors finding or making containers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No container has this name, id or id prefix.
    #[error("No such container: {0}")]
    NotFound(String),
    /// More than one container's id starts with this.
    #[error("multiple containers match {0:?}: give more of the id")]
    Ambiguous(String),
    /// The name is taken.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse {
        /// The name.
        name: String,
        /// The container that has it.
        id: String,
    },
    /// The directory could not be made.
    #[error(transparent)]
    State(#[from] StateError),
    /// A record could not be read or written.
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

/// One container as its directory describes it.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its state directory.
    pub dir: PathBuf,
    /// How it is made.
    pub plan: Plan,
    /// Where it is.
    pub state: State,
    /// Whether its supervisor runs.
    pub supervised: bool,
}

impl Container {
    /// Reads the container in `dir`.
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let plan: Plan = record::read_json(dir, PLAN_FILE)?;
        let state: State = record::read_json(dir, STATE_FILE)?;
        Ok(Self {
            dir: dir.to_owned(),
            plan,
            state,
            supervised: lock::supervisor_alive(dir),
        })
    }

    /// Its name (the directory's).
    pub fn name(&self) -> &str {
        &self.plan.config.id
    }

    /// Whether it is running (or created, or paused) with a supervisor behind it.
    pub fn is_live(&self) -> bool {
        self.supervised && self.state.status != Status::Exited
    }

    /// Its state ended without a supervisor saying so: the supervisor was killed.
    pub fn is_dead(&self) -> bool {
        !self.supervised && self.state.status != Status::Exited
    }
}

/// Makes the directory of a new container and writes its plan and first state.
pub fn reserve(root: &Path, plan: &Plan) -> Result<PathBuf, StoreError> {
    let name = &plan.config.id;
    let dir = match StateDir::create(root, name, plan.options.jail) {
        Ok(dir) => dir,
        Err(StateError::Exists { .. }) => {
            let id = Container::load(&root.join(name))
                .map(|c| c.plan.long_id)
                .unwrap_or_else(|_| name.clone());
            return Err(StoreError::NameInUse {
                name: name.clone(),
                id,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let written = record::write_json(dir.path(), STATE_FILE, &State::new())
        .and_then(|()| record::write_json(dir.path(), PLAN_FILE, plan));
    // On failure the directory goes with `dir`.
    written?;
    Ok(dir.keep())
}

/// Every container under `root`, oldest first.
pub fn list(root: &Path) -> Vec<Container> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut all: Vec<Container> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Container::load(&e.path()).ok())
        .collect();
    all.sort_by_key(|c| (c.state.created, c.plan.long_id.clone()));
    all
}

/// The container named `query`, or whose id is or starts with it.
pub fn find(root: &Path, query: &str) -> Result<Container, StoreError> {
    let not_found = || StoreError::NotFound(query.to_owned());
    if query.is_empty() || query.contains('/') || query.starts_with('.') {
        return Err(not_found());
    }
    if let Ok(c) = Container::load(&root.join(query)) {
        return Ok(c);
    }
    let mut matches = list(root)
        .into_iter()
        .filter(|c| c.plan.long_id.starts_with(query));
    let first = matches.next().ok_or_else(not_found)?;
    if matches.next().is_some() {
        return Err(StoreError::Ambiguous(query.to_owned()));
    }
    Ok(first)
}

/// How long an unreadable state directory must have gone unwritten before it counts as broken
/// rather than one that a `moat run` is still filling.
const UNREADABLE_GRACE: Duration = Duration::from_secs(10);

/// Removes `root/<name>` if it is a state directory whose records cannot be read (damaged, or
/// left half-written by a crash), that no supervisor holds and nothing wrote for
/// [`UNREADABLE_GRACE`]: why it could not be read, or `None` if there is no such directory.
pub fn remove_unreadable(root: &Path, name: &str) -> Option<String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let dir = root.join(name);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let idle = meta.modified().ok()?.elapsed().unwrap_or_default() >= UNREADABLE_GRACE;
    if !meta.is_dir() || !idle || lock::supervisor_alive(&dir) {
        return None;
    }
    let why = match Container::load(&dir) {
        Ok(_) => return None,
        Err(e) => crate::error_chain(&e),
    };
    let _op = lock::op_lock(&dir).ok()?;
    std::fs::remove_dir_all(&dir).ok()?;
    Some(why)
}

/// Removes a container that has no supervisor (exited, or dead: its supervisor was killed),
/// under its operation lock; false if another remover got there first.
pub fn remove_unsupervised(c: &Container) -> bool {
    let Ok(_op) = lock::op_lock(&c.dir) else {
        return false;
    };
    if !c.dir.join(PLAN_FILE).exists() {
        return false;
    }
    if let Some(pid) = c.state.vmm_pid {
        super::remove::kill_stray_vmm(pid, c.name());
    }
    super::remove::remove_files(&c.dir, &c.plan);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn an_unreadable_state_dir_is_removed_once_idle() {
        let tmp = TempDir::new("store-unreadable");
        let dir = tmp.path().join("broken");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), "{bad").unwrap();
        // Just written: maybe a run still filling it.
        assert_eq!(remove_unreadable(tmp.path(), "broken"), None);
        let aged = std::process::Command::new("touch")
            .args(["-d", "1 minute ago"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(aged.success());
        let why = remove_unreadable(tmp.path(), "broken").expect("removed");
        assert!(why.contains(PLAN_FILE) || why.contains(STATE_FILE), "{why}");
        assert!(!dir.exists());
        assert_eq!(remove_unreadable(tmp.path(), "broken"), None);
        assert_eq!(remove_unreadable(tmp.path(), "../x"), None);
        assert!(matches!(
            find(tmp.path(), "broken"),
            Err(StoreError::NotFound(_))
        ));
    }
}
