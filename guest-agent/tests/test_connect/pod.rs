//! Several containers in one agent (protocol v6): a later container beside the first, each
//! addressed by its id, the later one's end its own, `Remove` of it, and the refusals.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;

use super::*;

/// A request for container `id` whose main process is `process`; `hostname` as in
/// [`ProcessSpec::to_oci`] (`None`: the host mode's spec).
fn request(id: &str, process: u32, args: &[&str], device: &str, host: Option<&str>) -> RunRequest {
    RunRequest {
        id: id.into(),
        process,
        rootfs: RootfsSpec {
            device: device.into(),
            fstype: "ext4".into(),
            upper: moat_protocol::UpperLayer::Memory { mib: 16 },
            sectors: None,
        },
        volumes: vec![],
        spec: spec(args).to_oci(host, false),
    }
}

/// What arrived: output by process, exits, other control messages in order.
#[derive(Default)]
struct Log {
    out: HashMap<u32, String>,
    exits: Vec<(u32, ExitStatus)>,
    control: Vec<AgentMessage>,
}

impl Host {
    /// Reads frames into `log` (crediting output) until `done`.
    fn read_until(&mut self, log: &mut Log, done: impl Fn(&Log) -> bool) {
        while !done(log) {
            let f = read_frame(&mut self.conn).unwrap();
            match f.kind {
                FrameKind::Stdout | FrameKind::Stderr => {
                    self.credit(f.kind, f.process, f.payload.len());
                    let text = String::from_utf8_lossy(&f.payload).into_owned();
                    log.out.entry(f.process).or_default().push_str(&text);
                }
                FrameKind::Control => match decode(&f.payload).unwrap() {
                    AgentMessage::Exited { process, status } => log.exits.push((process, status)),
                    AgentMessage::StdinCredit { .. } => {}
                    other => log.control.push(other),
                },
                FrameKind::Stdin => panic!("stdin frame from the agent"),
            }
        }
    }

    /// The next control message, output and credits aside (into `log`).
    fn next_control(&mut self, log: &mut Log) -> AgentMessage {
        let seen = log.control.len();
        self.read_until(log, |l| l.control.len() > seen);
        log.control.pop().unwrap()
    }

    /// `Create` and `Start` of a later container: its init's pid.
    fn create_start(&mut self, log: &mut Log, req: RunRequest) -> i32 {
        let (id, process) = (req.id.clone(), req.process);
        self.send(&HostMessage::Create(Box::new(req)));
        let created = self.next_control(log);
        assert!(
            matches!(created, AgentMessage::Created { .. }),
            "{created:?}"
        );
        self.send(&HostMessage::Start { container: id });
        match self.next_control(log) {
            AgentMessage::Started { process: p, pid } if p == process => pid,
            other => panic!("expected Started for {process}, got {other:?}"),
        }
    }

