//! Signals, and the requests on a container's cgroup (`Pause`, `Resume`, `ListProcesses`,
//! `Stats`, `Update`).

use std::sync::Arc;

use moat_protocol::{AgentMessage, ErrorKind, MAIN_PROCESS};
use oci_spec::runtime::LinuxResources;

use super::procs::kill_exec;
use super::requests::{line, Phase};
use super::{Server, ServerError};
use crate::limits::{ContainerCgroup, LimitsError};
use crate::syscall::{Linux, Syscall};

impl Server {
    /// `Signal`: to one process, or with `all` to every process of its container.
    pub(super) fn signal(&self, process: u32, signo: i32, all: bool) -> Result<(), ServerError> {
        if !(1..=64).contains(&signo) {
            let text = format!("no signal {signo}");
            return self.error(Some(process), ErrorKind::InvalidRequest, text);
        }
        let Some(p) = self.procs.get(process) else {
            return self.no_process(process);
        };
        if all {
            return self.signal_all(process, signo);
        }
        if !p.has_exited() {
            // The pid is ours until the reaper reaps it, and the flag is set only after that.
            let _ = Linux.kill(p.pid, signo);
        }
        Ok(())
    }

    /// Every process in the cgroup of `process`'s container; in the host mode, every process
    /// of that container started here.
    fn signal_all(&self, process: u32, signo: i32) -> Result<(), ServerError> {
        let owner = self.owners.get(&process);
        let container = owner.and_then(|name| self.container(name));
        let Some(c) = container.map(|i| &self.containers[i]) else {
            return self.no_process(process);
        };
        if let Some(cgroup) = c.cgroup() {
            match cgroup.pids() {
                Ok(pids) => pids.into_iter().for_each(|pid| {
                    let _ = Linux.kill(pid, signo);
                }),
                Err(e) => return self.error(None, e.kind(), line(&e)),
            }
            return Ok(());
        }
        for (id, p) in self.procs.running() {
            if self.owners.get(&id) != owner {
                continue;
            }
            match id == c.process || id == MAIN_PROCESS {
                true => {
                    let _ = Linux.kill(p.pid, signo);
                }
                false => kill_exec(p.pid, signo),
            }
        }
        Ok(())
    }

    /// Runs a request on container `name`'s cgroup and answers it.
    fn on_cgroup(
        &self,
        name: &str,
        what: &str,
        f: impl FnOnce(&ContainerCgroup) -> Result<AgentMessage, LimitsError>,
    ) -> Result<(), ServerError> {
        let Some(c) = self.container(name).map(|i| &self.containers[i]) else {
            let text = format!("{what}: no container {name}");
            return self.error(None, ErrorKind::InvalidRequest, text);
        };
        let Some(cgroup) = c.cgroup().map(Arc::clone) else {
            let text = match &c.phase {
                Phase::Created { .. } | Phase::Running(_) => format!(
                    "{what} needs the container's cgroup, which the agent's host test mode \
                     does not create"
                ),
                Phase::Failed => format!("{what}: container {name} is not running"),
            };
            return self.error(None, ErrorKind::InvalidRequest, text);
        };
        match f(&cgroup) {
            Ok(answer) => self.send(&answer),
            Err(e) => self.error(None, e.kind(), format!("{what}: {}", line(&e))),
        }
    }

    /// `Pause` and `Resume`.
    pub(super) fn freeze(&self, name: &str, frozen: bool) -> Result<(), ServerError> {
        let what = if frozen { "pause" } else { "resume" };
        self.on_cgroup(name, what, |c| {
            c.freeze(frozen).map(|()| AgentMessage::Done)
        })
    }

    /// `ListProcesses`.
    pub(super) fn list_processes(&self, name: &str) -> Result<(), ServerError> {
        self.on_cgroup(name, "listing processes", |c| {
            c.pids().map(|pids| AgentMessage::Processes { pids })
        })
    }

    /// `Stats`.
    pub(super) fn stats(&self, name: &str) -> Result<(), ServerError> {
        self.on_cgroup(name, "stats", |c| {
            c.stats().map(|s| AgentMessage::Stats(Box::new(s)))
        })
    }

    /// `Update`.
    pub(super) fn update(&self, name: &str, r: &LinuxResources) -> Result<(), ServerError> {
        self.on_cgroup(name, "update", |c| c.update(r).map(|()| AgentMessage::Done))
    }
}
