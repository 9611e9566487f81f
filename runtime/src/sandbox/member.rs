//! A pod's later containers in the pod sandbox's VM (docs/containerd.md, "Pods"): the
//! supervisor of the sandbox's VM creates each in the same guest, on read-only disks it puts
//! into the VM's empty disk slots through the VMM's control socket (docs/vmm-control.md), and
//! serves its process as it serves an exec: one connection from `Created` to `Exited`. The
//! member's writes go to the pod's writable layer (its own directory there); `Remove` ends it,
//! and once the guest has released its disks the slots are emptied for the next member.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use moat_protocol::{HostMessage, RunRequest, UpperLayer};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use super::control::{self, Reply, Request, StdioSpec};
use super::mux::{FdSink, Mux, ProcEvent, ProcHandle, Sink};
use super::record::{self, Plan, Status, PLAN_FILE};
use super::server::{self, error, ExecTarget};
use super::supervisor::{agent_code, Shared};
use crate::disks::guest_device;
use crate::run::Vm;
use crate::vmm_control::swap_disk;

/// How long the guest may take to create a member (its disks' waits included) or start it.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed member may take to end before `Remove` gives up.
const END_TIMEOUT: Duration = Duration::from_secs(15);

/// The pod's later containers and the VM's disk slots.
#[derive(Default)]
pub(crate) struct Pod {
    vm: Mutex<Option<PodVm>>,
    members: Mutex<HashMap<String, Arc<Member>>>,
}

/// What the members need of the booted VM.
struct PodVm {
    /// The control socket, as the host sees it.
    control: PathBuf,
    /// The guest index of slot 0 (the disks attached at boot come first).
    first_slot: usize,
    /// Which slots hold a member's disk.
    filled: Vec<bool>,
    /// The pod's writable layer.
    upper: UpperLayer,
}

/// One later container.
struct Member {
    process: u32,
    slots: Vec<usize>,
    life: Mutex<Life>,
    changed: Condvar,
    /// Where OOM kills go (the member's connection).
    events: Mutex<Option<Sender<MemberEvent>>>,
}

#[derive(Default)]
struct Life {
    started: Option<i32>,
    ended: Option<i32>,
    failed: Option<(String, i32)>,
}

enum MemberEvent {
    Proc(ProcEvent),
    Oom(u64),
    /// `Remove` ended a member that had not started.
    Removed,
    /// The agent connection ended.
    Gone,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pod {
    /// Takes note of the booted VM and its `slots` disk slots (without any, no members).
    pub(crate) fn booted(&self, vm: &Vm, slots: u8) {
        let slots = usize::from(slots);
        if slots == 0 {
            return;
        }
        *lock(&self.vm) = Some(PodVm {
            control: vm.state.control_uds(),
            first_slot: vm.disks.disks.len(),
            filled: vec![false; slots],
            upper: vm.disks.upper.clone(),
        });
    }

    /// An OOM kill in member `container`.
    pub(crate) fn oom(&self, container: &str, count: u64) {
        if let Some(m) = lock(&self.members).get(container) {
            if let Some(tx) = lock(&m.events).as_ref() {
                let _ = tx.send(MemberEvent::Oom(count));
            }
        }
    }

    fn member(&self, id: &str) -> Option<Arc<Member>> {
        lock(&self.members).get(id).cloned()
    }

    /// Takes `n` free slots.
    fn take_slots(&self, n: usize) -> Result<(PathBuf, usize, Vec<usize>, UpperLayer), String> {
        let mut vm = lock(&self.vm);
        let Some(vm) = vm.as_mut() else {
            return Err("this VM takes no pod containers (it has no disk slots)".into());
        };
        let free: Vec<usize> = (0..vm.filled.len()).filter(|&i| !vm.filled[i]).collect();
        if free.len() < n {
            return Err(format!(
                "the pod's VM has {} free disk slots of {}; this container needs {n} (its image \
                 and each volume)",
                free.len(),
                vm.filled.len()
            ));
        }
        let taken = free[..n].to_vec();
        for &i in &taken {
            vm.filled[i] = true;
        }
        Ok((vm.control.clone(), vm.first_slot, taken, vm.upper.clone()))
    }

    /// Empties `slots` in the VMM and gives them back.
    fn release(&self, slots: &[usize]) {
        let mut vm = lock(&self.vm);
        let Some(vm) = vm.as_mut() else { return };
        for &slot in slots {
            match swap_disk(&vm.control, slot, None) {
                Ok(_) => vm.filled[slot] = false,
                Err(e) => {
                    tracing::warn!(slot, error = %crate::error_chain(&e), "cannot empty a disk slot")
                }
            }
        }
    }
}

impl Member {
    fn update(&self, change: impl FnOnce(&mut Life)) {
        change(&mut lock(&self.life));
        self.changed.notify_all();
    }

