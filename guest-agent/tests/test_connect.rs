//! End-to-end tests of the agent's conversation on the host: the test plays the runtime,
//! listens on a Unix socket and starts `moat-agent --test-connect unix:PATH`, which runs real
//! processes (without container isolation, which needs the guest).

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use moat_protocol::{
    decode, encode, read_frame, write_frame, AgentMessage, ErrorKind, ExitStatus, FrameKind,
    HostMessage, OutputStream, RootfsSpec, RunRequest, VolumeSpec, MAIN_PROCESS, MAX_PAYLOAD,
    PROTOCOL_VERSION,
};
use oci_spec::runtime as oci;

const SIGTERM: i32 = 15;

struct Host {
    conn: UnixStream,
    agent: Child,
    /// The container the last `Create` named.
    container: String,
    /// Whether the agent builds real containers (`--isolated`), whose cgroups live on this host.
    isolated: bool,
}

#[derive(Default, Debug)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    error: Option<(ErrorKind, String)>,
}

/// The process fields the tests vary, turned into an OCI spec by [`ProcessSpec::to_oci`].
#[derive(Debug, Clone)]
struct ProcessSpec {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    terminal: bool,
    rows: u16,
    cols: u16,
}

impl ProcessSpec {
    fn to_oci(&self, hostname: Option<&str>, readonly: bool) -> oci::Spec {
        let user = oci::UserBuilder::default()
            .uid(self.uid)
            .gid(self.gid)
            .additional_gids(self.additional_gids.clone())
            .build()
            .unwrap();
        let mut builder = oci::ProcessBuilder::default()
            .args(self.args.clone())
            .env(self.env.clone())
            .cwd(self.cwd.clone())
            .user(user)
            .terminal(self.terminal);
        if self.terminal {
            let size = oci::BoxBuilder::default()
                .height(u64::from(self.rows))
                .width(u64::from(self.cols))
                .build()
                .unwrap();
            builder = builder.console_size(size);
        }
        let root = oci::RootBuilder::default()
            .path("rootfs")
            .readonly(readonly)
            .build()
            .unwrap();
        // oci-spec's default is Docker-like: namespaces, mounts, masked and read-only paths.
        let mut spec = oci::Spec::default();
        spec.set_process(Some(builder.build().unwrap()));
        spec.set_hostname(hostname.map(str::to_owned));
        spec.set_root(Some(root));
        if hostname.is_none() {
            // The host mode has no container.
            spec.set_linux(None);
            spec.set_mounts(None);
        }
        spec
    }
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        terminal: false,
        rows: 0,
        cols: 0,
    }
}

