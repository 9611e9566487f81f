//! Execs (protocol v4): several processes at once in one container, each with its own stdio
//! under flow control, and the container's end killing them before its own `Exited`.

use std::collections::HashMap;

use moat_protocol::{ExecRequest, Frame, FIRST_EXEC, WINDOW};

use super::*;

/// What the test has seen of each process.
#[derive(Default, Debug)]
struct Seen {
    stdout: HashMap<u32, Vec<u8>>,
    exited: Vec<(u32, ExitStatus)>,
    errors: Vec<(Option<u32>, ErrorKind, String)>,
    /// The process of each data frame, in arrival order.
    order: Vec<u32>,
    other: Vec<AgentMessage>,
}

impl Host {
    fn exec_request(&mut self, process: u32, p: &ProcessSpec, user: Option<&str>) {
        let spec = p.to_oci(None, false).process().clone().unwrap();
        self.send(&HostMessage::Exec(Box::new(ExecRequest {
            container: self.container.clone(),
            process,
            spec,
            user: user.map(str::to_owned),
        })));
    }

    /// Starts exec `process`: its pid.
    fn exec(&mut self, process: u32, p: &ProcessSpec) -> i32 {
        self.exec_request(process, p, None);
        match self.recv_control() {
            AgentMessage::Started { process: id, pid } if id == process => pid,
            other => panic!("expected Started for {process}, got {other:?}"),
        }
    }

    /// Starts exec `process` while others run: their frames go to `seen` (and are credited).
    fn exec_seen(&mut self, seen: &mut Seen, process: u32, p: &ProcessSpec) {
        self.exec_request(process, p, None);
        self.watch(seen, Some(&[1, 3]), |s| {
            s.other
                .iter()
                .any(|m| matches!(m, AgentMessage::Started { process: id, .. } if *id == process))
        });
    }

    fn frame(&mut self) -> Frame {
        read_frame(&mut self.conn).unwrap()
    }

    /// Reads frames into `seen` until `done` says so; credits output of the processes in
    /// `credited` (all when `None`).
    fn watch(&mut self, seen: &mut Seen, credited: Option<&[u32]>, done: impl Fn(&Seen) -> bool) {
        while !done(seen) {
            let f = self.frame();
            match f.kind {
                FrameKind::Stdout | FrameKind::Stderr => {
                    if credited.is_none_or(|c| c.contains(&f.process)) {
                        self.credit(f.kind, f.process, f.payload.len());
                    }
                    seen.order.push(f.process);
                    seen.stdout.entry(f.process).or_default().extend(f.payload);
                }
                FrameKind::Control => match decode(&f.payload).unwrap() {
                    AgentMessage::Exited { process, status } => seen.exited.push((process, status)),
                    AgentMessage::Error {
                        process,
                        kind,
                        message,
                    } => seen.errors.push((process, kind, message)),
                    AgentMessage::StdinCredit { .. } => {}
                    other => seen.other.push(other),
                },
                FrameKind::Stdin => panic!("stdin frame from the agent"),
            }
        }
    }

    fn error_for(&mut self, process: Option<u32>) -> (ErrorKind, String) {
        match self.recv_control() {
            AgentMessage::Error {
                process: p,
                kind,
                message,
            } if p == process => (kind, message),
            other => panic!("expected an error for {process:?}, got {other:?}"),
        }
    }
}

fn exited(seen: &Seen, process: u32) -> Option<ExitStatus> {
    seen.exited
        .iter()
        .find(|(p, _)| *p == process)
        .map(|(_, s)| *s)
}

fn text(seen: &Seen, process: u32) -> String {
    String::from_utf8_lossy(seen.stdout.get(&process).map_or(&[][..], |v| v)).into_owned()
}