    fn expect_error(&mut self, log: &mut Log, process: Option<u32>, text: &str) {
        match self.next_control(log) {
            AgentMessage::Error {
                process: p,
                message,
                ..
            } if p == process => assert!(message.contains(text), "{message}"),
            other => panic!("expected an error containing {text:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_later_container_runs_and_ends_beside_the_first() {
    let mut host = Host::start();
    let first = request(
        "a",
        MAIN_PROCESS,
        &["sh", "-c", "cat; echo a-done"],
        "/dev/vda",
        None,
    );
    host.run_request(first).unwrap();
    let mut log = Log::default();

    // Refused: a taken id, a process id below the execs', an unknown container.
    let again = request("a", 5, &["true"], "/dev/vda", None);
    host.send(&HostMessage::Create(Box::new(again)));
    host.expect_error(&mut log, Some(5), "container a already exists");
    let one = request("b", MAIN_PROCESS, &["true"], "/dev/vda", None);
    host.send(&HostMessage::Create(Box::new(one)));
    host.expect_error(&mut log, Some(MAIN_PROCESS), "process id 1 is below 2");
    host.send(&HostMessage::Start {
        container: "nope".into(),
    });
    host.expect_error(&mut log, None, "no container nope");

    // b runs, exits 3, and its end is its own.
    let b = request(
        "b",
        7,
        &["sh", "-c", "echo b-out; exit 3"],
        "/dev/vda",
        None,
    );
    host.create_start(&mut log, b);
    host.read_until(&mut log, |l| l.exits.iter().any(|(p, _)| *p == 7));
    assert_eq!(log.out.get(&7).map(String::as_str), Some("b-out\n"));
    assert_eq!(log.exits, [(7, ExitStatus::Code { code: 3 })]);
    host.send(&HostMessage::Exec(Box::new(moat_protocol::ExecRequest {
        container: "b".into(),
        process: 8,
        spec: spec(&["true"])
            .to_oci(None, false)
            .process()
            .clone()
            .unwrap(),
        user: None,
    })));
    host.expect_error(
        &mut log,
        Some(8),
        "container b is not running (it has exited)",
    );

    // The first container cannot be removed; b can, once.
    for (name, text) in [("a", "first container"), ("b", ""), ("b", "no container b")] {
        host.send(&HostMessage::Remove {
            container: name.into(),
        });
        match text {
            "" => assert_eq!(host.next_control(&mut log), AgentMessage::Done),
            text => host.expect_error(&mut log, None, text),
        }
    }

    // a still runs: its stdin reaches it, and it ends as it would alone.
    host.stdin(b"hi\n");
    host.eof();
    host.read_until(&mut log, |l| {
        l.exits.iter().any(|(p, _)| *p == MAIN_PROCESS)
    });
    assert_eq!(
        log.out.get(&MAIN_PROCESS).map(String::as_str),
        Some("hi\na-done\n")
    );
    host.shutdown();
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_later_container_has_its_own_mounts_and_releases_its_disk() {
    let image = std::env::var("MOAT_TEST_IMAGE").expect("MOAT_TEST_IMAGE=path/to/busybox.ext4");
    let (dev_a, dev_b) = (Loop::attach(&image), Loop::attach(&image));
    let mut host = Host::start_with(&["--isolated"]);
    let script_a = "echo a > /tmp/mark; read x; cat /tmp/mark";
    let first = request(
        "a",
        MAIN_PROCESS,
        &["sh", "-c", script_a],
        &dev_a.0,
        Some("box"),
    );
    let init_a = host.run_request(first).unwrap();
    let mut log = Log::default();
    let script_b = "test -e /tmp/mark && echo sees-a || echo own-root; read x; exit 4";
    let mut b = request("b", 9, &["sh", "-c", script_b], &dev_b.0, Some("box"));
    // As a disk the host swapped in: its size is waited for, and `remove` releases it.
    let sectors = std::fs::metadata(&image).unwrap().len() / 512;
    b.rootfs.sectors = Some(sectors);
    let init_b = host.create_start(&mut log, b);
    host.read_until(&mut log, |l| l.out.contains_key(&9));
    assert_eq!(log.out[&9], "own-root\n");
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(init_a), ns(init_b));
    assert_ne!(ns(init_b), ns(std::process::id() as i32));
    // b's disk is busy while it runs; Remove is refused.
    host.send(&HostMessage::Remove {
        container: "b".into(),
    });
    host.expect_error(&mut log, None, "it is running");
    host.stdin_to(9, b"\n");
    host.read_until(&mut log, |l| l.exits.iter().any(|(p, _)| *p == 9));
    assert_eq!(log.exits, [(9, ExitStatus::Code { code: 4 })]);
    host.send(&HostMessage::Remove {
        container: "b".into(),
    });
    assert_eq!(host.next_control(&mut log), AgentMessage::Done);
    // Nothing holds b's disk now: an exclusive open succeeds.
    let excl = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&dev_b.0);
    assert!(excl.is_ok(), "{} still busy: {excl:?}", dev_b.0);
    // a is untouched.
    host.stdin(b"\n");
    host.read_until(&mut log, |l| {
        l.exits.iter().any(|(p, _)| *p == MAIN_PROCESS)
    });
    assert_eq!(log.out[&MAIN_PROCESS], "a\n");
    host.shutdown();
}

/// `spec` joins `path` for its namespace of `typ` (added if it had none of that kind).
fn join(req: &mut RunRequest, typ: oci_spec::runtime::LinuxNamespaceType, path: String) {
    let linux = req.spec.linux_mut().as_mut().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|ns| ns.typ() != typ);
    let joined = oci_spec::runtime::LinuxNamespaceBuilder::default()
        .typ(typ)
        .path(path)
        .build()
        .unwrap();
    namespaces.push(joined);
    linux.set_namespaces(Some(namespaces));
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_later_container_joins_the_pods_namespaces() {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let image = std::env::var("MOAT_TEST_IMAGE").expect("MOAT_TEST_IMAGE=path/to/busybox.ext4");
    let (dev_a, dev_b) = (Loop::attach(&image), Loop::attach(&image));
    let mut host = Host::start_with(&["--isolated"]);
    let first = request(
        "a",
        MAIN_PROCESS,
        &["sh", "-c", "read x"],
        &dev_a.0,
        Some("pod"),
    );
    let init_a = host.run_request(first).unwrap();
    let mut log = Log::default();

    // Only a living container's namespaces can be joined: not this process's (the agent's
    // own, in the guest), nor a path that is no namespace.
    let mut stranger = request("s", 8, &["true"], &dev_b.0, Some("pod"));
    join(
        &mut stranger,
        T::Uts,
        format!("/proc/{}/ns/uts", std::process::id()),
    );
    host.send(&HostMessage::Create(Box::new(stranger)));
    host.expect_error(
        &mut log,
        Some(8),
        "is not a namespace of one of this VM's containers",
    );
    let mut odd = request("s", 8, &["true"], &dev_b.0, Some("pod"));
    join(&mut odd, T::Ipc, format!("/proc/{init_a}/ns/net"));
    host.send(&HostMessage::Create(Box::new(odd)));
    host.expect_error(&mut log, Some(8), "only a pod's pid, ipc, uts or network");

    // b joins a's uts and ipc namespaces; its mount namespace stays its own.
    let mut b = request(
        "b",
        9,
        &["sh", "-c", "hostname; read x"],
        &dev_b.0,
        Some("pod"),
    );
    for (typ, kind) in [(T::Uts, "uts"), (T::Ipc, "ipc")] {
        join(&mut b, typ, format!("/proc/{init_a}/ns/{kind}"));
    }
    let init_b = host.create_start(&mut log, b);
    host.read_until(&mut log, |l| l.out.contains_key(&9));
    assert_eq!(log.out[&9], "pod\n");
    let ns = |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let me = std::process::id() as i32;
    for kind in ["uts", "ipc"] {
        assert_eq!(ns(init_a, kind), ns(init_b, kind), "{kind}");
        assert_ne!(ns(me, kind), ns(init_b, kind), "{kind}");
    }
    assert_ne!(ns(init_a, "mnt"), ns(init_b, "mnt"));
    host.stdin_to(9, b"\n");
    host.read_until(&mut log, |l| l.exits.iter().any(|(p, _)| *p == 9));
    host.stdin(b"\n");
    host.read_until(&mut log, |l| {
        l.exits.iter().any(|(p, _)| *p == MAIN_PROCESS)
    });
    host.shutdown();
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_later_container_has_ptys_of_its_own() {
    let image = std::env::var("MOAT_TEST_IMAGE").expect("MOAT_TEST_IMAGE=path/to/busybox.ext4");
    let (dev_a, dev_b) = (Loop::attach(&image), Loop::attach(&image));
    let mut host = Host::start_with(&["--isolated"]);
    let first = request(
        "a",
        MAIN_PROCESS,
        &["sh", "-c", "read x"],
        &dev_a.0,
        Some("pod"),
    );
    host.run_request(first).unwrap();
    let mut log = Log::default();

    // b's terminal is the first pty of a devpts instance of its own, and its /dev/pts shows
    // only its own ptys.
    let terminal = |args: &[&str]| ProcessSpec {
        terminal: true,
        rows: 24,
        cols: 80,
        ..spec(args)
    };
    let mut b = request("b", 9, &[], &dev_b.0, Some("pod"));
    let script = "tty; echo /dev/pts/*; read x";
    b.spec = terminal(&["sh", "-c", script]).to_oci(Some("pod"), false);
    host.create_start(&mut log, b);
    host.read_until(&mut log, |l| {
        l.out.get(&9).is_some_and(|o| o.contains("ptmx"))
    });
    assert_eq!(log.out[&9], "/dev/pts/0\r\n/dev/pts/0 /dev/pts/ptmx\r\n");

    // An exec's terminal comes from the container's instance too.
    let exec = terminal(&["sh", "-c", "tty; echo /dev/pts/*"]);
    host.send(&HostMessage::Exec(Box::new(moat_protocol::ExecRequest {
        container: "b".into(),
        process: 10,
        spec: exec.to_oci(None, false).process().clone().unwrap(),
        user: None,
    })));
    assert!(matches!(
        host.next_control(&mut log),
        AgentMessage::Started { process: 10, .. }
    ));
    host.read_until(&mut log, |l| l.exits.iter().any(|(p, _)| *p == 10));
    assert_eq!(
        log.out[&10],
        "/dev/pts/1\r\n/dev/pts/0 /dev/pts/1 /dev/pts/ptmx\r\n"
    );

    host.stdin_to(9, b"\n");
    host.read_until(&mut log, |l| l.exits.iter().any(|(p, _)| *p == 9));
    host.stdin(b"\n");
    host.read_until(&mut log, |l| {
        l.exits.iter().any(|(p, _)| *p == MAIN_PROCESS)
    });
    host.shutdown();
}
