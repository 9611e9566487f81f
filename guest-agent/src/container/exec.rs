//! A process started in the running container (`Exec`): it joins the namespaces of the
//! container's init (user first, then mount, which gives it the container's root, pid, ipc,
//! uts, net and cgroup), is moved into the container's cgroup by the agent, and is set up
//! exactly as the container's own process ([`child::run`]) with the container's seccomp filter.
//!
//! Joining a PID namespace only places the children of the caller in it, so the agent forks an
//! intermediate process that joins the namespaces and clones the exec's process with
//! `CLONE_PARENT`: the process is then the agent's child (its exit status is the agent's to
//! reap) inside the container's PID namespace. The intermediate writes the process's pid on a
//! pipe and exits; the process waits on its sync pipe until the agent registered and placed it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use moat_protocol::ExecRequest;

use super::child::{self, ChildStdio, Exit, Failure, Pipes, Report, Stage};
use super::launch::{
    abandon, child_error, end_child, open_stdio, pipe, read_report, release, spawn_err,
    wait_for_exec,
};
use super::plan::{self, ExecPlan, PlanError, ProcessSpec};
use super::security::Security;
use super::Process;
use super::{container_ids, passwd, user, with_program, ContainerError, ExecContext, Isolation};
use crate::reaper::Reaper;
use crate::syscall::{Linux, Syscall};

/// The namespaces an exec joins, in the order it joins them.
const NAMESPACES: [(&str, libc::c_int); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("pid", libc::CLONE_NEWPID),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// The container an exec goes into.
pub struct Target<'a> {
    /// The container's init (the process in the host mode), whose namespaces the exec joins.
    pub init: libc::pid_t,
    /// What the container's `Create` left for its execs.
    pub context: &'a ExecContext,
}

/// A namespace of the init's that the agent is not in, open.
struct Namespace {
    fd: OwnedFd,
    nstype: libc::c_int,
}

/// The namespaces of `init` that differ from the agent's own (joining one's own user namespace
/// is an error, and the others would be no-ops).
fn namespaces_of(init: libc::pid_t) -> io::Result<Vec<Namespace>> {
    let mut out = Vec::new();
    for (name, nstype) in NAMESPACES {
        let theirs = format!("/proc/{init}/ns/{name}");
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))?;
        let file = File::open(&theirs)?;
        let meta = file.metadata()?;
        if (meta.dev(), meta.ino()) != (ours.dev(), ours.ino()) {
            out.push(Namespace {
                fd: OwnedFd::from(file),
                nstype,
            });
        }
    }
    Ok(out)
}

/// Checks and plans `req` for `target`: the process, its security with the container's filter,
/// and the user named by `req.user`, resolved in the container's root.
fn plan_exec(
    req: &ExecRequest,
    target: &Target,
) -> Result<(ProcessSpec, ExecPlan), ContainerError> {
    let mut process = ProcessSpec::from_process(&req.spec);
    let security = Security::from_process(&req.spec, target.context.seccomp.clone())?;
    let mut plan = plan::build(&process, security)?;
    if let Some(name) = &req.user {
        passwd::check(name).map_err(|e| PlanError::Field {
            field: "user".into(),
            why: e.to_string(),
        })?;
        let root = match target.context.isolation {
            Isolation::Container => format!("/proc/{}/root", target.init),
            Isolation::None => "/".to_owned(),
        };
        let root = CString::new(root).map_err(|_| PlanError::Nul("the root"))?;
        let files = user::InRoot {
            sys: &Linux,
            root: &root,
        };
        let resolved = user::resolve(&files, name)?;
        user::apply(&resolved, &mut process, &mut plan)?;
    }
    Ok((process, plan))
}

/// Starts `req` in the container of `target`; `placed` is called with the process's pid before
/// it goes on (the caller moves it into the container's cgroup there).
pub fn exec(
    req: &ExecRequest,
    target: &Target,
    reaper: &Reaper,
    placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
) -> Result<Process, ContainerError> {
    let (process, plan) = plan_exec(req, target)?;
    let namespaces = match target.context.isolation {
        Isolation::Container => {
            namespaces_of(target.init).map_err(spawn_err("opening the container's namespaces"))?
        }
        Isolation::None => Vec::new(),
    };
    let p = &process;
    let owner = container_ids(target.context.userns.as_ref(), p.uid, p.gid);
    // Its pty from the container's devpts instance, so that it is the container's terminal.
    let ptmx = match (p.terminal, target.context.isolation) {
        (true, Isolation::Container) => super::pty::container_ptmx(target.init)
            .map_err(spawn_err("finding the container's devpts"))?,
        _ => None,
    };
    let stdio = open_stdio(p.terminal.then_some((p.rows, p.cols)), owner, ptmx.as_ref())?;
    let pid = fork_into(&plan, &namespaces, stdio.child, reaper, placed)
        .map_err(with_program(&p.args[0]))?;
    drop(stdio.child_ends);
    Ok(Process {
        pid,
        stdio: stdio.agent,
    })
}