    /// Waits until `done` holds of the life, up to `timeout`; false if it did not.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&Life) -> bool) -> bool {
        let life = lock(&self.life);
        let (life, _) = self
            .changed
            .wait_timeout_while(life, timeout, |l| !done(l))
            .unwrap_or_else(PoisonError::into_inner);
        done(&life)
    }

    fn tell(&self, event: MemberEvent) {
        if let Some(tx) = lock(&self.events).as_ref() {
            let _ = tx.send(event);
        }
    }
}

/// A member being created: what its connection serves.
struct Made {
    id: String,
    member: Arc<Member>,
    mux: Arc<Mux>,
    handle: ProcHandle,
    events: Receiver<MemberEvent>,
    pid: i32,
}

/// `Member`: creates the member of the plan in `dir` and serves its process until it ends.
pub(super) fn create(stream: &UnixStream, shared: &Arc<Shared>, dir: &Path, stdio: StdioSpec) {
    let (stdin, out, err) = match server::client_fds(stream, stdio) {
        Ok(fds) => fds,
        Err(reply) => {
            let _ = control::send(stream, &reply);
            return;
        }
    };
    let sinks: [Box<dyn Sink>; 2] = [
        Box::new(FdSink::new(Some(out))),
        Box::new(FdSink::new((!stdio.tty).then_some(err))),
    ];
    let made = match make(shared, dir, sinks) {
        Ok(made) => made,
        Err(reply) => {
            let _ = control::send(stream, &reply);
            return;
        }
    };
    if control::send(stream, &Reply::Created { pid: made.pid }).is_err() {
        tracing::debug!(
            id = made.id,
            "the member's client went before it was created"
        );
    }
    serve(stream, shared, made, stdio, stdin);
}

/// The member's disks in free slots, its `Create`, and its `Created`.
fn make(shared: &Arc<Shared>, dir: &Path, sinks: [Box<dyn Sink>; 2]) -> Result<Made, Reply> {
    let (Some(mux), Status::Running) = (server::mux(shared), shared.state().status) else {
        return Err(error("the pod's sandbox is not running"));
    };
    let plan: Plan =
        record::read_json(dir, PLAN_FILE).map_err(|e| error(crate::error_chain(&e)))?;
    let id = plan.config.id.clone();
    if id == shared.plan.config.id || shared.pod.member(&id).is_some() {
        return Err(error(format!("container {id} already exists in this pod")));
    }
    let disks = crate::disks::pod_disks(&plan.config, &plan.assets, dir, &plan.options.data_root)
        .map_err(|e| error(crate::error_chain(&e)))?;
    let (control, first_slot, slots, upper) = shared.pod.take_slots(disks.len()).map_err(error)?;
    let sectors = match fill(&control, &slots, &disks) {
        Ok(sectors) => sectors,
        Err(message) => {
            shared.pod.release(&slots);
            return Err(error(message));
        }
    };
    let process = shared.next_exec.fetch_add(1, Ordering::AcqRel);
    let devices: Vec<(String, u64)> = slots
        .iter()
        .zip(sectors)
        .map(|(&slot, sectors)| (guest_device(first_slot + slot), sectors))
        .collect();
    let mut request = member_request(&plan, process, upper, &devices);
    if let Err(message) = join_sandbox(shared, &plan.config.joins, &mut request.spec) {
        shared.pod.release(&slots);
        return Err(error(message));
    }
    let mut handle = match mux.register(process, sinks) {
        Ok(handle) => handle,
        Err(e) => {
            shared.pod.release(&slots);
            return Err(error(crate::error_chain(&e)));
        }
    };
    let (tx, events) = mpsc::channel();
    forward(handle.take_events(), tx.clone());
    let member = Arc::new(Member {
        process,
        slots,
        life: Mutex::new(Life::default()),
        changed: Condvar::new(),
        events: Mutex::new(Some(tx)),
    });
    lock(&shared.pod.members).insert(id.clone(), Arc::clone(&member));
    let created = mux
        .send(&HostMessage::Create(Box::new(request)))
        .map_err(|e| error(crate::error_chain(&e)))
        .and_then(|()| wait_created(&events));
    match created {
        Ok(pid) => Ok(Made {
            id,
            member,
            mux,
            handle,
            events,
            pid,
        }),
        Err(reply) => {
            lock(&shared.pod.members).remove(&id);
            mux.finish(handle);
            shared.pod.release(&member.slots);
            Err(reply)
        }
    }
}

