//! moat as an OCI runtime (docs/docker.md): runc's verbs and global flags, every transition runc
//! refuses refused with runc's words, the state JSON, the pid file's relay (a process that
//! descends from `moat create`, relays the container's stdio and exits with its status) and
//! the console socket. Each test boots real VMs.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_jail::testutil::TempDir;
use moat_tests::{
    busybox_rootfs, cgroup_dirs, moat_bin, vm_available, vmm_processes_mentioning,
    wait_with_timeout,
};
use serde_json::{json, Value};

const APPLETS: &[&str] = &["sh", "cat", "echo", "sleep", "ps", "stty", "grep"];

/// One runc-style invocation: its exit code and output (files, not pipes: a relay started by
/// `create` keeps the descriptors it was given for as long as the container lives).
struct Ran {
    code: i32,
    out: String,
    err: String,
}

/// A `--root`, a `--log` and the bundles of one test; checks on drop that nothing is left.
struct Oci {
    dir: TempDir,
    n: std::cell::Cell<u32>,
}

impl Oci {
    fn new() -> Self {
        // The relays `create` leaves behind become our children, as under containerd's shim.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        Self {
            dir: TempDir::new("oci"),
            n: std::cell::Cell::new(0),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log.json")
    }

    /// A bundle running `script` (with a terminal when `terminal`).
    fn bundle(&self, script: &str, terminal: bool) -> PathBuf {
        self.bundle_with(script, terminal, |_| {})
    }

    /// [`Oci::bundle`] with `edit` applied to its config.json.
    fn bundle_with(&self, script: &str, terminal: bool, edit: impl Fn(&mut Value)) -> PathBuf {
        let n = self.n.get() + 1;
        self.n.set(n);
        let bundle = self.dir.path().join(format!("bundle-{n}"));
        busybox_rootfs(&bundle.join("rootfs"), APPLETS);
        let mut config = json!({
            "ociVersion": "1.2.0",
            "root": { "path": "rootfs" },
            "hostname": "oci",
            "process": {
                "terminal": terminal,
                "args": ["sh", "-c", script],
                "cwd": "/", "env": ["PATH=/bin"], "user": { "uid": 0, "gid": 0 }
            },
            "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
            "linux": { "namespaces": [{ "type": "pid" }, { "type": "mount" }, { "type": "uts" }] },
            "annotations": { "org.example.test": "oci" }
        });
        edit(&mut config);
        std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        bundle
    }

    /// `moat --root R --log L --log-format json ARGS`, its stdout and stderr into `io`'s files.
    fn run_into(&self, args: &[&str], io: &Path) -> i32 {
        let root = self.root();
        let log = self.log();
        let mut full = vec!["--root", path(&root), "--log", path(&log)];
        full.extend_from_slice(&["--log-format", "json"]);
        full.extend_from_slice(args);
        let mut child = Command::new(moat_bin())
            .args(&full)
            .env("MOAT_LOG_DIR", self.vm_logs())
            .stdin(Stdio::null())
            .stdout(File::create(io.with_extension("out")).unwrap())
            .stderr(File::create(io.with_extension("err")).unwrap())
            .spawn()
            .expect("spawn moat");
        wait_with_timeout(&mut child, Duration::from_secs(300))
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Ran {
        let io = self.dir.path().join("last");
        let code = self.run_into(args, &io);
        Ran {
            code,
            out: std::fs::read_to_string(io.with_extension("out")).unwrap_or_default(),
            err: std::fs::read_to_string(io.with_extension("err")).unwrap_or_default(),
        }
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert_eq!(ran.code, 0, "{args:?}: {}{}", ran.err, self.diagnostics());
        ran.out
    }

    /// runc's refusal: exit 1 and `words` on stderr.
    #[track_caller]
    fn refused(&self, args: &[&str], words: &str) {
        let ran = self.run(args);
        assert_eq!(ran.code, 1, "{args:?} was not refused: {}", ran.err);
        assert!(ran.err.contains(words), "{args:?}: {:?}", ran.err);
        assert_eq!(ran.err.lines().count(), 1, "{args:?}: {:?}", ran.err);
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state JSON")
    }

    /// The state directory the id's link names (what the VM and its cgroup are named after).
    fn state_dir(&self, id: &str) -> PathBuf {
        std::fs::read_link(self.root().join(id)).expect("the id's link")
    }

    /// Where moat keeps each VM's console and VMM logs when it ends (`MOAT_LOG_DIR`).
    fn vm_logs(&self) -> PathBuf {
        let dir = self.dir.path().join("vm-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        dir
    }

    /// The `--log` and every kept console and VMM log, their tails.
    fn diagnostics(&self) -> String {
        let mut files = vec![self.log()];
        files.extend(list(&self.vm_logs()).into_iter().map(|(_, p)| p));
        files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                format!("\n--- {} (tail)\n{}", f.display(), tail(&text))
            })
            .collect()
    }
}

