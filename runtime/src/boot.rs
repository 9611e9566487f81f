//! From a started VMM to a connected agent: accept its connection with a deadline while
//! watching the VMM, then check its `Ready`.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use moat_protocol::{AgentMessage, FrameError, FrameKind, PROTOCOL_VERSION};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::console;
use crate::session::Event;
use crate::vmm::{VmmError, VmmProcess};

/// How often the VMM and signals are checked while waiting for the agent.
const TICK: Duration = Duration::from_millis(25);

/// Errors while the VM boots.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The agent's listener could not be created.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Accepting the agent's connection failed.
    #[error("cannot accept the agent's connection")]
    Accept(#[source] io::Error),
    /// The kernel killed the VMM for a syscall outside its seccomp filter.
    #[error("moat-vmm was killed by its seccomp filter (SIGSYS)")]
    SeccompKilled,
    /// The VMM exited before the agent connected.
    #[error("VM exited before the agent was ready ({status}){detail}")]
    VmmExited {
        /// The VMM's exit status, described.
        status: String,
        /// `: <last vmm.log line>` and the console hint, or empty.
        detail: String,
    },
    /// The agent did not connect and say `Ready` in time.
    #[error("the guest agent did not become ready within {secs} s ({stage}){detail}")]
    Timeout {
        /// The timeout.
        secs: u64,
        /// How far it got: never connected, or connected without `Ready`.
        stage: &'static str,
        /// The console hint and what the VMM's threads were doing, or empty.
        detail: String,
    },
    /// The agent closed the connection or sent garbage before `Ready`.
    #[error("the guest agent failed before it was ready{detail}")]
    AgentFailed {
        /// What went wrong, with the console hint.
        detail: String,
    },
    /// The agent speaks another protocol version.
    #[error("the guest agent speaks protocol version {agent}, this moat speaks {PROTOCOL_VERSION} (agent {agent_version})")]
    Version {
        /// The agent's version.
        agent: u32,
        /// The agent's own version string, sanitized.
        agent_version: String,
    },
    /// A signal asked us to stop before the container started.
    #[error("interrupted by signal {0} before the container started")]
    Interrupted(i32),
    /// Watching the VMM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// Binds the agent's listener (before the VMM starts, so the agent never finds it missing).
pub fn listen(path: &Path) -> Result<UnixListener, BootError> {
    let listen_err = |source| BootError::Listen {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(listener)
}

/// Where to look when explaining a failed boot.
pub struct Logs<'a> {
    /// The VMM's stdout and stderr.
    pub vmm_log: &'a Path,
    /// The guest console.
    pub console_log: &'a Path,
}

impl Logs<'_> {
    /// `<vmm line>; <console hint>`, or whichever parts exist.
    fn hints(&self, with_vmm: bool) -> Vec<String> {
        let mut parts = Vec::new();
        if with_vmm {
            parts.extend(console::last_line(self.vmm_log));
        }
        parts.extend(console::guest_hint(self.console_log));
        parts
    }

    /// `: ` and the hints, or nothing when there are none.
    fn detail(&self, with_vmm: bool) -> String {
        let parts = self.hints(with_vmm);
        if parts.is_empty() {
            String::new()
        } else {
            format!(": {}", parts.join("; "))
        }
    }
}

