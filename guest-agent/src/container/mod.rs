//! Creating the container and starting its process: the root ([`rootfs`]), the plan
//! ([`plan`]), the forked child's setup ([`child`]), the loop of the container's init
//! ([`supervisor`]) and the stdio the process gets (pipes or a [`pty`]).

pub mod child;
pub mod plan;
pub mod pty;
pub mod rootfs;
pub mod supervisor;

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use moat_protocol::{ErrorKind, FrameKind, RunRequest};

use self::child::{ChildStdio, Exit, Failure, Stage, FAILURE_LEN};
use self::plan::{ExecPlan, PlanError, ProcessSpec};
use self::rootfs::RootfsError;
use crate::reaper::Reaper;
use crate::syscall::{Linux, Syscall};

/// Errors starting the container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The request is invalid.
    #[error("invalid request")]
    Plan(#[from] PlanError),
    /// The request asks for something the agent's mode cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The root could not be prepared.
    #[error("cannot prepare the container root")]
    Rootfs(#[from] RootfsError),
    /// Pipes, pty or fork failed.
    #[error("{what} failed")]
    Spawn {
        /// What failed.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The child failed before or in exec.
    #[error("{program}: {}: {}", .failure.stage.describe(), io::Error::from_raw_os_error(.failure.errno))]
    Child {
        /// The command, `args[0]`.
        program: String,
        /// Stage and errno.
        failure: Failure,
    },
}

impl ContainerError {
    /// The protocol error kind, which decides `moat run`'s exit status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Plan(_) | Self::Unsupported(_) => ErrorKind::InvalidRequest,
            Self::Rootfs(RootfsError::BadDevice(_) | RootfsError::BadFstype(_)) => {
                ErrorKind::InvalidRequest
            }
            Self::Rootfs(_) | Self::Spawn { .. } => ErrorKind::Internal,
            Self::Child { failure, .. } => exec_error_kind(*failure),
        }
    }
}

/// Maps a child failure to the error kind: a missing command is `NotFound` (127), one that
/// exists but cannot be run is `NotExecutable` (126), the rest is `Internal`.
pub fn exec_error_kind(failure: Failure) -> ErrorKind {
    if failure.stage != Stage::Exec {
        return ErrorKind::Internal;
    }
    match failure.errno {
        libc::ENOENT | libc::ENOTDIR => ErrorKind::NotFound,
        libc::EACCES
        | libc::ENOEXEC
        | libc::EISDIR
        | libc::EPERM
        | libc::ETXTBSY
        | libc::ELOOP
        | libc::ENAMETOOLONG => ErrorKind::NotExecutable,
        _ => ErrorKind::Internal,
    }
}

/// How the process is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Its own PID, mount (and UTS) namespaces, pivoted into the image's root, under a minimal
    /// init: the guest mode.
    Container,
    /// None: the process runs in the agent's root (the host test mode).
    None,
}

/// A started process and the agent's ends of its stdio.
pub struct Process {
    /// Its pid: in the guest mode, the container's init, which passes signals on to the command
    /// and exits with its status (128 + N for a death by signal N).
    pub pid: libc::pid_t,
    /// Where its stdin is written (pipe write end, or a duplicate of the pty master).
    pub stdin: OwnedFd,
    /// Its output streams and the frame kind each is sent as.
    pub outputs: Vec<(FrameKind, OwnedFd)>,
    /// The pty master, for resizing, in terminal mode.
    pub pty: Option<OwnedFd>,
}

fn spawn_err(what: &'static str) -> impl Fn(io::Error) -> ContainerError {
    move |source| ContainerError::Spawn { what, source }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Names the command in a child failure.
fn with_program(p: &ProcessSpec) -> impl Fn(ContainerError) -> ContainerError + '_ {
    move |e| match e {
        ContainerError::Child { failure, .. } => ContainerError::Child {
            program: p.args[0].clone(),
            failure,
        },
        other => other,
    }
}

