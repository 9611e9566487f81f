//! What the forked child does between fork and exec. It runs in a copy of a multi-threaded
//! process, so it only makes system calls through [`Syscall`] on data prepared in advance, and
//! reports a failure as a fixed-size [`Failure`] (stage + errno) on the error pipe.
//!
//! In the guest the child is cloned into new PID, mount (and UTS) namespaces ([`clone_flags`]):
//! as PID 1 there it builds the container's root, forks the command as PID 2 and stays as a
//! minimal init ([`run_init`]) that passes signals on to the command, reaps orphans and exits
//! with the command's status. Root in the container can then only halt or reboot its own PID
//! namespace (reboot(2) kills the init), never the guest.

use std::io;
use std::os::fd::RawFd;

use super::mounts::{build_root, finish_root};
use super::plan::ExecPlan;
use super::security::{apply_limits, drop_privileges, load_seccomp_last, Ids};
use super::spec::ContainerPlan;
use super::supervisor::{supervise, INIT_SIGNALS};
use crate::syscall::Syscall;

/// The step of the child's setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Resetting the signal mask and dispositions.
    Signals = 1,
    /// Creating the session or taking the terminal.
    Session = 2,
    /// Installing stdin, stdout and stderr.
    Stdio = 3,
    /// Setting up the container's init: its signal handlers, forking the command.
    Init = 4,
    /// Switching into the container's root.
    Root = 5,
    /// Mounting /proc, /sys and /dev in the root.
    Mounts = 6,
    /// Setting the hostname.
    Hostname = 7,
    /// Setting groups, gid and uid.
    Ids = 8,
    /// Changing into the working directory.
    Cwd = 9,
    /// execve.
    Exec = 10,
    /// Waiting for the agent (id maps, cgroup), joining the cgroup and network setup.
    Namespaces = 11,
    /// Creating the devices of /dev.
    Devices = 12,
    /// Writing the sysctls.
    Sysctl = 13,
    /// Masking paths and making paths read-only.
    Paths = 14,
    /// rlimits, oom_score_adj.
    Limits = 15,
    /// no_new_privs, capabilities.
    Privileges = 16,
    /// Loading the seccomp filter.
    Seccomp = 17,
}

impl Stage {
    fn from_u8(v: u8) -> Option<Self> {
        const ALL: [Stage; 17] = [
            Stage::Namespaces,
            Stage::Devices,
            Stage::Sysctl,
            Stage::Paths,
            Stage::Limits,
            Stage::Privileges,
            Stage::Seccomp,
            Stage::Signals,
            Stage::Session,
            Stage::Stdio,
            Stage::Init,
            Stage::Root,
            Stage::Mounts,
            Stage::Hostname,
            Stage::Ids,
            Stage::Cwd,
            Stage::Exec,
        ];
        ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// What the stage does, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Signals => "resetting signals",
            Self::Session => "creating the session",
            Self::Stdio => "setting up stdio",
            Self::Init => "starting the container's init",
            Self::Root => "entering the container root",
            Self::Mounts => "mounting the spec's mounts",
            Self::Hostname => "setting the hostname",
            Self::Ids => "setting user and group ids",
            Self::Cwd => "changing to the working directory",
            Self::Exec => "executing the command",
            Self::Namespaces => "setting up the namespaces",
            Self::Devices => "creating the devices",
            Self::Sysctl => "writing the sysctls",
            Self::Paths => "masking paths and making paths read-only",
            Self::Limits => "setting rlimits and oom_score_adj",
            Self::Privileges => "dropping privileges",
            Self::Seccomp => "loading the seccomp filter",
        }
    }
}

/// A failed child: the stage and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed.
    pub stage: Stage,
    /// The errno.
    pub errno: i32,
}

/// Size of an encoded [`Failure`] (and of every [`Report`] on the error pipe).
pub const FAILURE_LEN: usize = 8;

/// The record a process held for `Start` writes on the error pipe once everything but the
/// seccomp filter and the exec is done: no [`Stage`] has this number.
const READY: [u8; FAILURE_LEN] = [0xff, 0, 0, 0, 0, 0, 0, 0];

/// What a child wrote on the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The process is set up and waits for its start.
    Ready,
    /// It failed.
    Failed(Failure),
}

impl Report {
    /// Decodes one record; `None` for anything malformed.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        match b == READY {
            true => Some(Self::Ready),
            false => Failure::from_bytes(b).map(Self::Failed),
        }
    }
}

