//! The conversation with the host (see `moat_protocol::message`): `Ready`, `Create`, `Start`,
//! then execs, stdio under flow control, signals, resizes and container requests until the
//! container ends, then `Shutdown`; a pod's later containers are created, started and removed
//! the same way while the first runs.
//!
//! Threads: this one reads frames from the host and never blocks on a process; per process, one
//! pump per output stream, one stdin writer and one waiter that reports `Exited` after the
//! outputs ended ([`procs`]). Requests are handled in [`requests`].

mod cgroups;
mod procs;
mod requests;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;

use moat_protocol::{
    decode, read_frame, AgentMessage, ErrorKind, Frame, FrameError, FrameKind, HostMessage,
    OutputStream, MAIN_PROCESS, PROTOCOL_VERSION,
};

use self::procs::{kill_exec, Procs};
use self::requests::{Container, Phase};
use crate::container::{pty, Isolation};
use crate::reaper::Reaper;
use crate::stdio::{stdin_credit, FrameWriter, PushError};

/// Errors of the conversation.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A frame could not be sent to the host.
    #[error("sending to the host failed")]
    Send(#[source] FrameError),
    /// A frame could not be read from the host.
    #[error("reading from the host failed")]
    Recv(#[source] FrameError),
    /// The connection could not be duplicated or a thread not started.
    #[error("setting up the connection failed")]
    Setup(#[source] io::Error),
}

/// Which processes to kill when the container's process ends or the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillScope {
    /// Every process but the agent (`kill(-1)` from PID 1): the guest mode.
    Everything,
    /// The process group of the container's process: the host test mode.
    Group,
    /// Every process of the container's cgroup: a pod's later container in the guest.
    Cgroup,
}

impl KillScope {
    /// Sends `SIGKILL` to the scope; `pid` is the container's process.
    pub fn kill(self, pid: Option<libc::pid_t>) {
        let target = match (self, pid) {
            (Self::Everything, _) => -1,
            (Self::Group, Some(pid)) if pid > 0 => -pid,
            (Self::Group | Self::Cgroup, _) => return,
        };
        // SAFETY: kill takes no pointers; a missing target is just ESRCH.
        unsafe { libc::kill(target, libc::SIGKILL) };
    }
}

/// How the agent runs processes.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Confinement of the process.
    pub isolation: Isolation,
    /// What to kill on exit.
    pub kill: KillScope,
    /// The cgroup v2 hierarchy containers get their cgroup in (guest mode).
    pub cgroup_root: &'static str,
}

/// How the conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host sent `Shutdown`.
    Shutdown,
    /// The host closed the connection.
    Disconnected,
}

struct Server {
    config: Config,
    reaper: Arc<Reaper>,
    writer: Arc<FrameWriter>,
    /// The VM's containers, the first first.
    containers: Vec<Container>,
    procs: Procs,
    /// The container of each process id.
    owners: HashMap<u32, String>,
}