impl Host {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "moat-agent-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let isolated = extra.contains(&"--isolated");
        if isolated {
            leftovers::clear();
        }
        let listener = UnixListener::bind(&path).unwrap();
        let agent = Command::new(env!("CARGO_BIN_EXE_moat-agent"))
            .arg("--test-connect")
            .arg(format!("unix:{}", path.display()))
            .args(extra)
            .spawn()
            .unwrap();
        let (conn, _) = listener.accept().unwrap();
        std::fs::remove_file(&path).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut host = Self {
            conn,
            agent,
            container: String::new(),
            isolated,
        };
        match host.recv_control() {
            AgentMessage::Ready {
                protocol_version, ..
            } => {
                assert_eq!(protocol_version, PROTOCOL_VERSION)
            }
            other => panic!("expected Ready, got {other:?}"),
        }
        host
    }

    fn send(&mut self, msg: &HostMessage) {
        write_frame(&mut self.conn, FrameKind::Control, 0, &encode(msg)).unwrap();
    }

    fn stdin(&mut self, data: &[u8]) {
        self.stdin_to(MAIN_PROCESS, data);
    }

    fn stdin_to(&mut self, process: u32, data: &[u8]) {
        write_frame(&mut self.conn, FrameKind::Stdin, process, data).unwrap();
    }

    fn eof(&mut self) {
        self.send(&HostMessage::StdinEof {
            process: MAIN_PROCESS,
        });
    }

    fn signal(&mut self, signo: i32) {
        self.send(&HostMessage::Signal {
            process: MAIN_PROCESS,
            signo,
            all: false,
        });
    }

    /// Credits a data frame the test has read.
    fn credit(&mut self, kind: FrameKind, process: u32, bytes: usize) {
        let stream = match kind {
            FrameKind::Stderr => OutputStream::Stderr,
            _ => OutputStream::Stdout,
        };
        self.send(&HostMessage::Credit {
            process,
            stream,
            bytes: bytes as u32,
        });
    }

    fn recv_control(&mut self) -> AgentMessage {
        let frame = read_frame(&mut self.conn).unwrap();
        assert_eq!(frame.kind, FrameKind::Control);
        decode(&frame.payload).unwrap()
    }

    fn run(&mut self, process: ProcessSpec) -> Result<i32, (ErrorKind, String)> {
        let req = RunRequest {
            id: "test".into(),
            process: MAIN_PROCESS,
            rootfs: RootfsSpec {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
                upper: moat_protocol::UpperLayer::Memory { mib: 64 },
                sectors: None,
            },
            volumes: vec![],
            spec: process.to_oci(None, false),
        };
        self.run_request(req)
    }

    /// `Create`, then `Start`: the pid of the started process.
    fn run_request(&mut self, req: RunRequest) -> Result<i32, (ErrorKind, String)> {
        self.container = req.id.clone();
        self.send(&HostMessage::Create(Box::new(req)));
        match self.recv_control() {
            AgentMessage::Created { .. } => {}
            AgentMessage::Error {
                process: Some(MAIN_PROCESS),
                kind,
                message,
            } => return Err((kind, message)),
            other => panic!("expected Created, got {other:?}"),
        }
        self.send(&HostMessage::Start {
            container: self.container.clone(),
        });
        match self.recv_control() {
            AgentMessage::Started {
                process: MAIN_PROCESS,
                pid,
            } => Ok(pid),
            AgentMessage::Error {
                process: Some(MAIN_PROCESS),
                kind,
                message,
            } => Err((kind, message)),
            other => panic!("expected Started, got {other:?}"),
        }
    }

    /// Reads frames until the main process's `Exited`, crediting output.
    fn collect(&mut self) -> Output {
        let mut out = Output::default();
        loop {
            let frame = read_frame(&mut self.conn).unwrap();
            match frame.kind {
                FrameKind::Stdout | FrameKind::Stderr => {
                    assert_eq!(frame.process, MAIN_PROCESS);
                    self.credit(frame.kind, frame.process, frame.payload.len());
                    match frame.kind {
                        FrameKind::Stdout => out.stdout.extend(frame.payload),
                        _ => out.stderr.extend(frame.payload),
                    }
                }
                FrameKind::Control => match decode(&frame.payload).unwrap() {
                    AgentMessage::Exited {
                        process: MAIN_PROCESS,
                        status,
                    } => {
                        out.status = Some(status);
                        return out;
                    }
                    AgentMessage::Error { kind, message, .. } => out.error = Some((kind, message)),
                    AgentMessage::StdinCredit { .. } => {}
                    other => panic!("unexpected {other:?}"),
                },
                FrameKind::Stdin => panic!("stdin frame from the agent"),
            }
        }
    }

    fn shutdown(mut self) {
        self.send(&HostMessage::Shutdown);
        let status = self.agent.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        if self.isolated {
            let left = leftovers::container_cgroups();
            assert!(left.is_empty(), "the agent left cgroups behind: {left:?}");
        }
    }
}

impl Drop for Host {
    /// A test that fails leaves no agent, and no container of an isolated one, behind.
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if self.isolated && std::thread::panicking() {
            leftovers::clear();
        }
    }
}