/// Prepares the root (in [`Isolation::Container`]), then starts the process of `req`.
pub fn start(
    req: &RunRequest,
    isolation: Isolation,
    reaper: &Reaper,
) -> Result<Process, ContainerError> {
    let hostname = req.spec.hostname().as_deref();
    if isolation == Isolation::None && hostname.is_some() {
        return Err(ContainerError::Unsupported(
            "a hostname needs the guest mode",
        ));
    }
    let process = ProcessSpec::from_oci(&req.spec)?;
    let plan = plan::build(&process, hostname)?;
    if isolation == Isolation::Container {
        let readonly = req
            .spec
            .root()
            .as_ref()
            .is_some_and(|r| r.readonly() == Some(true));
        rootfs::prepare(&Linux, &req.rootfs, readonly)?;
    }
    let p = &process;
    if p.terminal {
        let pty = pty::open(p.rows, p.cols).map_err(spawn_err("opening a pty"))?;
        pty::give_to(&pty.slave, p.uid, p.gid).map_err(spawn_err("giving the pty to the user"))?;
        let stdio = ChildStdio::Pty {
            slave: pty.slave.as_raw_fd(),
        };
        let pid = fork_exec(&plan, stdio, isolation, reaper).map_err(with_program(p))?;
        drop(pty.slave);
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(spawn_err("duplicating the pty"));
        return Ok(Process {
            pid,
            stdin: dup(&pty.master)?,
            outputs: vec![(FrameKind::Stdout, dup(&pty.master)?)],
            pty: Some(pty.master),
        });
    }
    let (stdin_r, stdin_w) = pipe().map_err(spawn_err("creating pipes"))?;
    let (stdout_r, stdout_w) = pipe().map_err(spawn_err("creating pipes"))?;
    let (stderr_r, stderr_w) = pipe().map_err(spawn_err("creating pipes"))?;
    let stdio = ChildStdio::Pipes {
        stdin: stdin_r.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
    };
    let pid = fork_exec(&plan, stdio, isolation, reaper).map_err(with_program(p))?;
    Ok(Process {
        pid,
        stdin: stdin_w,
        outputs: vec![(FrameKind::Stdout, stdout_r), (FrameKind::Stderr, stderr_r)],
        pty: None,
    })
}

/// Forks (in the host mode) or clones the container's init (in the guest mode); the child runs
/// [`child::run`] or [`child::run_init`], and a failure is reported on a close-on-exec pipe, so
/// an end of file there means the exec succeeded.
fn fork_exec(
    plan: &ExecPlan,
    stdio: ChildStdio,
    isolation: Isolation,
    reaper: &Reaper,
) -> Result<libc::pid_t, ContainerError> {
    let (err_r, err_w) = pipe().map_err(spawn_err("creating the error pipe"))?;
    let isolate = isolation == Isolation::Container;
    let flags = match isolate {
        true => child::clone_flags(plan),
        false => libc::SIGCHLD as libc::c_ulong,
    };
    let pid = reaper
        .spawn_registered(|| {
            // SAFETY: the child only makes system calls on data prepared before the clone
            // (`plan`, `stdio`, `err_w`) and ends with execve or _exit; it never returns here.
            match unsafe { Linux.clone_process(flags)? } {
                0 => {
                    let exit = match isolate {
                        true => child::run_init(&Linux, plan, stdio),
                        false => Exit::Failed(child::run(&Linux, plan, stdio)),
                    };
                    end_child(err_w.as_raw_fd(), exit)
                }
                pid => Ok(pid),
            }
        })
        .map_err(spawn_err(if isolate { "clone" } else { "fork" }))?;
    drop(err_w);
    let mut report = Vec::with_capacity(FAILURE_LEN);
    let read = std::fs::File::from(err_r)
        .take(FAILURE_LEN as u64)
        .read_to_end(&mut report);
    match read {
        Ok(0) => Ok(pid),
        Ok(_) => {
            reaper.forget(pid);
            let failure = Failure::from_bytes(&report).unwrap_or(Failure {
                stage: Stage::Exec,
                errno: libc::EIO,
            });
            Err(ContainerError::Child {
                program: String::new(),
                failure,
            })
        }
        Err(e) => {
            reaper.forget(pid);
            Err(spawn_err("reading the error pipe")(e))
        }
    }
}

/// Ends the child: a failure is written to the error pipe `err_w` first.
fn end_child(err_w: libc::c_int, exit: Exit) -> ! {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(stage: Stage, errno: i32) -> ErrorKind {
        let failure = Failure { stage, errno };
        ContainerError::Child {
            program: "x".into(),
            failure,
        }
        .kind()
    }

    #[test]
    fn exec_errors_map_to_docker_exit_codes() {
        assert_eq!(kind(Stage::Exec, libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(kind(Stage::Exec, libc::ENOTDIR), ErrorKind::NotFound);
        for errno in [libc::EACCES, libc::ENOEXEC, libc::EISDIR, libc::ETXTBSY] {
            assert_eq!(kind(Stage::Exec, errno), ErrorKind::NotExecutable);
        }
        assert_eq!(kind(Stage::Exec, libc::ENOMEM), ErrorKind::Internal);
        assert_eq!(kind(Stage::Cwd, libc::ENOENT), ErrorKind::Internal);
        assert_eq!(kind(Stage::Root, libc::EACCES), ErrorKind::Internal);
    }

    #[test]
    fn messages_are_one_line() {
        let failure = Failure {
            stage: Stage::Exec,
            errno: libc::ENOENT,
        };
        let e = ContainerError::Child {
            program: "ls".into(),
            failure,
        };
        let text = "ls: executing the command: No such file or directory (os error 2)";
        assert_eq!(e.to_string(), text);
        assert_eq!(
            ContainerError::Plan(PlanError::NoCommand).kind(),
            ErrorKind::InvalidRequest
        );
    }
}
