//! The supervisor of one container's VM (`moat __supervise DIR`, docs/lifecycle.md): it boots
//! the VM from the state directory's plan, creates the container, serves the control socket,
//! keeps `state.json` true, writes the container's log, and when the container ends shuts the
//! VM down and removes everything the VM had on the host (and the directory too, for
//! `auto_remove` or `rm -f`). Its main thread owns the VMM (whose parent-death signal is tied to
//! it), so a supervisor killed by SIGKILL takes its VM with it.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moat_protocol::{ErrorKind, HostMessage, MAIN_PROCESS};

use super::control::{Reply, SOCKET};
use super::mux::{Mux, ProcEvent, ProcHandle, Sink, VmEvent};
use super::record::{self, Plan, State, Status, PLAN_FILE, STATE_FILE};
use super::{lock, output::MainOutput};
use crate::run::{self, RunError, Vm};
use crate::session::{Event, EVENT_QUEUE};
use crate::state::StateDir;

/// Errors that stop a supervisor before it can report through its state.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The plan or state could not be read or written.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// Another supervisor holds the container.
    #[error("container {0} already has a supervisor")]
    Busy(String),
    /// The control socket or a thread could not be set up.
    #[error("cannot set up the supervisor")]
    Setup(#[source] std::io::Error),
}

/// What the main thread is told by the control connections.
pub(crate) enum Command {
    /// Start the created container; the answer goes back.
    Start(Sender<Reply>),
    /// End the container (before or after it started) with this signal.
    Kill(i32),
}

/// Everything the main thread reacts to.
pub(crate) enum Ev {
    Vm(VmEvent),
    Main(ProcEvent),
    Cmd(Command),
}

/// The state shared by the supervisor's threads.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) plan: Plan,
    state: Mutex<State>,
    /// Signalled on every change of `state`.
    state_cv: Condvar,
    pub(crate) mux: Mutex<Option<Arc<Mux>>>,
    pub(crate) events: Sender<Ev>,
    /// Interrupts the boot (its events channel).
    boot: SyncSender<Event>,
    /// The final exit code, once everything is cleaned up.
    ended: Mutex<Option<i32>>,
    ended_cv: Condvar,
    /// Remove the directory at the end (`rm -f`).
    pub(crate) remove: AtomicBool,
    pub(crate) next_exec: AtomicU32,
    pub(crate) output: Arc<MainOutput>,
    /// One container request to the agent at a time; its answer comes through here.
    pub(crate) reply: Mutex<Option<Sender<moat_protocol::AgentMessage>>>,
    pub(crate) request_lock: Mutex<()>,
    /// How long `Create` took in the guest.
    setup: Mutex<Duration>,
    /// The terminal size an attached client asked for before the start (rows, columns): the
    /// agent knows the process only once it started, so it gets the size then.
    pub(crate) early_size: Mutex<Option<(u16, u16)>>,
    /// A pod sandbox's later containers.
    pub(crate) pod: super::member::Pod,
}

impl Shared {
    /// The current state.
    pub(crate) fn state(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the state and writes it out.
    pub(crate) fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        if let Err(e) = record::write_json(&self.dir, STATE_FILE, &*state) {
            tracing::warn!(error = %crate::error_chain(&e), "cannot write the state");
        }
        self.state_cv.notify_all();
    }

