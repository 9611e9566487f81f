//! The container's cgroup as the conversation uses it: created and limited from
//! `linux.resources` before the container's init exists, joined by the init (the start hook),
//! and watched for OOM kills, which go to the host as [`AgentMessage::Oom`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use moat_protocol::{AgentMessage, ErrorKind, RunRequest};
use oci_spec::runtime::LinuxResources;

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
    if let Some(r) = resources {
        if let Err(e) = cgroup.apply(r) {
            // Nothing runs in it yet; a failed removal only leaves an empty directory.
            let _ = cgroup.remove();
            return Err(e.into());
        }
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
