//! Tests of [`Session`] against an in-process agent on a socket pair.

use std::io::Cursor;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use moat_protocol::{RootfsSpec, MAIN_PROCESS, WINDOW};

use super::*;

/// A `Write` whose bytes the test can read afterwards.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

fn request(terminal: bool) -> RunRequest {
    RunRequest {
        id: "t".into(),
        process: moat_protocol::MAIN_PROCESS,
        rootfs: RootfsSpec {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            upper: moat_protocol::UpperLayer::Memory { mib: 64 },
            sectors: None,
        },
        volumes: vec![],
        spec: crate::run::basic_spec(
            &["sh".into()],
            &[],
            "/",
            (0, 0),
            terminal.then_some((24, 80)),
        ),
    }
}

/// The agent's side: helpers to read host messages and send agent ones.
struct Agent(UnixStream);

impl Agent {
    fn send(&mut self, msg: &AgentMessage) {
        write_frame(&mut self.0, FrameKind::Control, 0, &encode(msg)).unwrap();
    }
    fn data(&mut self, kind: FrameKind, bytes: &[u8]) {
        write_frame(&mut self.0, kind, MAIN_PROCESS, bytes).unwrap();
    }
    /// The next frame that is not a `Credit`.
    fn recv(&mut self) -> (FrameKind, Vec<u8>) {
        loop {
            let frame = read_frame(&mut self.0).unwrap();
            let credit = frame.kind == FrameKind::Control
                && matches!(
                    decode::<HostMessage>(&frame.payload),
                    Ok(HostMessage::Credit { .. })
                );
            if !credit {
                return (frame.kind, frame.payload);
            }
        }
    }
    fn recv_msg(&mut self) -> HostMessage {
        let (kind, payload) = self.recv();
        assert_eq!(kind, FrameKind::Control);
        decode(&payload).unwrap()
    }
    /// Answers `Create` and `Start`; the request.
    fn start(&mut self) -> Box<RunRequest> {
        let HostMessage::Create(req) = self.recv_msg() else {
            panic!("expected create")
        };
        self.send(&AgentMessage::Created { process: 1, pid: 2 });
        assert_eq!(
            self.recv_msg(),
            HostMessage::Start {
                container: "t".into()
            }
        );
        self.send(&AgentMessage::Started {
            process: MAIN_PROCESS,
            pid: 2,
        });
        req
    }
    fn exited(&mut self, status: ExitStatus) {
        self.send(&AgentMessage::Exited {
            process: MAIN_PROCESS,
            status,
        });
    }
}

const EOF: HostMessage = HostMessage::StdinEof {
    process: MAIN_PROCESS,
};

fn spawn_agent(script: impl FnOnce(Agent) + Send + 'static) -> (UnixStream, JoinHandle<()>) {
    let (host, agent) = UnixStream::pair().unwrap();
    (host, std::thread::spawn(move || script(Agent(agent))))
}

fn make_stdio(stdin: Option<&'static [u8]>) -> (Stdio, Shared, Shared) {
    let (out, err) = (Shared::default(), Shared::default());
    let stdio = Stdio {
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
        stdin: stdin.map(|b| Box::new(Cursor::new(b)) as Box<dyn Read + Send>),
    };
    (stdio, out, err)
}

#[test]
fn output_is_kept_apart_and_binary_safe() {
    let all_bytes: Vec<u8> = (0..=255).collect();
    let expected = all_bytes.clone();
    let (host, agent) = spawn_agent(move |mut a| {
        let r = a.start();
        assert_eq!(
            r.spec.process().as_ref().unwrap().args().as_deref(),
            Some(&["sh".to_string()][..])
        );
        assert_eq!(a.recv_msg(), EOF);
        a.data(FrameKind::Stdout, &all_bytes);
        a.data(FrameKind::Stderr, b"oops\n");
        a.data(FrameKind::Stdout, b"");
        a.exited(ExitStatus::Code { code: 3 });
        assert_eq!(a.recv_msg(), HostMessage::Shutdown);
    });
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let (stdio, out, err) = make_stdio(None);
    let mut session = Session::new(host);
    let outcome = session.run(request(false), stdio, &rx, &tx).unwrap();
    assert_eq!(outcome, Outcome::Exited(ExitStatus::Code { code: 3 }));
    session.shutdown().unwrap();
    agent.join().unwrap();
    assert_eq!(out.bytes(), expected);
    assert_eq!(err.bytes(), b"oops\n");
}

