//! The control socket's connections (docs/lifecycle.md): one thread each. Attach and exec
//! connections stay open for the process's life; the others are one request, one answer.

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moat_protocol::{AgentMessage, HostMessage, MAIN_PROCESS};

use super::control::{self, Reply, Request, StdioSpec};
use super::mux::{FdSink, Mux, ProcEvent, Sink};
use super::output::Attached;
use super::record::Status;
use super::stdin::{close_stdin_when_running, pump_stdin, pump_stdin_when_running};
use super::supervisor::{agent_code, Command, Ev, Shared};
use crate::run::EXIT_RUNTIME_ERROR;

/// How long a container request (pause, ps...) may take in the guest.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections that still owe their client an answer about the container's end.
static OWED: Mutex<usize> = Mutex::new(0);
static OWED_CV: Condvar = Condvar::new();

struct Owed;

impl Owed {
    fn new() -> Self {
        *OWED.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Self
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        *OWED.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        OWED_CV.notify_all();
    }
}

/// Waits (up to `timeout`) until every connection that waits for the container's end has been
/// answered.
pub(crate) fn drain(timeout: Duration) {
    let owed = OWED.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = OWED_CV.wait_timeout_while(owed, timeout, |n| *n > 0);
}

/// Accepts connections on `listener` in a thread of its own.
pub(crate) fn serve(listener: UnixListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("client".into())
                    .spawn(move || handle(&stream, &shared));
            }
        })?;
    Ok(())
}

pub(super) fn error(message: impl Into<String>) -> Reply {
    Reply::Error {
        message: message.into(),
        code: EXIT_RUNTIME_ERROR,
    }
}

fn handle(stream: &UnixStream, shared: &Arc<Shared>) {
    let request = match control::recv::<Request>(stream) {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            let _ = control::send(stream, &error(crate::error_chain(&e)));
            return;
        }
    };
    let id = || shared.plan.config.id.clone();
    let reply = match request {
        Request::Attach(stdio) => return attach(stream, shared, stdio),
        Request::Exec { stdio, spec, user } => {
            let target = ExecTarget {
                container: id(),
                stdio,
                user,
            };
            return exec(stream, shared, target, spec);
        }
        Request::Member { dir, stdio } => {
            return super::member::create(stream, shared, &dir, stdio)
        }
        Request::For { container, request } => {
            return super::member::request(stream, shared, &container, *request)
        }
        Request::Start => start(shared),
        Request::Signal { signo, all } => signal(shared, signo, all),
        Request::Resize { .. } => error("resize needs an attached process"),
        Request::Stop { timeout } => stop(shared, timeout),
        Request::Remove => remove(shared),
        Request::Wait => {
            let _owed = Owed::new();
            let code = shared.wait_ended();
            let _ = control::send(stream, &Reply::Exited { code });
            return;
        }
        Request::Pause => container_request(shared, HostMessage::Pause { container: id() }),
        Request::Resume => container_request(shared, HostMessage::Resume { container: id() }),
        Request::Processes => {
            container_request(shared, HostMessage::ListProcesses { container: id() })
        }
        Request::Stats => container_request(shared, HostMessage::Stats { container: id() }),
        Request::Update(resources) => container_request(
            shared,
            HostMessage::Update {
                container: id(),
                resources,
            },
        ),
    };
    let _ = control::send(stream, &reply);
}

