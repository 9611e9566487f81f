//! Creating the container and starting its process: the root ([`rootfs`]), the plan
//! ([`plan`]), the fork ([`launch`]), the forked child's setup ([`child`]), the loop of the
//! container's init ([`supervisor`]), the stdio the process gets (pipes or a [`pty`]), and
//! processes started in the running container ([`exec`]).

pub mod apart;
pub mod child;
pub mod exec;
pub mod guest_devices;
pub mod launch;
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

use std::io;
use std::os::fd::AsRawFd;

use moat_protocol::{ErrorKind, RunRequest};

pub use self::apart::{create_apart, devices, release_devices};
use self::child::{ChildStdio, Exit, Failure, Pipes, Stage};
use self::launch::{abandon, end_child, open_stdio, pipe, release, spawn_err, AgentStdio, Held};
use self::plan::{ExecPlan, PlanError, ProcessSpec};
use self::rootfs::RootfsError;
use self::security::{SeccompProgram, Security};
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
    /// A disk the host swapped in is not ready, or a removed container's disk not released.
    #[error("{0}")]
    Disk(String),
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
            Self::Rootfs(_) | Self::Spawn { .. } | Self::Cgroup(_) | Self::Disk(_) => {
                ErrorKind::Internal
            }
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
    /// The agent's ends of its stdio.
    pub stdio: AgentStdio,
}