#[test]
fn two_execs_at_once_with_interleaved_output_and_exit_codes() {
    let mut host = Host::start();
    host.run(spec(&["sleep", "30"])).unwrap();
    let a = "for i in 1 2 3 4 5; do echo a$i; sleep 0.1; done; exit 7";
    let b = "for i in 1 2 3 4 5; do echo b$i >&2; sleep 0.1; done";
    let mut seen = Seen::default();
    host.exec(2, &spec(&["sh", "-c", a]));
    host.exec_seen(&mut seen, 3, &spec(&["sh", "-c", b]));
    // Credit what came before.
    let early = seen.stdout.get(&2).map_or(0, Vec::len);
    host.credit(FrameKind::Stdout, 2, early);
    host.watch(&mut seen, None, |s| s.exited.len() == 2);
    assert_eq!(text(&seen, 2), "a1\na2\na3\na4\na5\n");
    assert_eq!(text(&seen, 3), "b1\nb2\nb3\nb4\nb5\n");
    assert_eq!(exited(&seen, 2), Some(ExitStatus::Code { code: 7 }));
    assert_eq!(exited(&seen, 3), Some(ExitStatus::Code { code: 0 }));
    // Interleaved: exec 3's first frame came before exec 2's last.
    let first_b = seen.order.iter().position(|p| *p == 3).unwrap();
    let last_a = seen.order.iter().rposition(|p| *p == 2).unwrap();
    assert!(first_b < last_a, "{:?}", seen.order);
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    host.signal(SIGTERM);
    let out = host.collect();
    assert_eq!(out.status, Some(ExitStatus::Signaled { signo: SIGTERM }));
    host.shutdown();
}

#[test]
fn an_exec_never_credited_stalls_only_itself() {
    let mut host = Host::start();
    host.run(spec(&["cat"])).unwrap();
    // 3 MiB the host never credits: the agent sends one window, the process blocks.
    let mut seen = Seen::default();
    host.exec(
        2,
        &spec(&["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"]),
    );
    host.exec_seen(&mut seen, 3, &spec(&["sh", "-c", "sleep 0.3; cat; exit 3"]));
    host.stdin_to(3, b"to three\n");
    host.send(&HostMessage::StdinEof { process: 3 });
    host.watch(&mut seen, Some(&[1, 3]), |s| exited(s, 3).is_some());
    assert_eq!(text(&seen, 3), "to three\n");
    assert_eq!(exited(&seen, 3), Some(ExitStatus::Code { code: 3 }));
    // The main process still flows both ways.
    host.stdin(b"ping\n");
    host.watch(&mut seen, Some(&[1, 3]), |s| text(s, 1) == "ping\n");
    assert_eq!(seen.stdout.get(&2).map(Vec::len), Some(WINDOW as usize));
    assert_eq!(exited(&seen, 2), None);
    // Credited, exec 2 finishes.
    host.credit(FrameKind::Stdout, 2, WINDOW as usize);
    host.watch(&mut seen, None, |s| exited(s, 2).is_some());
    assert_eq!(seen.stdout[&2].len(), 3_000_000 + "done\n".len());
    assert_eq!(exited(&seen, 2), Some(ExitStatus::Code { code: 0 }));
    host.eof();
    let out = host.collect();
    assert_eq!(out.status, Some(ExitStatus::Code { code: 0 }));
    host.shutdown();
}

#[test]
fn an_exec_with_a_terminal_and_a_resize() {
    let mut host = Host::start();
    host.run(spec(&["sleep", "30"])).unwrap();
    let mut p = spec(&[
        "sh",
        "-c",
        "stty size; tty >/dev/null && echo tty; read x; stty size",
    ]);
    (p.terminal, p.rows, p.cols) = (true, 20, 70);
    host.exec(2, &p);
    let mut seen = Seen::default();
    host.watch(&mut seen, None, |s| text(s, 2).contains("tty"));
    host.send(&HostMessage::Resize {
        process: 2,
        rows: 40,
        cols: 120,
    });
    host.stdin_to(2, b"\n");
    host.watch(&mut seen, None, |s| exited(s, 2).is_some());
    let out = text(&seen, 2);
    assert!(out.starts_with("20 70\r\ntty\r\n"), "{out:?}");
    assert!(out.ends_with("40 120\r\n"), "{out:?}");
    assert_eq!(exited(&seen, 2), Some(ExitStatus::Code { code: 0 }));
    host.signal(SIGTERM);
    host.collect();
    host.shutdown();
}

