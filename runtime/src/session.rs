//! The conversation with a ready agent (protocol v4) for the container's main process:
//! `Create`, `Start`, then stdio, signals and resizes until `Exited`.
//!
//! Threads: one reads the agent's frames (writing stdout/stderr itself, so output never waits
//! for the main loop, and crediting each chunk once written), one reads our stdin (with `-i`)
//! within the stdin window ([`StdinGate`]), one turns signals into events. All of them feed one
//! bounded channel of [`Event`]s that the calling thread serves. Frames go out through one
//! mutex ([`Writer`]), so they never interleave.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use moat_protocol::{
    decode, encode, read_frame, write_frame, AgentMessage, ErrorKind, ExitStatus, FrameError,
    FrameKind, HostMessage, OutputStream, RunRequest, MAIN_PROCESS, WINDOW,
};

use crate::terminal;

/// Largest stdin chunk sent in one frame.
const STDIN_CHUNK: usize = 32 * 1024;

/// Capacity of the event channel: bounds what a fast guest or stdin can queue up.
pub const EVENT_QUEUE: usize = 64;

/// What the main loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// A control message from the agent.
    Agent(AgentMessage),
    /// The agent's stream ended (`None`: cleanly) or broke.
    AgentGone(Option<String>),
    /// We received this signal.
    Signal(i32),
    /// Bytes from our stdin.
    Stdin(Vec<u8>),
    /// Our stdin reached its end.
    StdinEof,
}

/// Errors of the conversation.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The agent could not be sent a message.
    #[error("cannot send to the guest agent")]
    Send(#[source] FrameError),
    /// The agent's stream ended before `Exited`; the VM is gone or going.
    #[error("the agent's connection ended before the container exited{}", detail_suffix(.0))]
    Ended(Option<String>),
    /// A thread could not be started.
    #[error("cannot start a thread")]
    Thread(#[source] io::Error),
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// How a session ended when the VM is still fine (it can be shut down gracefully).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process ran and ended.
    Exited(ExitStatus),
    /// The agent could not start the process.
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// The agent's message, sanitized.
        message: String,
    },
}

/// Where the container's stdio goes to and comes from.
pub struct Stdio {
    /// Receives the process's stdout (and its terminal output).
    pub stdout: Box<dyn Write + Send>,
    /// Receives the process's stderr.
    pub stderr: Box<dyn Write + Send>,
    /// Forwarded to the process with `-i`; `None` closes its stdin at once.
    pub stdin: Option<Box<dyn Read + Send>>,
}

impl Stdio {
    /// Our own stdout and stderr, and our stdin when `interactive`.
    pub fn inherit(interactive: bool) -> Self {
        Self {
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
            stdin: interactive.then(|| Box::new(io::stdin()) as Box<dyn Read + Send>),
        }
    }
}

/// A sink that stops writing, quietly, after its first failure (e.g. a closed pipe): the
/// container keeps running as it would with docker.
struct Sink {
    out: Box<dyn Write + Send>,
    broken: bool,
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if self
            .out
            .write_all(bytes)
            .and_then(|()| self.out.flush())
            .is_err()
        {
            self.broken = true;
        }
    }
}

/// The sending half of the agent's connection; a mutex keeps every frame whole.
#[derive(Clone)]
struct Writer(Arc<Mutex<UnixStream>>);

impl Writer {
    fn frame(&self, kind: FrameKind, payload: &[u8]) -> Result<(), FrameError> {
        let mut stream = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let process = match kind {
            FrameKind::Control => 0,
            _ => MAIN_PROCESS,
        };
        write_frame(&mut *stream, kind, process, payload)
    }

    fn control(&self, msg: &HostMessage) -> Result<(), FrameError> {
        self.frame(FrameKind::Control, &encode(msg))
    }

    /// A second descriptor of the stream, for reading.
    fn try_clone(&self) -> io::Result<UnixStream> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_clone()
    }
}

/// The stdin window: bytes we may still send before the agent credits them.
pub struct StdinGate {
    available: Mutex<u32>,
    changed: Condvar,
}

impl Default for StdinGate {
    fn default() -> Self {
        Self {
            available: Mutex::new(WINDOW),
            changed: Condvar::new(),
        }
    }
}

