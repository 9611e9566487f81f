//! Tests of [`run`]: exit codes, options, and whole runs against a fake `moat-vmm` (a shell
//! script) with an in-process agent on the real listener socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_protocol::{
    decode, encode, read_frame, write_frame, AgentMessage, FrameKind, HostMessage, MAIN_PROCESS,
};

use super::*;
use crate::config::{AssetOverrides, Rootfs};
use crate::testutil::{fake_vmm, TempDir};

#[test]
fn exit_codes() {
    assert_eq!(exit_code(ExitStatus::Code { code: 0 }), 0);
    assert_eq!(exit_code(ExitStatus::Code { code: 42 }), 42);
    assert_eq!(exit_code(ExitStatus::Code { code: 256 + 3 }), 3);
    assert_eq!(exit_code(ExitStatus::Code { code: -1 }), 255);
    assert_eq!(exit_code(ExitStatus::Signaled { signo: 9 }), 137);
    assert_eq!(exit_code(ExitStatus::Signaled { signo: 15 }), 143);
    assert_eq!(exit_code(ExitStatus::Signaled { signo: 0 }), 125);
    assert_eq!(exit_code(ExitStatus::Signaled { signo: 1000 }), 125);
    let agent = |kind| RunError::Agent {
        kind,
        message: String::new(),
    };
    assert_eq!(agent(ErrorKind::NotFound).exit_code(), 127);
    assert_eq!(agent(ErrorKind::NotExecutable).exit_code(), 126);
    assert_eq!(agent(ErrorKind::InvalidRequest).exit_code(), 125);
    assert_eq!(agent(ErrorKind::Internal).exit_code(), 125);
    assert_eq!(RunError::VmEnded(String::new()).exit_code(), 125);
    assert_eq!(RunError::Boot(BootError::Interrupted(2)).exit_code(), 130);
}

#[test]
fn options_from_the_environment() {
    let opts = RuntimeOptions::from_env(|_| None).unwrap();
    assert_eq!(opts.boot_timeout, DEFAULT_BOOT_TIMEOUT);
    assert!(!opts.skip_probe);
    assert!(opts.seccomp);
    assert_eq!(opts.state_root, PathBuf::from("/run/moat"));
    let env = |k: &str| match k {
        "MOAT_BOOT_TIMEOUT" => Some("2.5".to_owned()),
        "MOAT_SKIP_PROBE" => Some("1".to_owned()),
        _ => None,
    };
    let opts = RuntimeOptions::from_env(env).unwrap();
    assert_eq!(opts.boot_timeout, Duration::from_millis(2500));
    assert!(opts.skip_probe);
    for bad in ["0", "-1", "x", "", "inf", "NaN"] {
        let env = |k: &str| (k == "MOAT_BOOT_TIMEOUT").then(|| bad.to_owned());
        assert!(RuntimeOptions::from_env(env).is_err(), "{bad:?} accepted");
    }
}

fn config(id: &str, tty: bool) -> RunConfig {
    let args = ["echo".to_string(), "hi".into()];
    let mut spec = basic_spec(&args, &["PATH=/bin".into()], "/", (1000, 100), None);
    spec.set_hostname(Some("box".into()));
    RunConfig {
        id: id.into(),
        rootfs: Rootfs::Image("busybox".into()),
        spec,
        volumes: vec![],
        storage_bytes: 64 << 20,
        cpus: 2,
        memory_mib: 128,
        interactive: false,
        tty,
        assets: AssetOverrides::default(),
        cgroup_path: None,
        hooks: None,
        disk_slots: 0,
        joins: Vec::new(),
    }
}

#[test]
fn request_carries_the_config() {
    let req = run_request(
        &config("c1", false),
        UpperLayer::Memory { mib: 8 },
        (50, 120),
    );
    assert_eq!(req.id, "c1");
    assert_eq!(req.rootfs.device, "/dev/vda");
    let p = req.spec.process().clone().unwrap();
    assert_eq!(
        p.args().as_deref(),
        Some(&["echo".to_string(), "hi".into()][..])
    );
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 100));
    assert_eq!((p.terminal(), p.console_size()), (Some(false), None));
    assert_eq!(req.spec.hostname().as_deref(), Some("box"));
    let req = run_request(
        &config("c1", true),
        UpperLayer::Memory { mib: 8 },
        (50, 120),
    );
    let p = req.spec.process().clone().unwrap();
    let size = p.console_size().unwrap();
    assert_eq!(
        (size.height(), size.width(), p.terminal()),
        (50, 120, Some(true))
    );
}

