//! A pod's later containers (docs/containerd.md, "Pods"): containerd's CRI plugin marks every
//! container of a pod with the pod's sandbox id, and the shim that serves the sandbox serves
//! them too ([`grouping`]). The sandbox's task boots the pod's VM with empty disk slots; a
//! later container is planned from its bundle as any task is, then created by the sandbox VM's
//! supervisor in that VM ([`create`]), and every request about it goes there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use moat_runtime::sandbox::client;
use moat_runtime::sandbox::control::{Reply, Request, StdioSpec};
use serde_json::Value;

use super::events::Events;
use super::pod_size::CONTAINER_TYPE;
use super::process::Process;
use super::rootfs;
use super::stdio;
use super::task::{self, Container, Spec};
use crate::oci::{self, Globals};

/// `io.kubernetes.cri.sandbox-id`: the pod sandbox a CRI container belongs to.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The pod sandbox a bundle's container joins: `Some(id)` for a CRI container (not the
/// sandbox itself) that names its sandbox.
pub fn sandbox_of(spec: &Value) -> Option<String> {
    let annotations = &spec["annotations"];
    let id = annotations[SANDBOX_ID].as_str().filter(|s| !s.is_empty())?;
    (annotations[CONTAINER_TYPE].as_str() == Some("container")).then(|| id.to_owned())
}

/// The id the shim serving the container of `bundle` is known by: the pod sandbox's id for a
/// pod's containers (one shim, one VM per pod), else the container's own.
pub fn grouping(bundle: &Path, id: &str) -> String {
    let spec = task::read_spec(bundle).unwrap_or(Value::Null);
    let annotations = &spec["annotations"];
    match annotations[CONTAINER_TYPE].as_str() {
        Some("sandbox") | Some("container") => annotations[SANDBOX_ID]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(id)
            .to_owned(),
        _ => id.to_owned(),
    }
}

/// Creates the container of `spec` in the VM of `sandbox`; nothing is left on failure.
pub fn create(
    g: &Globals,
    spec: &Spec<'_>,
    events: &Arc<Events>,
    sandbox: &Container,
) -> anyhow::Result<Container> {
    if sandbox.pod_vm.is_some() {
        bail!("{} is a pod's container, not its sandbox", sandbox.id);
    }
    let mounted = rootfs::mount_all(spec.bundle, spec.mounts)?.is_some();
    let made = create_mounted(g, spec, events, sandbox, mounted);
    if made.is_err() && mounted {
        rootfs::unmount_all(spec.bundle);
    }
    made
}

fn create_mounted(
    g: &Globals,
    spec: &Spec<'_>,
    events: &Arc<Events>,
    sandbox: &Container,
    mounted: bool,
) -> anyhow::Result<Container> {
    // Its namespace paths (CRI's /proc/<sandbox pid>/ns/...) are the pod's.
    let plan = oci::create::plan_with(g, spec.id, spec.bundle, &["--pod-member".to_owned()])?;
    if plan.config.tty != spec.paths.terminal {
        bail!("the task's terminal does not match the bundle's process.terminal");
    }
    let dir = oci::store::reserve(&g.root, spec.id, &plan)?;
    let name = plan.config.id.clone();
    let made = attach(&dir, spec, sandbox);
    let (conn, opened) = match made {
        Ok(made) => made,
        Err(e) => {
            oci::create::forget(&g.root, spec.id, &dir);
            return Err(e);
        }
    };
    let init = Arc::new(Process::new("", spec.paths.clone(), opened.closer));
    init.life().conn = conn.try_clone().ok();
    let pid = sandbox.pid;
    task::watch(&init, conn, opened.logger, events, (spec.id, spec.id, pid));
    Ok(Container {
        id: spec.id.to_owned(),
        bundle: spec.bundle.to_owned(),
        dir,
        name,
        pid,
        init,
        execs: Mutex::new(HashMap::new()),
        mounted,
        pod_vm: Some((sandbox.dir.clone(), sandbox.name.clone())),
    })
}

/// Asks the sandbox VM's supervisor to create the member of `dir`, with its stdio attached.
fn attach(
    dir: &Path,
    spec: &Spec<'_>,
    sandbox: &Container,
) -> anyhow::Result<(std::os::unix::net::UnixStream, stdio::Opened)> {
    let opened = stdio::open(&spec.paths, spec.namespace, spec.id)?;
    let req = Request::Member {
        dir: dir.to_owned(),
        stdio: StdioSpec {
            stdin: opened.stdin.is_some(),
            tty: spec.paths.terminal,
            tied: false,
            events: true,
        },
    };
    let conn = client::open_process(&sandbox.dir, &sandbox.name, &req, &task::fds(&opened))
        .context("cannot reach the pod's VM")?;
    match client::next_reply(&conn)? {
        Reply::Created { .. } => Ok((conn, opened)),
        Reply::Error { message, .. } => bail!("{message}"),
        _ => bail!("the pod's VM did not create the container"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pods_container_joins_a_sandbox() {
        let spec = |kind: &str| serde_json::json!({"annotations": {CONTAINER_TYPE: kind, SANDBOX_ID: "pod1"}});
        assert_eq!(sandbox_of(&spec("container")).as_deref(), Some("pod1"));
        assert_eq!(sandbox_of(&spec("sandbox")), None);
        assert_eq!(sandbox_of(&serde_json::json!({})), None);
        let empty =
            serde_json::json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: ""}});
        assert_eq!(sandbox_of(&empty), None);
    }
}