impl StdinGate {
    /// Waits for some window and takes at most `max` bytes of it.
    pub fn take(&self, max: usize) -> usize {
        let mut available = self
            .available
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *available == 0 {
            available = self
                .changed
                .wait(available)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let n = max.min(*available as usize);
        *available -= n as u32;
        n
    }

    /// Gives back `bytes` taken but not sent (a short read).
    pub fn give_back(&self, bytes: usize) {
        self.credit(u32::try_from(bytes).unwrap_or(u32::MAX));
    }

    /// The agent credited `bytes` (capped at the window).
    pub fn credit(&self, bytes: u32) {
        let mut available = self
            .available
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *available = available.saturating_add(bytes).min(WINDOW);
        self.changed.notify_all();
    }
}

/// Where the agent's output goes, and the credit it earns once written.
struct Outputs {
    stdout: Sink,
    stderr: Sink,
    writer: Writer,
}

impl Outputs {
    /// Writes a data frame of the main process and credits it (also when the sink is broken:
    /// the bytes are then dropped, and the container must not stall on them).
    fn write(&mut self, kind: FrameKind, process: u32, bytes: &[u8]) -> Result<(), String> {
        if process != MAIN_PROCESS {
            return Err(format!("the agent sent output of process {process}"));
        }
        let stream = match kind {
            FrameKind::Stdout => {
                self.stdout.write(bytes);
                OutputStream::Stdout
            }
            _ => {
                self.stderr.write(bytes);
                OutputStream::Stderr
            }
        };
        if bytes.is_empty() {
            return Ok(());
        }
        let credit = HostMessage::Credit {
            process,
            stream,
            bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        };
        // A broken connection is what the next read reports.
        let _ = self.writer.control(&credit);
        Ok(())
    }
}

/// Reads the agent's frames until its stream ends or it says `Exited` for the main process.
fn read_agent(mut stream: UnixStream, mut outputs: Outputs, tx: SyncSender<Event>) {
    let end = loop {
        let frame = match read_frame(&mut stream) {
            Ok(frame) => frame,
            Err(FrameError::Closed) => break None,
            Err(e) => break Some(crate::error_chain(&e)),
        };
        match frame.kind {
            FrameKind::Stdout | FrameKind::Stderr => {
                if let Err(e) = outputs.write(frame.kind, frame.process, &frame.payload) {
                    break Some(e);
                }
            }
            FrameKind::Stdin => break Some("the agent sent a stdin frame".to_owned()),
            FrameKind::Control => match decode::<AgentMessage>(&frame.payload) {
                Ok(msg) => {
                    let exited = matches!(
                        msg,
                        AgentMessage::Exited {
                            process: MAIN_PROCESS,
                            ..
                        }
                    );
                    if tx.send(Event::Agent(msg)).is_err() || exited {
                        return;
                    }
                }
                Err(e) => break Some(crate::error_chain(&e)),
            },
        }
    };
    let _ = tx.send(Event::AgentGone(end));
}

/// The line `moat run` prints on stderr each time the memory limit's OOM killer kills a process
/// of the container.
pub fn oom_notice(request: &RunRequest) -> String {
    oom_line(&request.id, &request.spec)
}

/// [`oom_notice`] for container `id` of `spec`.
pub fn oom_line(id: &str, spec: &oci_spec::runtime::Spec) -> String {
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    let limit = match limit {
        Some(bytes) => format!("{} MiB", (bytes as u64).div_ceil(1 << 20)),
        None => "none set: the VM's memory".to_owned(),
    };
    format!(
        "moat: container {id}: out of memory: a process was killed by the memory limit ({limit})"
    )
}

/// Reads `stdin` in chunks until its end, never more than the stdin window allows.
fn read_stdin(mut stdin: Box<dyn Read + Send>, gate: Arc<StdinGate>, tx: SyncSender<Event>) {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let max = gate.take(STDIN_CHUNK);
        let event = match stdin.read(&mut buf[..max]) {
            Ok(0) => Event::StdinEof,
            Ok(n) => {
                gate.give_back(max - n);
                Event::Stdin(buf[..n].to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                gate.give_back(max);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "stdin failed; closing the container's stdin");
                Event::StdinEof
            }
        };
        let eof = matches!(event, Event::StdinEof);
        if tx.send(event).is_err() || eof {
            return;
        }
    }
}

/// The agent's connection, from the host side.
pub struct Session {
    writer: Writer,
    gate: Arc<StdinGate>,
}

/// Where the main process is in its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `Create` sent.
    Creating,
    /// `Start` sent.
    Starting,
    /// `Started` read.
    Running,
}