#[test]
fn request_carries_the_volumes() {
    let mut c = config("c1", false);
    for (i, readonly) in [true, false].into_iter().enumerate() {
        c.volumes.push(crate::volumes::Volume {
            source: crate::volumes::VolumeSource::ImageFile(format!("/v{i}.ext4").into()),
            destination: format!("/data{i}"),
            readonly,
        });
    }
    let req = run_request(&c, UpperLayer::Memory { mib: 8 }, (50, 120));
    assert_eq!(req.volumes.len(), 2);
    assert_eq!(
        (req.volumes[0].device.as_str(), req.volumes[0].readonly),
        ("/dev/vdb", true)
    );
    assert_eq!(
        (req.volumes[1].device.as_str(), req.volumes[1].readonly),
        ("/dev/vdc", false)
    );
    assert_eq!(req.volumes[1].mountpoint, "/run/moat-volumes/1");
    assert_eq!(req.volumes[1].fstype, "ext4");
}

/// A fake `moat-vmm`: `probe` prints a refusal when `$dir/no-kvm` exists; `run` checks its
/// arguments (jailed: that it is PID 1 and has the jail flags), then waits
/// until the fake agent creates `poweroff` in the VM's directory (the jail root when jailed).
const FAKE_VMM: &str = r#"
dir=$(dirname "$0")
if [ "$1" = probe ]; then
  [ -e "$dir/no-kvm" ] && { echo 'moat-vmm: no hardware virtualization here' >&2; exit 1; }
  exit 0
fi
[ -e "$dir/fail" ] && { echo 'moat-vmm: kernel: not an ELF file' >&2; exit 1; }
[ -e "$dir/sigsys" ] && kill -SYS $$
while [ $# -gt 0 ]; do
  case "$1" in
    --console-log) vmdir=$(dirname "$2");;
    --disk) disk=${disk:-$2};;
    --jail-id) id="$2";;
    --jail-base) base="$2";;
    --uid) uid="$2";;
    --no-jail) nojail=1;;
  esac
  shift
done
case "$disk" in *,ro) ;; *) echo "bad disk $disk" >&2; exit 2;; esac
if [ -n "$nojail" ]; then
  echo "$$" > "$dir/vmm.pid"
else
  [ $$ = 1 ] || { echo "not pid 1" >&2; exit 9; }
  [ "$uid" -ge 1000000 ] || { echo "bad uid $uid" >&2; exit 9; }
  vmdir="$base/$id/root"
fi
while [ ! -e "$vmdir/poweroff" ]; do sleep 0.01; done
exit 0
"#;

struct Setup {
    tmp: TempDir,
    assets: Assets,
    options: RuntimeOptions,
}

fn setup(name: &str) -> Setup {
    let tmp = TempDir::new(name);
    let vmm = fake_vmm(tmp.path(), FAKE_VMM);
    for f in ["vmlinux", "initramfs.cpio", "busybox.ext4"] {
        std::fs::write(tmp.path().join(f), b"x").unwrap();
    }
    let assets = Assets {
        vmm,
        kernel: tmp.path().join("vmlinux"),
        initramfs: tmp.path().join("initramfs.cpio"),
        image: Some(tmp.path().join("busybox.ext4")),
    };
    let options = RuntimeOptions {
        state_root: tmp.path().join("run"),
        data_root: tmp.path().join("data"),
        boot_timeout: Duration::from_secs(20),
        skip_probe: false,
        log_dir: None,
        jail: true,
        // No cgroup hierarchy here: the fake VMM makes none, and removing none is fine.
        cgroup_root: tmp.path().join("no-cgroup"),
        seccomp: true,
        uid_slots: tmp.path().join("run/.uids"),
    };
    Setup {
        tmp,
        assets,
        options,
    }
}

impl Setup {
    fn state(&self, id: &str) -> PathBuf {
        self.options.state_root.join(id)
    }

    /// Where the VM's files are: the jail root, or the state dir without the jail.
    fn vm_dir(&self, id: &str) -> PathBuf {
        if self.options.jail {
            self.state(id).join("root")
        } else {
            self.state(id)
        }
    }