impl Drop for Oci {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (id, _) in list(&self.root()) {
                let _ = self.run(&["delete", "--force", &id]);
            }
        }
    }
}

fn list(root: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `create --bundle BUNDLE --pid-file PID_FILE ID`.
fn create_args<'a>(bundle: &'a Path, pid_file: &'a Path, id: &'a str) -> [&'a str; 6] {
    [
        "create",
        "--bundle",
        path(bundle),
        "--pid-file",
        path(pid_file),
        id,
    ]
}

/// Nothing of the container whose state directory was `dir` is left.
#[track_caller]
fn assert_gone(oci: &Oci, id: &str, dir: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!oci.root().join(id).exists(), "the link of {id} is left");
    assert!(!dir.exists(), "{} is left", dir.display());
    for cgroup in cgroup_dirs(&name) {
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
    assert_eq!(
        vmm_processes_mentioning(&name),
        Vec::<u32>::new(),
        "VMM left"
    );
}

/// Reaps our child `pid` (a relay), its shell-style status; panics after `timeout`.
#[track_caller]
fn reap(pid: i32, timeout: Duration) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(e) => panic!("waitpid({pid}): {e} (not our descendant?)"),
        }
        assert!(Instant::now() < deadline, "relay {pid} did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_pid(file: &Path) -> i32 {
    let text = std::fs::read_to_string(file).expect("pid file");
    text.trim().parse().expect("a pid")
}

const SERVICE: &str = "echo hi; echo err >&2; trap 'echo got-term; exit 7' TERM; \
    while :; do sleep 0.2; done";

