//! The host's requests: `Create` and `Start` of the container, `Exec`s into it, signals, and the
//! container requests on its cgroup (`Pause`, `Resume`, `ListProcesses`, `Update`).

use std::sync::Arc;

use moat_protocol::{AgentMessage, ErrorKind, ExecRequest, RunRequest, FIRST_EXEC, MAIN_PROCESS};
use oci_spec::runtime::LinuxResources;

use super::procs::{kill_exec, lock, watch_exec, watch_main, Execs, MainEnd, SharedExecs};
use super::{source_chain, Server, ServerError};
use crate::container::exec::{self, Target};
use crate::container::{self, ContainerError, Created, ExecContext, Process};
use crate::limits::{self, ContainerCgroup, LimitsError};
use crate::syscall::{Linux, Syscall};

/// Where the container is.
pub enum Phase {
    /// No `Create` yet.
    Empty,
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
    cgroup: Option<Arc<ContainerCgroup>>,
    /// Its execs.
    execs: SharedExecs,
}

/// One line for an error and its sources.
fn line(e: &dyn std::error::Error) -> String {
    format!("{e}{}", source_chain(e))
}

impl Server {
    fn main_error(&self, kind: ErrorKind, message: String) -> Result<(), ServerError> {
        self.error(Some(MAIN_PROCESS), kind, message)
    }

