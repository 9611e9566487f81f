//! The supervisor's side of the agent connection (protocol v4): one reader thread dispatches
//! the agent's frames to the processes they belong to, and every output stream has a writer
//! thread that delivers its bytes and then credits them to the agent, so a slow destination
//! only ever holds back its own stream ([`moat_protocol::WINDOW`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use moat_protocol::{
    decode, encode, read_frame, write_frame, AgentMessage, ErrorKind, ExitStatus, FrameError,
    FrameKind, HostMessage, OutputStream, MAIN_PROCESS, MAX_PAYLOAD, WINDOW,
};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// A frame could not be sent.
    #[error("cannot send to the guest agent")]
    Send(#[source] FrameError),
    /// The agent's connection ended.
    #[error("the guest agent's connection ended")]
    Gone,
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] io::Error),
}

/// What happens to one process, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    /// A pod's later container with this process was created; its init has this guest pid.
    Created(i32),
    /// It started with this guest pid.
    Started(i32),
    /// It could not be started.
    Failed(ErrorKind, String),
    /// It ended.
    Exited(ExitStatus),
}

/// Where a process's output goes; called from that stream's writer thread only.
pub trait Sink: Send {
    /// Delivers `bytes` of `stream`.
    fn deliver(&mut self, stream: OutputStream, bytes: &[u8]);
}

/// A plain file descriptor as a sink: writes stop quietly after the first failure.
pub struct FdSink {
    out: Option<std::fs::File>,
}

impl FdSink {
    /// Wraps `file` (`None`: discard).
    pub fn new(file: Option<std::fs::File>) -> Self {
        Self { out: file }
    }
}

impl Sink for FdSink {
    fn deliver(&mut self, _stream: OutputStream, bytes: &[u8]) {
        if let Some(out) = &mut self.out {
            if out.write_all(bytes).is_err() {
                self.out = None;
            }
        }
    }
}

/// Stdin bytes the host may still send to one process.
struct StdinWindow {
    left: Mutex<Option<u64>>,
    changed: Condvar,
}

struct Proc {
    outputs: [Sender<Vec<u8>>; 2],
    events: Sender<ProcEvent>,
    stdin: Arc<StdinWindow>,
}

/// A process registered with the mux: its events, its writer threads and its stdin window.
pub struct ProcHandle {
    /// The process id.
    pub id: u32,
    /// Its events, in the agent's order.
    pub events: Receiver<ProcEvent>,
    writers: Vec<JoinHandle<()>>,
    stdin: Arc<StdinWindow>,
}

impl ProcHandle {
    /// Takes the process's events out (e.g. to forward them elsewhere); the handle keeps an
    /// empty receiver.
    pub fn take_events(&mut self) -> Receiver<ProcEvent> {
        let (_tx, rx) = mpsc::channel();
        std::mem::replace(&mut self.events, rx)
    }
}

/// Events about the container and the connection, for the supervisor's main thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// `Created` with the container init's guest pid.
    Created(i32),
    /// An OOM kill in this container (its cgroup's count so far).
    Oom(String, u64),
    /// A reply to a container request (`Done`, `Processes`, `Error` without process).
    Reply(AgentMessage),
    /// The connection ended (`None`: cleanly) or broke.
    Gone(Option<String>),
}

/// The agent connection, shared by the supervisor's threads.
pub struct Mux {
    writer: Mutex<UnixStream>,
    procs: Mutex<HashMap<u32, Proc>>,
}