/// Puts `disks` into `slots`; their sizes in sectors.
fn fill(control: &Path, slots: &[usize], disks: &[PathBuf]) -> Result<Vec<u64>, String> {
    slots
        .iter()
        .zip(disks)
        .map(|(&slot, disk)| {
            let file =
                File::open(disk).map_err(|e| format!("cannot open {}: {e}", disk.display()))?;
            swap_disk(control, slot, Some(&file)).map_err(|e| crate::error_chain(&e))
        })
        .collect()
}

/// The agent's `Create` for the member: the first container's request with its disks in the
/// slots and the pod's writable layer.
fn member_request(
    plan: &Plan,
    process: u32,
    upper: UpperLayer,
    devices: &[(String, u64)],
) -> RunRequest {
    let mut request = crate::run::run_request(&plan.config, upper, crate::terminal::DEFAULT_SIZE);
    request.process = process;
    let (root, volumes) = devices.split_first().expect("a member has its image disk");
    request.rootfs.device = root.0.clone();
    request.rootfs.sectors = Some(root.1);
    let slots = request.volumes.iter_mut().zip(volumes);
    for ((volume, (device, sectors)), config) in slots.zip(&plan.config.volumes) {
        volume.device = device.clone();
        volume.sectors = Some(*sectors);
        // Writable file binds (checked by `pod_disks`): a copy in the guest, the slot read-only.
        if crate::disks::is_copied(config) {
            volume.readonly = true;
            volume.copy = true;
        }
    }
    request
}

/// Points the member's namespaces that name the sandbox's (`/proc/<VMM pid>/ns/<kind>`: the
/// sandbox task's pid is the VMM's) at the sandbox container's in the guest.
fn join_sandbox(shared: &Shared, joins: &[LinuxNamespace], spec: &mut Spec) -> Result<(), String> {
    let state = shared.state();
    let (Some(vmm), Some(init)) = (state.vmm_pid, state.guest_pid) else {
        return Err("the pod's sandbox is not running".into());
    };
    let namespaces = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut());
    let Some(namespaces) = namespaces else {
        return match joins.first() {
            Some(_) => Err("linux.namespaces: none left to join".into()),
            None => Ok(()),
        };
    };
    for join in joins {
        let path = join.path().clone().unwrap_or_default();
        let kind = ns_kind(join.typ())
            .filter(|kind| path == Path::new(&format!("/proc/{vmm}/ns/{kind}")))
            .ok_or_else(|| {
                format!(
                    "linux.namespaces: {} is not a pid, ipc, uts or network namespace of the \
                     pod's sandbox (/proc/{vmm}/ns/...): a pod's container joins only those",
                    path.display()
                )
            })?;
        for ns in namespaces.iter_mut().filter(|ns| ns.typ() == join.typ()) {
            ns.set_path(Some(format!("/proc/{init}/ns/{kind}").into()));
        }
    }
    Ok(())
}