/// Names the command in a child failure.
pub(crate) fn with_program(program: &str) -> impl Fn(ContainerError) -> ContainerError + '_ {
    move |e| match e {
        ContainerError::Child { failure, .. } => ContainerError::Child {
            program: program.to_owned(),
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

/// A request that passed every check [`create`] can make before it mounts anything.
pub struct Checked {
    process: ProcessSpec,
    plan: ExecPlan,
}

/// `spec` with no namespace path: what the spec checks see of a pod's later container, whose
/// paths (the pod's namespaces) its plan checks.
pub fn without_namespace_paths(spec: &oci_spec::runtime::Spec) -> oci_spec::runtime::Spec {
    let mut spec = spec.clone();
    let namespaces = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut());
    for ns in namespaces.into_iter().flatten() {
        ns.set_path(None);
    }
    spec
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
/// then forks its process, which is set up up to its exec and waits for [`Created::start`].
/// `placed` is called with the pid of the container's init (of the process in the host mode)
/// after the user namespace's id maps are written and before it goes on: the caller moves it
/// into its cgroup there.
pub fn create(
    req: &RunRequest,
    checked: Checked,
    isolation: Isolation,
    reaper: &Reaper,
    placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
) -> Result<Created, ContainerError> {
    let Checked {
        mut process,
        mut plan,
    } = checked;
    let container = match isolation {
        Isolation::None => None,
        Isolation::Container => Some(prepare_root(req)?),
    };
    resolve_user(req, isolation, &mut process, &mut plan)?;
    let p = &process;
    let owner = container_ids(
        container.as_ref().and_then(|c| c.userns.as_ref()),
        p.uid,
        p.gid,
    );
    let stdio = open_stdio(p.terminal.then_some((p.rows, p.cols)), owner, None)?;
    let launch = Launch {
        plan: &plan,
        container: container.as_ref(),
        reaper,
    };
    let held = launch
        .fork(stdio.child, placed)
        .map_err(with_program(&p.args[0]))?;
    drop(stdio.child_ends);
    Ok(Created {
        held,
        stdio: stdio.agent,
        program: p.args[0].clone(),
        context: ExecContext {
            isolation,
            seccomp: plan.security.seccomp.clone(),
            userns: container.and_then(|c| c.userns),
        },
    })
}

/// Mounts the volumes and the container's root; the plan of the container.
fn prepare_root(req: &RunRequest) -> Result<ContainerPlan, ContainerError> {
    apart::ready_devices(req)?;
    volumes::mount_all(&Linux, &req.volumes)?;
    volumes::make_empty_dirs(&req.spec)?;
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
    Ok(container)
}

/// What an exec into the container needs of it.
#[derive(Clone)]
pub struct ExecContext {
    /// The container's confinement.
    pub isolation: Isolation,
    /// The container's seccomp filter, compiled at `Create`.
    pub seccomp: Option<SeccompProgram>,
    /// The user namespace's maps, if it has one (for the owner of an exec's pty).
    pub userns: Option<IdMaps>,
}

/// A created container whose process waits for its start.
pub struct Created {
    held: Held,
    stdio: AgentStdio,
    program: String,
    /// What execs into it need.
    pub context: ExecContext,
}

impl Created {
    /// The pid of the container's init (of the process in the host mode).
    pub fn pid(&self) -> libc::pid_t {
        self.held.pid
    }

    /// Ends the waiting process (a container removed before its start).
    pub fn abandon(self, reaper: &Reaper) {
        abandon(reaper, self.held.pid);
    }

    /// Lets the process exec its command; its stdio once it did.
    pub fn start(self, reaper: &Reaper) -> Result<(Process, ExecContext), ContainerError> {
        let pid = self
            .held
            .start(reaper)
            .map_err(with_program(&self.program))?;
        let process = Process {
            pid,
            stdio: self.stdio,
        };
        Ok((process, self.context))
    }
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
pub fn container_ids(userns: Option<&IdMaps>, uid: u32, gid: u32) -> (u32, u32) {
    match userns {
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

/// What [`Launch::fork`] starts.
struct Launch<'a> {
    plan: &'a ExecPlan,
    container: Option<&'a ContainerPlan>,
    reaper: &'a Reaper,
}

impl Launch<'_> {
    /// Forks (in the host mode) or clones the container's init (in the guest mode), which
    /// waits on the sync pipe until the agent has written the id maps and called `placed`;
    /// the child then runs [`child::run`] or [`child::run_init`] with a start pipe: the command
    /// reports [`child::Report::Ready`] on the close-on-exec error pipe once set up and waits
    /// for its start, a failure is reported there too.
    fn fork(
        &self,
        stdio: ChildStdio,
        placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
    ) -> Result<Held, ContainerError> {
        let (err_r, err_w) = pipe().map_err(spawn_err("creating the error pipe"))?;
        let (sync_r, sync_w) = pipe().map_err(spawn_err("creating the sync pipe"))?;
        let (start_r, start_w) = pipe().map_err(spawn_err("creating the start pipe"))?;
        let flags = match self.container {
            Some(c) => c.clone_flags,
            None => libc::SIGCHLD as libc::c_ulong,
        };
        let (plan, container) = (self.plan, self.container);
        let pipes = Pipes {
            err: err_w.as_raw_fd(),
            start: Some(start_r.as_raw_fd()),
        };
        let pid = self
            .reaper
            .spawn_registered(|| {
                // SAFETY: the child only makes system calls on data prepared before the clone
                // (`plan`, `container`, `stdio`, the pipes) and ends with execve or _exit; it
                // never returns here.
                match unsafe { Linux.clone_process(flags)? } {
                    0 => {
                        Linux.close(sync_w.as_raw_fd());
                        Linux.close(start_w.as_raw_fd());
                        let exit = match Linux.read_byte(sync_r.as_raw_fd()) {
                            Ok(true) => match container {
                                Some(c) => child::run_init(&Linux, plan, c, stdio, pipes),
                                None => Exit::Failed(child::run(&Linux, plan, stdio, pipes)),
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
        drop((err_w, sync_r, start_r));
        if let Err(e) = self.place(pid, placed).and_then(|()| release(sync_w)) {
            abandon(self.reaper, pid);
            return Err(e);
        }
        Held::wait_ready(self.reaper, pid, err_r, start_w)
    }

    /// The parent's part while the child waits: id maps, then `placed`.
    fn place(
        &self,
        pid: libc::pid_t,
        placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
    ) -> Result<(), ContainerError> {
        if let Some(maps) = self.container.and_then(|c| c.userns.as_ref()) {
            write_id_maps(pid, maps).map_err(spawn_err("writing the user namespace's id maps"))?;
        }
        placed(pid)
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
