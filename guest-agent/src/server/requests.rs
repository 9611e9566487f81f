//! The host's requests about a container's life: `Create` and `Start`, `Exec`s into it and
//! `Remove` of a later one. Its cgroup's requests are in [`super::cgroups`].
//!
//! A VM holds one container (`moat run`, OCI, a containerd task) or a pod's several. The first
//! container is made in the agent's own mount namespace and its end is the VM's; a later one
//! is made from a thread in a mount namespace of its own ([`crate::container::private_mounts`]),
//! so that every container assembles its root at the same paths without seeing the others',
//! and its end kills only its own cgroup.

use std::sync::Arc;

use moat_protocol::{AgentMessage, ErrorKind, ExecRequest, RunRequest, FIRST_EXEC, MAIN_PROCESS};

use super::procs::{lock, watch_exec, watch_main, Execs, MainEnd, SharedExecs};
use super::{source_chain, KillScope, Server, ServerError};
use crate::container::exec::{self, Target};
use crate::container::{self, ContainerError, Created, ExecContext, Isolation, Process};
use crate::limits::{self, ContainerCgroup};

/// Where a container is.
pub enum Phase {
    /// Created; its process waits for `Start`.
    Created {
        /// The container.
        created: Created,
        /// Its cgroup (none in the host test mode).
        cgroup: Option<Arc<ContainerCgroup>>,
    },
    /// Started (it may have ended since: see [`Execs::is_open`]).
    Running(Running),
    /// `Create` or `Start` failed.
    Failed,
}

/// A started container.
pub struct Running {
    /// Its init (its process in the host mode).
    init: libc::pid_t,
    /// What execs need.
    context: ExecContext,
    /// Its cgroup (none in the host test mode).
    pub(super) cgroup: Option<Arc<ContainerCgroup>>,
    /// Its execs.
    execs: SharedExecs,
}

/// A container of the VM.
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its main process's id.
    pub process: u32,
    /// Whether it is the VM's first container.
    pub first: bool,
    /// Where it is.
    pub phase: Phase,
    /// The disks the host swapped in for it (its root's and volumes' with `sectors`): released
    /// at its `Remove`.
    pub devices: Vec<String>,
}

impl Container {
    /// Whether its main process ended (or never ran).
    fn ended(&self) -> bool {
        match &self.phase {
            Phase::Created { .. } => false,
            Phase::Running(r) => !lock(&r.execs).is_open(),
            Phase::Failed => true,
        }
    }

    /// Its init while it lives: the pid whose namespaces a pod's later container may join.
    fn init(&self) -> Option<libc::pid_t> {
        match &self.phase {
            Phase::Created { created, .. } => Some(created.pid()),
            Phase::Running(r) if !self.ended() => Some(r.init),
            _ => None,
        }
    }

    /// Its cgroup, once created.
    pub fn cgroup(&self) -> Option<&Arc<ContainerCgroup>> {
        match &self.phase {
            Phase::Created { cgroup, .. } => cgroup.as_ref(),
            Phase::Running(r) => r.cgroup.as_ref(),
            Phase::Failed => None,
        }
    }
}

/// One line for an error and its sources.
pub(super) fn line(e: &dyn std::error::Error) -> String {
    format!("{e}{}", source_chain(e))
}