#[test]
fn runc_verbs_and_transitions() {
    if !vm_available("runc_verbs_and_transitions") {
        return;
    }
    let oci = Oci::new();
    let bundle = oci.bundle(SERVICE, false);
    let (pid_file, io) = (oci.dir.path().join("pid"), oci.dir.path().join("c1"));
    let args = create_args(&bundle, &pid_file, "c1");
    let code = oci.run_into(&args, &io);
    assert_eq!(code, 0, "create{}", oci.diagnostics());
    let dir = oci.state_dir("c1");
    let relay = read_pid(&pid_file);
    // A hook's "container network namespace" (/proc/<pid>/ns/net) is the relay's own, empty.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        ns(&relay.to_string()),
        ns("self"),
        "the relay is in the host's netns"
    );

    let state = oci.state("c1");
    assert_eq!(state["ociVersion"], "1.2.0");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], relay);
    assert_eq!(state["bundle"], path(&bundle));
    assert_eq!(state["annotations"]["org.example.test"], "oci");
    oci.refused(
        &["create", "--bundle", path(&bundle), "c1"],
        "container with id exists",
    );
    oci.refused(&["resume", "c1"], "container not paused");

    oci.ok(&["start", "c1"]);
    assert_eq!(oci.state("c1")["status"], "running");
    oci.refused(
        &["start", "c1"],
        "cannot start an already running container",
    );

    // exec: its own output and exit code; -d leaves a relay whose death ends the process.
    let ran = oci.run(&["exec", "c1", "sh", "-c", "echo from-exec; exit 3"]);
    assert_eq!(
        (ran.code, ran.out.as_str()),
        (3, "from-exec\n"),
        "{}",
        ran.err
    );
    let exec_pid = oci.dir.path().join("exec-pid");
    oci.ok(&[
        "exec",
        "-d",
        "--pid-file",
        path(&exec_pid),
        "c1",
        "sleep",
        "4321",
    ]);
    let exec_relay = read_pid(&exec_pid);
    let ps = oci.ok(&["exec", "c1", "ps"]);
    assert!(ps.contains("sleep 4321"), "{ps}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(exec_relay),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(reap(exec_relay, Duration::from_secs(10)), 128 + 9);
    let deadline = Instant::now() + Duration::from_secs(60);
    while oci.ok(&["exec", "c1", "ps"]).contains("sleep 4321") {
        assert!(Instant::now() < deadline, "a killed relay left its process");
        std::thread::sleep(Duration::from_millis(200));
    }

    let pids: Vec<i64> = serde_json::from_str(&oci.ok(&["ps", "--format", "json", "c1"])).unwrap();
    assert!(pids.contains(&(relay as i64)), "{pids:?}");
    let listed: Value = serde_json::from_str(&oci.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["id"], "c1", "{listed}");

    oci.ok(&["pause", "c1"]);
    assert_eq!(oci.state("c1")["status"], "paused");
    oci.ok(&["resume", "c1"]);
    oci.refused(&["resume", "c1"], "container not paused");
    oci.refused(
        &["delete", "c1"],
        "cannot delete container c1 that is not stopped: running",
    );

    // SIGTERM through kill reaches the trap; the relay exits with the container's status.
    oci.ok(&["kill", "c1", "TERM"]);
    assert_eq!(reap(relay, Duration::from_secs(60)), 7);
    let state = oci.state("c1");
    assert_eq!(
        (state["status"].as_str(), state["pid"].as_i64()),
        (Some("stopped"), Some(0))
    );
    oci.refused(&["kill", "c1", "TERM"], "container not running");
    oci.refused(
        &["start", "c1"],
        "cannot start a container that has stopped",
    );
    oci.ok(&["delete", "c1"]);
    assert_gone(&oci, "c1", &dir);
    oci.refused(&["state", "c1"], "container does not exist");
    oci.refused(&["delete", "c1"], "container does not exist");
    oci.ok(&["delete", "--force", "c1"]);

    let out = std::fs::read_to_string(io.with_extension("out")).unwrap();
    assert_eq!(out, "hi\ngot-term\n", "the relay's stdout");
    let err = std::fs::read_to_string(io.with_extension("err")).unwrap();
    assert_eq!(err, "err\n", "the relay's stderr");
    let log = std::fs::read_to_string(oci.log()).unwrap();
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).expect("--log-format json lines");
        assert!(
            entry["msg"].is_string() && entry["level"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("container not running"), "{log}");
}

/// Receives the one descriptor a client sends over `listener`.
fn receive_fd(listener: &UnixListener) -> OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let (conn, _) = listener.accept().expect("console socket connection");
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    for cmsg in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: SCM_RIGHTS gave us this descriptor; nothing else owns it.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no descriptor came over the console socket");
}

#[test]
fn console_socket_gets_the_terminal() {
    if !vm_available("console_socket_gets_the_terminal") {
        return;
    }
    let oci = Oci::new();
    let script = "[ -t 0 ] && [ -t 1 ] && echo on-a-tty; stty size; read line; echo got:$line";
    let bundle = oci.bundle(script, true);
    let socket = oci.dir.path().join("console.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let pid_file = oci.dir.path().join("pid");
    let receiver = std::thread::spawn(move || receive_fd(&listener));
    let args = [
        "create",
        "--bundle",
        path(&bundle),
        "--console-socket",
        path(&socket),
        "--pid-file",
        path(&pid_file),
        "tty1",
    ];
    let code = oci.run_into(&args, &oci.dir.path().join("tty1"));
    assert_eq!(code, 0, "create{}", oci.diagnostics());
    let dir = oci.state_dir("tty1");
    let master = File::from(receiver.join().expect("console socket"));
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    set_size(&master, &size);
    oci.ok(&["start", "tty1"]);
    {
        use std::io::Write;
        (&master).write_all(b"typed\n").unwrap();
    }
    let relay = read_pid(&pid_file);
    let seen = read_until(&master, "got:typed");
    assert!(seen.contains("on-a-tty"), "{seen:?}");
    assert!(
        seen.contains("33 101"),
        "the size set on the master: {seen:?}"
    );
    assert_eq!(reap(relay, Duration::from_secs(60)), 0);
    oci.ok(&["delete", "tty1"]);
    assert_gone(&oci, "tty1", &dir);

    // A terminal process needs the socket only with create; without a terminal it is refused.
    let plain = oci.bundle("true", false);
    oci.refused(
        &[
            "create",
            "--bundle",
            path(&plain),
            "--console-socket",
            path(&socket),
            "x",
        ],
        "cannot use console socket",
    );
    assert!(
        list(&oci.root()).is_empty(),
        "a refused create left its link"
    );
}

fn set_size(tty: &File, size: &nix::pty::Winsize) {
    use std::os::fd::AsRawFd;
    nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, nix::pty::Winsize);
    // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which lives across the call.
    unsafe { set_winsize(tty.as_raw_fd(), size) }.expect("TIOCSWINSZ");
}

