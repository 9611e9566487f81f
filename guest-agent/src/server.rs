//! The conversation with the host (see `moat_protocol::message`): `Ready`, then `Run`, stdio,
//! signals and resizes until the process exits, `Exited`, then `Shutdown`.
//!
//! Threads: this one reads frames from the host; one pump per output stream; one stdin writer;
//! one waiter that reports `Exited` after the outputs reached end of file.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread;

use moat_protocol::{
    decode, read_frame, AgentMessage, ErrorKind, FrameError, FrameKind, HostMessage, RunRequest,
    PROTOCOL_VERSION,
};

use crate::container::{self, pty, ContainerError, Isolation, Process};
use crate::limits::{self, ContainerCgroup};
use crate::reaper::Reaper;
use crate::stdio::{spawn_pump, spawn_stdin, FrameWriter};
use crate::syscall::{Linux, Syscall};

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
}

impl KillScope {
    /// Sends `SIGKILL` to the scope; `pid` is the container's process.
    pub fn kill(self, pid: Option<libc::pid_t>) {
        let target = match (self, pid) {
            (Self::Everything, _) => -1,
            (Self::Group, Some(pid)) if pid > 0 => -pid,
            (Self::Group, _) => return,
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

/// The running (or finished) container process, as the reader sees it.
struct Session {
    pid: libc::pid_t,
    stdin: Option<SyncSender<Vec<u8>>>,
    pty: Option<OwnedFd>,
    exited: Arc<AtomicBool>,
}

struct Server {
    config: Config,
    reaper: Arc<Reaper>,
    writer: Arc<FrameWriter>,
    session: Option<Session>,
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
        session: None,
    };
    let outcome = loop {
        let frame = match read_frame(&mut reader) {
            Ok(frame) => frame,
            Err(FrameError::Closed) => break Outcome::Disconnected,
            Err(e) => return Err(ServerError::Recv(e)),
        };
        match frame.kind {
            FrameKind::Control => {
                if server.control(&frame.payload)? {
                    break Outcome::Shutdown;
                }
            }
            FrameKind::Stdin => server.stdin(frame.payload),
            FrameKind::Stdout | FrameKind::Stderr => server.error(
                ErrorKind::InvalidRequest,
                "output frames go from agent to host",
            )?,
        }
    };
    let pid = server.session.as_ref().map(|s| s.pid);
    config.kill.kill(pid);
    Ok(outcome)
}

impl Server {
    fn error(&self, kind: ErrorKind, message: impl Into<String>) -> Result<(), ServerError> {
        let msg = AgentMessage::Error {
            kind,
            message: message.into(),
        };
        self.writer.control(&msg).map_err(ServerError::Send)
    }

    /// Handles one control message; true on `Shutdown`.
    fn control(&mut self, payload: &[u8]) -> Result<bool, ServerError> {
        let msg = match decode::<HostMessage>(payload) {
            Ok(msg) => msg,
            Err(e) => {
                self.error(
                    ErrorKind::InvalidRequest,
                    format!("{e}: {}", source_text(&e)),
                )?;
                return Ok(false);
            }
        };
        match msg {
            HostMessage::Run(req) => self.run(&req)?,
            HostMessage::StdinEof => {
                if let Some(s) = &mut self.session {
                    s.stdin = None;
                }
            }
            HostMessage::Signal { signo } => self.signal(signo)?,
            HostMessage::Resize { rows, cols } => {
                if let Some(master) = self.session.as_ref().and_then(|s| s.pty.as_ref()) {
                    // A failed resize leaves the old size; nothing to report.
                    let _ = pty::set_size(master, rows, cols);
                }
            }
            HostMessage::Shutdown => return Ok(true),
        }
        Ok(false)
    }

    fn signal(&self, signo: i32) -> Result<(), ServerError> {
        if !(1..=64).contains(&signo) {
            return self.error(ErrorKind::InvalidRequest, format!("no signal {signo}"));
        }
        if let Some(s) = self
            .session
            .as_ref()
            .filter(|s| !s.exited.load(Ordering::Acquire))
        {
            // SAFETY: kill takes no pointers; the pid is ours until the reaper reaps it, and the
            // exited flag is set only after that.
            unsafe { libc::kill(s.pid, signo) };
        }
        Ok(())
    }

    fn stdin(&mut self, data: Vec<u8>) {
        let Some(s) = &mut self.session else { return };
        if s.exited.load(Ordering::Acquire) {
            s.stdin = None;
        }
        if let Some(tx) = &s.stdin {
            // The writer has gone when the process closed its stdin or ended: drop the data.
            if tx.send(data).is_err() {
                s.stdin = None;
            }
        }
    }

    fn run(&mut self, req: &RunRequest) -> Result<(), ServerError> {
        if self.session.is_some() {
            return self.error(ErrorKind::InvalidRequest, "a process was already started");
        }
        if let Err(e) = moat_spec::validate(&req.spec, None) {
            return self.error(ErrorKind::InvalidRequest, e.to_string());
        }
        let checked = match container::check(req, self.config.isolation) {
            Ok(checked) => checked,
            Err(e) => return self.error(e.kind(), format!("{e}{}", source_chain(&e))),
        };
        let cgroup = match limits::prepare(req, self.config.isolation, self.config.cgroup_root) {
            Ok(cgroup) => cgroup,
            Err(e) => return self.error(e.kind(), format!("{e}{}", source_chain(&e))),
        };
        let placed = |pid| match &cgroup {
            Some(c) => c.add(pid).map_err(ContainerError::from),
            None => Ok(()),
        };
        let process =
            match container::start(req, checked, self.config.isolation, &self.reaper, placed) {
                Ok(process) => process,
                Err(e) => {
                    if let Some(c) = &cgroup {
                        c.remove();
                    }
                    return self.error(e.kind(), format!("{e}{}", source_chain(&e)));
                }
            };
        let started = AgentMessage::Started { pid: process.pid };
        self.writer.control(&started).map_err(ServerError::Send)?;
        if let Some(c) = &cgroup {
            c.watch_ooms(Arc::clone(&self.writer))
                .map_err(ServerError::Setup)?;
        }
        let session = self.watch(process, cgroup).map_err(ServerError::Setup)?;
        self.session = Some(session);
        Ok(())
    }

    /// Starts the stdio threads and the waiter for `process`.
    fn watch(&self, process: Process, cgroup: Option<Arc<ContainerCgroup>>) -> io::Result<Session> {
        let exited = Arc::new(AtomicBool::new(false));
        let stdin = spawn_stdin(process.stdin, Arc::clone(&exited))?;
        let mut pumps = Vec::new();
        for (kind, fd) in process.outputs {
            pumps.push(spawn_pump(fd, kind, Arc::clone(&self.writer))?);
        }
        let (pid, reaper, writer) = (
            process.pid,
            Arc::clone(&self.reaper),
            Arc::clone(&self.writer),
        );
        let (flag, kill) = (Arc::clone(&exited), self.config.kill);
        thread::Builder::new()
            .name("waiter".into())
            .spawn(move || {
                let status = reaper.wait(pid);
                flag.store(true, Ordering::Release);
                // The container ends with its process, as with a pid namespace: whatever it left
                // behind is killed, so the outputs reach end of file.
                kill.kill(Some(pid));
                for pump in pumps {
                    let _ = pump.join();
                }
                // OOM kills the watch has not reported yet come before the exit; then the
                // cgroup goes (which ends the watch).
                if let Some(c) = &cgroup {
                    c.report_ooms(&writer);
                    c.remove();
                }
                // In the guest, what the container wrote goes to the disks now, while the host
                // waits for the exit without a deadline: the power-off after it has little left
                // to flush within the host's shutdown timeout.
                if kill == KillScope::Everything {
                    Linux.sync();
                }
                // If this fails the reader sees the broken connection too.
                let _ = writer.control(&AgentMessage::Exited { status });
            })?;
        Ok(Session {
            pid: process.pid,
            stdin: Some(stdin),
            pty: process.pty,
            exited,
        })
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