    /// Waits up to `timeout` for a change of the state; the state then.
    pub(crate) fn wait_state_for(&self, timeout: Duration) -> State {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = self
            .state_cv
            .wait_timeout(state, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        state.clone()
    }

    /// Waits until the container has ended and everything is cleaned up; its exit code.
    pub(crate) fn wait_ended(&self) -> i32 {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(code) = *ended {
                return code;
            }
            ended = self
                .ended_cv
                .wait(ended)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits up to `timeout` for the container's end; its code if it ended.
    pub(crate) fn wait_ended_for(&self, timeout: Duration) -> Option<i32> {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        let (ended, _) = self
            .ended_cv
            .wait_timeout_while(ended, timeout, |e| e.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        *ended
    }

    /// Asks the main thread to end the container with `signo` (SIGKILL semantics before the
    /// start, a signal to the process after it); interrupts a boot.
    pub(crate) fn kill(&self, signo: i32) {
        let _ = self.boot.try_send(Event::Signal(libc::SIGTERM));
        let _ = self.events.send(Ev::Cmd(Command::Kill(signo)));
    }
}

/// Runs the supervisor of the container in `dir` until the container has ended. `ready` gets
/// one JSON line when the container is created (or could not be): `{"ok":true}` or
/// `{"error":"...","code":N}`.
pub fn supervise(dir: &Path, mut ready: File) -> Result<i32, SupervisorError> {
    let _ = rustix::process::setsid();
    let lock = lock::supervisor_lock(dir).map_err(SupervisorError::Setup)?;
    let Some(_lock) = lock else {
        return Err(SupervisorError::Busy(dir.display().to_string()));
    };
    let plan: Plan = record::read_json(dir, PLAN_FILE)?;
    let mut state: State = record::read_json(dir, STATE_FILE).unwrap_or_default();
    state.status = Status::Creating;
    state.supervisor_pid = Some(std::process::id());
    state.exit_code = None;
    state.error = None;
    state.guest_pid = None;
    record::write_json(dir, STATE_FILE, &state)?;
    let (events, rx) = mpsc::channel();
    let (boot_tx, boot_rx) = mpsc::sync_channel(EVENT_QUEUE);
    let output = MainOutput::open(dir, &plan).map_err(SupervisorError::Setup)?;
    let shared = Arc::new(Shared {
        dir: dir.to_owned(),
        plan,
        state: Mutex::new(state),
        state_cv: Condvar::new(),
        mux: Mutex::new(None),
        events,
        boot: boot_tx.clone(),
        ended: Mutex::new(None),
        ended_cv: Condvar::new(),
        remove: AtomicBool::new(false),
        next_exec: AtomicU32::new(moat_protocol::FIRST_EXEC),
        output: Arc::new(output),
        reply: Mutex::new(None),
        request_lock: Mutex::new(()),
        setup: Mutex::new(Duration::ZERO),
        early_size: Mutex::new(None),
        pod: super::member::Pod::default(),
    });
    let socket = dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(SupervisorError::Setup)?;
    super::server::serve(listener, Arc::clone(&shared)).map_err(SupervisorError::Setup)?;
    let _signals =
        crate::signals::SignalForwarder::start(boot_tx).map_err(SupervisorError::Setup)?;
    let code = life(&shared, &rx, &boot_rx, &mut ready);
    Ok(finish(&shared, code))
}

/// Boots, creates, starts and waits; returns the container's exit code.
fn life(
    shared: &Arc<Shared>,
    rx: &Receiver<Ev>,
    boot_rx: &Receiver<Event>,
    ready: &mut File,
) -> i32 {
    let plan = &shared.plan;
    let booted = boot(shared, boot_rx);
    let (mut vm, main) = match booted {
        Ok(b) => b,
        Err(e) => {
            let code = e.exit_code();
            let message = crate::error_chain(&e);
            report_ready(ready, Some((&message, code)));
            shared.update(|s| s.error = Some(message));
            return code;
        }
    };
    let created = create(shared, &vm, rx);
    let code = match created {
        Err((message, code)) => {
            report_ready(ready, Some((&message, code)));
            shared.update(|s| s.error = Some(message));
            code
        }
        Ok(pid) => {
            shared.pod.booted(&vm, shared.plan.config.disk_slots);
            shared.update(|s| {
                s.status = Status::Created;
                s.guest_pid = Some(pid);
            });
            report_ready(ready, None);
            run_container(shared, rx, &mut vm)
        }
    };
    shut_down(shared, &mut vm);
    if let Some(mux) = shared
        .mux
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        mux.finish(main);
    }
    let status = vm.vmm.kill_and_reap();
    drop(vm);
    match status {
        Some(s) if crate::vmm::killed_by_seccomp(s) => {
            let e = run::seccomp_killed(&plan.config, &plan.options);
            shared.update(|st| st.error = Some(e.to_string()));
            run::EXIT_RUNTIME_ERROR
        }
        _ => code,
    }
}

fn boot(shared: &Arc<Shared>, boot_rx: &Receiver<Event>) -> Result<(Vm, ProcHandle), RunError> {
    let plan = &shared.plan;
    let (config, options) = (&plan.config, &plan.options);
    if !options.skip_probe {
        crate::vmm::probe(&plan.assets.vmm)?;
    }
    let state = StateDir::open_existing(&options.state_root, &config.id, options.jail)?;
    let (vm, stream) =
        run::boot_vm_in(state, config, &plan.assets, options, boot_rx).map_err(|e| match e {
            RunError::Boot(crate::boot::BootError::SeccompKilled) => {
                run::seccomp_killed(config, options)
            }
            e => e,
        })?;
    let vmm_pid = vm.vmm.pid().as_raw_nonzero().get() as u32;
    shared.update(|s| s.vmm_pid = Some(vmm_pid));
    let (mux, vm_events) =
        Mux::start(stream).map_err(|e| RunError::Setup(std::io::Error::other(e)))?;
    let sinks: [Box<dyn Sink>; 2] = [
        Box::new(shared.output.sink()),
        Box::new(shared.output.sink()),
    ];
    let mut main = mux
        .register(MAIN_PROCESS, sinks)
        .map_err(|e| RunError::Setup(std::io::Error::other(e)))?;
    forward(vm_events, shared.events.clone(), Ev::Vm);
    *shared.mux.lock().unwrap_or_else(PoisonError::into_inner) = Some(mux);
    let (tx, main_events) = (shared.events.clone(), main.take_events());
    forward(main_events, tx, Ev::Main);
    Ok((vm, main))
}

fn forward<T: Send + 'static>(rx: Receiver<T>, tx: Sender<Ev>, wrap: fn(T) -> Ev) {
    let _ = std::thread::Builder::new()
        .name("forward".into())
        .spawn(move || {
            for item in rx {
                if tx.send(wrap(item)).is_err() {
                    return;
                }
            }
        });
}

fn mux_of(shared: &Shared) -> Option<Arc<Mux>> {
    shared
        .mux
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Sends `Create`; the container init's guest pid, or the message and exit code.
fn create(shared: &Arc<Shared>, vm: &Vm, rx: &Receiver<Ev>) -> Result<i32, (String, i32)> {
    let mux = mux_of(shared).ok_or_else(|| ("no agent".to_owned(), run::EXIT_RUNTIME_ERROR))?;
    let size = crate::terminal::DEFAULT_SIZE;
    let request = run::run_request(&shared.plan.config, vm.disks.upper.clone(), size);
    let sent = Instant::now();
    mux.send(&HostMessage::Create(Box::new(request)))
        .map_err(|e| (crate::error_chain(&e), run::EXIT_RUNTIME_ERROR))?;
    // `moat start` while the container is being created: answered once it is.
    let mut deferred = Vec::new();
    loop {
        match rx.recv() {
            Ok(Ev::Vm(VmEvent::Created(pid))) => {
                *shared.setup.lock().unwrap_or_else(PoisonError::into_inner) = sent.elapsed();
                for reply in deferred {
                    let _ = shared.events.send(Ev::Cmd(Command::Start(reply)));
                }
                return Ok(pid);
            }
            Ok(Ev::Main(ProcEvent::Failed(kind, message))) => {
                return Err((message, agent_code(kind)));
            }
            Ok(Ev::Vm(VmEvent::Gone(reason))) => {
                return Err((vm_gone(vm, reason), run::EXIT_RUNTIME_ERROR))
            }
            Ok(Ev::Cmd(Command::Kill(signo))) => {
                return Err((
                    format!("killed by signal {signo} while being created"),
                    128 + signo,
                ));
            }
            Ok(Ev::Cmd(Command::Start(reply))) => deferred.push(reply),
            Ok(_) => {}
            Err(_) => {
                return Err((
                    "the supervisor lost its events".into(),
                    run::EXIT_RUNTIME_ERROR,
                ))
            }
        }
    }
}

fn not_yet() -> Reply {
    Reply::Error {
        message: "the container is not created yet".into(),
        code: run::EXIT_RUNTIME_ERROR,
    }
}

/// The exit code for an agent error kind.
pub(crate) fn agent_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::NotFound => 127,
        ErrorKind::NotExecutable => 126,
        _ => run::EXIT_RUNTIME_ERROR,
    }
}

