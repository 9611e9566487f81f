//! Creating the container and starting its process: the root ([`rootfs`]), the plan
//! ([`plan`]), the forked child's setup ([`child`]), the loop of the container's init
//! ([`supervisor`]) and the stdio the process gets (pipes or a [`pty`]).

pub mod child;
pub mod guest_devices;
pub mod mountopts;
pub mod mounts;
pub mod passwd;
pub mod plan;
pub mod pty;
pub mod rootfs;
pub mod security;
pub mod spec;
pub mod supervisor;
pub mod user;
pub mod volumes;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use moat_protocol::{ErrorKind, FrameKind, RunRequest};

use self::child::{ChildStdio, Exit, Failure, Stage, FAILURE_LEN};
use self::plan::{ExecPlan, PlanError, ProcessSpec};
use self::rootfs::RootfsError;
use self::security::Security;
use self::spec::{ContainerPlan, IdMaps};
use self::user::ResolveError;
use self::volumes::VolumeError;
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
    /// The container's init could not be moved into its cgroup.
    #[error("moving the container into its cgroup")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The root could not be prepared.
    #[error("cannot prepare the container root")]
    Rootfs(#[from] RootfsError),
    /// A volume could not be mounted.
    #[error("cannot mount the volumes")]
    Volume(#[from] VolumeError),
    /// The user could not be resolved in the container's root.
    #[error(transparent)]
    User(#[from] ResolveError),
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
            Self::Rootfs(
                RootfsError::BadDevice(_) | RootfsError::BadFstype(_) | RootfsError::Symlink(_),
            ) => ErrorKind::InvalidRequest,
            Self::Volume(VolumeError::Mount { .. }) => ErrorKind::Internal,
            Self::Volume(_) => ErrorKind::InvalidRequest,
            Self::User(
                ResolveError::User(_) | ResolveError::TooLarge(_) | ResolveError::NotFile(_),
            ) => ErrorKind::InvalidRequest,
            Self::User(_) => ErrorKind::Internal,
            Self::Rootfs(_) | Self::Spawn { .. } | Self::Cgroup(_) => ErrorKind::Internal,
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
    /// The namespaces, mounts and root of the spec, under a minimal init: the guest mode.
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

/// Refuses the container fields of a spec in the host mode, which has no container.
fn refuse_in_host_mode(req: &RunRequest) -> Result<(), ContainerError> {
    let spec = &req.spec;
    let container = spec.hostname().is_some()
        || spec.domainname().is_some()
        || spec.linux().is_some()
        || spec.mounts().as_ref().is_some_and(|m| !m.is_empty())
        || !req.volumes.is_empty();
    match container {
        true => Err(ContainerError::Unsupported(
            "linux, mounts, hostname, domainname and volumes need the guest mode",
        )),
        false => Ok(()),
    }
}

/// Whether a bind source is a file (its mount point is then a file).
fn is_file(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_dir())
}

/// A request that passed every check [`start`] can make before it mounts anything.
pub struct Checked {
    process: ProcessSpec,
    plan: ExecPlan,
}

/// Checks `req` without side effects and prepares its plan (the seccomp programs compiled):
/// the caller runs it before it creates the container's cgroup, so that a refused spec leaves
/// nothing.
pub fn check(req: &RunRequest, isolation: Isolation) -> Result<Checked, ContainerError> {
    let process = ProcessSpec::from_oci(&req.spec)?;
    user::check(&req.spec)?;
    let plan = plan::build(&process, Security::from_oci(&req.spec)?)?;
    match isolation {
        Isolation::None => refuse_in_host_mode(req)?,
        Isolation::Container => {
            spec::build(&req.spec, &|_| false)?;
            volumes::check(&req.volumes)?;
        }
    }
    Ok(Checked { process, plan })
}

/// Mounts the volumes and the root of the [`check`]ed `req` (in [`Isolation::Container`]),
/// then starts its process. `placed` is called with the pid of the container's init (of the
/// process in the host mode) after the user namespace's id maps are written and before it goes
/// on: the caller moves it into its cgroup there.
pub fn start(
    req: &RunRequest,
    checked: Checked,
    isolation: Isolation,
    reaper: &Reaper,
    placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
) -> Result<Process, ContainerError> {
    let Checked {
        mut process,
        mut plan,
    } = checked;
    let container = match isolation {
        Isolation::None => None,
        Isolation::Container => {
            volumes::mount_all(&Linux, &req.volumes)?;
            // Built again now that the volumes are mounted: a bind of a file needs a file.
            let mut container = spec::build(&req.spec, &is_file)?;
            if guest_devices::wanted(&req.spec) {
                let found = guest_devices::scan(std::path::Path::new("/dev"))
                    .map_err(spawn_err("reading the guest's /dev"))?;
                guest_devices::add(&mut container, &found)?;
            }
            let readonly = req
                .spec
                .root()
                .as_ref()
                .is_some_and(|r| r.readonly() == Some(true));
            let owner = container.userns.as_ref().map(|m| m.root);
            rootfs::prepare(&Linux, &req.rootfs, &req.id, readonly, owner)?;
            rootfs::check_pseudo_dirs()?;
            Some(container)
        }
    };
    resolve_user(req, isolation, &mut process, &mut plan)?;
    let launch = Launch {
        plan: &plan,
        container: container.as_ref(),
        reaper,
    };
    let p = &process;
    if p.terminal {
        let pty = pty::open(p.rows, p.cols).map_err(spawn_err("opening a pty"))?;
        let owner = container_ids(container.as_ref(), p.uid, p.gid);
        pty::give_to(&pty.slave, owner.0, owner.1)
            .map_err(spawn_err("giving the pty to the user"))?;
        let stdio = ChildStdio::Pty {
            slave: pty.slave.as_raw_fd(),
        };
        let pid = launch.fork_exec(stdio, placed).map_err(with_program(p))?;
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
    let pid = launch.fork_exec(stdio, placed).map_err(with_program(p))?;
    Ok(Process {
        pid,
        stdin: stdin_w,
        outputs: vec![(FrameKind::Stdout, stdout_r), (FrameKind::Stderr, stderr_r)],
        pty: None,
    })
}

/// Resolves the spec's [`moat_spec::USER_ANNOTATION`] user, if any, in the container's root (the
/// agent's in the host mode) and sets it on the process.
fn resolve_user(
    req: &RunRequest,
    isolation: Isolation,
    process: &mut ProcessSpec,
    plan: &mut ExecPlan,
) -> Result<(), ContainerError> {
    let Some(spec) = user::wanted(&req.spec) else {
        return Ok(());
    };
    let root = match isolation {
        Isolation::Container => rootfs::ROOT,
        Isolation::None => c"/",
    };
    let resolved = user::resolve(&user::InRoot { sys: &Linux, root }, spec)?;
    user::apply(&resolved, process, plan)?;
    Ok(())
}

/// The guest ids of container ids `uid`/`gid` (through the user namespace's maps, if any).
fn container_ids(container: Option<&ContainerPlan>, uid: u32, gid: u32) -> (u32, u32) {
    match container.and_then(|c| c.userns.as_ref()) {
        Some(maps) => (
            map_id(&maps.uid_map, uid).unwrap_or(uid),
            map_id(&maps.gid_map, gid).unwrap_or(gid),
        ),
        None => (uid, gid),
    }
}

/// Looks `id` up in an id map's text ("inside outside count" lines).
fn map_id(map: &str, id: u32) -> Option<u32> {
    map.lines().find_map(|line| {
        let mut f = line.split(' ').map(|v| v.parse::<u32>().ok());
        let (inside, outside, count) = (f.next()??, f.next()??, f.next()??);
        (id >= inside && id - inside < count).then(|| outside + (id - inside))
    })
}

/// Writes the id maps of the user namespace of `pid`.
fn write_id_maps(pid: libc::pid_t, maps: &IdMaps) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), &maps.uid_map)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &maps.gid_map)
}

