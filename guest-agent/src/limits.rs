//! The container's cgroup as the conversation uses it: created and limited from
//! `linux.resources` before the container's init exists, joined by the init (the start hook),
//! and watched for OOM kills, which go to the host as [`AgentMessage::Oom`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use moat_protocol::{AgentMessage, ErrorKind, RunRequest};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use crate::cgroup::{Cgroup, CgroupError};
use crate::container::Isolation;
use crate::stdio::FrameWriter;

/// Where the guest's cgroup2 hierarchy is mounted (init.rs).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
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
        }
    }
}

/// The container's cgroup and the OOM kills already reported.
pub struct ContainerCgroup {
    cgroup: Cgroup,
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
/// ever leaves the container's devices unfiltered; `--privileged` asks for all explicitly.
fn with_device_defaults(r: Option<&LinuxResources>) -> LinuxResources {
    let mut r = r.cloned().unwrap_or_default();
    if r.devices().as_ref().is_none_or(|d| d.is_empty()) {
        r.set_devices(Some(default_device_rules()));
    }
    r
}

fn device_rule(kind: LinuxDeviceType, major: Option<i64>, minor: Option<i64>) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_typ(Some(kind));
    rule.set_major(major);
    rule.set_minor(minor);
    rule.set_access(Some("rwm".into()));
    rule
}

fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(false);
    deny.set_typ(Some(LinuxDeviceType::A));
    deny.set_access(Some("rwm".into()));
    let char_dev = |major, minor| device_rule(LinuxDeviceType::C, Some(major), minor);
    let mut rules = vec![deny];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(char_dev(major, Some(minor)));
    }
    rules.push(char_dev(136, None));
    rules
}

/// Creates the cgroup of `req`'s container and applies its limits; `None` in the host test
/// mode, which has no cgroup of its own and refuses any limit.
pub fn prepare(
    req: &RunRequest,
    isolation: Isolation,
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
    let cgroup = Cgroup::create(Path::new(CGROUP_ROOT), PARENT, &req.id)?;
    if let Err(e) = cgroup.apply(&with_device_defaults(resources)) {
        // Nothing runs in it yet; a failed removal only leaves an empty directory.
        let _ = cgroup.remove();
        return Err(e.into());
    }
    Ok(Some(Arc::new(ContainerCgroup {
        cgroup,
        reported: AtomicU64::new(0),
    })))
}

impl ContainerCgroup {
    /// Moves `pid` (the container's init, before it runs anything) into the cgroup.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        self.cgroup.add(pid)
    }

    /// Sends [`AgentMessage::Oom`] if the cgroup counted OOM kills not reported yet.
    pub fn report_ooms(&self, writer: &FrameWriter) {
        let Ok(count) = self.cgroup.oom_kills() else {
            return;
        };
        if self.reported.fetch_max(count, Ordering::AcqRel) < count {
            // A broken connection is seen by the reader too.
            let _ = writer.control(&AgentMessage::Oom { count });
        }
    }

    /// Reports OOM kills as they happen, from a thread of its own, until the cgroup is gone or
    /// the watch fails (the waiter reports the last ones before `Exited` anyway).
    pub fn watch_ooms(self: &Arc<Self>, writer: Arc<FrameWriter>) -> std::io::Result<()> {
        let watch = match self.cgroup.oom_watch() {
            Ok(watch) => watch,
            Err(e) => {
                warn(&e);
                return Ok(());
            }
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
}

/// The agent has no log subscriber (its console stays quiet unless something is wrong): a watch
/// that cannot start is one line on the console.
fn warn(e: &CgroupError) {
    eprintln!("moat-agent: no OOM watch for the container: {e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_rules_become_the_default_allowlist() {
        for r in [None, Some(LinuxResources::default())] {
            let rules = with_device_defaults(r.as_ref()).devices().clone().unwrap();
            assert!(!rules[0].allow());
            assert_eq!(rules[0].typ(), Some(LinuxDeviceType::A));
            assert_eq!(rules.len(), 10);
            assert!(rules[1..].iter().all(|r| r.allow()));
        }
        let mut given = LinuxResources::default();
        given.set_devices(Some(vec![device_rule(LinuxDeviceType::A, None, None)]));
        let kept = with_device_defaults(Some(&given));
        assert_eq!(kept.devices().as_ref().unwrap().len(), 1);
    }
}