#[test]
fn stdin_is_forwarded_then_closed() {
    let (host, agent) = spawn_agent(|mut a| {
        a.start();
        let mut got = Vec::new();
        loop {
            match a.recv() {
                (FrameKind::Stdin, bytes) => got.extend(bytes),
                (FrameKind::Control, payload) => {
                    assert_eq!(decode::<HostMessage>(&payload).unwrap(), EOF);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        a.data(FrameKind::Stdout, &got);
        a.exited(ExitStatus::Signaled { signo: 9 });
    });
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let (stdio, out, _) = make_stdio(Some(b"line one\nline two\n"));
    let outcome = Session::new(host)
        .run(request(false), stdio, &rx, &tx)
        .unwrap();
    assert_eq!(outcome, Outcome::Exited(ExitStatus::Signaled { signo: 9 }));
    agent.join().unwrap();
    assert_eq!(out.bytes(), b"line one\nline two\n");
}

#[test]
fn signals_are_forwarded_and_winch_only_with_a_terminal() {
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let signal_tx = tx.clone();
    let (host, agent) = spawn_agent(move |mut a| {
        a.start();
        assert_eq!(a.recv_msg(), EOF);
        signal_tx.send(Event::Signal(libc::SIGWINCH)).unwrap();
        signal_tx.send(Event::Signal(libc::SIGTERM)).unwrap();
        assert_eq!(
            a.recv_msg(),
            HostMessage::Signal {
                process: MAIN_PROCESS,
                signo: libc::SIGTERM,
                all: false,
            }
        );
        a.exited(ExitStatus::Code { code: 0 });
    });
    let (stdio, _, _) = make_stdio(None);
    let outcome = Session::new(host)
        .run(request(false), stdio, &rx, &tx)
        .unwrap();
    assert_eq!(outcome, Outcome::Exited(ExitStatus::Code { code: 0 }));
    agent.join().unwrap();
}

#[test]
fn start_failure_is_an_outcome() {
    let (host, agent) = spawn_agent(|mut a| {
        a.recv_msg();
        a.send(&AgentMessage::Error {
            process: Some(MAIN_PROCESS),
            kind: ErrorKind::NotFound,
            message: "nope: \x1b[2Jnot found".into(),
        });
        assert_eq!(a.recv_msg(), HostMessage::Shutdown);
    });
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let (stdio, _, _) = make_stdio(None);
    let mut session = Session::new(host);
    let outcome = session.run(request(false), stdio, &rx, &tx).unwrap();
    assert_eq!(
        outcome,
        Outcome::Failed {
            kind: ErrorKind::NotFound,
            message: "nope: ?[2Jnot found".into()
        }
    );
    session.shutdown().unwrap();
    agent.join().unwrap();
}

#[test]
fn a_dropped_connection_or_garbage_ends_the_session() {
    let (host, agent) = spawn_agent(|mut a| {
        a.start();
        a.data(FrameKind::Stdout, b"partial");
    });
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let (stdio, out, _) = make_stdio(None);
    let err = Session::new(host)
        .run(request(false), stdio, &rx, &tx)
        .unwrap_err();
    // A clean end of stream, or a reset if our StdinEof was still unread when the agent closed.
    assert!(matches!(err, SessionError::Ended(_)), "{err}");
    agent.join().unwrap();
    assert_eq!(out.bytes(), b"partial");

    let (host, agent) = spawn_agent(|mut a| {
        a.recv_msg();
        a.data(FrameKind::Control, b"{not json");
        // Keep the stream open: the host must stop on the garbage alone.
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    let (stdio, _, _) = make_stdio(None);
    let err = Session::new(host)
        .run(request(false), stdio, &rx, &tx)
        .unwrap_err();
    assert!(matches!(err, SessionError::Ended(Some(_))), "{err}");
    agent.join().unwrap();
}

#[test]
fn oom_events_do_not_end_the_session() {
    let (host, agent) = spawn_agent(|mut a| {
        a.start();
        a.send(&AgentMessage::Oom {
            container: "t".into(),
            count: 1,
        });
        a.send(&AgentMessage::Oom {
            container: "t".into(),
            count: 2,
        });
        a.exited(ExitStatus::Signaled { signo: 9 });
    });
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let (stdio, _, _) = make_stdio(None);
    let outcome = Session::new(host)
        .run(request(false), stdio, &rx, &tx)
        .unwrap();
    assert_eq!(outcome, Outcome::Exited(ExitStatus::Signaled { signo: 9 }));
    agent.join().unwrap();
}

#[test]
fn oom_notice_names_the_container_and_its_limit() {
    let mut req = request(false);
    assert_eq!(
        oom_notice(&req),
        "moat: container t: out of memory: a process was killed by the memory limit \
         (none set: the VM's memory)"
    );
    let opts = moat_spec::RunOptions {
        args: vec!["sh".into()],
        cwd: "/".into(),
        limits: moat_spec::Limits {
            memory: Some(64 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    req.spec = opts.to_spec();
    assert_eq!(
        oom_notice(&req),
        "moat: container t: out of memory: a process was killed by the memory limit (64 MiB)"
    );
}

#[test]
fn output_is_credited_and_stdin_keeps_to_its_window() {
    let data: &'static [u8] = Box::leak(vec![7u8; 3 * WINDOW as usize].into_boxed_slice());
    let (host, agent) = spawn_agent(|mut a| {
        a.start();
        a.data(FrameKind::Stderr, b"0123456789");
        // The first credit: the host wrote the bytes to its sink.
        let frame = read_frame(&mut a.0).unwrap();
        let mut got = 0;
        match decode::<HostMessage>(&frame.payload) {
            Ok(HostMessage::Credit {
                process: MAIN_PROCESS,
                stream: OutputStream::Stderr,
                bytes: 10,
            }) => {}
            _ => {
                assert_eq!(frame.kind, FrameKind::Stdin);
                got += frame.payload.len();
            }
        }
        while got < WINDOW as usize {
            let (kind, bytes) = a.recv();
            if kind == FrameKind::Stdin {
                got += bytes.len();
            }
        }
        assert_eq!(got, WINDOW as usize);
        // Nothing more comes until the window is credited.
        a.0.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        assert!(read_frame(&mut a.0).is_err(), "stdin past the window");
        a.0.set_read_timeout(None).unwrap();
        let mut total = got;
        let mut credited = 0;
        loop {
            if credited < total {
                let bytes = (total - credited) as u32;
                a.send(&AgentMessage::StdinCredit {
                    process: MAIN_PROCESS,
                    bytes,
                });
                credited = total;
            }
            match a.recv() {
                (FrameKind::Stdin, bytes) => total += bytes.len(),
                (FrameKind::Control, payload) => {
                    assert_eq!(decode::<HostMessage>(&payload).unwrap(), EOF);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(total - credited <= WINDOW as usize);
        }
        assert_eq!(total, 3 * WINDOW as usize);
        a.exited(ExitStatus::Code { code: 0 });
    });
    let (tx, rx) = sync_channel(EVENT_QUEUE);
    let (stdio, _, err) = make_stdio(Some(data));
    let outcome = Session::new(host)
        .run(request(false), stdio, &rx, &tx)
        .unwrap();
    assert_eq!(outcome, Outcome::Exited(ExitStatus::Code { code: 0 }));
    agent.join().unwrap();
    assert_eq!(err.bytes(), b"0123456789");
}