/// Waits for the agent to connect and say `Ready`, until `deadline`.
///
/// The listener takes exactly one connection, the agent's: it is closed and its socket file
/// unlinked as soon as that connection is accepted (before any container exists), so no host
/// listener stays open for a process in the guest to reach. Fails if the VMM exits first, the
/// deadline passes, or a terminating signal arrives in `events`. The returned stream is
/// blocking, without timeouts.
pub fn wait_for_agent(
    listener: UnixListener,
    vmm: &VmmProcess,
    logs: &Logs<'_>,
    timeout: Duration,
    events: &Receiver<Event>,
) -> Result<UnixStream, BootError> {
    let deadline = Instant::now() + timeout;
    let timed_out = |stage| BootError::Timeout {
        secs: timeout.as_secs(),
        stage,
        detail: timeout_detail(vmm, logs),
    };
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BootError::Accept(e)),
        }
        check_vmm_and_signals(vmm, logs, events)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("it never connected"));
        }
        let ts = Timespec::try_from(left.min(TICK)).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&listener, PollFlags::IN)];
        // EINTR and timeouts both just go round the loop again.
        let _ = poll(&mut fds, Some(&ts));
    };
    close_listener(listener);
    stream.set_nonblocking(false).map_err(BootError::Accept)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(BootError::Accept)?;
    let mut reader = &stream;
    let ready = moat_protocol::read_frame(&mut reader);
    check_vmm_and_signals(vmm, logs, events)?;
    let frame = match ready {
        Ok(frame) if frame.kind == FrameKind::Control => frame,
        Ok(frame) => return Err(agent_failed(format!("sent a {:?} frame", frame.kind), logs)),
        Err(FrameError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(timed_out("it connected but did not say ready"));
        }
        Err(e) => return Err(agent_failed(crate::error_chain(&e), logs)),
    };
    match moat_protocol::decode::<AgentMessage>(&frame.payload) {
        Ok(AgentMessage::Ready {
            protocol_version, ..
        }) if protocol_version == PROTOCOL_VERSION => {}
        Ok(AgentMessage::Ready {
            protocol_version,
            agent_version,
        }) => {
            return Err(BootError::Version {
                agent: protocol_version,
                agent_version: console::sanitize(&agent_version),
            });
        }
        Ok(_) => return Err(agent_failed("sent another message than ready".into(), logs)),
        Err(e) => return Err(agent_failed(crate::error_chain(&e), logs)),
    }
    stream.set_read_timeout(None).map_err(BootError::Accept)?;
    Ok(stream)
}

/// Closes the agent's listener and unlinks its socket file: nothing can connect any more.
fn close_listener(listener: UnixListener) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    drop(listener);
    if let Some(path) = path {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::debug!(path = %path.display(), error = %e, "cannot unlink the agent's listener");
        }
    }
}

