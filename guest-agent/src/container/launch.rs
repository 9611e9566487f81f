//! Forking a process the agent set up: its stdio (pipes or a pty, [`open_stdio`]), the sync
//! pipe it waits on until the agent has placed it, the close-on-exec error pipe it reports on
//! ([`Report`]), and for the container's own process the start pipe it waits on once set up
//! ([`Held`]), until `Start`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use moat_protocol::FrameKind;

use super::child::{ChildStdio, Exit, Failure, Report, Stage, FAILURE_LEN};
use super::{pty, ContainerError};
use crate::reaper::Reaper;

/// The agent's ends of a process's stdio.
pub struct AgentStdio {
    /// Where its stdin is written (pipe write end, or a duplicate of the pty master).
    pub stdin: OwnedFd,
    /// Its output streams and the frame kind each is sent as.
    pub outputs: Vec<(FrameKind, OwnedFd)>,
    /// The pty master, for resizing, in terminal mode.
    pub pty: Option<OwnedFd>,
}

/// A process's stdio: what the child gets, the descriptors behind it (closed in the agent once
/// the child is forked) and the agent's ends.
pub struct Stdio {
    /// The child's descriptors.
    pub child: ChildStdio,
    /// Owns the descriptors of `child`.
    pub child_ends: Vec<OwnedFd>,
    /// The agent's ends.
    pub agent: AgentStdio,
}