/// The name under /proc/PID/ns of the namespaces a pod's container may join.
fn ns_kind(typ: LinuxNamespaceType) -> Option<&'static str> {
    match typ {
        LinuxNamespaceType::Pid => Some("pid"),
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        LinuxNamespaceType::Network => Some("net"),
        _ => None,
    }
}

fn forward(rx: Receiver<ProcEvent>, tx: Sender<MemberEvent>) {
    let _ = std::thread::Builder::new()
        .name("member".into())
        .spawn(move || {
            for event in rx {
                let _ = tx.send(MemberEvent::Proc(event));
            }
            let _ = tx.send(MemberEvent::Gone);
        });
}

fn wait_created(events: &Receiver<MemberEvent>) -> Result<i32, Reply> {
    loop {
        match events.recv_timeout(MEMBER_TIMEOUT) {
            Ok(MemberEvent::Proc(ProcEvent::Created(pid))) => return Ok(pid),
            Ok(MemberEvent::Proc(ProcEvent::Failed(kind, message))) => {
                return Err(Reply::Error {
                    message,
                    code: agent_code(kind),
                })
            }
            Ok(MemberEvent::Oom(_)) => {}
            Ok(_) => return Err(error("the VM ended while the container was created")),
            Err(_) => return Err(error("the guest agent did not create the container")),
        }
    }
}