#[test]
fn stdout_stderr_and_exit_code() {
    let mut host = Host::start();
    host.run(spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .unwrap();
    host.eof();
    let out = host.collect();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, Some(ExitStatus::Code { code: 3 }));
    host.shutdown();
}

#[test]
fn stdin_round_trip_and_large_output() {
    let mut host = Host::start();
    host.run(spec(&["sh", "-c", "cat; head -c 3000000 /dev/zero"]))
        .unwrap();
    host.stdin(b"hello ");
    host.stdin(b"agent\n");
    host.eof();
    let out = host.collect();
    assert_eq!(&out.stdout[..12], b"hello agent\n");
    assert_eq!(out.stdout.len(), 12 + 3_000_000);
    assert!(out.stdout.len() > 2 * MAX_PAYLOAD);
    assert_eq!(out.status, Some(ExitStatus::Code { code: 0 }));
    host.shutdown();
}

#[test]
fn exec_errors() {
    let mut host = Host::start();
    let (kind, message) = host.run(spec(&["no-such-command-moat"])).unwrap_err();
    assert_eq!(kind, ErrorKind::NotFound, "{message}");
    assert!(message.contains("no-such-command-moat"), "{message}");
    host.shutdown();

    let mut host = Host::start();
    let (kind, message) = host.run(spec(&["/etc/hostname"])).unwrap_err();
    assert_eq!(kind, ErrorKind::NotExecutable, "{message}");
    host.shutdown();

    let mut host = Host::start();
    let (kind, _) = host.run(spec(&[])).unwrap_err();
    assert_eq!(kind, ErrorKind::InvalidRequest);
    host.shutdown();
}

#[test]
fn signals_reach_the_process() {
    let mut host = Host::start();
    host.run(spec(&["sleep", "30"])).unwrap();
    host.signal(SIGTERM);
    let out = host.collect();
    assert_eq!(out.status, Some(ExitStatus::Signaled { signo: SIGTERM }));
    host.shutdown();
}

#[test]
fn background_children_do_not_hold_exited_back() {
    let mut host = Host::start();
    host.run(spec(&["sh", "-c", "sleep 30 & echo started"]))
        .unwrap();
    let out = host.collect();
    assert_eq!(out.stdout, b"started\n");
    assert_eq!(out.status, Some(ExitStatus::Code { code: 0 }));
    host.shutdown();
}

#[test]
fn process_that_never_reads_stdin() {
    let mut host = Host::start();
    host.run(spec(&["sh", "-c", "sleep 1; exit 4"])).unwrap();
    // A whole stdin window, far more than a pipe holds; the connection must keep flowing, and
    // what the process never read is dropped and credited.
    let chunk = vec![b'x'; 256 * 1024];
    for _ in 0..moat_protocol::WINDOW as usize / chunk.len() {
        host.stdin(&chunk);
    }
    let out = host.collect();
    assert_eq!(out.status, Some(ExitStatus::Code { code: 4 }));
    assert_eq!(out.error, None);
    host.shutdown();
}

#[test]
fn terminal_mode() {
    let mut host = Host::start();
    let mut p = spec(&[
        "sh",
        "-c",
        "stty size; tty >/dev/null && echo is-a-tty; read x; echo got-$x",
    ]);
    p.terminal = true;
    p.rows = 33;
    p.cols = 101;
    host.run(p).unwrap();
    host.stdin(b"line\n");
    let out = host.collect();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("33 101"), "{text:?}");
    assert!(text.contains("is-a-tty"), "{text:?}");
    assert!(text.contains("got-line"), "{text:?}");
    assert!(out.stderr.is_empty());
    assert_eq!(out.status, Some(ExitStatus::Code { code: 0 }));
    host.shutdown();
}