pub(super) fn spawn_err(what: &'static str) -> impl Fn(io::Error) -> ContainerError {
    move |source| ContainerError::Spawn { what, source }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens a pty of `size` given to `owner` (guest uid, gid) when `terminal` (in the devpts
/// instance of `ptmx`, see [`pty::open`]), else three pipes.
pub fn open_stdio(
    terminal: Option<(u16, u16)>,
    owner: (u32, u32),
    ptmx: Option<&OwnedFd>,
) -> Result<Stdio, ContainerError> {
    if let Some((rows, cols)) = terminal {
        let pty = pty::open(ptmx, rows, cols).map_err(spawn_err("opening a pty"))?;
        pty::give_to(&pty.slave, owner.0, owner.1)
            .map_err(spawn_err("giving the pty to the user"))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(spawn_err("duplicating the pty"));
        let agent = AgentStdio {
            stdin: dup(&pty.master)?,
            outputs: vec![(FrameKind::Stdout, dup(&pty.master)?)],
            pty: Some(pty.master),
        };
        return Ok(Stdio {
            child: ChildStdio::Pty {
                slave: pty.slave.as_raw_fd(),
            },
            child_ends: vec![pty.slave],
            agent,
        });
    }
    let (stdin_r, stdin_w) = pipe().map_err(spawn_err("creating pipes"))?;
    let (stdout_r, stdout_w) = pipe().map_err(spawn_err("creating pipes"))?;
    let (stderr_r, stderr_w) = pipe().map_err(spawn_err("creating pipes"))?;
    Ok(Stdio {
        child: ChildStdio::Pipes {
            stdin: stdin_r.as_raw_fd(),
            stdout: stdout_w.as_raw_fd(),
            stderr: stderr_w.as_raw_fd(),
        },
        child_ends: vec![stdin_r, stdout_w, stderr_w],
        agent: AgentStdio {
            stdin: stdin_w,
            outputs: vec![(FrameKind::Stdout, stdout_r), (FrameKind::Stderr, stderr_r)],
            pty: None,
        },
    })
}

/// Reads one [`Report`] from the error pipe; `None` at end of file (the exec succeeded, or the
/// child ended without a word).
pub fn read_report(err_r: &OwnedFd) -> Result<Option<Report>, ContainerError> {
    let mut report = Vec::with_capacity(FAILURE_LEN);
    let mut file = File::from(
        err_r
            .try_clone()
            .map_err(spawn_err("reading the error pipe"))?,
    );
    (&mut file)
        .take(FAILURE_LEN as u64)
        .read_to_end(&mut report)
        .map_err(spawn_err("reading the error pipe"))?;
    if report.is_empty() {
        return Ok(None);
    }
    Ok(Some(Report::from_bytes(&report).unwrap_or(Report::Failed(
        Failure {
            stage: Stage::Exec,
            errno: libc::EIO,
        },
    ))))
}

/// The error of a failure report (the program is named by the caller).
pub fn child_error(failure: Failure) -> ContainerError {
    ContainerError::Child {
        program: String::new(),
        failure,
    }
}

/// Releases a child waiting on its sync pipe.
pub fn release(sync_w: OwnedFd) -> Result<(), ContainerError> {
    File::from(sync_w)
        .write_all(b"g")
        .map_err(spawn_err("releasing the process"))
}

/// Ends a child that will not be released (or whose setup failed).
pub fn abandon(reaper: &Reaper, pid: libc::pid_t) {
    // SAFETY: kill takes no pointers; the pid is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reaper.forget(pid);
}

/// Waits until the released child has exec'd (end of file on the error pipe) or failed.
pub fn wait_for_exec(
    reaper: &Reaper,
    pid: libc::pid_t,
    err_r: &OwnedFd,
) -> Result<libc::pid_t, ContainerError> {
    let report = read_report(err_r);
    match report {
        Ok(None) => Ok(pid),
        Ok(Some(Report::Failed(failure))) => {
            abandon(reaper, pid);
            Err(child_error(failure))
        }
        Ok(Some(Report::Ready)) => {
            abandon(reaper, pid);
            Err(child_error(Failure {
                stage: Stage::Init,
                errno: libc::EPROTO,
            }))
        }
        Err(e) => {
            abandon(reaper, pid);
            Err(e)
        }
    }
}

/// A container's process that is set up and waits for `Start` on its start pipe.
pub struct Held {
    /// Its pid (the container's init in the guest mode).
    pub pid: libc::pid_t,
    err_r: OwnedFd,
    start_w: OwnedFd,
}

impl Held {
    /// Waits for the child's first report: [`Report::Ready`] holds it.
    pub fn wait_ready(
        reaper: &Reaper,
        pid: libc::pid_t,
        err_r: OwnedFd,
        start_w: OwnedFd,
    ) -> Result<Self, ContainerError> {
        match read_report(&err_r) {
            Ok(Some(Report::Ready)) => Ok(Self {
                pid,
                err_r,
                start_w,
            }),
            Ok(Some(Report::Failed(failure))) => {
                abandon(reaper, pid);
                Err(child_error(failure))
            }
            Ok(None) => {
                abandon(reaper, pid);
                Err(spawn_err("setting up the container's process")(
                    io::Error::from(io::ErrorKind::UnexpectedEof),
                ))
            }
            Err(e) => {
                abandon(reaper, pid);
                Err(e)
            }
        }
    }

    /// Lets the process go on to its exec and waits until it happened.
    pub fn start(self, reaper: &Reaper) -> Result<libc::pid_t, ContainerError> {
        let go = File::from(self.start_w).write_all(b"s");
        if let Err(e) = go {
            abandon(reaper, self.pid);
            return Err(spawn_err("starting the container's process")(e));
        }
        wait_for_exec(reaper, self.pid, &self.err_r)
    }
}

/// Ends the child: a failure is written to the error pipe `err_w` first.
pub fn end_child(err_w: libc::c_int, exit: Exit) -> ! {
    match exit {
        Exit::Failed(failure) => {
            let bytes = failure.to_bytes();
            // SAFETY: writes a local buffer to our pipe end, then ends the child without
            // running any of the parent's exit handlers.
            unsafe {
                libc::write(err_w, bytes.as_ptr().cast(), FAILURE_LEN);
                libc::_exit(127)
            }
        }
        // SAFETY: ends the init without running any of the parent's exit handlers.
        Exit::Code(code) => unsafe { libc::_exit(code) },
    }
}