#[test]
fn a_signal_reaches_one_exec_and_the_main_exit_kills_the_rest_first() {
    let mut host = Host::start();
    host.run(spec(&["sh", "-c", "read x; exit 4"])).unwrap();
    host.exec(2, &spec(&["sleep", "30"]));
    host.exec(3, &spec(&["sleep", "30"]));
    host.send(&HostMessage::Signal {
        process: 2,
        signo: SIGTERM,
        all: false,
    });
    let mut seen = Seen::default();
    host.watch(&mut seen, None, |s| !s.exited.is_empty());
    assert_eq!(seen.exited, [(2, ExitStatus::Signaled { signo: SIGTERM })]);
    // The main process ends: exec 3 is killed and reported, then the main process, last.
    host.stdin(b"go\n");
    host.watch(&mut seen, None, |s| exited(s, MAIN_PROCESS).is_some());
    assert_eq!(
        seen.exited[1..],
        [
            (3, ExitStatus::Signaled { signo: 9 }),
            (MAIN_PROCESS, ExitStatus::Code { code: 4 })
        ]
    );
    // The container has ended: no more execs.
    host.exec_request(4, &spec(&["true"]), None);
    let (kind, message) = host.error_for(Some(4));
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("not running"), "{message}");
    host.shutdown();
}

#[test]
fn exec_errors_and_host_mode_refusals() {
    let mut host = Host::start();
    // Before Start there is nothing to exec into.
    host.exec_request(2, &spec(&["true"]), None);
    assert_eq!(host.error_for(Some(2)).0, ErrorKind::InvalidRequest);
    host.run(spec(&["sleep", "30"])).unwrap();
    for bad in [0, MAIN_PROCESS] {
        host.exec_request(bad, &spec(&["true"]), None);
        let (kind, message) = host.error_for(Some(bad));
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert!(
            message.contains(&format!("below {FIRST_EXEC}")),
            "{message}"
        );
    }
    host.exec_request(2, &spec(&["no-such-command-moat"]), None);
    let (kind, message) = host.error_for(Some(2));
    assert_eq!(kind, ErrorKind::NotFound, "{message}");
    assert!(message.contains("no-such-command-moat"), "{message}");
    host.exec_request(2, &spec(&["/etc/hostname"]), None);
    assert_eq!(host.error_for(Some(2)).0, ErrorKind::NotExecutable);
    // An id in use is refused.
    host.exec(2, &spec(&["sleep", "30"]));
    host.exec_request(2, &spec(&["true"]), None);
    assert!(host.error_for(Some(2)).1.contains("taken"));
    // A user by name, from /etc/passwd (the host's, in this mode).
    host.exec_request(5, &spec(&["id", "-u"]), Some("nobody"));
    assert!(matches!(
        host.recv_control(),
        AgentMessage::Started { process: 5, .. }
    ));
    let mut seen = Seen::default();
    host.watch(&mut seen, None, |s| exited(s, 5).is_some());
    assert_eq!(text(&seen, 5), "65534\n");
    // The container requests need the container's cgroup.
    let container = || host.container.clone();
    for msg in [
        HostMessage::Pause {
            container: container(),
        },
        HostMessage::Resume {
            container: container(),
        },
        HostMessage::ListProcesses {
            container: container(),
        },
    ] {
        host.send(&msg);
        let (kind, message) = host.error_for(None);
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert!(message.contains("cgroup"), "{message}");
    }
    // A host over the stdin window gets an error for that process, and the agent goes on.
    host.stdin_to(2, &vec![0u8; WINDOW as usize]);
    host.stdin_to(2, b"x");
    let (kind, message) = host.error_for(Some(2));
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("window"), "{message}");
    host.send(&HostMessage::Signal {
        process: 2,
        signo: 9,
        all: true,
    });
    let mut seen = Seen::default();
    host.watch(&mut seen, None, |s| exited(s, MAIN_PROCESS).is_some());
    assert_eq!(exited(&seen, 2), Some(ExitStatus::Signaled { signo: 9 }));
    host.shutdown();
}

/// A filter that allows everything but `mknod`/`mknodat` (EPERM).
fn no_mknod() -> oci::LinuxSeccomp {
    let deny = oci::LinuxSyscallBuilder::default()
        .names(vec!["mknod".to_string(), "mknodat".to_string()])
        .action(oci::LinuxSeccompAction::ScmpActErrno)
        .build()
        .unwrap();
    oci::LinuxSeccompBuilder::default()
        .default_action(oci::LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![deny])
        .build()
        .unwrap()
}

fn ns_link(pid: i32, ns: &str) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    link.display().to_string()
}