/// From `Created` to the end of the member's process: its stdin, its client's signals, its
/// events; the last reply is `Exited` (or the error that ended it).
fn serve(
    stream: &UnixStream,
    shared: &Arc<Shared>,
    made: Made,
    stdio: StdioSpec,
    stdin: Option<File>,
) {
    let Made {
        member,
        mux,
        handle,
        events,
        ..
    } = made;
    let stop = Arc::new(AtomicBool::new(false));
    feed_stdin(&member, &mux, stdin, &stop);
    if let Ok(reader) = stream.try_clone() {
        let (shared, id) = (Arc::clone(shared), member.process);
        let _ = std::thread::Builder::new()
            .name("member-client".into())
            .spawn(move || server::client_requests(&reader, &shared, id));
    }
    let reply = loop {
        let event = events.recv().unwrap_or(MemberEvent::Gone);
        match event {
            MemberEvent::Proc(ProcEvent::Started(pid)) => member.update(|l| l.started = Some(pid)),
            MemberEvent::Proc(ProcEvent::Exited(status)) => {
                break Reply::Exited {
                    code: crate::run::exit_code(status),
                }
            }
            MemberEvent::Proc(ProcEvent::Failed(kind, message)) => {
                let code = agent_code(kind);
                member.update(|l| l.failed = Some((message.clone(), code)));
                break Reply::Error { message, code };
            }
            MemberEvent::Proc(ProcEvent::Created(_)) => {}
            MemberEvent::Oom(count) => {
                if stdio.events {
                    let _ = control::send(stream, &Reply::Oom { count });
                }
            }
            MemberEvent::Removed => {
                break Reply::Exited {
                    code: 128 + libc::SIGKILL,
                }
            }
            MemberEvent::Gone => break error("the pod's VM ended"),
        }
    };
    let code = match &reply {
        Reply::Exited { code } | Reply::Error { code, .. } => *code,
        _ => crate::run::EXIT_RUNTIME_ERROR,
    };
    stop.store(true, Ordering::Release);
    *lock(&member.events) = None;
    mux.finish(handle);
    member.update(|l| l.ended = Some(code));
    let _ = control::send(stream, &reply);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The client's stdin goes to the member's process once it started (none: its stdin closes).
fn feed_stdin(member: &Arc<Member>, mux: &Arc<Mux>, stdin: Option<File>, stop: &Arc<AtomicBool>) {
    let (member, mux, stop) = (Arc::clone(member), Arc::clone(mux), Arc::clone(stop));
    let _ = std::thread::Builder::new()
        .name("member-stdin".into())
        .spawn(move || {
            let started = |l: &Life| l.started.is_some() || l.ended.is_some();
            while !member.wait_for(Duration::from_secs(1), started) {}
            if lock(&member.life).started.is_none() {
                return;
            }
            let id = member.process;
            match stdin {
                Some(stdin) => super::stdin::pump_stdin(&mux, id, stdin, &stop),
                None => {
                    let _ = mux.send(&HostMessage::StdinEof { process: id });
                }
            }
        });
}

/// `For`: `request` for member `container`.
pub(super) fn request(
    stream: &UnixStream,
    shared: &Arc<Shared>,
    container: &str,
    request: Request,
) {
    let Some(member) = shared.pod.member(container) else {
        let _ = control::send(
            stream,
            &error(format!("no container {container} in this pod")),
        );
        return;
    };
    let c = || container.to_owned();
    let reply = match request {
        Request::Start => start(shared, container, &member),
        Request::Signal { signo, all } => signal(shared, &member, signo, all),
        Request::Exec { stdio, spec, user } => {
            let target = ExecTarget {
                container: c(),
                stdio,
                user,
            };
            return server::exec(stream, shared, target, spec);
        }
        Request::Pause => server::container_request(shared, HostMessage::Pause { container: c() }),
        Request::Resume => {
            server::container_request(shared, HostMessage::Resume { container: c() })
        }
        Request::Processes => {
            server::container_request(shared, HostMessage::ListProcesses { container: c() })
        }
        Request::Stats => server::container_request(shared, HostMessage::Stats { container: c() }),
        Request::Update(resources) => server::container_request(
            shared,
            HostMessage::Update {
                container: c(),
                resources,
            },
        ),
        Request::Remove => remove(shared, container, &member),
        _ => error("not a request for a pod's container"),
    };
    let _ = control::send(stream, &reply);
}

fn start(shared: &Shared, container: &str, member: &Member) -> Reply {
    {
        let life = lock(&member.life);
        if life.started.is_some() || life.ended.is_some() {
            return error(format!("container {container} has already started"));
        }
    }
    let Some(mux) = server::mux(shared) else {
        return error("the pod's VM has ended");
    };
    let start = HostMessage::Start {
        container: container.to_owned(),
    };
    if let Err(e) = mux.send(&start) {
        return error(crate::error_chain(&e));
    }
    let done = |l: &Life| l.started.is_some() || l.ended.is_some() || l.failed.is_some();
    member.wait_for(MEMBER_TIMEOUT, done);
    let life = lock(&member.life);
    match (&life.started, &life.failed) {
        (Some(pid), _) => Reply::Started { pid: *pid },
        (None, Some((message, code))) => Reply::Error {
            message: message.clone(),
            code: *code,
        },
        (None, None) if life.ended.is_some() => error(format!("container {container} ended")),
        (None, None) => error("the guest agent did not start the container"),
    }
}

fn signal(shared: &Shared, member: &Member, signo: i32, all: bool) -> Reply {
    if !(1..=64).contains(&signo) {
        return error(format!("invalid signal {signo}"));
    }
    if lock(&member.life).ended.is_some() {
        return error("the container is not running");
    }
    let Some(mux) = server::mux(shared) else {
        return error("the pod's VM has ended");
    };
    let msg = HostMessage::Signal {
        process: member.process,
        signo,
        all,
    };
    match mux.send(&msg) {
        Ok(()) => Reply::Ok,
        Err(e) => error(crate::error_chain(&e)),
    }
}

/// Ends the member (SIGKILL to all its processes), removes it in the guest, and empties its
/// slots once the guest has released its disks.
fn remove(shared: &Shared, container: &str, member: &Member) -> Reply {
    let started = lock(&member.life).started.is_some();
    if started && lock(&member.life).ended.is_none() {
        let _ = signal(shared, member, libc::SIGKILL, true);
        if !member.wait_for(END_TIMEOUT, |l| l.ended.is_some()) {
            return error(format!("container {container} did not end after SIGKILL"));
        }
    }
    let removed = server::container_request(
        shared,
        HostMessage::Remove {
            container: container.to_owned(),
        },
    );
    if removed != Reply::Ok {
        return removed;
    }
    member.tell(MemberEvent::Removed);
    shared.pod.release(&member.slots);
    lock(&shared.pod.members).remove(container);
    Reply::Ok
}
