//! What the state directory of a container holds about it: `plan.json` (how to boot it, written
//! once by the CLI that made it) and `state.json` (where it is in its life, rewritten by whoever
//! changes that), both replaced atomically (write to a temp file, fsync, rename).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::assets::Assets;
use crate::config::RunConfig;
use crate::run::RuntimeOptions;

/// The plan's file in the state directory.
pub const PLAN_FILE: &str = "plan.json";
/// The state's file in the state directory.
pub const STATE_FILE: &str = "state.json";

/// Errors reading or writing the records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a record of this version.
    #[error("{} is not a valid moat state file", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// How a container is made and booted: everything the supervisor needs, decided by the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The container (its `id` is the state directory's name).
    pub config: RunConfig,
    /// Kernel, initramfs, VMM, image disk.
    pub assets: Assets,
    /// Runtime settings.
    pub options: RuntimeOptions,
    /// The 64-hex id docker shows (the name is [`RunConfig::id`]).
    pub long_id: String,
    /// The image as the user named it (`busybox`, `app:1.4`), for `ps`.
    pub image: String,
    /// The command line, for `ps`.
    pub command: Vec<String>,
    /// Remove everything once the container exits (`moat run` without `-d`, `--rm`).
    pub auto_remove: bool,
    /// The signal `stop` sends first (the image's StopSignal, `--stop-signal`).
    pub stop_signal: i32,
    /// Seconds `stop` waits before SIGKILL (`--stop-timeout`).
    pub stop_timeout: u32,
    /// json-file log options (`--log-opt`).
    pub log_options: Vec<(String, String)>,
    /// An OCI container (`moat create`): runc's state machine and verbs.
    pub oci_bundle: Option<PathBuf>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its VM is booting.
    Creating,
    /// Its process exists but has not started (OCI `created`).
    Created,
    /// Its process runs.
    Running,
    /// Its processes are frozen.
    Paused,
    /// It ended (its VM is gone).
    Exited,
}

/// The container's state, `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Where it is.
    pub status: Status,
    /// The supervisor's pid while one runs.
    pub supervisor_pid: Option<u32>,
    /// The VMM's pid while the VM runs.
    pub vmm_pid: Option<u32>,
    /// The container process's pid in the guest.
    pub guest_pid: Option<i32>,
    /// Seconds since the epoch it was created.
    pub created: u64,
    /// When it last started.
    pub started: Option<u64>,
    /// When it last ended.
    pub finished: Option<u64>,
    /// Its exit code, once it ended.
    pub exit_code: Option<i32>,
    /// Why it ended other than by its process's exit (a boot failure, a VM that died).
    pub error: Option<String>,
    /// How many times it was started.
    pub starts: u32,
    /// How many processes the OOM killer killed in its cgroup (the guest's count).
    #[serde(default)]
    pub oom_kills: u64,
}

impl State {
    /// A new container's state.
    pub fn new() -> Self {
        Self {
            status: Status::Creating,
            supervisor_pid: None,
            vmm_pid: None,
            guest_pid: None,
            created: now(),
            started: None,
            finished: None,
            exit_code: None,
            error: None,
            starts: 0,
            oom_kills: 0,
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `value` as JSON to `dir/name`, atomically.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), RecordError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let io_err = |source| RecordError::Io {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io_err(io::Error::other(e)))?;
    let mut file = std::fs::File::create(&tmp).map_err(io_err)?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    std::fs::rename(&tmp, &path).map_err(io_err)
}

/// Reads `dir/name` as JSON.
pub fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<T, RecordError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|source| RecordError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RecordError::Invalid { path, source })
}

/// A fresh 64-hex container id.
pub fn long_id() -> String {
    let mut bytes = [0u8; 32];
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
        for (i, b) in seed.bytes().enumerate() {
            bytes[i % 32] ^= b.rotate_left(i as u32 % 8);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn state_round_trips_atomically() {
        let tmp = TempDir::new("record");
        let mut state = State::new();
        state.status = Status::Running;
        state.exit_code = Some(3);
        write_json(tmp.path(), STATE_FILE, &state).unwrap();
        let back: State = read_json(tmp.path(), STATE_FILE).unwrap();
        assert_eq!(back, state);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
        std::fs::write(tmp.path().join(STATE_FILE), b"{").unwrap();
        assert!(matches!(
            read_json::<State>(tmp.path(), STATE_FILE),
            Err(RecordError::Invalid { .. })
        ));
    }

    #[test]
    fn long_ids_are_64_hex() {
        let (a, b) = (long_id(), long_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