/// `: <hints>; vmm threads: <what each VMM thread is doing>; kvm: <exit rates>`: enough to
/// tell a guest that spins from one that waits. SIGUSR1 first asks `moat-vmm` to log a vCPU's
/// registers (docs/seccomp.md), so the VMM line of the hints says where the guest is.
fn timeout_detail(vmm: &VmmProcess, logs: &Logs<'_>) -> String {
    let _ = rustix::process::kill_process(vmm.pid(), rustix::process::Signal::USR1);
    let pid = vmm.pid().as_raw_nonzero().get();
    let threads = crate::threads::summary(pid);
    let rates = crate::threads::kvm_rates(pid, Duration::from_secs(1));
    if rates.is_empty() {
        // The time the kvm rates take otherwise: the vCPU answers SIGUSR1 within it.
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut parts = logs.hints(true);
    if !threads.is_empty() {
        parts.push(format!("vmm threads: {threads}"));
    }
    if !rates.is_empty() {
        parts.push(format!("kvm: {rates}"));
    }
    format!(": {}", parts.join("; "))
}

fn agent_failed(what: String, logs: &Logs<'_>) -> BootError {
    let mut parts = vec![console::sanitize(&what)];
    parts.extend(logs.hints(false));
    BootError::AgentFailed {
        detail: format!(": {}", parts.join("; ")),
    }
}

fn check_vmm_and_signals(
    vmm: &VmmProcess,
    logs: &Logs<'_>,
    events: &Receiver<Event>,
) -> Result<(), BootError> {
    if let Some(status) = vmm.exited()? {
        if crate::vmm::killed_by_seccomp(status) {
            return Err(BootError::SeccompKilled);
        }
        let status = crate::vmm::describe(status);
        return Err(BootError::VmmExited {
            status,
            detail: logs.detail(true),
        });
    }
    loop {
        match events.try_recv() {
            Ok(Event::Signal(signo)) if signo != libc::SIGWINCH => {
                return Err(BootError::Interrupted(signo));
            }
            Ok(_) => {}
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::mpsc::sync_channel;

    use moat_protocol::{encode, write_frame};

    use super::*;
    use crate::testutil::{fake_vmm, TempDir};

    fn ready(version: u32) -> Vec<u8> {
        encode(&AgentMessage::Ready {
            protocol_version: version,
            agent_version: "t".into(),
        })
    }

    struct Fixture {
        tmp: TempDir,
        vmm: VmmProcess,
    }

    fn fixture(name: &str, vmm_script: &str) -> Fixture {
        let tmp = TempDir::new(name);
        let vmm_bin = fake_vmm(tmp.path(), vmm_script);
        let log = File::create(tmp.path().join("vmm.log")).unwrap();
        let vmm = VmmProcess::spawn(&vmm_bin, &[], &log, false).unwrap();
        Fixture { tmp, vmm }
    }

    fn wait(
        f: &Fixture,
        timeout: Duration,
        events: &Receiver<Event>,
    ) -> Result<UnixStream, BootError> {
        let vmm_log = f.tmp.path().join("vmm.log");
        let console_log = f.tmp.path().join("console.log");
        let logs = Logs {
            vmm_log: &vmm_log,
            console_log: &console_log,
        };
        let path = f.tmp.path().join("vsock.sock_1024");
        let _ = std::fs::remove_file(&path);
        let listener = listen(&path).unwrap();
        wait_for_agent(listener, &f.vmm, &logs, timeout, events)
    }

    #[test]
    fn vmm_exit_is_reported_with_its_last_line() {
        let f = fixture(
            "boot-exit",
            "echo 'moat-vmm: kernel /x: not found' >&2; exit 1",
        );
        let (_tx, rx) = sync_channel(1);
        let err = wait(&f, Duration::from_secs(10), &rx).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VM exited before the agent was ready (status 1): moat-vmm: kernel /x: not found"
        );
    }

    #[test]
    fn timeout_and_signal() {
        let f = fixture("boot-timeout", "trap '' USR1; exec sleep 60");
        let (tx, rx) = sync_channel(4);
        std::fs::write(
            f.tmp.path().join("console.log"),
            "Kernel panic - not syncing: x\n",
        )
        .unwrap();
        let err = wait(&f, Duration::from_millis(100), &rx).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the guest agent did not become ready within 0 s (it never connected): the guest kernel panicked: Kernel panic - not syncing: x; vmm threads: sleep S 0.00s"
        );
        tx.send(Event::Signal(libc::SIGWINCH)).unwrap();
        tx.send(Event::Signal(libc::SIGINT)).unwrap();
        let err = wait(&f, Duration::from_secs(10), &rx).unwrap_err();
        assert!(matches!(err, BootError::Interrupted(libc::SIGINT)), "{err}");
    }

    /// Connects once the test's `wait` has bound the listener.
    fn connect_retry(path: &Path) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn ready_handshake() {
        let f = fixture("boot-ready", "exec sleep 60");
        let (_tx, rx) = sync_channel(1);
        let path = f.tmp.path().join("vsock.sock_1024");
        let agent = std::thread::spawn(move || {
            let mut s = connect_retry(&path);
            write_frame(&mut s, FrameKind::Control, 0, &ready(PROTOCOL_VERSION)).unwrap();
            s
        });
        wait(&f, Duration::from_secs(10), &rx).unwrap();
        drop(agent.join().unwrap());
        // One connection, then the listener is gone: closed and unlinked.
        let path = f.tmp.path().join("vsock.sock_1024");
        assert!(!path.exists(), "the listener's socket is still there");
        assert!(UnixStream::connect(&path).is_err());

        let path = f.tmp.path().join("vsock.sock_1024");
        let agent = std::thread::spawn(move || {
            let mut s = connect_retry(&path);
            write_frame(&mut s, FrameKind::Control, 0, &ready(99)).unwrap();
            s
        });
        let err = wait(&f, Duration::from_secs(10), &rx).unwrap_err();
        assert!(matches!(err, BootError::Version { agent: 99, .. }), "{err}");
        drop(agent.join().unwrap());

        let path = f.tmp.path().join("vsock.sock_1024");
        let agent = std::thread::spawn(move || {
            let mut s = connect_retry(&path);
            write_frame(&mut s, FrameKind::Control, 0, b"{\"type\":\"bogus\"}").unwrap();
        });
        let err = wait(&f, Duration::from_secs(10), &rx).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("the guest agent failed before it was ready: malformed"));
        agent.join().unwrap();
    }
}