/// What [`Launch::fork_exec`] starts.
struct Launch<'a> {
    plan: &'a ExecPlan,
    container: Option<&'a ContainerPlan>,
    reaper: &'a Reaper,
}

impl Launch<'_> {
    /// Forks (in the host mode) or clones the container's init (in the guest mode), which
    /// waits on the sync pipe until the agent has written the id maps and called `placed`;
    /// the child then runs [`child::run`] or [`child::run_init`], and a failure is reported on
    /// a close-on-exec pipe, so an end of file there means the exec succeeded.
    fn fork_exec(
        &self,
        stdio: ChildStdio,
        placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
    ) -> Result<libc::pid_t, ContainerError> {
        let (err_r, err_w) = pipe().map_err(spawn_err("creating the error pipe"))?;
        let (sync_r, sync_w) = pipe().map_err(spawn_err("creating the sync pipe"))?;
        let flags = match self.container {
            Some(c) => c.clone_flags,
            None => libc::SIGCHLD as libc::c_ulong,
        };
        let (plan, container) = (self.plan, self.container);
        let pid = self
            .reaper
            .spawn_registered(|| {
                // SAFETY: the child only makes system calls on data prepared before the clone
                // (`plan`, `container`, `stdio`, the pipes) and ends with execve or _exit; it
                // never returns here.
                match unsafe { Linux.clone_process(flags)? } {
                    0 => {
                        let err = err_w.as_raw_fd();
                        Linux.close(sync_w.as_raw_fd());
                        let exit = match Linux.read_byte(sync_r.as_raw_fd()) {
                            Ok(true) => match container {
                                Some(c) => child::run_init(&Linux, plan, c, stdio, err),
                                None => Exit::Failed(child::run(&Linux, plan, stdio, err)),
                            },
                            _ => Exit::Code(127),
                        };
                        end_child(err_w.as_raw_fd(), exit)
                    }
                    pid => Ok(pid),
                }
            })
            .map_err(spawn_err(if container.is_some() {
                "clone"
            } else {
                "fork"
            }))?;
        drop((err_w, sync_r));
        if let Err(e) = self.release(pid, sync_w, placed) {
            self.abandon(pid);
            return Err(e);
        }
        self.wait_for_exec(pid, err_r)
    }

    /// The parent's part while the child waits: id maps, `placed`, then one byte to go on.
    fn release(
        &self,
        pid: libc::pid_t,
        sync_w: OwnedFd,
        placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
    ) -> Result<(), ContainerError> {
        if let Some(maps) = self.container.and_then(|c| c.userns.as_ref()) {
            write_id_maps(pid, maps).map_err(spawn_err("writing the user namespace's id maps"))?;
        }
        placed(pid)?;
        std::fs::File::from(sync_w)
            .write_all(b"g")
            .map_err(spawn_err("releasing the container's init"))
    }

    /// Ends a child that will not be released.
    fn abandon(&self, pid: libc::pid_t) {
        // SAFETY: kill takes no pointers; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        self.reaper.forget(pid);
    }

    fn wait_for_exec(
        &self,
        pid: libc::pid_t,
        err_r: OwnedFd,
    ) -> Result<libc::pid_t, ContainerError> {
        let mut report = Vec::with_capacity(FAILURE_LEN);
        let read = std::fs::File::from(err_r)
            .take(FAILURE_LEN as u64)
            .read_to_end(&mut report);
        match read {
            Ok(0) => Ok(pid),
            Ok(_) => {
                self.reaper.forget(pid);
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
                self.reaper.forget(pid);
                Err(spawn_err("reading the error pipe")(e))
            }
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