/// The intermediate and the process (see the module docs); the process's pid once it exec'd.
fn fork_into(
    plan: &ExecPlan,
    namespaces: &[Namespace],
    stdio: ChildStdio,
    reaper: &Reaper,
    placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError>,
) -> Result<libc::pid_t, ContainerError> {
    let (err_r, err_w) = pipe().map_err(spawn_err("creating the error pipe"))?;
    let (sync_r, sync_w) = pipe().map_err(spawn_err("creating the sync pipe"))?;
    let (pid_r, pid_w) = pipe().map_err(spawn_err("creating the pid pipe"))?;
    let fds = Fds {
        err_w: err_w.as_raw_fd(),
        sync_r: sync_r.as_raw_fd(),
        sync_w: sync_w.as_raw_fd(),
        pid_r: pid_r.as_raw_fd(),
        pid_w: pid_w.as_raw_fd(),
    };
    let forked = reaper.spawn_registered(|| {
        // SAFETY: the intermediate and the process only make system calls on data prepared
        // before (`plan`, `namespaces`, `stdio`, the pipes) and end with execve or _exit.
        match unsafe { Linux.clone_process(libc::SIGCHLD as libc::c_ulong)? } {
            0 => intermediate(plan, namespaces, stdio, fds),
            _ => {
                drop(pid_w);
                read_pid(pid_r)
            }
        }
    });
    drop((err_w, sync_r));
    let pid = match forked {
        Ok(pid) => pid,
        Err(e) => {
            return match read_report(&err_r)? {
                Some(Report::Failed(failure)) => Err(child_error(failure)),
                _ => Err(spawn_err("fork")(e)),
            }
        }
    };
    if let Err(e) = placed(pid).and_then(|()| release(sync_w)) {
        abandon(reaper, pid);
        return Err(e);
    }
    wait_for_exec(reaper, pid, &err_r)
}

/// The raw descriptors the intermediate and the process use.
#[derive(Clone, Copy)]
struct Fds {
    err_w: RawFd,
    sync_r: RawFd,
    sync_w: RawFd,
    pid_r: RawFd,
    pid_w: RawFd,
}

/// Reads the process's pid from the intermediate; end of file: it failed (and said why on the
/// error pipe).
fn read_pid(pid_r: OwnedFd) -> io::Result<libc::pid_t> {
    let mut bytes = [0u8; 4];
    File::from(pid_r).read_exact(&mut bytes)?;
    Ok(libc::pid_t::from_le_bytes(bytes))
}

/// The intermediate: joins the namespaces, clones the process as a sibling, says its pid.
fn intermediate(plan: &ExecPlan, namespaces: &[Namespace], stdio: ChildStdio, fds: Fds) -> ! {
    let sys = &Linux;
    sys.close(fds.sync_w);
    sys.close(fds.pid_r);
    for ns in namespaces {
        if let Err(e) = sys.setns(ns.fd.as_raw_fd(), ns.nstype) {
            end_child(fds.err_w, Exit::Failed(Failure::at(Stage::Namespaces)(e)));
        }
    }
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: as in `fork_into`: the process only runs `child::run` on prepared data.
    match unsafe { sys.clone_process(flags) } {
        Err(e) => end_child(fds.err_w, Exit::Failed(Failure::at(Stage::Init)(e))),
        Ok(0) => {
            sys.close(fds.pid_w);
            let pipes = Pipes {
                err: fds.err_w,
                start: None,
            };
            let exit = match sys.read_byte(fds.sync_r) {
                Ok(true) => Exit::Failed(child::run(sys, plan, stdio, pipes)),
                _ => Exit::Code(127),
            };
            end_child(fds.err_w, exit)
        }
        Ok(pid) => {
            // A failed write leaves the agent an end of file: it kills nothing it cannot see,
            // and the process ends when its sync pipe closes.
            let _ = sys.write_fd(fds.pid_w, &pid.to_le_bytes());
            end_child(fds.err_w, Exit::Code(0))
        }
    }
}
