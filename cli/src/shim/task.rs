//! A task's container: made from the bundle as the OCI command line makes one (same plan, same
//! store, same supervisor), then driven over the supervisor's control socket.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context};
use containerd_shim::protos::events::task::{TaskExecStarted, TaskExit, TaskOOM, TaskStart};
use moat_runtime::sandbox::client;
use moat_runtime::sandbox::control::{Reply, Request, StdioSpec};
use moat_runtime::sandbox::store::Container as Stored;

use super::events::{self, Event, Events};
use super::process::{self, Phase, Process};
use super::rootfs::{self, Mount};
use super::stdio::{self, Opened, Paths};
use super::{config, pod_size};
use crate::oci::{self, Globals};

/// One container of the shim.
pub struct Container {
    /// containerd's id.
    pub id: String,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Its state directory.
    pub dir: PathBuf,
    /// Its name there.
    pub name: String,
    /// The VMM's host pid: the task's pid for containerd (a guest pid means nothing on the host).
    pub pid: u32,
    /// The init process.
    pub init: Arc<Process>,
    /// The execs by id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Whether its rootfs was mounted by the shim.
    pub mounted: bool,
    /// A pod's later container: the supervisor (state directory, name) of the pod sandbox's
    /// VM, which it lives in.
    pub pod_vm: Option<(PathBuf, String)>,
}

/// What `Create` asks for.
pub struct Spec<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub mounts: &'a [Mount],
    pub paths: Paths,
    pub namespace: &'a str,
    /// The runtime options' type URL and value, if containerd passed any.
    pub options: Option<(&'a str, &'a [u8])>,
}

/// The bundle's `config.json`, for what the shim reads of it itself (the pod's annotations).
pub(super) fn read_spec(bundle: &Path) -> anyhow::Result<serde_json::Value> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
}

/// Makes the container of `spec` and attaches its stdio; nothing is left on failure.
pub fn create(g: &Globals, spec: &Spec<'_>, events: &Arc<Events>) -> anyhow::Result<Container> {
    let mounted = rootfs::mount_all(spec.bundle, spec.mounts)?.is_some();
    let made = create_mounted(g, spec, events, mounted);
    if made.is_err() && mounted {
        rootfs::unmount_all(spec.bundle);
    }
    made
}

fn create_mounted(
    g: &Globals,
    spec: &Spec<'_>,
    events: &Arc<Events>,
    mounted: bool,
) -> anyhow::Result<Container> {
    let settings = config::for_task(spec.options)?;
    let bundle_spec = read_spec(spec.bundle)?;
    let sizing = pod_size::flags(&bundle_spec, &settings)?;
    let plan = oci::create::plan_with(g, spec.id, spec.bundle, &sizing)?;
    if plan.config.tty != spec.paths.terminal {
        bail!(
            "the task's terminal ({}) does not match the bundle's process.terminal ({})",
            spec.paths.terminal,
            plan.config.tty
        );
    }
    let dir = oci::store::reserve(&g.root, spec.id, &plan)?;
    let name = plan.config.id.clone();
    let exe = std::env::current_exe().context("cannot find the shim's own binary")?;
    match client::spawn_supervisor(&exe, &dir, &|_| {}, false) {
        Ok(mut child) => {
            // The shim reaps its own children (the crate's reaper is off).
            std::thread::spawn(move || child.wait());
        }
        Err(e) => {
            oci::create::forget(&g.root, spec.id, &dir);
            return Err(e.into());
        }
    }
    let attached = attach(&dir, &name, spec).and_then(|(conn, opened)| {
        let pid = Stored::load(&dir)?.state.vmm_pid.unwrap_or(0);
        Ok((conn, opened, pid))
    });
    let (conn, opened, pid) = match attached {
        Ok(a) => a,
        Err(e) => {
            let _ = client::request(&dir, &name, &Request::Remove);
            oci::create::forget(&g.root, spec.id, &dir);
            return Err(e);
        }
    };
    let init = Arc::new(Process::new("", spec.paths.clone(), opened.closer));
    init.life().conn = conn.try_clone().ok();
    let exit_id = spec.id.to_owned();
    watch(
        &init,
        conn,
        opened.logger,
        events,
        (&exit_id, &exit_id, pid),
    );
    Ok(Container {
        id: spec.id.to_owned(),
        bundle: spec.bundle.to_owned(),
        dir,
        name,
        pid,
        init,
        execs: Mutex::new(HashMap::new()),
        mounted,
        pod_vm: None,
    })
}

pub(super) fn fds(opened: &Opened) -> Vec<BorrowedFd<'_>> {
    let mut fds = Vec::with_capacity(3);
    if let Some(stdin) = &opened.stdin {
        fds.push(stdin.as_fd());
    }
    fds.push(opened.stdout.as_fd());
    fds.push(opened.stderr.as_fd());
    fds
}

/// Attaches the container's stdio; the connection and what the shim keeps of the stdio.
fn attach(dir: &Path, name: &str, spec: &Spec<'_>) -> anyhow::Result<(UnixStream, Opened)> {
    let opened = stdio::open(&spec.paths, spec.namespace, spec.id)?;
    let req = Request::Attach(StdioSpec {
        stdin: opened.stdin.is_some(),
        tty: spec.paths.terminal,
        tied: false,
        events: true,
    });
    let conn = client::open_process(dir, name, &req, &fds(&opened))?;
    Ok((conn, opened))
}