impl Server {
    /// The container `id`, or an error to the host about `process`.
    pub(super) fn container(&self, id: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.id == id)
    }

    fn refuse(&self, process: u32, text: String) -> Result<(), ServerError> {
        self.error(Some(process), ErrorKind::InvalidRequest, text)
    }

    /// Checks the ids of a `Create`: a new container id; the first container's process is
    /// [`MAIN_PROCESS`], a later one's an unused id of at least [`FIRST_EXEC`].
    fn check_ids(&self, req: &RunRequest) -> Result<(), String> {
        if self.container(&req.id).is_some() {
            return Err(format!("container {} already exists", req.id));
        }
        let first = self.containers.is_empty();
        match req.process {
            MAIN_PROCESS if first => Ok(()),
            p if first => Err(format!("the first container's process is 1, not {p}")),
            p if p < FIRST_EXEC => Err(format!("process id {p} is below {FIRST_EXEC}")),
            p if self.procs.contains(p) || self.containers.iter().any(|c| c.process == p) => {
                Err(format!("process id {p} is taken"))
            }
            _ => Ok(()),
        }
    }

    /// Checks that every namespace `req` joins is one of a living container's of this VM:
    /// a pod's later container joins the pod's namespaces, never the agent's own.
    fn check_joins(&self, req: &RunRequest) -> Result<(), String> {
        let namespaces = req
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref());
        for path in namespaces
            .into_iter()
            .flatten()
            .filter_map(|ns| ns.path().as_ref())
        {
            let pid = path
                .to_str()
                .and_then(|p| p.strip_prefix("/proc/"))
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse::<libc::pid_t>().ok());
            let ours = pid.is_some_and(|pid| self.containers.iter().any(|c| c.init() == Some(pid)));
            if !ours {
                return Err(format!(
                    "linux.namespaces: {} is not a namespace of one of this VM's containers",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// `Create`: every check that needs no guest state first, then the cgroup, then the root
    /// and the process, which waits for `Start`.
    pub(super) fn create(&mut self, req: &RunRequest) -> Result<(), ServerError> {
        let id = req.process;
        if let Err(text) = self.check_ids(req).and_then(|()| self.check_joins(req)) {
            return self.refuse(id, text);
        }
        // A pod's later container may join the pod's namespaces (paths the agent checks when
        // it plans the container); the VM's first container joins none.
        let checked_spec = match self.containers.is_empty() {
            true => std::borrow::Cow::Borrowed(&req.spec),
            false => std::borrow::Cow::Owned(container::without_namespace_paths(&req.spec)),
        };
        if let Err(e) = moat_spec::validate(&checked_spec, None) {
            return self.refuse(id, e.to_string());
        }
        let isolation = self.config.isolation;
        let checked = match container::check(req, isolation) {
            Ok(checked) => checked,
            Err(e) => return self.error(Some(id), e.kind(), line(&e)),
        };
        let cgroup = match limits::prepare(req, isolation, self.config.cgroup_root) {
            Ok(cgroup) => cgroup,
            Err(e) => return self.error(Some(id), e.kind(), line(&e)),
        };
        let placed = |pid| match &cgroup {
            Some(c) => c.add(pid).map_err(ContainerError::from),
            None => Ok(()),
        };
        let first = self.containers.is_empty();
        let reaper = &self.reaper;
        let created = if first || isolation == Isolation::None {
            container::create(req, checked, isolation, reaper, placed)
        } else {
            container::create_apart(req, checked, reaper, placed)
        };
        let mut container = Container {
            id: req.id.clone(),
            process: id,
            first,
            phase: Phase::Failed,
            devices: container::devices(req),
        };
        match created {
            Ok(created) => {
                self.send(&AgentMessage::Created {
                    process: id,
                    pid: created.pid(),
                })?;
                container.phase = Phase::Created { created, cgroup };
                self.containers.push(container);
                Ok(())
            }
            Err(e) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                // The first container's failure is the VM's: it stays, failed.
                if first {
                    self.containers.push(container);
                }
                self.error(Some(id), e.kind(), line(&e))
            }
        }
    }

    /// `Start`: the process execs; `Started` once it did, then its stdio and waiter.
    pub(super) fn start(&mut self, name: &str) -> Result<(), ServerError> {
        let Some(index) = self.container(name) else {
            let text = format!("no container {name}");
            return self.error(None, ErrorKind::InvalidRequest, text);
        };
        let c = &mut self.containers[index];
        let (id, first) = (c.process, c.first);
        let (created, cgroup) = match std::mem::replace(&mut c.phase, Phase::Failed) {
            Phase::Created { created, cgroup } => (created, cgroup),
            other => {
                let text = match other {
                    Phase::Running(_) => format!("container {name} was already started"),
                    _ => format!("container {name} failed"),
                };
                c.phase = other;
                return self.refuse(id, text);
            }
        };
        let (process, context) = match created.start(&self.reaper) {
            Ok(started) => started,
            Err(e) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                return self.error(Some(id), e.kind(), line(&e));
            }
        };
        let init = process.pid;
        self.send(&AgentMessage::Started {
            process: id,
            pid: init,
        })?;
        if let Some(c) = &cgroup {
            c.watch_ooms(Arc::clone(&self.writer))
                .map_err(ServerError::Setup)?;
        }
        let execs = Execs::open();
        let kill = match (first, &cgroup) {
            (true, _) => self.config.kill,
            (false, Some(_)) => KillScope::Cgroup,
            (false, None) => KillScope::Group,
        };
        let end = MainEnd {
            reaper: Arc::clone(&self.reaper),
            writer: Arc::clone(&self.writer),
            kill,
            cgroup: cgroup.clone(),
            execs: Arc::clone(&execs),
        };
        let proc = watch_main(id, process, end).map_err(ServerError::Setup)?;
        self.procs.insert(id, proc);
        self.owners.insert(id, name.to_owned());
        self.containers[index].phase = Phase::Running(Running {
            init,
            context,
            cgroup,
            execs,
        });
        Ok(())
    }

    /// `Exec`: a new process in a running container.
    pub(super) fn exec(&mut self, req: &ExecRequest) -> Result<(), ServerError> {
        let id = req.process;
        if id < FIRST_EXEC {
            return self.refuse(id, format!("process id {id} is below {FIRST_EXEC}"));
        }
        if self.procs.contains(id) || self.containers.iter().any(|c| c.process == id) {
            return self.refuse(id, format!("process id {id} is taken"));
        }
        let name = &req.container;
        let Some(index) = self.container(name) else {
            return self.refuse(id, format!("no container {name}"));
        };
        let Phase::Running(running) = &self.containers[index].phase else {
            return self.refuse(id, format!("container {name} is not running"));
        };
        // Held while the exec starts: the container cannot end half-way (its end waits).
        let mut set = lock(&running.execs);
        if !set.is_open() {
            drop(set);
            let text = format!("container {name} is not running (it has exited)");
            return self.refuse(id, text);
        }
        let target = Target {
            init: running.init,
            context: &running.context,
        };
        let placed = |pid| match &running.cgroup {
            Some(c) => c.add(pid).map_err(ContainerError::from),
            None => Ok(()),
        };
        let process: Process = match exec::exec(req, &target, &self.reaper, placed) {
            Ok(process) => process,
            Err(e) => {
                drop(set);
                return self.error(Some(id), e.kind(), line(&e));
            }
        };
        let started = AgentMessage::Started {
            process: id,
            pid: process.pid,
        };
        self.writer.control(&started).map_err(ServerError::Send)?;
        let proc = watch_exec(id, process, &self.reaper, &self.writer, &mut set)
            .map_err(ServerError::Setup)?;
        drop(set);
        self.procs.insert(id, proc);
        self.owners.insert(id, name.clone());
        Ok(())
    }

    /// `Remove` of a later container whose process ended (or never started): its cgroup goes,
    /// and once nothing holds its disks any more (its mount namespace ended with its last
    /// process) their cached blocks are dropped, so the host may swap them.
    pub(super) fn remove(&mut self, name: &str) -> Result<(), ServerError> {
        let Some(index) = self.container(name) else {
            return self.error(
                None,
                ErrorKind::InvalidRequest,
                format!("no container {name}"),
            );
        };
        let c = &self.containers[index];
        let refused = match &c.phase {
            _ if c.first => Some("it is the VM's first container, which ends with the VM"),
            Phase::Created { .. } => None,
            _ if !c.ended() => Some("it is running"),
            _ => None,
        };
        if let Some(why) = refused {
            let text = format!("cannot remove container {name}: {why}");
            return self.error(None, ErrorKind::InvalidRequest, text);
        }
        let c = &mut self.containers[index];
        if let Phase::Created { created, cgroup } = std::mem::replace(&mut c.phase, Phase::Failed) {
            created.abandon(&self.reaper);
            if let Some(cg) = cgroup {
                cg.remove();
            }
        }
        // The host test mode mounts no disk. A failed release keeps the container, ended, so
        // that the host may ask again.
        if self.config.isolation == Isolation::Container {
            if let Err(e) = container::release_devices(&c.devices) {
                return self.error(None, e.kind(), format!("removing {name}: {}", line(&e)));
            }
        }
        self.containers.remove(index);
        self.owners.retain(|_, owner| owner != name);
        self.send(&AgentMessage::Done)
    }
}