fn vm_gone(vm: &Vm, reason: Option<String>) -> String {
    // A panicking or rebooting guest ends the VMM by itself: its console log is then complete.
    let _ = vm.vmm.wait_timeout(Duration::from_secs(1));
    let hint = crate::console::guest_hint(&vm.state.console_log())
        .or(reason.map(|r| crate::console::sanitize(&r)))
        .unwrap_or_else(|| "the guest gave no reason".to_owned());
    format!("VM ended before the container exited: {hint}")
}

/// From `created` to the main process's end: its exit code.
fn run_container(shared: &Arc<Shared>, rx: &Receiver<Ev>, vm: &mut Vm) -> i32 {
    let mut started = false;
    loop {
        let Ok(ev) = rx.recv() else {
            return run::EXIT_RUNTIME_ERROR;
        };
        match ev {
            Ev::Cmd(Command::Start(reply)) => match start(shared, rx, started) {
                Ok(answer) => {
                    started |= matches!(answer, Reply::Started { .. });
                    let _ = reply.send(answer);
                }
                Err((message, code)) => {
                    let _ = reply.send(Reply::Error { message, code });
                    return code;
                }
            },
            Ev::Cmd(Command::Kill(signo)) if !started => return 128 + signo,
            Ev::Cmd(Command::Kill(signo)) => signal_main(shared, signo),
            Ev::Main(ProcEvent::Exited(status)) => return run::exit_code(status),
            // Only a VM whose agent connection ended fails a started process.
            Ev::Main(ProcEvent::Failed(_, message)) => {
                let message = vm_gone(vm, Some(message));
                shared.update(|s| s.error = Some(message));
                return run::EXIT_RUNTIME_ERROR;
            }
            Ev::Main(ProcEvent::Started(_) | ProcEvent::Created(_)) => {}
            Ev::Vm(VmEvent::Oom(container, count)) if container != shared.plan.config.id => {
                shared.pod.oom(&container, count);
            }
            Ev::Vm(VmEvent::Oom(_, count)) => {
                shared.update(|s| s.oom_kills = s.oom_kills.max(count));
                shared.output.oom_notice(&shared.plan);
            }
            Ev::Vm(VmEvent::Gone(reason)) => {
                let message = vm_gone(vm, reason);
                shared.update(|s| s.error = Some(message));
                return run::EXIT_RUNTIME_ERROR;
            }
            Ev::Vm(VmEvent::Reply(msg)) => {
                if let Some(tx) = shared
                    .reply
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    let _ = tx.send(msg);
                }
            }
            Ev::Vm(VmEvent::Created(_)) => {}
        }
    }
}