/// Watches `conn` for the end of `proc` in a thread, then records it and sends TaskExit
/// (`ids`: container id, process id for the event, host pid).
pub(super) fn watch(
    proc: &Arc<Process>,
    conn: UnixStream,
    logger: Option<std::process::Child>,
    events: &Arc<Events>,
    ids: (&str, &str, u32),
) {
    let (proc, events) = (Arc::clone(proc), Arc::clone(events));
    let (container_id, id, pid) = (ids.0.to_owned(), ids.1.to_owned(), ids.2);
    std::thread::spawn(move || {
        let on_oom = || {
            let mut oom = TaskOOM::new();
            oom.container_id = container_id.clone();
            events.send(Event::Oom(oom));
        };
        let (status, why) = process::wait_exit(&conn, &on_oom);
        if let Some(why) = why {
            tracing::warn!(container = %container_id, process = %id, "process ended: {why}");
        }
        let at = events::now();
        let mut life = proc.life();
        life.phase = Phase::Stopped;
        life.exit = Some((status, at.clone()));
        life.conn = None;
        let mut exit = TaskExit::new();
        exit.container_id = container_id;
        exit.id = id;
        exit.pid = pid;
        exit.exit_status = status;
        exit.exited_at = Some(at).into();
        events.send(Event::Exit(exit));
        drop(life);
        proc.notify();
        if let Some(mut logger) = logger {
            let _ = logger.wait();
        }
    });
}

impl Container {
    /// The process `exec_id` ("" for the init).
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            return Some(Arc::clone(&self.init));
        }
        self.execs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exec_id)
            .cloned()
    }

    /// The supervisor of the container's VM (state directory, name) and `req` as it takes it
    /// (for a pod's later container: `For` the container).
    fn target(&self, req: &Request) -> (&Path, &str, Request) {
        match &self.pod_vm {
            Some((dir, name)) => {
                let wrapped = Request::For {
                    container: self.name.clone(),
                    request: Box::new(req.clone()),
                };
                (dir, name, wrapped)
            }
            None => (&self.dir, &self.name, req.clone()),
        }
    }

    /// One request to the supervisor; its error replies as errors.
    pub fn request(&self, req: &Request) -> anyhow::Result<Reply> {
        let (dir, name, req) = self.target(req);
        match client::request(dir, name, &req)? {
            Reply::Error { message, .. } => bail!("{message}"),
            reply => Ok(reply),
        }
    }

    /// Starts the init; its host pid.
    pub fn start(&self, events: &Events) -> anyhow::Result<u32> {
        let mut life = self.init.life();
        if life.phase != Phase::Created {
            bail!("the container has already started");
        }
        let Reply::Started { pid } = self.request(&Request::Start)? else {
            bail!("the supervisor did not start the container");
        };
        life.phase = Phase::Running;
        life.guest_pid = pid;
        let mut start = TaskStart::new();
        start.container_id = self.id.clone();
        start.pid = self.pid;
        events.send(Event::Start(start));
        Ok(self.pid)
    }

    /// Starts the exec `proc`; its host pid.
    pub fn start_exec(&self, proc: &Arc<Process>, events: &Arc<Events>) -> anyhow::Result<u32> {
        let mut life = proc.life();
        let (Phase::Created, Some(opened), Some(spec)) =
            (life.phase, life.stdio.take(), life.spec.take())
        else {
            bail!("exec {} has already started", proc.exec_id);
        };
        let req = Request::Exec {
            stdio: StdioSpec {
                stdin: opened.stdin.is_some(),
                tty: proc.paths.terminal,
                tied: false,
                events: false,
            },
            spec,
            user: None,
        };
        let (dir, name, req) = self.target(&req);
        let conn = client::open_process(dir, name, &req, &fds(&opened))?;
        let pid = match client::next_reply(&conn)? {
            Reply::Started { pid } => pid,
            Reply::Error { message, code } => {
                life.phase = Phase::Stopped;
                life.exit = Some((code as u32, events::now()));
                drop(life);
                proc.notify();
                bail!("{message}");
            }
            _ => bail!("the supervisor did not start the exec"),
        };
        life.phase = Phase::Running;
        life.guest_pid = pid;
        life.conn = conn.try_clone().ok();
        let mut started = TaskExecStarted::new();
        started.container_id = self.id.clone();
        started.exec_id = proc.exec_id.clone();
        started.pid = self.pid;
        events.send(Event::ExecStarted(started));
        drop(life);
        watch(
            proc,
            conn,
            opened.logger,
            events,
            (&self.id, &proc.exec_id, self.pid),
        );
        Ok(self.pid)
    }

    /// Removes the container (its VM, state and link) and unmounts its rootfs.
    pub fn remove(&self, g: &Globals) -> anyhow::Result<()> {
        let removed = match &self.pod_vm {
            Some((vm_dir, _)) => {
                let removed = self.request(&Request::Remove);
                // A VM that has gone took the container with it.
                let vm_gone = !Stored::load(vm_dir).is_ok_and(|vm| vm.is_live());
                if removed.is_ok() || vm_gone {
                    oci::create::forget(&g.root, &self.id, &self.dir);
                }
                removed
                    .map(drop)
                    .or_else(|e| if vm_gone { Ok(()) } else { Err(e) })
            }
            None => oci::verbs::remove(g, &self.id),
        };
        if self.mounted {
            rootfs::unmount_all(&self.bundle);
        }
        removed
    }
}

/// `shim delete`: whatever a crashed shim left of container `id` goes.
pub fn clean_up(g: &Globals, id: &str, bundle: &Path) {
    if let Err(e) = oci::verbs::remove(g, id) {
        tracing::warn!(id, "cannot remove the container: {e:#}");
    }
    rootfs::unmount_all(bundle);
}