impl Failure {
    pub(crate) fn at(stage: Stage) -> impl Fn(io::Error) -> Failure {
        move |e| Failure {
            stage,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Encodes for the error pipe.
    pub fn to_bytes(self) -> [u8; FAILURE_LEN] {
        let mut b = [0u8; FAILURE_LEN];
        b[0] = self.stage as u8;
        b[4..].copy_from_slice(&self.errno.to_le_bytes());
        b
    }

    /// Decodes what the child wrote; `None` for anything malformed.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; FAILURE_LEN] = b.try_into().ok()?;
        let stage = Stage::from_u8(b[0])?;
        Some(Self {
            stage,
            errno: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The descriptors that become the process's stdin, stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub enum ChildStdio {
    /// Three pipe ends.
    Pipes {
        /// Read end of the stdin pipe.
        stdin: RawFd,
        /// Write end of the stdout pipe.
        stdout: RawFd,
        /// Write end of the stderr pipe.
        stderr: RawFd,
    },
    /// The slave side of a pty, which also becomes the controlling terminal.
    Pty {
        /// The slave descriptor.
        slave: RawFd,
    },
}

/// How a process running the child's code ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Setup or exec failed: report it on the error pipe.
    Failed(Failure),
    /// The container's init is done: `_exit` with this code.
    Code(i32),
}

/// The descriptors a child reports on and waits on.
#[derive(Debug, Clone, Copy)]
pub struct Pipes {
    /// The close-on-exec error pipe's write end: a [`Report`] goes there.
    pub err: RawFd,
    /// The start pipe's read end, for a process that waits for `Start` once set up (it writes
    /// [`Report::Ready`] first); `None` execs at once.
    pub start: Option<RawFd>,
}

/// The host mode's child, in the agent's root (and an exec's, in the container's namespaces):
/// sets the process up, waits for its start if it has to, and execs; returns only on failure.
/// The container's init runs the same for its command.
pub fn run(sys: &dyn Syscall, plan: &ExecPlan, stdio: ChildStdio, pipes: Pipes) -> Failure {
    if let Err(failure) = setup_process(sys, plan, stdio, pipes) {
        return failure;
    }
    if let Some(start) = pipes.start {
        if let Err(e) = sys.write_fd(pipes.err, &READY) {
            return Failure::at(Stage::Init)(e);
        }
        // No byte: the agent gave the container up; end without running anything.
        if !matches!(sys.read_byte(start), Ok(true)) {
            return Failure::at(Stage::Init)(io::Error::from_raw_os_error(libc::ECANCELED));
        }
        sys.close(start);
    }
    match load_seccomp_last(sys, &plan.security) {
        Ok(()) => exec(sys, plan),
        Err(failure) => failure,
    }
}

/// The guest mode's child, cloned with [`ContainerPlan::clone_flags`] (so PID 1 of its PID
/// namespace), released by the agent once the id maps are written and the cgroup joined:
/// builds the container's root, forks the command as PID 2, drops to the command's privileges
/// and supervises it.
pub fn run_init(
    sys: &dyn Syscall,
    plan: &ExecPlan,
    container: &ContainerPlan,
    stdio: ChildStdio,
    pipes: Pipes,
) -> Exit {
    let err = pipes.err;
    if let Err(failure) = setup_container(sys, plan, container) {
        return Exit::Failed(failure);
    }
    let fork = libc::SIGCHLD as libc::c_ulong;
    // SAFETY: this process is a copy of the multi-threaded agent; the new child only runs
    // `run` (system calls on the prepared plan) and then execs or reports and `_exit`s.
    match unsafe { sys.clone_process(fork) } {
        Err(e) => Exit::Failed(Failure::at(Stage::Init)(e)),
        Ok(0) => Exit::Failed(run(sys, plan, stdio, pipes)),
        Ok(command) => {
            // The copies of the agent's descriptors (the stdin pipe's write end, the
            // connection, the cgroup's directory) go first: nothing in the container may reach
            // them, not even through /proc/1/fd. The error pipe stays for a failure below.
            close_all_but(sys, 0, &[err]);
            // Nothing in the container keeps more privilege than the command: the init only
            // waits, forwards signals and reaps.
            let ids = Ids {
                uid: plan.uid,
                gid: plan.gid,
                groups: &plan.groups,
            };
            let dropped = drop_privileges(sys, &plan.init_security, &ids)
                .and_then(|()| load_seccomp_last(sys, &plan.init_security));
            if let Err(failure) = dropped {
                let _ = sys.kill(command, libc::SIGKILL);
                return Exit::Failed(failure);
            }
            sys.close_range(err, err);
            Exit::Code(supervise(sys, command))
        }
    }
}

/// The init's part of the setup: a session of its own, root in its user namespace, its cgroup
/// namespace, the loopback interface, the root with its mounts, sysctls, names and protected
/// paths, the working directory, and the signals it catches.
fn setup_container(sys: &dyn Syscall, plan: &ExecPlan, c: &ContainerPlan) -> Result<(), Failure> {
    sys.reset_signals().map_err(Failure::at(Stage::Signals))?;
    sys.setsid().map_err(Failure::at(Stage::Session))?;
    let at = Failure::at(Stage::Namespaces);
    if c.userns.is_some() {
        sys.setgid(0).map_err(&at)?;
        sys.setuid(0).map_err(&at)?;
    }
    if c.cgroupns {
        sys.unshare(libc::CLONE_NEWCGROUP).map_err(&at)?;
    }
    if c.clone_flags & libc::CLONE_NEWNET as libc::c_ulong != 0 {
        sys.loopback_up().map_err(&at)?;
    }
    build_root(sys, c)?;
    finish_root(sys, c)?;
    create_cwd(sys, plan);
    // Caught and blocked before the command exists, so that none sent to it is lost.
    sys.catch_signals(&INIT_SIGNALS)
        .map_err(Failure::at(Stage::Init))
}

/// The command's part: default signals, its own session (with the pty as controlling terminal),
/// stdio, limits, privileges and ids, working directory; [`run`] loads the seccomp filter last.
fn setup_process(
    sys: &dyn Syscall,
    plan: &ExecPlan,
    stdio: ChildStdio,
    pipes: Pipes,
) -> Result<(), Failure> {
    sys.reset_signals().map_err(Failure::at(Stage::Signals))?;
    sys.setsid().map_err(Failure::at(Stage::Session))?;
    install_stdio(sys, stdio)?;
    // Only stdio and the (close-on-exec) error and start pipes are left: no descriptor of the
    // agent's can serve as a way out of the root, e.g. as a working directory under
    // /proc/self/fd.
    match pipes.start {
        Some(start) => close_all_but(sys, 3, &[pipes.err.min(start), pipes.err.max(start)]),
        None => close_all_but(sys, 3, &[pipes.err]),
    }
    apply_limits(sys, &plan.security)?;
    let ids = Ids {
        uid: plan.uid,
        gid: plan.gid,
        groups: &plan.groups,
    };
    drop_privileges(sys, &plan.security, &ids)?;
    sys.chdir(&plan.cwd).map_err(Failure::at(Stage::Cwd))?;
    // A working directory outside the root (through a descriptor or a mount) is refused.
    match sys.cwd_in_root() {
        Ok(true) => {}
        Ok(false) => {
            return Err(Failure::at(Stage::Cwd)(io::Error::from_raw_os_error(
                libc::EPERM,
            )))
        }
        Err(e) => return Err(Failure::at(Stage::Cwd)(e)),
    }
    Ok(())
}

/// Closes every descriptor from `first` on except those of `keep` (ascending, each >= `first`).
fn close_all_but(sys: &dyn Syscall, first: RawFd, keep: &[RawFd]) {
    let mut from = first;
    for &fd in keep {
        if fd > from {
            sys.close_range(from, fd - 1);
        }
        from = from.max(fd + 1);
    }
    sys.close_range(from, RawFd::MAX);
}

fn install_stdio(sys: &dyn Syscall, stdio: ChildStdio) -> Result<(), Failure> {
    match stdio {
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                sys.dup2(fd, target).map_err(Failure::at(Stage::Stdio))?;
            }
        }
        ChildStdio::Pty { slave } => {
            sys.set_controlling_tty(slave)
                .map_err(Failure::at(Stage::Session))?;
            for target in 0..3 {
                sys.dup2(slave, target).map_err(Failure::at(Stage::Stdio))?;
            }
        }
    }
    Ok(())
}

/// Creates the working directory and its parents where missing, as root; failures are left to
/// the `chdir` that follows, which reports them.
fn create_cwd(sys: &dyn Syscall, plan: &ExecPlan) {
    for dir in &plan.cwd_dirs {
        let _ = sys.mkdir(dir, 0o755);
    }
}

/// Tries every candidate like `execvp`: a missing file moves on to the next, a permission
/// problem is remembered, anything else stops the search.
fn exec(sys: &dyn Syscall, plan: &ExecPlan) -> Failure {
    let mut errno = libc::ENOENT;
    let mut saw_eacces = false;
    for path in &plan.candidates {
        let e = sys
            .execve(path, &plan.argv, &plan.envp)
            .raw_os_error()
            .unwrap_or(libc::EIO);
        match e {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            other => {
                return Failure {
                    stage: Stage::Exec,
                    errno: other,
                }
            }
        }
        errno = e;
    }
    if saw_eacces {
        errno = libc::EACCES;
    }
    Failure {
        stage: Stage::Exec,
        errno,
    }
}

#[cfg(test)]
#[path = "child_tests.rs"]
mod tests;