impl Mux {
    /// Starts the reader thread on `stream`; container events go to the returned receiver.
    pub fn start(stream: UnixStream) -> Result<(Arc<Self>, Receiver<VmEvent>), MuxError> {
        let reader = stream.try_clone().map_err(MuxError::Thread)?;
        let mux = Arc::new(Self {
            writer: Mutex::new(stream),
            procs: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel();
        let this = Arc::clone(&mux);
        thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || this.read_loop(reader, tx))
            .map_err(MuxError::Thread)?;
        Ok((mux, rx))
    }

    /// Sends one control message.
    pub fn send(&self, msg: &HostMessage) -> Result<(), MuxError> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *w, FrameKind::Control, 0, &encode(msg)).map_err(MuxError::Send)
    }

    /// Registers process `id` whose output goes to `sink` (from two writer threads: stdout and
    /// stderr each get their own clone through `split`).
    pub fn register(
        self: &Arc<Self>,
        id: u32,
        sinks: [Box<dyn Sink>; 2],
    ) -> Result<ProcHandle, MuxError> {
        let (events_tx, events) = mpsc::channel();
        let stdin = Arc::new(StdinWindow {
            left: Mutex::new(Some(u64::from(WINDOW))),
            changed: Condvar::new(),
        });
        let mut writers = Vec::new();
        let mut outputs = Vec::new();
        for (stream, sink) in [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .zip(sinks)
        {
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            let mux = Arc::clone(self);
            let handle = thread::Builder::new()
                .name("output".into())
                .spawn(move || mux.write_loop(id, stream, sink, rx))
                .map_err(MuxError::Thread)?;
            writers.push(handle);
            outputs.push(tx);
        }
        let [out, err]: [Sender<Vec<u8>>; 2] = outputs
            .try_into()
            .map_err(|_| MuxError::Thread(io::Error::other("two streams")))?;
        let proc = Proc {
            outputs: [out, err],
            events: events_tx,
            stdin: Arc::clone(&stdin),
        };
        self.lock_procs().insert(id, proc);
        Ok(ProcHandle {
            id,
            events,
            writers,
            stdin,
        })
    }

    /// Forgets process `id` and waits until everything it wrote was delivered.
    pub fn finish(&self, handle: ProcHandle) {
        self.lock_procs().remove(&handle.id);
        close_window(&handle.stdin);
        for w in handle.writers {
            let _ = w.join();
        }
    }

    /// Sends `data` as stdin of process `id`, waiting for the agent's credit as needed; false
    /// once the process is gone.
    pub fn stdin(&self, id: u32, data: &[u8]) -> Result<bool, MuxError> {
        let Some(window) = self.lock_procs().get(&id).map(|p| Arc::clone(&p.stdin)) else {
            return Ok(false);
        };
        for chunk in data.chunks(STDIN_CHUNK) {
            if !take_window(&window, chunk.len() as u64) {
                return Ok(false);
            }
            let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            write_frame(&mut *w, FrameKind::Stdin, id, chunk).map_err(MuxError::Send)?;
        }
        Ok(true)
    }

    fn lock_procs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Proc>> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_loop(
        &self,
        id: u32,
        stream: OutputStream,
        mut sink: Box<dyn Sink>,
        rx: Receiver<Vec<u8>>,
    ) {
        for chunk in rx {
            sink.deliver(stream, &chunk);
            let credit = HostMessage::Credit {
                process: id,
                stream,
                bytes: chunk.len() as u32,
            };
            // A broken connection is seen by the reader.
            let _ = self.send(&credit);
        }
    }

    fn read_loop(&self, mut reader: UnixStream, tx: Sender<VmEvent>) {
        let end = loop {
            let frame = match read_frame(&mut reader) {
                Ok(frame) => frame,
                Err(FrameError::Closed) => break None,
                Err(e) => break Some(crate::error_chain(&e)),
            };
            let result = match frame.kind {
                FrameKind::Stdout => self.output(frame.process, 0, frame.payload),
                FrameKind::Stderr => self.output(frame.process, 1, frame.payload),
                FrameKind::Stdin => Err("the agent sent a stdin frame".to_owned()),
                FrameKind::Control => match decode::<AgentMessage>(&frame.payload) {
                    Ok(msg) => self.control(msg, &tx),
                    Err(e) => Err(crate::error_chain(&e)),
                },
            };
            if let Err(e) = result {
                break Some(e);
            }
        };
        // Every process still registered hears that the VM is gone.
        for proc in self.lock_procs().values() {
            let _ = proc.events.send(ProcEvent::Failed(
                ErrorKind::Internal,
                "the VM ended".into(),
            ));
            close_window(&proc.stdin);
        }
        let _ = tx.send(VmEvent::Gone(end));
    }

    fn output(&self, id: u32, index: usize, payload: Vec<u8>) -> Result<(), String> {
        if payload.len() > MAX_PAYLOAD {
            return Err("oversized output frame".into());
        }
        // Output of an unknown or finished process is dropped (the agent is not trusted).
        if let Some(proc) = self.lock_procs().get(&id) {
            let _ = proc.outputs[index].send(payload);
        }
        Ok(())
    }

    fn control(&self, msg: AgentMessage, tx: &Sender<VmEvent>) -> Result<(), String> {
        let to_proc = |id: u32, event: ProcEvent| {
            if let Some(proc) = self.lock_procs().get(&id) {
                let _ = proc.events.send(event);
            }
        };
        match msg {
            AgentMessage::Started { process, pid } => to_proc(process, ProcEvent::Started(pid)),
            AgentMessage::Exited { process, status } => to_proc(process, ProcEvent::Exited(status)),
            AgentMessage::Error {
                process: Some(process),
                kind,
                message,
            } => to_proc(
                process,
                ProcEvent::Failed(kind, crate::console::sanitize(&message)),
            ),
            AgentMessage::StdinCredit { process, bytes } => {
                if let Some(proc) = self.lock_procs().get(&process) {
                    give_window(&proc.stdin, u64::from(bytes));
                }
            }
            AgentMessage::Created { process, pid } if process == MAIN_PROCESS => {
                let _ = tx.send(VmEvent::Created(pid));
            }
            AgentMessage::Created { process, pid } => to_proc(process, ProcEvent::Created(pid)),
            AgentMessage::Oom { container, count } => {
                let _ = tx.send(VmEvent::Oom(container, count));
            }
            msg @ (AgentMessage::Done
            | AgentMessage::Processes { .. }
            | AgentMessage::Stats(_)
            | AgentMessage::Error { process: None, .. }) => {
                let _ = tx.send(VmEvent::Reply(msg));
            }
            AgentMessage::Ready { .. } => return Err("the agent said ready twice".into()),
        }
        Ok(())
    }
}