#[test]
fn dropped_connection_ends_the_agent_and_its_process() {
    let mut host = Host::start();
    let pid = host.run(spec(&["sleep", "30"])).unwrap();
    host.conn.shutdown(std::net::Shutdown::Both).unwrap();
    let status = host.agent.wait().unwrap();
    assert!(status.success());
    // The process was killed: soon gone, or a zombie until the host's init reaps it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {stat}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A read-only loop device over an image file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(image: &str) -> Self {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only", image])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn isolated_run(readonly: bool, terminal: bool, cwd: &str, script: &str) -> Output {
    let mut process = spec(&["sh", "-c", script]);
    process.uid = 1000;
    process.gid = 1000;
    process.additional_gids = vec![100];
    process.cwd = cwd.into();
    process.terminal = terminal;
    let (mut host, _dev) = isolated_start(readonly, process);
    host.eof();
    let out = host.collect();
    host.shutdown();
    out
}

/// Starts `process` in a container from `MOAT_TEST_IMAGE`; the loop device lives as long as the
/// returned guard.
fn isolated_start(readonly: bool, process: ProcessSpec) -> (Host, Loop) {
    let (host, dev, started) = isolated_request(readonly, process);
    started.unwrap();
    (host, dev)
}

/// [`isolated_start`] that hands back the agent's answer to `Run`.
fn isolated_request(
    readonly: bool,
    process: ProcessSpec,
) -> (Host, Loop, Result<i32, (ErrorKind, String)>) {
    isolated_spec_request(process.to_oci(Some("box"), readonly), vec![])
}

/// Sends `spec` (with `volumes`) to an isolated agent.
fn isolated_spec_request(
    spec: oci::Spec,
    volumes: Vec<VolumeSpec>,
) -> (Host, Loop, Result<i32, (ErrorKind, String)>) {
    let image = std::env::var("MOAT_TEST_IMAGE").expect("MOAT_TEST_IMAGE=path/to/busybox.ext4");
    let dev = Loop::attach(&image);
    let mut host = Host::start_with(&["--isolated"]);
    let req = RunRequest {
        id: "iso".into(),
        process: MAIN_PROCESS,
        rootfs: RootfsSpec {
            device: dev.0.clone(),
            fstype: "ext4".into(),
            upper: moat_protocol::UpperLayer::Memory { mib: 64 },
            sectors: None,
        },
        volumes,
        spec,
    };
    let started = host.run_request(req);
    (host, dev, started)
}

/// Runs `spec` to its end.
fn run_spec(spec: oci::Spec, volumes: Vec<VolumeSpec>) -> Output {
    let (mut host, _dev, started) = isolated_spec_request(spec, volumes);
    started.unwrap();
    host.eof();
    let out = host.collect();
    host.shutdown();
    out
}

fn caps(list: &[oci::Capability]) -> oci::Capabilities {
    list.iter().copied().collect()
}