const EXEC_SCRIPT: &str = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
    hostname; echo $$; ls /bin/busybox; test -e /work && echo host-root; \
    mknod /tmp/fifo p 2>/dev/null || echo mknod-denied; echo ready; read x";

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_exec_joins_the_container() {
    let mut s = spec(&["sh", "-c", "read x; exit 5"]).to_oci(Some("box"), false);
    s.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(no_mknod()));
    let (mut host, _dev, started) = isolated_spec_request(s, vec![]);
    let init = started.unwrap();
    // The exec's own capabilities and no_new_privs; the container's filter.
    let caps_of =
        |list: &[oci::Capability]| -> oci::Capabilities { list.iter().copied().collect() };
    let mut p = spec(&["sh", "-c", EXEC_SCRIPT]).to_oci(None, false);
    let process = p.process_mut().as_mut().unwrap();
    let set = caps_of(&[oci::Capability::Chown, oci::Capability::Kill]);
    let capabilities = oci::LinuxCapabilitiesBuilder::default()
        .bounding(caps_of(&[
            oci::Capability::Chown,
            oci::Capability::Kill,
            oci::Capability::Setuid,
        ]))
        .effective(set.clone())
        .permitted(set)
        .inheritable(caps_of(&[]))
        .ambient(caps_of(&[]))
        .build()
        .unwrap();
    process.set_capabilities(Some(capabilities));
    process.set_no_new_privileges(Some(true));
    host.send(&HostMessage::Exec(Box::new(ExecRequest {
        container: host.container.clone(),
        process: 2,
        spec: p.process().clone().unwrap(),
        user: None,
    })));
    let pid = match host.recv_control() {
        AgentMessage::Started { process: 2, pid } => pid,
        other => panic!("expected Started, got {other:?}"),
    };
    let mut seen = Seen::default();
    host.watch(&mut seen, None, |s| {
        text(s, 2).contains("ready") || !s.exited.is_empty()
    });
    let out = text(&seen, 2);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "CapEff:\t0000000000000021",
            "CapBnd:\t00000000000000a1",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ],
        "{out}"
    );
    assert_eq!(lines[4], "box", "{out}");
    let inner: i32 = lines[5].parse().unwrap();
    assert!(
        inner > 2 && inner != pid,
        "pid {inner} in the container, {pid} outside"
    );
    assert_eq!(
        lines[6..],
        ["/bin/busybox", "mknod-denied", "ready"],
        "{out}"
    );
    // Every namespace and the cgroup of the container's init, seen from the host.
    for ns in ["mnt", "pid", "net", "uts", "ipc", "cgroup"] {
        assert_eq!(ns_link(pid, ns), ns_link(init, ns), "{ns}");
        assert_ne!(
            ns_link(pid, ns),
            ns_link(std::process::id() as i32, ns),
            "{ns}"
        );
    }
    let cgroup = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(cgroup(pid), cgroup(init));
    assert!(
        cgroup(pid).contains("0::/containers/iso"),
        "{}",
        cgroup(pid)
    );
    // The container requests work on that cgroup.
    host.send(&HostMessage::ListProcesses {
        container: host.container.clone(),
    });
    let pids = match host.recv_control() {
        AgentMessage::Processes { pids } => pids,
        other => panic!("expected Processes, got {other:?}"),
    };
    assert!(pids.contains(&init) && pids.contains(&pid), "{pids:?}");
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "{pids:?}");
    let container = host.container.clone();
    for msg in [
        HostMessage::Pause {
            container: container.clone(),
        },
        HostMessage::Resume {
            container: container.clone(),
        },
    ] {
        host.send(&msg);
        assert_eq!(host.recv_control(), AgentMessage::Done, "{msg:?}");
    }
    let mut pids_limit = oci::LinuxResources::default();
    pids_limit.set_pids(Some(
        oci::LinuxPidsBuilder::default().limit(64).build().unwrap(),
    ));
    host.send(&HostMessage::Update {
        container,
        resources: Box::new(pids_limit),
    });
    match host.recv_control() {
        AgentMessage::Done => {}
        // A host whose cgroup2 hierarchy has no pids controller refuses the limit.
        AgentMessage::Error {
            process: None,
            message,
            ..
        } => {
            assert!(message.contains("pids"), "{message}")
        }
        other => panic!("expected Done, got {other:?}"),
    }
    host.send(&HostMessage::StdinEof { process: 2 });
    host.watch(&mut seen, None, |s| exited(s, 2).is_some());
    // `read` at end of file fails: the script's status.
    assert_eq!(exited(&seen, 2), Some(ExitStatus::Code { code: 1 }));
    host.eof();
    let out = host.collect();
    assert_eq!(out.status, Some(ExitStatus::Code { code: 5 }));
    host.shutdown();
}