    /// Asserts that the state dir is gone, the fake VMM no longer runs and no uid slot is held.
    fn assert_clean(&self, id: &str) {
        assert!(!self.state(id).exists(), "state dir left behind");
        let scratch = self.options.data_root.join(format!("scratch/{id}.ext4"));
        assert!(!scratch.exists(), "scratch disk left behind");
        let needle = self.tmp.path().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                !(cmdline.contains("fake-vmm") && cmdline.contains(&needle)),
                "fake vmm still runs: {cmdline}"
            );
        }
        // A slot's flock belongs to its open file description, which a child that another test
        // thread is spawning (mkfs.ext4, the fake VMM) shares between its fork and its exec:
        // the slot may read as held for that moment after the run let it go. Held for a
        // second is a slot the run kept.
        let slots = &self.options.uid_slots;
        for slot in 0..4 {
            let deadline = Instant::now() + Duration::from_secs(1);
            while moat_jail::uids::is_held(slots, slot) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                !moat_jail::uids::is_held(slots, slot),
                "uid slot {slot} held"
            );
        }
    }

    /// Plays the agent: connects to the run's listener, says `Ready`, then `script`.
    fn agent(
        &self,
        id: &str,
        script: impl FnOnce(&mut UnixStream, &Path) + Send + 'static,
    ) -> JoinHandle<()> {
        let state = self.vm_dir(id);
        std::thread::spawn(move || {
            let sock = state.join("vsock.sock_1024");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut stream = loop {
                if let Ok(s) = UnixStream::connect(&sock) {
                    break s;
                }
                assert!(Instant::now() < deadline, "no listener");
                std::thread::sleep(Duration::from_millis(5));
            };
            let ready = AgentMessage::Ready {
                protocol_version: moat_protocol::PROTOCOL_VERSION,
                agent_version: "fake".into(),
            };
            write_frame(&mut stream, FrameKind::Control, 0, &encode(&ready)).unwrap();
            script(&mut stream, &state);
        })
    }
}

/// The next control message, credits skipped.
fn recv(stream: &mut UnixStream) -> HostMessage {
    loop {
        let frame = read_frame(stream).unwrap();
        assert_eq!(frame.kind, FrameKind::Control);
        let msg = decode(&frame.payload).unwrap();
        if !matches!(msg, HostMessage::Credit { .. }) {
            return msg;
        }
    }
}

fn send(stream: &mut UnixStream, msg: &AgentMessage) {
    write_frame(stream, FrameKind::Control, 0, &encode(msg)).unwrap();
}

/// Answers `Create` and `Start`; the request.
fn created_and_started(stream: &mut UnixStream) -> Box<moat_protocol::RunRequest> {
    let HostMessage::Create(req) = recv(stream) else {
        panic!("expected create")
    };
    send(stream, &AgentMessage::Created { process: 1, pid: 7 });
    assert!(matches!(recv(stream), HostMessage::Start { .. }));
    send(
        stream,
        &AgentMessage::Started {
            process: MAIN_PROCESS,
            pid: 7,
        },
    );
    req
}

const EOF: HostMessage = HostMessage::StdinEof {
    process: MAIN_PROCESS,
};

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

fn stdio() -> (Stdio, Shared) {
    let out = Shared::default();
    let stdio = Stdio {
        stdout: Box::new(out.clone()),
        stderr: Box::new(std::io::sink()),
        stdin: None::<Box<dyn Read + Send>>,
    };
    (stdio, out)
}

#[test]
fn a_whole_run_returns_the_status_and_cleans_up() {
    let s = setup("run-ok");
    let agent = s.agent("ok1", |stream, state| {
        let req = created_and_started(stream);
        assert_eq!(
            req.spec
                .process()
                .as_ref()
                .unwrap()
                .args()
                .as_deref()
                .unwrap(),
            ["echo", "hi"]
        );
        assert_eq!(recv(stream), EOF);
        write_frame(stream, FrameKind::Stdout, MAIN_PROCESS, b"hi\n").unwrap();
        send(
            stream,
            &AgentMessage::Exited {
                process: MAIN_PROCESS,
                status: ExitStatus::Code { code: 5 },
            },
        );
        assert_eq!(recv(stream), HostMessage::Shutdown);
        std::fs::write(state.join("poweroff"), b"").unwrap();
    });
    let (stdio, out) = stdio();
    let code = run(&config("ok1", false), &s.assets, &s.options, stdio).unwrap();
    agent.join().unwrap();
    assert_eq!(code, 5);
    assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    s.assert_clean("ok1");
}

#[test]
fn an_unjailed_run_works_the_same() {
    let mut s = setup("run-nojail");
    s.options.jail = false;
    let agent = s.agent("nj1", |stream, state| {
        created_and_started(stream);
        assert_eq!(recv(stream), EOF);
        send(
            stream,
            &AgentMessage::Exited {
                process: MAIN_PROCESS,
                status: ExitStatus::Code { code: 3 },
            },
        );
        assert_eq!(recv(stream), HostMessage::Shutdown);
        std::fs::write(state.join("poweroff"), b"").unwrap();
    });
    let code = run(&config("nj1", false), &s.assets, &s.options, stdio().0).unwrap();
    agent.join().unwrap();
    assert_eq!(code, 3);
    s.assert_clean("nj1");
}