/// Starts the main process; an error (message, code) when it could not start, which ends the
/// container.
fn start(shared: &Arc<Shared>, rx: &Receiver<Ev>, started: bool) -> Result<Reply, (String, i32)> {
    if started {
        return Ok(Reply::Error {
            message: "the container is already running".into(),
            code: run::EXIT_RUNTIME_ERROR,
        });
    }
    let fail = |message: String, code: i32| {
        shared.update(|s| s.error = Some(message.clone()));
        Err((message, code))
    };
    let Some(mux) = mux_of(shared) else {
        return Ok(not_yet());
    };
    let sent = Instant::now();
    let start = HostMessage::Start {
        container: shared.plan.config.id.clone(),
    };
    if let Err(e) = mux.send(&start) {
        return fail(crate::error_chain(&e), run::EXIT_RUNTIME_ERROR);
    }
    loop {
        match rx.recv() {
            Ok(Ev::Main(ProcEvent::Started(pid))) => {
                // The guest's share of the container's setup: Create sent -> Created read,
                // plus Start sent -> Started read (bench/bench.py reads it).
                let create = *shared.setup.lock().unwrap_or_else(PoisonError::into_inner);
                let setup_us = (create + sent.elapsed()).as_micros() as u64;
                tracing::debug!(target: "moat_runtime::session", setup_us, pid, "container started");
                shared.update(|s| {
                    s.status = Status::Running;
                    s.guest_pid = Some(pid);
                    s.started = Some(record::now());
                    s.starts += 1;
                });
                send_early_size(shared, &mux);
                return Ok(Reply::Started { pid });
            }
            Ok(Ev::Main(ProcEvent::Failed(kind, message))) => {
                return fail(message, agent_code(kind));
            }
            Ok(Ev::Vm(VmEvent::Gone(reason))) => {
                let reason = reason.unwrap_or_else(|| "the guest gave no reason".into());
                return fail(
                    format!(
                        "VM ended before the container started: {}",
                        crate::console::sanitize(&reason)
                    ),
                    run::EXIT_RUNTIME_ERROR,
                );
            }
            Err(_) => {
                return fail(
                    "the supervisor lost its events".into(),
                    run::EXIT_RUNTIME_ERROR,
                )
            }
            Ok(Ev::Cmd(Command::Kill(signo))) => {
                return fail(
                    format!("killed by signal {signo} while starting"),
                    128 + signo,
                );
            }
            Ok(Ev::Cmd(Command::Start(reply))) => {
                let _ = reply.send(Reply::Error {
                    message: "the container is being started".into(),
                    code: run::EXIT_RUNTIME_ERROR,
                });
            }
            Ok(_) => {}
        }
    }
}