/// Largest stdin chunk sent in one frame.
const STDIN_CHUNK: usize = 32 * 1024;

/// How long a stdin sender waits for credit before it checks again.
const CREDIT_POLL: Duration = Duration::from_millis(200);

fn take_window(w: &StdinWindow, n: u64) -> bool {
    let mut left = w.left.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        match *left {
            None => return false,
            Some(have) if have >= n => {
                *left = Some(have - n);
                return true;
            }
            Some(_) => {
                left = w
                    .changed
                    .wait_timeout(left, CREDIT_POLL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

fn give_window(w: &StdinWindow, n: u64) {
    let mut left = w.left.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(have) = *left {
        *left = Some((have + n).min(u64::from(WINDOW)));
    }
    w.changed.notify_all();
}

fn close_window(w: &StdinWindow) {
    *w.left.lock().unwrap_or_else(PoisonError::into_inner) = None;
    w.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Sink for Collect {
        fn deliver(&mut self, _: OutputStream, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    fn send_agent(agent: &mut UnixStream, msg: &AgentMessage) {
        write_frame(agent, FrameKind::Control, 0, &encode(msg)).unwrap();
    }

    #[test]
    fn output_is_delivered_and_credited_then_exit() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let (mux, _events) = Mux::start(host).unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sinks: [Box<dyn Sink>; 2] = [
            Box::new(Collect(Arc::clone(&out))),
            Box::new(FdSink::new(None)),
        ];
        let handle = mux.register(2, sinks).unwrap();
        write_frame(&mut agent, FrameKind::Stdout, 2, b"hello").unwrap();
        write_frame(&mut agent, FrameKind::Stdout, 9, b"nobody's").unwrap();
        let exited = AgentMessage::Exited {
            process: 2,
            status: ExitStatus::Code { code: 3 },
        };
        send_agent(&mut agent, &exited);
        assert_eq!(
            handle.events.recv().unwrap(),
            ProcEvent::Exited(ExitStatus::Code { code: 3 })
        );
        mux.finish(handle);
        assert_eq!(&*out.lock().unwrap(), b"hello");
        let frame = read_frame(&mut agent).unwrap();
        let credit: HostMessage = decode(&frame.payload).unwrap();
        assert_eq!(
            credit,
            HostMessage::Credit {
                process: 2,
                stream: OutputStream::Stdout,
                bytes: 5
            }
        );
    }

    #[test]
    fn stdin_waits_for_credit_and_stops_when_the_process_is_gone() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let (mux, _events) = Mux::start(host).unwrap();
        let sinks: [Box<dyn Sink>; 2] = [Box::new(FdSink::new(None)), Box::new(FdSink::new(None))];
        let _handle = mux.register(3, sinks).unwrap();
        // The agent's side reads whatever comes, as the real agent does.
        let mut drain = agent.try_clone().unwrap();
        thread::spawn(move || while read_frame(&mut drain).is_ok() {});
        let big = vec![1u8; WINDOW as usize];
        assert!(mux.stdin(3, &big).unwrap());
        let m = Arc::clone(&mux);
        let blocked = thread::spawn(move || m.stdin(3, b"more").unwrap());
        thread::sleep(Duration::from_millis(300));
        assert!(!blocked.is_finished(), "sent beyond the window");
        let credit = AgentMessage::StdinCredit {
            process: 3,
            bytes: 4,
        };
        send_agent(&mut agent, &credit);
        assert!(blocked.join().unwrap());
        let m = Arc::clone(&mux);
        let blocked = thread::spawn(move || m.stdin(3, b"again").unwrap());
        thread::sleep(Duration::from_millis(100));
        agent.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(!blocked.join().unwrap(), "a gone VM ends the wait");
    }
}