#[test]
fn agent_errors_map_to_exit_codes() {
    let s = setup("run-notfound");
    let agent = s.agent("nf", |stream, state| {
        recv(stream);
        send(stream, &AgentMessage::Created { process: 1, pid: 7 });
        assert!(matches!(recv(stream), HostMessage::Start { .. }));
        let msg = "exec: nope: not found".to_owned();
        send(
            stream,
            &AgentMessage::Error {
                process: Some(MAIN_PROCESS),
                kind: ErrorKind::NotFound,
                message: msg,
            },
        );
        assert_eq!(recv(stream), HostMessage::Shutdown);
        std::fs::write(state.join("poweroff"), b"").unwrap();
    });
    let err = run(&config("nf", false), &s.assets, &s.options, stdio().0).unwrap_err();
    agent.join().unwrap();
    assert_eq!(err.exit_code(), 127);
    assert_eq!(err.to_string(), "exec: nope: not found");
    s.assert_clean("nf");
}

#[test]
fn a_vm_that_dies_under_the_container_is_reported() {
    let s = setup("run-panic");
    let agent = s.agent("p1", |stream, state| {
        created_and_started(stream);
        let panic = "[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n";
        std::fs::write(state.join("console.log"), panic).unwrap();
        // The connection drops without Exited, and the VMM keeps running.
    });
    let err = run(&config("p1", false), &s.assets, &s.options, stdio().0).unwrap_err();
    agent.join().unwrap();
    assert_eq!(err.exit_code(), 125);
    assert_eq!(
        err.to_string(),
        "VM ended before the container exited: the guest kernel panicked: \
         Kernel panic - not syncing: Attempted to kill init!"
    );
    s.assert_clean("p1");
}

#[test]
fn failures_before_the_agent_leave_nothing_behind() {
    let s = setup("run-fail");
    std::fs::write(s.tmp.path().join("no-kvm"), b"").unwrap();
    let err = run(&config("f1", false), &s.assets, &s.options, stdio().0).unwrap_err();
    assert_eq!(err.to_string(), "no hardware virtualization here");
    assert_eq!(err.exit_code(), 125);
    s.assert_clean("f1");

    std::fs::remove_file(s.tmp.path().join("no-kvm")).unwrap();
    std::fs::write(s.tmp.path().join("fail"), b"").unwrap();
    let err = run(&config("f1", false), &s.assets, &s.options, stdio().0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "VM exited before the agent was ready (status 1): moat-vmm: kernel: not an ELF file"
    );
    s.assert_clean("f1");

    std::fs::remove_file(s.tmp.path().join("fail")).unwrap();
    std::fs::write(s.tmp.path().join("sigsys"), b"").unwrap();
    // Unjailed: a jailed fake VMM is PID 1 of its namespace, which its own SIGSYS cannot kill.
    let unjailed = RuntimeOptions {
        jail: false,
        ..s.options.clone()
    };
    let err = run(&config("f1", false), &s.assets, &unjailed, stdio().0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "VM f1: moat-vmm was killed by its seccomp filter (SIGSYS); the kernel log (dmesg, \
         type=1326) names the syscall"
    );
    assert_eq!(err.exit_code(), 125);
    s.assert_clean("f1");
    let options = RuntimeOptions {
        log_dir: Some(s.tmp.path().join("logs")),
        ..unjailed
    };
    std::fs::create_dir_all(s.tmp.path().join("logs")).unwrap();
    let err = run(&config("f1", false), &s.assets, &options, stdio().0).unwrap_err();
    assert!(err.to_string().ends_with("logs/vmm.log"), "{err}");
    s.assert_clean("f1");

    std::fs::remove_file(s.tmp.path().join("sigsys")).unwrap();
    let options = RuntimeOptions {
        boot_timeout: Duration::from_millis(300),
        ..s.options.clone()
    };
    let err = run(&config("f1", false), &s.assets, &options, stdio().0).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the guest agent did not become ready"),
        "{err}"
    );
    s.assert_clean("f1");

    std::fs::create_dir_all(s.state("taken")).unwrap();
    let err = run(&config("taken", false), &s.assets, &s.options, stdio().0).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("a container named \"taken\" already exists"),
        "{err}"
    );
    assert!(
        s.state("taken").exists(),
        "someone else's state dir was removed"
    );
}
