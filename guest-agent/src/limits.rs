//! The container's cgroup as the conversation uses it: created and limited from
//! `linux.resources` before the container's init exists, joined by the init (the start hook),
//! and watched for OOM kills, which go to the host as [`AgentMessage::Oom`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use moat_protocol::{AgentMessage, ErrorKind, RunRequest};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, LinuxResources};

use crate::cgroup::{Cgroup, CgroupError};
use crate::container::Isolation;
use crate::stdio::FrameWriter;

/// Where the guest's cgroup2 hierarchy is mounted (init.rs).
pub const GUEST_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent of every container's cgroup.
const PARENT: &str = "containers";

/// Errors setting up the container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// The spec asks for something the agent refuses.
    #[error("{field}: {why}")]
    Refused {
        /// The OCI field.
        field: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The cgroup could not be created or configured.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The container has ended and its cgroup is gone.
    #[error("the container has ended")]
    Ended,
}

impl LimitsError {
    /// The protocol error kind: refusals of the spec are invalid requests.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Refused { .. }
            | Self::Cgroup(CgroupError::Refused { .. } | CgroupError::Write { .. }) => {
                ErrorKind::InvalidRequest
            }
            Self::Cgroup(_) => ErrorKind::Internal,
            Self::Ended => ErrorKind::InvalidRequest,
        }
    }
}

/// The container's cgroup (until it is removed) and the OOM kills already reported.
pub struct ContainerCgroup {
    /// The container's id, for its OOM reports.
    name: String,
    cgroup: Mutex<Option<Cgroup>>,
    reported: AtomicU64,
}

/// No limit at all (an empty device list included).
fn is_empty(r: &LinuxResources) -> bool {
    let mut copy = r.clone();
    if copy.devices().as_ref().is_some_and(|d| d.is_empty()) {
        copy.set_devices(None);
    }
    copy == LinuxResources::default()
}

/// `r` (or no limits), where a missing or empty `devices` list becomes runc's default: deny
/// everything but null, zero, full, random, urandom, tty, console, ptmx and the ptys. No spec
/// ever leaves the container's devices unfiltered; `--privileged` asks for all explicitly. The
/// nodes `linux.devices` creates are allowed too (as runc does), after the spec's rules.
fn with_device_defaults(r: Option<&LinuxResources>, nodes: &[LinuxDevice]) -> LinuxResources {
    let mut r = r.cloned().unwrap_or_default();
    let mut rules = match r.devices() {
        // As runc does, the nodes every container's /dev gets stay usable whatever the spec's
        // rules (Docker's list lacks /dev/full, /dev/ptmx and the ptys): after its rules, the
        // standard allows (all but the leading deny).
        Some(d) if !d.is_empty() => d
            .iter()
            .cloned()
            .chain(moat_spec::standard_device_rules().into_iter().skip(1))
            .collect(),
        _ => moat_spec::standard_device_rules(),
    };
    for node in nodes {
        let kind = match node.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            _ => LinuxDeviceType::C,
        };
        let (major, minor) = (Some(node.major()), Some(node.minor()));
        rules.push(moat_spec::device_rule(
            true,
            Some(kind),
            major,
            minor,
            "rwm",
        ));
    }
    r.set_devices(Some(rules));
    r
}

/// Creates the cgroup of `req`'s container and applies its limits; `None` in the host test
/// mode, which has no cgroup of its own and refuses any limit.
pub fn prepare(
    req: &RunRequest,
    isolation: Isolation,
    root: &str,
) -> Result<Option<Arc<ContainerCgroup>>, LimitsError> {
    let linux = req.spec.linux().as_ref();
    if linux.and_then(|l| l.cgroups_path().as_ref()).is_some() {
        return Err(LimitsError::Refused {
            field: "linux.cgroupsPath",
            why: "not supported: each container's cgroup is containers/<id> in its own VM",
        });
    }
    let resources = linux.and_then(|l| l.resources().as_ref());
    if isolation == Isolation::None {
        if resources.is_some_and(|r| !is_empty(r)) {
            return Err(LimitsError::Refused {
                field: "linux.resources",
                why: "limits need the guest mode",
            });
        }
        return Ok(None);
    }
    let cgroup = Cgroup::create(Path::new(root), PARENT, &req.id)?;
    let nodes = linux
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default();
    if let Err(e) = cgroup.apply(&with_device_defaults(resources, nodes)) {
        // Nothing runs in it yet; a failed removal only leaves an empty directory.
        let _ = cgroup.remove();
        return Err(e.into());
    }
    Ok(Some(Arc::new(ContainerCgroup {
        name: req.id.clone(),
        cgroup: Mutex::new(Some(cgroup)),
        reported: AtomicU64::new(0),
    })))
}

impl ContainerCgroup {
    fn with<T>(&self, f: impl FnOnce(&Cgroup) -> T) -> Option<T> {
        let guard = self.cgroup.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(f)
    }

