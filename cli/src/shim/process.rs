//! One process of a task as the shim tracks it: the container's init (exec id "") or an exec.
//! Its status changes under one lock, and the events that report a change are sent under it,
//! so containerd sees TaskStart before that process's TaskExit, whatever the threads do.

use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use moat_runtime::sandbox::client;
use moat_runtime::sandbox::control::{self, Reply, Request};

use super::stdio::{Opened, Paths, StdinCloser};

/// Where a process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Paused,
    Stopped,
}

/// The mutable part of a process.
pub struct Life {
    /// Where it stands.
    pub phase: Phase,
    /// Its exit status and time, once stopped.
    pub exit: Option<(u32, Timestamp)>,
    /// Its guest pid once started.
    pub guest_pid: i32,
    /// Its connection to the supervisor (attach or exec): signals and resizes go there.
    pub conn: Option<UnixStream>,
    /// Its stdio until it starts (an exec's).
    pub stdio: Option<Opened>,
    /// Its exec spec until it starts.
    pub spec: Option<Box<oci_spec::runtime::Process>>,
}

/// One process.
pub struct Process {
    /// The exec id ("" for the init).
    pub exec_id: String,
    /// What containerd asked for.
    pub paths: Paths,
    life: Mutex<Life>,
    changed: Condvar,
    closer: Mutex<Option<StdinCloser>>,
}

impl Process {
    /// A created process.
    pub fn new(exec_id: &str, paths: Paths, closer: Option<StdinCloser>) -> Self {
        Self {
            exec_id: exec_id.to_owned(),
            paths,
            life: Mutex::new(Life {
                phase: Phase::Created,
                exit: None,
                guest_pid: 0,
                conn: None,
                stdio: None,
                spec: None,
            }),
            changed: Condvar::new(),
            closer: Mutex::new(closer),
        }
    }

    /// Its life, locked.
    pub fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiters after a change made through [`Self::life`].
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits until the process has stopped; its status and time.
    pub fn wait(&self) -> (u32, Timestamp) {
        let mut life = self.life();
        loop {
            if let Some(exit) = &life.exit {
                return exit.clone();
            }
            life = self
                .changed
                .wait(life)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// containerd's status of the process.
    pub fn status(&self) -> Status {
        match self.life().phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        }
    }

    /// Ends the process's stdin (`CloseIO`).
    pub fn close_stdin(&self) {
        if let Some(closer) = self
            .closer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            closer.close();
        }
    }

    /// Sends `req` (a signal or a resize) on the process's connection.
    pub fn send(&self, req: &Request) -> anyhow::Result<()> {
        let life = self.life();
        let Some(conn) = &life.conn else {
            anyhow::bail!("the process has no connection to its supervisor");
        };
        control::send(conn, req)?;
        Ok(())
    }
}

/// The status of a process whose end nobody saw (containerd's and runc's shim's choice).
pub const EXIT_UNKNOWN: u32 = 255;

/// Waits on `conn` (an attach or exec connection) for the process's end, calling `on_oom` for
/// each OOM kill reported on the way; its status and whether the supervisor said why it failed.
pub fn wait_exit(conn: &UnixStream, on_oom: &dyn Fn()) -> (u32, Option<String>) {
    loop {
        match client::next_reply(conn) {
            Ok(Reply::Oom { .. }) => on_oom(),
            Ok(Reply::Exited { code }) => return (code as u32, None),
            Ok(Reply::Error { message, code }) => return (code as u32, Some(message)),
            Ok(_) => {}
            Err(_) => return (EXIT_UNKNOWN, Some("the supervisor went away".into())),
        }
    }
}