    /// `Create`: every check that needs no guest state first, then the cgroup, then the root
    /// and the process, which waits for `Start`.
    pub(super) fn create(&mut self, req: &RunRequest) -> Result<(), ServerError> {
        if !matches!(self.phase, Phase::Empty) {
            let text = "a container was already created".to_owned();
            return self.main_error(ErrorKind::InvalidRequest, text);
        }
        if let Err(e) = moat_spec::validate(&req.spec, None) {
            return self.main_error(ErrorKind::InvalidRequest, e.to_string());
        }
        let checked = match container::check(req, self.config.isolation) {
            Ok(checked) => checked,
            Err(e) => return self.main_error(e.kind(), line(&e)),
        };
        let cgroup = match limits::prepare(req, self.config.isolation, self.config.cgroup_root) {
            Ok(cgroup) => cgroup,
            Err(e) => return self.main_error(e.kind(), line(&e)),
        };
        let placed = |pid| match &cgroup {
            Some(c) => c.add(pid).map_err(ContainerError::from),
            None => Ok(()),
        };
        match container::create(req, checked, self.config.isolation, &self.reaper, placed) {
            Ok(created) => {
                self.send(&AgentMessage::Created { pid: created.pid() })?;
                self.phase = Phase::Created { created, cgroup };
                Ok(())
            }
            Err(e) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                self.phase = Phase::Failed;
                self.main_error(e.kind(), line(&e))
            }
        }
    }

    /// `Start`: the process execs; `Started` once it did, then its stdio and waiter.
    pub(super) fn start(&mut self) -> Result<(), ServerError> {
        let (created, cgroup) = match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Created { created, cgroup } => (created, cgroup),
            other => {
                let text = match other {
                    Phase::Running(_) => "the container was already started",
                    _ => "no container was created",
                };
                self.phase = other;
                return self.main_error(ErrorKind::InvalidRequest, text.to_owned());
            }
        };
        let (process, context) = match created.start(&self.reaper) {
            Ok(started) => started,
            Err(e) => {
                if let Some(c) = &cgroup {
                    c.remove();
                }
                return self.main_error(e.kind(), line(&e));
            }
        };
        let init = process.pid;
        self.send(&AgentMessage::Started {
            process: MAIN_PROCESS,
            pid: init,
        })?;
        if let Some(c) = &cgroup {
            c.watch_ooms(Arc::clone(&self.writer))
                .map_err(ServerError::Setup)?;
        }
        let execs = Execs::open();
        let end = MainEnd {
            reaper: Arc::clone(&self.reaper),
            writer: Arc::clone(&self.writer),
            kill: self.config.kill,
            cgroup: cgroup.clone(),
            execs: Arc::clone(&execs),
        };
        let proc = watch_main(MAIN_PROCESS, process, end).map_err(ServerError::Setup)?;
        self.procs.insert(MAIN_PROCESS, proc);
        self.phase = Phase::Running(Running {
            init,
            context,
            cgroup,
            execs,
        });
        Ok(())
    }

    /// `Exec`: a new process in the running container.
    pub(super) fn exec(&mut self, req: &ExecRequest) -> Result<(), ServerError> {
        let id = req.process;
        let refuse = |s: &Self, text: String| s.error(Some(id), ErrorKind::InvalidRequest, text);
        if id < FIRST_EXEC {
            return refuse(self, format!("process id {id} is below {FIRST_EXEC}"));
        }
        if self.procs.contains(id) {
            return refuse(self, format!("process id {id} is taken"));
        }
        let Phase::Running(running) = &self.phase else {
            return refuse(self, "the container is not running".into());
        };
        // Held while the exec starts: the container cannot end half-way (its end waits).
        let mut set = lock(&running.execs);
        if !set.is_open() {
            drop(set);
            return refuse(self, "the container is not running (it has exited)".into());
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
        Ok(())
    }

    /// `Signal`: to one process, or with `all` to every process of the container.
    pub(super) fn signal(&self, process: u32, signo: i32, all: bool) -> Result<(), ServerError> {
        if !(1..=64).contains(&signo) {
            let text = format!("no signal {signo}");
            return self.error(Some(process), ErrorKind::InvalidRequest, text);
        }
        if all {
            return self.signal_all(signo);
        }
        let Some(p) = self.procs.get(process) else {
            return self.no_process(process);
        };
        if !p.has_exited() {
            // The pid is ours until the reaper reaps it, and the flag is set only after that.
            let _ = Linux.kill(p.pid, signo);
        }
        Ok(())
    }

    /// Every process in the container's cgroup; in the host mode, every process started.
    fn signal_all(&self, signo: i32) -> Result<(), ServerError> {
        match self.cgroup() {
            Some(c) => match c.pids() {
                Ok(pids) => pids.into_iter().for_each(|pid| {
                    let _ = Linux.kill(pid, signo);
                }),
                Err(e) => return self.error(None, e.kind(), line(&e)),
            },
            None => {
                for (id, p) in self.procs.running() {
                    match id {
                        MAIN_PROCESS => {
                            let _ = Linux.kill(p.pid, signo);
                        }
                        _ => kill_exec(p.pid, signo),
                    }
                }
            }
        }
        Ok(())
    }

    /// The container's cgroup, once created.
    fn cgroup(&self) -> Option<&Arc<ContainerCgroup>> {
        match &self.phase {
            Phase::Created { cgroup, .. } => cgroup.as_ref(),
            Phase::Running(r) => r.cgroup.as_ref(),
            _ => None,
        }
    }

    /// Runs a container request on the cgroup and answers it.
    fn on_cgroup(
        &self,
        what: &str,
        f: impl FnOnce(&ContainerCgroup) -> Result<AgentMessage, LimitsError>,
    ) -> Result<(), ServerError> {
        let Some(cgroup) = self.cgroup() else {
            let text = match &self.phase {
                Phase::Created { .. } | Phase::Running(_) => format!(
                    "{what} needs the container's cgroup, which the agent's host test mode \
                     does not create"
                ),
                _ => format!("{what}: no container is running"),
            };
            return self.error(None, ErrorKind::InvalidRequest, text);
        };
        match f(cgroup) {
            Ok(answer) => self.send(&answer),
            Err(e) => self.error(None, e.kind(), format!("{what}: {}", line(&e))),
        }
    }

    /// `Pause` and `Resume`.
    pub(super) fn freeze(&self, frozen: bool) -> Result<(), ServerError> {
        let what = if frozen { "pause" } else { "resume" };
        self.on_cgroup(what, |c| c.freeze(frozen).map(|()| AgentMessage::Done))
    }

    /// `ListProcesses`.
    pub(super) fn list_processes(&self) -> Result<(), ServerError> {
        self.on_cgroup("listing processes", |c| {
            c.pids().map(|pids| AgentMessage::Processes { pids })
        })
    }

    /// `Stats`.
    pub(super) fn stats(&self) -> Result<(), ServerError> {
        self.on_cgroup("stats", |c| {
            c.stats().map(|s| AgentMessage::Stats(Box::new(s)))
        })
    }

    /// `Update`.
    pub(super) fn update(&self, r: &LinuxResources) -> Result<(), ServerError> {
        self.on_cgroup("update", |c| c.update(r).map(|()| AgentMessage::Done))
    }
}