impl Session {
    /// Wraps a stream whose `Ready` was already checked.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            writer: Writer(Arc::new(Mutex::new(stream))),
            gate: Arc::new(StdinGate::default()),
        }
    }

    fn send(&mut self, msg: &HostMessage) -> Result<(), SessionError> {
        self.writer.control(msg).map_err(SessionError::Send)
    }

    /// Sends `Shutdown`; the VM powers itself off after that.
    pub fn shutdown(&mut self) -> Result<(), SessionError> {
        self.send(&HostMessage::Shutdown)
    }

    /// Runs the container: sends `Create` with `request`, `Start` once created, then serves
    /// `events` until the agent reports the process's end or its failure to create or start
    /// it. `tx` is the sender of `events`, used by the threads this starts. With the spec's
    /// `process.terminal`, `SIGWINCH` becomes `Resize`.
    pub fn run(
        &mut self,
        request: RunRequest,
        stdio: Stdio,
        events: &Receiver<Event>,
        tx: &SyncSender<Event>,
    ) -> Result<Outcome, SessionError> {
        let terminal = request
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let oom = oom_notice(&request);
        let start = HostMessage::Start {
            container: request.id.clone(),
        };
        let sent = Instant::now();
        self.send(&HostMessage::Create(Box::new(request)))?;
        let reader = self.writer.try_clone().map_err(SessionError::Thread)?;
        let agent_tx = tx.clone();
        let outputs = Outputs {
            stdout: Sink {
                out: stdio.stdout,
                broken: false,
            },
            stderr: Sink {
                out: stdio.stderr,
                broken: false,
            },
            writer: self.writer.clone(),
        };
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_agent(reader, outputs, agent_tx))
            .map_err(SessionError::Thread)?;
        let mut stdin = stdio.stdin;
        let mut stage = Stage::Creating;
        loop {
            let event = events.recv().unwrap_or(Event::AgentGone(None));
            match event {
                Event::Agent(AgentMessage::Created { pid, .. }) if stage == Stage::Creating => {
                    tracing::debug!(pid, "container created");
                    stage = Stage::Starting;
                    self.send(&start)?;
                }
                Event::Agent(AgentMessage::Started {
                    process: MAIN_PROCESS,
                    pid,
                }) if stage == Stage::Starting => {
                    // From Create sent to Started read: the agent's container setup up to the
                    // exec, plus two round trips on the channel (bench/ reads this).
                    let setup_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    tracing::debug!(pid, setup_us, "container started");
                    stage = Stage::Running;
                    self.start_stdin(stdin.take(), tx)?;
                }
                Event::Agent(AgentMessage::Exited {
                    process: MAIN_PROCESS,
                    status,
                }) => return Ok(Outcome::Exited(status)),
                Event::Agent(AgentMessage::Error {
                    process: Some(MAIN_PROCESS),
                    kind,
                    message,
                }) if stage != Stage::Running => {
                    let message = crate::console::sanitize(&message);
                    return Ok(Outcome::Failed { kind, message });
                }
                Event::Agent(AgentMessage::StdinCredit {
                    process: MAIN_PROCESS,
                    bytes,
                }) => self.gate.credit(bytes),
                Event::Agent(AgentMessage::Oom { count, .. }) => {
                    tracing::debug!(count, "container out of memory");
                    eprintln!("{oom}");
                }
                Event::Agent(other) => {
                    tracing::debug!(message = ?other, "unexpected agent message")
                }
                Event::AgentGone(reason) => return Err(SessionError::Ended(reason)),
                Event::Signal(libc::SIGWINCH) if terminal => self.send_resize(),
                Event::Signal(libc::SIGWINCH) => {}
                Event::Signal(signo) => self.send_lossy(&HostMessage::Signal {
                    process: MAIN_PROCESS,
                    signo,
                    all: false,
                }),
                Event::Stdin(bytes) => self.send_stdin(&bytes),
                Event::StdinEof => self.send_lossy(&HostMessage::StdinEof {
                    process: MAIN_PROCESS,
                }),
            }
        }
    }

    /// Starts forwarding stdin, or closes the process's stdin at once when there is none.
    fn start_stdin(
        &mut self,
        stdin: Option<Box<dyn Read + Send>>,
        tx: &SyncSender<Event>,
    ) -> Result<(), SessionError> {
        let Some(stdin) = stdin else {
            self.send_lossy(&HostMessage::StdinEof {
                process: MAIN_PROCESS,
            });
            return Ok(());
        };
        let (tx, gate) = (tx.clone(), Arc::clone(&self.gate));
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || read_stdin(stdin, gate, tx))
            .map_err(SessionError::Thread)?;
        Ok(())
    }

    /// Sends a message whose loss only matters if the agent is gone, which the reader thread
    /// reports with a better diagnosis.
    fn send_lossy(&mut self, msg: &HostMessage) {
        if let Err(e) = self.send(msg) {
            tracing::debug!(error = %e, "cannot send to the agent");
        }
    }

    fn send_stdin(&mut self, bytes: &[u8]) {
        if let Err(e) = self.writer.frame(FrameKind::Stdin, bytes) {
            tracing::debug!(error = %e, "cannot send stdin to the agent");
        }
    }

    fn send_resize(&mut self) {
        if let Some((rows, cols)) = terminal::window_size() {
            self.send_lossy(&HostMessage::Resize {
                process: MAIN_PROCESS,
                rows,
                cols,
            });
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