/// Reads `tty` until `text` appears (or the slave side closes); everything read.
fn read_until(tty: &File, text: &str) -> String {
    use std::io::Read;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !String::from_utf8_lossy(&seen).contains(text) && Instant::now() < deadline {
        match (&*tty).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn run_in_the_foreground_and_bad_input() {
    if !vm_available("run_in_the_foreground_and_bad_input") {
        return;
    }
    let oci = Oci::new();
    let bundle = oci.bundle("echo ran; exit 5", false);
    let ran = oci.run(&["run", "--bundle", path(&bundle), "fg"]);
    assert_eq!((ran.code, ran.out.as_str()), (5, "ran\n"), "{}", ran.err);
    oci.ok(&["delete", "fg"]);

    let empty = oci.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let ran = oci.run(&["create", "--bundle", path(&empty), "nocfg"]);
    assert_eq!(ran.code, 1, "{}", ran.err);
    assert!(ran.err.contains("config.json"), "{:?}", ran.err);
    oci.refused(
        &["create", "--bundle", path(&bundle), "bad/id"],
        "invalid container id",
    );
    oci.refused(&["start", "nosuch"], "container does not exist");
    oci.refused(&["exec", "nosuch", "true"], "container does not exist");
    assert!(
        list(&oci.root()).is_empty(),
        "left: {:?}",
        list(&oci.root())
    );
    let oci_dirs: Vec<_> = list(Path::new("/run/moat/.oci"))
        .into_iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    assert!(oci_dirs.is_empty(), "state dirs left: {oci_dirs:?}");
}

/// A hook that writes its stdin (the state) and its environment to `dir/<name>`.
fn recording_hook(dir: &Path, name: &str) -> Value {
    let script = format!(
        "cat > {0}/{name}.state; env > {0}/{name}.env",
        dir.display()
    );
    json!({ "path": "/bin/sh", "args": ["sh", "-c", script], "env": ["HOOK=yes"] })
}

#[test]
fn hooks_cgroups_path_and_host_binds() {
    if !vm_available("hooks_cgroups_path_and_host_binds") {
        return;
    }
    let oci = Oci::new();
    let rec = oci.dir.path().join("hooks");
    std::fs::create_dir_all(&rec).unwrap();
    let host = oci.dir.path().join("host");
    std::fs::create_dir_all(host.join("data")).unwrap();
    std::fs::write(host.join("hosts"), "10.9.8.7 from-the-host\n").unwrap();
    std::fs::write(host.join("data/f"), "snapshot\n").unwrap();
    let group = format!("moat-test-oci-{}", std::process::id());
    let hooks = json!({
        "prestart": [recording_hook(&rec, "prestart")],
        "createRuntime": [recording_hook(&rec, "createRuntime")],
        "poststart": [recording_hook(&rec, "poststart")],
        "poststop": [recording_hook(&rec, "poststop")]
    });
    let script = "cat /etc/hosts /data/f; echo x >> /etc/hosts && echo hosts-writable; \
        touch /data/g 2>/dev/null || echo data-read-only; exec sleep 600";
    let bundle = oci.bundle_with(script, false, |v| {
        v["hooks"] = hooks.clone();
        v["process"]["apparmorProfile"] = json!("docker-default");
        v["linux"]["cgroupsPath"] = json!(format!("/{group}/hooked"));
        v["mounts"].as_array_mut().unwrap().extend([
            json!({ "destination": "/etc/hosts", "type": "bind",
                    "source": host.join("hosts"), "options": ["rbind", "rprivate"] }),
            json!({ "destination": "/data", "type": "bind",
                    "source": host.join("data"), "options": ["rbind", "ro"] }),
        ]);
    });
    let (pid_file, io) = (oci.dir.path().join("pid"), oci.dir.path().join("hooked"));
    let args = create_args(&bundle, &pid_file, "hooked");
    assert_eq!(oci.run_into(&args, &io), 0, "create{}", oci.diagnostics());
    let dir = oci.state_dir("hooked");
    let relay = read_pid(&pid_file);
    let warned = std::fs::read_to_string(io.with_extension("err")).unwrap();
    assert!(
        warned.contains("apparmorProfile \"docker-default\" not applied"),
        "{warned:?}"
    );

    for (hook, status) in [("prestart", "creating"), ("createRuntime", "creating")] {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(rec.join(format!("{hook}.state"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (state["id"].as_str(), state["status"].as_str()),
            (Some("hooked"), Some(status))
        );
        assert_eq!(state["pid"], relay, "{hook}");
        let env = std::fs::read_to_string(rec.join(format!("{hook}.env"))).unwrap();
        assert!(
            env.contains("HOOK=yes") && !env.contains("MOAT_LOG_DIR"),
            "{env}"
        );
    }
    assert!(
        !rec.join("poststart.state").exists(),
        "poststart ran before start"
    );

    // The VM and the relay live in the bundle's cgroup.
    let cgroup_dir = Path::new("/sys/fs/cgroup").join(&group).join("hooked");
    let procs = std::fs::read_to_string(cgroup_dir.join("cgroup.procs")).expect("the cgroup");
    let procs: Vec<u32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        procs.contains(&(relay as u32)),
        "relay {relay} not in {procs:?}"
    );
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let vmm = vmm_processes_mentioning(&name);
    assert!(
        vmm.iter().any(|p| procs.contains(p)),
        "VMM {vmm:?} not in {procs:?}"
    );

    oci.ok(&["start", "hooked"]);
    let poststart = std::fs::read_to_string(rec.join("poststart.state")).unwrap();
    assert!(poststart.contains("\"running\""), "{poststart}");
    let out = io.with_extension("out");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out)
        .unwrap()
        .contains("data-read-only")
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            std::fs::read_to_string(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "10.9.8.7 from-the-host\nsnapshot\nhosts-writable\ndata-read-only\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("hosts")).unwrap(),
        "10.9.8.7 from-the-host\n",
        "the container wrote its copy, not the host's file"
    );
    oci.ok(&["delete", "--force", "hooked"]);
    let poststop = std::fs::read_to_string(rec.join("poststop.state")).unwrap();
    assert!(poststop.contains("\"stopped\""), "{poststop}");
    reap(relay, Duration::from_secs(30));
    assert_gone(&oci, "hooked", &dir);
    assert!(!cgroup_dir.exists(), "{} is left", cgroup_dir.display());
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&group));
}

#[test]
fn a_failing_or_slow_create_hook_fails_create() {
    if !vm_available("a_failing_or_slow_create_hook_fails_create") {
        return;
    }
    let oci = Oci::new();
    let failing = json!({ "path": "/bin/sh", "args": ["sh", "-c", "exit 3"] });
    let slow = json!({ "path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1 });
    for (id, hook, words) in [
        ("fails", failing, "exit status: 3"),
        ("slow", slow, "timed out"),
    ] {
        let bundle = oci.bundle_with("true", false, |v| {
            v["hooks"] = json!({ "prestart": [hook] })
        });
        let ran = oci.run(&["create", "--bundle", path(&bundle), id]);
        assert_eq!(ran.code, 1, "{id}: {}", ran.err);
        assert!(
            ran.err.contains(words) && ran.err.contains("hook #0"),
            "{id}: {:?}",
            ran.err
        );
        assert!(list(&oci.root()).is_empty(), "{id} left its link");
    }
    let state_dirs: Vec<_> = list(Path::new("/run/moat/.oci"))
        .into_iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    assert!(state_dirs.is_empty(), "{state_dirs:?}");
}