    /// Moves `pid` (the container's init, before it runs anything) into the cgroup.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        self.with(|c| c.add(pid)).unwrap_or(Ok(()))
    }

    /// Freezes or thaws the container (`Pause`, `Resume`).
    pub fn freeze(&self, frozen: bool) -> Result<(), LimitsError> {
        self.with(|c| c.freeze(frozen))
            .ok_or(LimitsError::Ended)?
            .map_err(LimitsError::from)
    }

    /// The container's processes (`ListProcesses`).
    pub fn pids(&self) -> Result<Vec<libc::pid_t>, LimitsError> {
        self.with(Cgroup::pids)
            .ok_or(LimitsError::Ended)?
            .map_err(LimitsError::from)
    }

    /// The container cgroup's counters (`Stats`).
    pub fn stats(&self) -> Result<moat_protocol::CgroupStats, LimitsError> {
        self.with(Cgroup::stats).ok_or(LimitsError::Ended)
    }

    /// Applies new limits (`Update`): checked before anything is written, as at `Create`; a
    /// missing `devices` leaves the device rules as they are.
    pub fn update(&self, r: &LinuxResources) -> Result<(), LimitsError> {
        self.with(|c| c.apply(r))
            .ok_or(LimitsError::Ended)?
            .map_err(LimitsError::from)
    }

    /// Sends [`AgentMessage::Oom`] if the cgroup counted OOM kills not reported yet.
    pub fn report_ooms(&self, writer: &FrameWriter) {
        let Some(Ok(count)) = self.with(Cgroup::oom_kills) else {
            return;
        };
        if self.reported.fetch_max(count, Ordering::AcqRel) < count {
            // A broken connection is seen by the reader too.
            let _ = writer.control(&AgentMessage::Oom {
                container: self.name.clone(),
                count,
            });
        }
    }

    /// Reports OOM kills as they happen, from a thread of its own, until the cgroup is removed
    /// or the watch fails (the waiter reports the last ones before `Exited` anyway).
    pub fn watch_ooms(self: &Arc<Self>, writer: Arc<FrameWriter>) -> std::io::Result<()> {
        let watch = match self.with(Cgroup::oom_watch) {
            Some(Ok(watch)) => watch,
            // No memory controller (the host test mode): nothing to watch.
            Some(Err(_))
                if !self
                    .with(|c| c.path().join("memory.events").exists())
                    .unwrap_or(false) =>
            {
                return Ok(());
            }
            Some(Err(e)) => {
                warn("no OOM watch for the container", &e);
                return Ok(());
            }
            None => return Ok(()),
        };
        let me = Arc::clone(self);
        thread::Builder::new()
            .name("oom-watch".into())
            .spawn(move || {
                while let Ok(Some(_)) = watch.next() {
                    me.report_ooms(&writer);
                }
            })
            .map(drop)
    }

    /// Kills every process in the cgroup (`cgroup.kill`), without waiting.
    pub fn kill(&self) {
        if let Some(Err(e)) = self.with(Cgroup::kill) {
            warn("killing the container's processes", &e);
        }
    }

    /// Kills what is left in the cgroup and removes it (once; later calls do nothing).
    pub fn remove(&self) {
        let taken = self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Err(e)) = taken.map(Cgroup::remove) {
            warn("removing the container's cgroup", &e);
        }
    }
}

/// The agent has no log subscriber (its console stays quiet unless something is wrong): one
/// line on the console.
fn warn(what: &str, e: &CgroupError) {
    eprintln!("moat-agent: {what}: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_rules_become_the_default_allowlist() {
        for r in [None, Some(LinuxResources::default())] {
            let rules = with_device_defaults(r.as_ref(), &[])
                .devices()
                .clone()
                .unwrap();
            assert!(!rules[0].allow());
            assert_eq!(rules[0].typ(), Some(LinuxDeviceType::A));
            assert_eq!(rules.len(), 10);
            assert!(rules[1..].iter().all(|r| r.allow()));
        }
        let mut given = LinuxResources::default();
        given.set_devices(Some(vec![moat_spec::device_rule(
            true, None, None, None, "rwm",
        )]));
        // The spec's rules first, then the standard nodes' allows (runc's default devices).
        let kept = with_device_defaults(Some(&given), &[]);
        let kept = kept.devices().clone().unwrap();
        assert_eq!(kept.len(), 10);
        assert_eq!(kept[0], given.devices().as_ref().unwrap()[0]);
        assert!(kept[1..].iter().all(|r| r.allow()));
        let mut tun = LinuxDevice::default();
        tun.set_typ(LinuxDeviceType::C);
        tun.set_major(10);
        tun.set_minor(200);
        let rules = with_device_defaults(None, &[tun])
            .devices()
            .clone()
            .unwrap();
        let last = rules.last().unwrap();
        assert_eq!(
            (last.allow(), last.major(), last.minor()),
            (true, Some(10), Some(200))
        );
    }
}