/// Serves one connection; returns when the host says `Shutdown` or goes away. The caller kills
/// what is left (see [`KillScope`]).
pub fn serve(conn: File, config: Config, reaper: Arc<Reaper>) -> Result<Outcome, ServerError> {
    let mut reader = conn.try_clone().map_err(ServerError::Setup)?;
    let writer = FrameWriter::new(Box::new(conn));
    let ready = AgentMessage::Ready {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    writer.control(&ready).map_err(ServerError::Send)?;
    let mut server = Server {
        config,
        reaper,
        writer,
        containers: Vec::new(),
        procs: Procs::default(),
        owners: HashMap::new(),
    };
    let outcome = loop {
        let frame = match read_frame(&mut reader) {
            Ok(frame) => frame,
            Err(FrameError::Closed) => break Outcome::Disconnected,
            Err(e) => return Err(ServerError::Recv(e)),
        };
        if server.frame(frame)? {
            break Outcome::Shutdown;
        }
    };
    server.kill_all();
    Ok(outcome)
}

impl Server {
    fn error(
        &self,
        process: Option<u32>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Result<(), ServerError> {
        let msg = AgentMessage::Error {
            process,
            kind,
            message: message.into(),
        };
        self.send(&msg)
    }

    fn send(&self, msg: &AgentMessage) -> Result<(), ServerError> {
        self.writer.control(msg).map_err(ServerError::Send)
    }

    /// Handles one frame; true on `Shutdown`.
    fn frame(&mut self, frame: Frame) -> Result<bool, ServerError> {
        match frame.kind {
            FrameKind::Control => return self.control(&frame.payload),
            FrameKind::Stdin => self.stdin(frame.process, frame.payload)?,
            FrameKind::Stdout | FrameKind::Stderr => self.error(
                Some(frame.process),
                ErrorKind::InvalidRequest,
                "output frames go from agent to host",
            )?,
        }
        Ok(false)
    }

    /// Kills what still runs when the conversation ends.
    fn kill_all(&self) {
        self.config
            .kill
            .kill(self.procs.get(MAIN_PROCESS).map(|p| p.pid));
        for c in &self.containers {
            if let Phase::Created { created, .. } = &c.phase {
                self.config.kill.kill(Some(created.pid()));
            }
        }
        for (id, p) in self.procs.running() {
            let main = self.containers.iter().any(|c| c.process == id);
            match (id, main) {
                (MAIN_PROCESS, _) => {}
                (_, true) => self.config.kill.kill(Some(p.pid)),
                _ => kill_exec(p.pid, libc::SIGKILL),
            }
        }
    }

    /// Handles one control message; true on `Shutdown`.
    fn control(&mut self, payload: &[u8]) -> Result<bool, ServerError> {
        let msg = match decode::<HostMessage>(payload) {
            Ok(msg) => msg,
            Err(e) => {
                let text = format!("{e}: {}", source_text(&e));
                self.error(None, ErrorKind::InvalidRequest, text)?;
                return Ok(false);
            }
        };
        match msg {
            HostMessage::Create(req) => self.create(&req)?,
            HostMessage::Start { container } => self.start(&container)?,
            HostMessage::Exec(req) => self.exec(&req)?,
            HostMessage::StdinEof { process } => match self.procs.get_mut(process) {
                Some(p) => p.stdin = None,
                None => self.no_process(process)?,
            },
            HostMessage::Signal {
                process,
                signo,
                all,
            } => self.signal(process, signo, all)?,
            HostMessage::Resize {
                process,
                rows,
                cols,
            } => self.resize(process, rows, cols)?,
            HostMessage::Credit {
                process,
                stream,
                bytes,
            } => self.credit(process, stream, bytes)?,
            HostMessage::Pause { container } => self.freeze(&container, true)?,
            HostMessage::Resume { container } => self.freeze(&container, false)?,
            HostMessage::ListProcesses { container } => self.list_processes(&container)?,
            HostMessage::Stats { container } => self.stats(&container)?,
            HostMessage::Update {
                container,
                resources,
            } => self.update(&container, &resources)?,
            HostMessage::Remove { container } => self.remove(&container)?,
            HostMessage::Shutdown => return Ok(true),
        }
        Ok(false)
    }

    fn no_process(&self, process: u32) -> Result<(), ServerError> {
        let text = format!("no process {process}");
        self.error(Some(process), ErrorKind::InvalidRequest, text)
    }

    /// Queues stdin for `process`, never blocking; what cannot reach it is credited at once.
    fn stdin(&mut self, process: u32, data: Vec<u8>) -> Result<(), ServerError> {
        let Some(p) = self.procs.get_mut(process) else {
            return self.no_process(process);
        };
        let len = data.len();
        let pushed = match &p.stdin {
            Some(queue) => queue.push(data),
            // Closed by the host: nothing may come after StdinEof, but dropping is harmless.
            None => Err(PushError::Gone(len)),
        };
        match pushed {
            Ok(()) => Ok(()),
            Err(PushError::Gone(len)) => {
                p.stdin = None;
                stdin_credit(&self.writer, process, len);
                Ok(())
            }
            Err(PushError::Flow(e)) => {
                self.error(Some(process), ErrorKind::InvalidRequest, e.to_string())
            }
        }
    }

    fn credit(&self, process: u32, stream: OutputStream, bytes: u32) -> Result<(), ServerError> {
        let Some(window) = self.procs.get(process).and_then(|p| p.window(stream)) else {
            let text = format!("no {stream:?} stream of process {process}");
            return self.error(Some(process), ErrorKind::InvalidRequest, text);
        };
        match window.credit(bytes) {
            Ok(()) => Ok(()),
            Err(e) => self.error(Some(process), ErrorKind::InvalidRequest, e.to_string()),
        }
    }

    fn resize(&self, process: u32, rows: u16, cols: u16) -> Result<(), ServerError> {
        let Some(p) = self.procs.get(process) else {
            return self.no_process(process);
        };
        if let Some(master) = &p.pty {
            // A failed resize leaves the old size; nothing to report.
            let _ = pty::set_size(master, rows, cols);
        }
        Ok(())
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(ToString::to_string).unwrap_or_default()
}

/// ": cause: cause..." for an error's sources, for one-line messages.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