/// Gives the started process the size a client asked for before the start.
fn send_early_size(shared: &Shared, mux: &Mux) {
    let early = shared
        .early_size
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some((rows, cols)) = early {
        let _ = mux.send(&HostMessage::Resize {
            process: MAIN_PROCESS,
            rows,
            cols,
        });
    }
}

fn signal_main(shared: &Shared, signo: i32) {
    if let Some(mux) = mux_of(shared) {
        let msg = HostMessage::Signal {
            process: MAIN_PROCESS,
            signo,
            all: false,
        };
        let _ = mux.send(&msg);
    }
}

fn shut_down(shared: &Shared, vm: &mut Vm) {
    if let Some(mux) = mux_of(shared) {
        if let Err(e) = mux.send(&HostMessage::Shutdown) {
            tracing::debug!(error = %e, "cannot send shutdown");
        }
    }
    match vm.vmm.wait_timeout(run::SHUTDOWN_TIMEOUT) {
        Ok(Some(_)) => {}
        Ok(None) => tracing::warn!("the VM did not power off in time; killing it"),
        Err(e) => tracing::warn!(error = %e, "cannot wait for moat-vmm"),
    }
}

/// Records the end, removes what must go, wakes every waiter; the supervisor's exit code.
fn finish(shared: &Arc<Shared>, code: i32) -> i32 {
    shared.output.flush();
    shared.update(|s| {
        s.status = Status::Exited;
        s.exit_code = Some(code);
        s.finished = Some(record::now());
        s.supervisor_pid = None;
        s.vmm_pid = None;
    });
    if shared.plan.auto_remove || shared.remove.load(Ordering::Acquire) {
        super::remove::remove_files(&shared.dir, &shared.plan);
    }
    *shared.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(code);
    shared.ended_cv.notify_all();
    // The clients waiting for the end get their answer before this process goes.
    super::server::drain(Duration::from_secs(5));
    code
}

fn report_ready(ready: &mut File, error: Option<(&str, i32)>) {
    let line = match error {
        None => serde_json::json!({"ok": true}),
        Some((message, code)) => serde_json::json!({"error": message, "code": code}),
    };
    let _ = writeln!(ready, "{line}");
    let _ = ready.flush();
}