pub(super) fn mux(shared: &Shared) -> Option<Arc<Mux>> {
    shared
        .mux
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn start(shared: &Shared) -> Reply {
    let (tx, rx) = mpsc::channel();
    if shared.events.send(Ev::Cmd(Command::Start(tx))).is_err() {
        return error("the container has ended");
    }
    rx.recv()
        .unwrap_or_else(|_| error("the container has ended"))
}

fn signal(shared: &Shared, signo: i32, all: bool) -> Reply {
    if !(1..=64).contains(&signo) {
        return error(format!("invalid signal {signo}"));
    }
    match shared.state().status {
        Status::Running | Status::Paused => {
            let Some(mux) = mux(shared) else {
                return error("the container is not running");
            };
            let msg = HostMessage::Signal {
                process: MAIN_PROCESS,
                signo,
                all,
            };
            match mux.send(&msg) {
                Ok(()) => Reply::Ok,
                Err(e) => error(crate::error_chain(&e)),
            }
        }
        Status::Created | Status::Creating => {
            shared.kill(signo);
            Reply::Ok
        }
        Status::Exited => error("the container is not running"),
    }
}

/// Kills the VMM outright: the last resort when the guest does not end the container.
fn kill_vm(shared: &Shared) {
    if let Some(pid) = shared.state().vmm_pid {
        super::remove::kill_stray_vmm(pid, &shared.plan.config.id);
    }
}

fn stop(shared: &Shared, timeout: Option<u32>) -> Reply {
    let _owed = Owed::new();
    let secs = timeout.unwrap_or(shared.plan.stop_timeout);
    match shared.state().status {
        Status::Exited => return Reply::Ok,
        Status::Running | Status::Paused => {
            let _ = signal(shared, shared.plan.stop_signal, false);
            if shared
                .wait_ended_for(Duration::from_secs(secs.into()))
                .is_some()
            {
                return Reply::Ok;
            }
            shared.kill(libc::SIGKILL);
        }
        Status::Created | Status::Creating => shared.kill(libc::SIGKILL),
    }
    end_for_sure(shared);
    Reply::Ok
}

/// Waits for the end after a SIGKILL, killing the VM if the guest does not answer.
fn end_for_sure(shared: &Shared) {
    if shared.wait_ended_for(Duration::from_secs(15)).is_none() {
        kill_vm(shared);
        shared.wait_ended();
    }
}

fn remove(shared: &Shared) -> Reply {
    let _owed = Owed::new();
    shared.remove.store(true, Ordering::Release);
    shared.kill(libc::SIGKILL);
    end_for_sure(shared);
    Reply::Ok
}

pub(super) fn container_request(shared: &Shared, msg: HostMessage) -> Reply {
    if shared.state().status != Status::Running && shared.state().status != Status::Paused {
        return error(format!(
            "container {} is not running",
            shared.plan.config.id
        ));
    }
    let Some(mux) = mux(shared) else {
        return error("the container is not running");
    };
    let _one = shared
        .request_lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let (tx, rx) = mpsc::channel();
    *shared.reply.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    // The VM's own container's pause is the state's; a pod member's is its own.
    let own = |c: &str| c == shared.plan.config.id;
    let new_status = match &msg {
        HostMessage::Pause { container } if own(container) => Some(Status::Paused),
        HostMessage::Resume { container } if own(container) => Some(Status::Running),
        _ => None,
    };
    if let Err(e) = mux.send(&msg) {
        return error(crate::error_chain(&e));
    }
    match rx.recv_timeout(REQUEST_TIMEOUT) {
        Ok(AgentMessage::Done) => {
            if let Some(status) = new_status {
                shared.update(|s| s.status = status);
            }
            Reply::Ok
        }
        Ok(AgentMessage::Processes { pids }) => Reply::Processes { pids },
        Ok(AgentMessage::Stats(stats)) => Reply::Stats(stats),
        Ok(AgentMessage::Error { message, .. }) => error(crate::console::sanitize(&message)),
        Ok(_) => error("unexpected answer from the guest agent"),
        Err(_) => error("the guest agent did not answer"),
    }
}

/// The client's descriptors: stdin (when asked), stdout, stderr.
pub(super) fn client_fds(
    stream: &UnixStream,
    stdio: StdioSpec,
) -> Result<(Option<File>, File, File), Reply> {
    let fds = control::recv_fds(stream).map_err(|e| error(crate::error_chain(&e)))?;
    let want = if stdio.stdin { 3 } else { 2 };
    if fds.len() != want {
        return Err(error(format!(
            "expected {want} descriptors, got {}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter().map(File::from);
    let stdin = if stdio.stdin { fds.next() } else { None };
    let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
        return Err(error("missing descriptors"));
    };
    Ok((stdin, out, err))
}

fn attach(stream: &UnixStream, shared: &Arc<Shared>, stdio: StdioSpec) {
    let _owed = Owed::new();
    let (stdin, out, err) = match client_fds(stream, stdio) {
        Ok(fds) => fds,
        Err(reply) => {
            let _ = control::send(stream, &reply);
            return;
        }
    };
    if !matches!(shared.state().status, Status::Created | Status::Creating) {
        let _ = control::send(
            stream,
            &error("cannot attach: the container has already started"),
        );
        return;
    }
    shared.output.attach(Some(Attached {
        stdout: Some(out),
        stderr: Some(err),
        notices: !stdio.events,
    }));
    if let Some(stdin) = stdin {
        pump_stdin_when_running(Arc::clone(shared), stdin);
    } else {
        close_stdin_when_running(Arc::clone(shared));
    }
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let watcher = Arc::clone(shared);
    let gone = std::thread::spawn(move || {
        client_requests(&reader, &watcher, MAIN_PROCESS);
        watcher.output.attach(None);
        // A foreground run's supervisor logs to its client's stderr: not beyond the client.
        log_to_file(&watcher.dir);
        // A tied client (the OCI relay) that goes takes the container with it.
        if stdio.tied && watcher.wait_ended_for(Duration::ZERO).is_none() {
            watcher.kill(libc::SIGKILL);
        }
    });
    let events = stdio
        .events
        .then(|| stream.try_clone().ok())
        .flatten()
        .map(|s| oom_events(s, Arc::clone(shared)));
    let code = shared.wait_ended();
    if let Some(events) = events {
        let _ = events.join();
    }
    // A container that ended in an error (its VM died, the VMM was killed by its filter...)
    // tells the attached client why; a normal end just gives the code.
    let reply = match shared.state().error {
        Some(message) => Reply::Error { message, code },
        None => Reply::Exited { code },
    };
    let _ = control::send(stream, &reply);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = gone.join();
}

/// Points our stderr (the tracing log) at `dir/supervisor.log`.
/// Sends [`Reply::Oom`] on `stream` for every OOM kill the guest reports, until the container
/// has ended (the attach then sends its last reply: this thread is joined first, so the two
/// never write at once).
fn oom_events(stream: UnixStream, shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seen = shared.state().oom_kills;
        while shared.wait_ended_for(Duration::ZERO).is_none() {
            let state = shared.wait_state_for(Duration::from_millis(500));
            if state.oom_kills > seen {
                seen = state.oom_kills;
                if control::send(&stream, &Reply::Oom { count: seen }).is_err() {
                    return;
                }
            }
        }
    })
}

fn log_to_file(dir: &std::path::Path) {
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("supervisor.log"));
    if let Ok(file) = file {
        let _ = rustix::stdio::dup2_stderr(&file);
    }
}

/// Serves `Signal`/`Resize` from an attached client until it goes; for a tied client that goes
/// before its process ends, the process is killed.
pub(super) fn client_requests(stream: &UnixStream, shared: &Arc<Shared>, process: u32) {
    loop {
        let msg = match control::recv::<Request>(stream) {
            Ok(Some(Request::Signal { signo, all })) if process == MAIN_PROCESS => {
                // Before the start this ends the container, as `moat kill` does.
                let _ = signal(shared, signo, all);
                continue;
            }
            Ok(Some(Request::Signal { signo, all })) => HostMessage::Signal {
                process,
                signo,
                all,
            },
            Ok(Some(Request::Resize { rows, cols })) => {
                if process == MAIN_PROCESS && keep_early_size(shared, rows, cols) {
                    continue;
                }
                HostMessage::Resize {
                    process,
                    rows,
                    cols,
                }
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return,
        };
        if let Some(mux) = mux(shared) {
            let _ = mux.send(&msg);
        }
    }
}

/// Keeps a size asked for before the start for the start to send (true), or says it can go
/// now (false). The start takes the kept size after it set Running, so none is lost.
fn keep_early_size(shared: &Shared, rows: u16, cols: u16) -> bool {
    let mut early = shared
        .early_size
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match shared.state().status {
        Status::Created | Status::Creating => {
            *early = Some((rows, cols));
            true
        }
        Status::Running | Status::Paused | Status::Exited => false,
    }
}

/// Where an exec runs and how it is attached.
pub(super) struct ExecTarget {
    /// The container (the VM's own, or a pod member).
    pub(super) container: String,
    pub(super) stdio: StdioSpec,
    /// A user by name.
    pub(super) user: Option<String>,
}

pub(super) fn exec(
    stream: &UnixStream,
    shared: &Arc<Shared>,
    target: ExecTarget,
    spec: Box<oci_spec::runtime::Process>,
) {
    let ExecTarget {
        container,
        stdio,
        user,
    } = target;
    let (stdin, out, err) = match client_fds(stream, stdio) {
        Ok(fds) => fds,
        Err(reply) => {
            let _ = control::send(stream, &reply);
            return;
        }
    };
    let (Some(mux), Status::Running) = (mux(shared), shared.state().status) else {
        let message = format!("container {} is not running", shared.plan.config.id);
        let _ = control::send(stream, &error(message));
        return;
    };
    let id = shared.next_exec.fetch_add(1, Ordering::AcqRel);
    let sinks: [Box<dyn Sink>; 2] = [
        Box::new(FdSink::new(Some(out))),
        Box::new(FdSink::new((!stdio.tty).then_some(err))),
    ];
    let mut handle = match mux.register(id, sinks) {
        Ok(h) => h,
        Err(e) => {
            let _ = control::send(stream, &error(crate::error_chain(&e)));
            return;
        }
    };
    let request = moat_protocol::ExecRequest {
        container,
        process: id,
        spec: *spec,
        user,
    };
    if let Err(e) = mux.send(&HostMessage::Exec(Box::new(request))) {
        mux.finish(handle);
        let _ = control::send(stream, &error(crate::error_chain(&e)));
        return;
    }
    let events = handle.take_events();
    match events.recv_timeout(REQUEST_TIMEOUT) {
        Ok(ProcEvent::Started(pid)) => {
            let _ = control::send(stream, &Reply::Started { pid });
        }
        Ok(ProcEvent::Failed(kind, message)) => {
            mux.finish(handle);
            let reply = Reply::Error {
                message,
                code: agent_code(kind),
            };
            let _ = control::send(stream, &reply);
            return;
        }
        _ => {
            mux.finish(handle);
            let _ = control::send(stream, &error("the exec did not start"));
            return;
        }
    }
    run_exec(stream, shared, &mux, handle, events, stdio, stdin);
}

fn run_exec(
    stream: &UnixStream,
    shared: &Arc<Shared>,
    mux: &Arc<Mux>,
    handle: super::mux::ProcHandle,
    events: mpsc::Receiver<ProcEvent>,
    stdio: StdioSpec,
    stdin: Option<File>,
) {
    let id = handle.id;
    let stop = Arc::new(AtomicBool::new(false));
    match stdin {
        Some(stdin) => {
            let (m, stop) = (Arc::clone(mux), Arc::clone(&stop));
            let _ = std::thread::Builder::new()
                .name("exec-stdin".into())
                .spawn(move || pump_stdin(&m, id, stdin, &stop));
        }
        None => {
            let _ = mux.send(&HostMessage::StdinEof { process: id });
        }
    }
    if let Ok(reader) = stream.try_clone() {
        let (shared, mux) = (Arc::clone(shared), Arc::clone(mux));
        let _ = std::thread::Builder::new()
            .name("exec-client".into())
            .spawn(move || {
                client_requests(&reader, &shared, id);
                if stdio.tied {
                    let kill = HostMessage::Signal {
                        process: id,
                        signo: libc::SIGKILL,
                        all: false,
                    };
                    let _ = mux.send(&kill);
                }
            });
    }
    let started = Instant::now();
    let reply = loop {
        match events.recv() {
            Ok(ProcEvent::Exited(status)) => {
                break Reply::Exited {
                    code: crate::run::exit_code(status),
                }
            }
            Ok(ProcEvent::Failed(_, message)) => break error(message),
            Ok(ProcEvent::Started(_) | ProcEvent::Created(_)) => {}
            Err(_) => break error("the VM ended"),
        }
    };
    stop.store(true, Ordering::Release);
    mux.finish(handle);
    tracing::debug!(id, secs = started.elapsed().as_secs_f64(), "exec ended");
    let _ = control::send(stream, &reply);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