const ISOLATED_SCRIPT: &str = "hostname; id -u; id -G; pwd; ls /dev | tr '\\n' ' '; echo; \
    readlink /dev/ptmx; echo data > /tmp/f && cat /tmp/f; wc -l < /proc/self/mountinfo; \
    awk '$5 ~ /moat/' /proc/self/mountinfo | wc -l; touch /sys/x 2>/dev/null || echo sys-ro; \
    cat /etc/hostname";

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_container_from_an_image() {
    let out = isolated_run(false, false, "/home/user/work", ISOLATED_SCRIPT);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status,
        Some(ExitStatus::Code { code: 0 }),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[..4],
        ["box", "1000", "1000 100", "/home/user/work"],
        "{text}"
    );
    for dev in [
        "full", "null", "ptmx", "pts", "random", "shm", "stdin", "tty", "urandom", "zero",
    ] {
        assert!(
            lines[4].split(' ').any(|d| d == dev),
            "no /dev/{dev}: {text}"
        );
    }
    // The default spec's 7 mounts, 9 of its masked and read-only paths that exist on this
    // kernel (the count differs on another kernel), and nothing of the agent's.
    assert_eq!(lines[5..7], ["pts/ptmx", "data"], "{text}");
    assert_eq!(lines[8..], ["0", "sys-ro", "moat"], "{text}");
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_readonly_root() {
    let out = isolated_run(true, false, "/", "touch /x 2>&1; ls /bin/busybox");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(text.contains("/bin/busybox"), "{text}");
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_terminal() {
    let out = isolated_run(false, true, "/", "tty; ls -l $(tty)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/dev/pts/"), "{text}");
    assert!(text.contains(" user "), "the pty is not the user's: {text}");
    assert_eq!(out.status, Some(ExitStatus::Code { code: 0 }), "{text}");
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_pid_namespace() {
    // The command is PID 2 under the container's init, sees only the two, and a SIGKILL it
    // sends itself is reported as the init's exit code 128 + 9.
    let out = isolated_run(
        false,
        false,
        "/",
        "echo $$; cd /proc && echo [0-9]*; kill -9 $$",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n1 2\n");
    assert_eq!(out.status, Some(ExitStatus::Code { code: 137 }));
    // An exec failure of the command still comes back as an error, through the init.
    let (host, _dev, started) = isolated_request(false, spec(&["no-such-command-moat"]));
    let (kind, message) = started.unwrap_err();
    assert_eq!(kind, ErrorKind::NotFound, "{message}");
    host.shutdown();
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_signals_reach_the_command() {
    let (mut host, _dev) = isolated_start(false, spec(&["sleep", "30"]));
    host.signal(SIGTERM);
    let out = host.collect();
    assert_eq!(
        out.status,
        Some(ExitStatus::Code {
            code: 128 + SIGTERM
        })
    );
    host.shutdown();
    // Ctrl-C on the terminal reaches the command, in the terminal's foreground group.
    let mut process = spec(&["sleep", "30"]);
    process.terminal = true;
    let (mut host, _dev) = isolated_start(false, process);
    host.stdin(b"\x03");
    let out = host.collect();
    assert_eq!(out.status, Some(ExitStatus::Code { code: 130 }));
    host.shutdown();
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_poweroff_ends_only_the_container() {
    // Without CAP_SYS_BOOT (the default capabilities) reboot(2) is refused.
    let script = "[ $$ = 2 ] && poweroff -f; echo refused";
    let mut s = spec(&["sh", "-c", script]).to_oci(Some("box"), false);
    let out = run_spec(s.clone(), vec![]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "refused\n", "{out:?}");
    // With it, reboot(2) in a PID namespace kills its init with SIGINT (power off, halt) or
    // SIGHUP (restart). The guard keeps this from halting the machine if the namespace were
    // missing.
    let caps = oci::LinuxCapabilitiesBuilder::default()
        .bounding(caps(&[oci::Capability::SysBoot]))
        .permitted(caps(&[oci::Capability::SysBoot]))
        .effective(caps(&[oci::Capability::SysBoot]))
        .inheritable(caps(&[]))
        .ambient(caps(&[]))
        .build()
        .unwrap();
    for (command, signo) in [("poweroff", 2), ("reboot", 1)] {
        let script = format!("[ $$ = 2 ] && {command} -f; echo no-namespace");
        let process = s.process_mut().as_mut().unwrap();
        process.set_args(Some(vec!["sh".into(), "-c".into(), script]));
        process.set_capabilities(Some(caps.clone()));
        let (mut host, _dev, started) = isolated_spec_request(s.clone(), vec![]);
        started.unwrap();
        host.eof();
        let out = host.collect();
        assert_eq!(out.status, Some(ExitStatus::Signaled { signo }), "{out:?}");
        host.shutdown();
    }
}

#[path = "test_connect/full_spec.rs"]
mod full_spec;
#[path = "test_connect/leftovers.rs"]
mod leftovers;

#[path = "test_connect/exec.rs"]
mod exec;
#[path = "test_connect/pod.rs"]
mod pod;
