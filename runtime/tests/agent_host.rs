//! The runtime's boot and session code against the real guest agent, on the host.
//!
//! `moat-agent --test-connect unix:PATH` (helper D's host test mode) stands where the VM would
//! be: it is started with [`VmmProcess`], connects to the runtime's listener like the guest
//! agent does over vsock, and runs real processes. What is not covered here: the VMM, the guest
//! kernel, container isolation, and the hostname (the test mode refuses one).
//!
//! The agent binary is `$MOAT_TEST_AGENT` (e.g. after `cargo build -p moat-agent`,
//! `MOAT_TEST_AGENT=target/debug/moat-agent cargo test -p moat-runtime`); without it the tests
//! say so and pass (a guessed path could be a stale build).

use std::fs::File;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_protocol::{ErrorKind, ExitStatus, RootfsSpec, RunRequest};
use moat_runtime::boot::{self, Logs};
use moat_runtime::run::basic_spec;
use moat_runtime::session::{Event, Outcome, Session, Stdio, EVENT_QUEUE};
use moat_runtime::vmm::VmmProcess;

fn agent_binary() -> Option<PathBuf> {
    std::env::var_os("MOAT_TEST_AGENT").map(PathBuf::from)
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn request(args: &[&str]) -> RunRequest {
    request_on(args, None)
}

fn request_on(args: &[&str], terminal: Option<(u16, u16)>) -> RunRequest {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    RunRequest {
        id: "host-test".into(),
        process: moat_protocol::MAIN_PROCESS,
        rootfs: RootfsSpec {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            upper: moat_protocol::UpperLayer::Memory { mib: 64 },
            sectors: None,
        },
        volumes: vec![],
        spec: basic_spec(&args, &env, "/", (0, 0), terminal),
    }
}

/// Removes a directory when dropped, also when a test fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ran {
    outcome: Outcome,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Starts the agent, runs `args` with `stdin`, shuts the agent down, returns what happened.
/// `signal_after` sends that signal once the process runs.
fn run_in_agent(
    agent: &Path,
    req: RunRequest,
    stdin: Option<Vec<u8>>,
    signal_after: Option<(Duration, i32)>,
) -> Ran {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("moat-rt-host-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(dir.clone());
    let sock = dir.join("vsock.sock_1024");
    let listener = boot::listen(&sock).unwrap();
    let log = File::create(dir.join("agent.log")).unwrap();
    let target = format!("unix:{}", sock.display());
    let mut proc = VmmProcess::spawn(
        agent,
        &["--test-connect".into(), target.into()],
        &log,
        false,
    )
    .unwrap();
    let (tx, events) = sync_channel(EVENT_QUEUE);
    let (vmm_log, console_log) = (dir.join("agent.log"), dir.join("console.log"));
    let logs = Logs {
        vmm_log: &vmm_log,
        console_log: &console_log,
    };
    let stream = boot::wait_for_agent(listener, &proc, &logs, Duration::from_secs(20), &events)
        .expect("agent ready");
    let (stdout, stderr) = (Shared::default(), Shared::default());
    let stdio = Stdio {
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
        stdin: stdin.map(|b| Box::new(Cursor::new(b)) as Box<dyn Read + Send>),
    };
    if let Some((delay, signo)) = signal_after {
        let tx = tx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = tx.send(Event::Signal(signo));
        });
    }
    let mut session = Session::new(stream);
    let outcome = session.run(req, stdio, &events, &tx).expect("session");
    session.shutdown().unwrap();
    let status = proc.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.is_some(), "the agent did not exit after shutdown");
    proc.kill_and_reap();
    Ran {
        outcome,
        stdout: stdout.take(),
        stderr: stderr.take(),
    }
}

macro_rules! agent_or_skip {
    () => {
        match agent_binary() {
            Some(agent) => agent,
            None => {
                eprintln!("skipped: set MOAT_TEST_AGENT to a moat-agent binary");
                return;
            }
        }
    };
}

#[test]
fn status_and_separate_streams() {
    let agent = agent_or_skip!();
    let r = run_in_agent(
        &agent,
        request(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        None,
        None,
    );
    assert_eq!(r.outcome, Outcome::Exited(ExitStatus::Code { code: 3 }));
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
}

#[test]
fn binary_stdin_round_trip_beyond_one_frame() {
    let agent = agent_or_skip!();
    // 3 MiB of every byte value: several stdin and stdout frames each way.
    let data: Vec<u8> = (0..3 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let r = run_in_agent(&agent, request(&["cat"]), Some(data.clone()), None);
    assert_eq!(r.outcome, Outcome::Exited(ExitStatus::Code { code: 0 }));
    assert!(
        r.stdout == data,
        "stdout differs ({} bytes)",
        r.stdout.len()
    );
}

#[test]
fn no_stdin_means_eof_at_once() {
    let agent = agent_or_skip!();
    let r = run_in_agent(&agent, request(&["cat"]), None, None);
    assert_eq!(r.outcome, Outcome::Exited(ExitStatus::Code { code: 0 }));
    assert!(r.stdout.is_empty());
}

#[test]
fn exec_failures_have_kinds() {
    let agent = agent_or_skip!();
    let r = run_in_agent(&agent, request(&["/nonexistent/command"]), None, None);
    assert!(
        matches!(
            r.outcome,
            Outcome::Failed {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
    let r = run_in_agent(&agent, request(&["/etc/hostname"]), None, None);
    assert!(
        matches!(
            r.outcome,
            Outcome::Failed {
                kind: ErrorKind::NotExecutable,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );
}

#[test]
fn signals_reach_the_process() {
    let agent = agent_or_skip!();
    let signal = Some((Duration::from_millis(300), libc::SIGTERM));
    let r = run_in_agent(&agent, request(&["sleep", "30"]), None, signal);
    assert_eq!(
        r.outcome,
        Outcome::Exited(ExitStatus::Signaled {
            signo: libc::SIGTERM
        })
    );
}

#[test]
fn terminal_mode_gets_its_size() {
    let agent = agent_or_skip!();
    let req = request_on(&["sh", "-c", "stty size; echo err >&2"], Some((30, 100)));
    let r = run_in_agent(&agent, req, None, None);
    assert_eq!(r.outcome, Outcome::Exited(ExitStatus::Code { code: 0 }));
    // One terminal: both streams arrive on stdout, with the terminal's line endings.
    assert_eq!(String::from_utf8_lossy(&r.stdout), "30 100\r\nerr\r\n");
    assert!(r.stderr.is_empty());
}
