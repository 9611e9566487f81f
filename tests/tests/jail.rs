//! The jail, checked from the host against a RUNNING jailed `moat-vmm` (docs/jailer.md).
//!
//! These checks need a running VMM, not a booted guest, so they also run on a host whose KVM
//! cannot boot a guest at a useful speed (the probe is skipped with `MOAT_SKIP_PROBE=1`; the
//! VMM runs while the guest crawls). The test finds the VMM through `/run/moat/<id>/vmm.pid`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_jail::cgroup::{CPU_PERIOD_US, EXTRA_TASKS, VMM_MEMORY_OVERHEAD_MIB};
use moat_jail::uids::{self, FIRST_ID};
use moat_tests::{assert_nothing_left, moat_bin, unique_name, vmm_bin, wait_with_timeout};

/// How long the VMM gets to build its VM and drop its privileges.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const CPUS: u64 = 2;
const MEMORY_MIB: u64 = 320;

/// Whether a VMM can run here at all (it need not boot a guest): root, /dev/kvm, the binaries.
fn can_run_vmm(test: &str) -> bool {
    let missing = if !Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm".to_owned())
    } else if !vmm_bin().exists() || !moat_bin().exists() {
        Some("moat is not built (run scripts/setup)".to_owned())
    } else if !rustix_is_root() {
        Some("not root".to_owned())
    } else {
        None
    };
    match missing {
        None => true,
        Some(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: must run in CI but cannot: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// A `moat run -- sleep 1000` in the background, killed (SIGTERM) on drop.
struct Running {
    name: String,
    child: Child,
    err_path: PathBuf,
}

impl Running {
    fn start(prefix: &str, extra: &[&str]) -> Self {
        let name = unique_name(prefix);
        let err_path = std::env::temp_dir().join(format!("{name}.stderr"));
        let err = std::fs::File::create(&err_path).expect("stderr file");
        let (cpus, memory) = (CPUS.to_string(), format!("{MEMORY_MIB}m"));
        let mut args = vec![
            "run",
            "--name",
            &name,
            "--vm-cpus",
            &cpus,
            "--vm-memory",
            &memory,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sleep", "1000"]);
        let child = Command::new(moat_bin())
            .args(&args)
            .env("MOAT_SKIP_PROBE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn moat");
        Self {
            name,
            child,
            err_path,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// The VMM's pid once `ready` says its set-up is done.
    fn vmm_pid(&mut self, ready: impl Fn(u32) -> bool) -> u32 {
        let pid_file = Path::new("/run/moat").join(&self.name).join("vmm.pid");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(pid) = pid.filter(|&pid| ready(pid)) {
                return pid;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moat ended ({status}) before the checks: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the VMM did not start: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERMs moat (unless it was reaped already: its pid may be someone else's now) and
    /// waits for it.
    fn stop(&mut self) -> i32 {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code().unwrap_or(-1);
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_with_timeout(&mut self.child, Duration::from_secs(120))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.err_path);
    }
}

/// `Key:` fields of a status file.
fn status_field(status: &str, key: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn tasks(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/task");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .expect("task dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The jailed VMM has dropped its privileges and started its threads (main, event loop, vCPUs).
fn jailed_and_running(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid_dropped = status
        .lines()
        .any(|l| l.starts_with("Uid:") && !l.contains("\t0\t"));
    uid_dropped && tasks(pid).len() as u64 >= CPUS + 2
}

fn check_threads(pid: u32) -> u32 {
    let main = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status_field(&main, "Uid")[0].parse().unwrap();
    assert!(uid >= FIRST_ID, "uid {uid} is not a VM uid");
    for task in tasks(pid) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/status")).unwrap();
        let ctx = format!("task {task}:\n{status}");
        assert_eq!(status_field(&status, "NoNewPrivs"), ["1"], "{ctx}");
        let ids = vec![uid.to_string(); 4];
        assert_eq!(status_field(&status, "Uid"), ids, "{ctx}");
        assert_eq!(status_field(&status, "Gid"), ids, "{ctx}");
        assert_eq!(
            status_field(&status, "Groups"),
            Vec::<String>::new(),
            "{ctx}"
        );
        for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd"] {
            assert_eq!(
                status_field(&status, cap),
                ["0000000000000000"],
                "{cap}: {ctx}"
            );
        }
        let nstgid = status_field(&status, "NStgid");
        assert_eq!(nstgid.last().map(String::as_str), Some("1"), "{ctx}");
    }
    uid
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn check_root_and_namespaces(pid: u32) {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let expected = [
        "console.log",
        "dev",
        "disk0",
        // The writable layer's scratch disk (docs/storage.md).
        "disk1",
        "initramfs",
        "vmlinux",
        "vsock.sock",
        "vsock.sock_1024",
    ];
    assert_eq!(names(&root), expected.map(String::from).into());
    assert_eq!(names(&root.join("dev")), ["kvm".to_owned()].into());
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.is_empty(),
        "environment: {:?}",
        String::from_utf8_lossy(&environ)
    );
}

fn check_fds(pid: u32, name: &str) {
    let vmm_log = format!("/run/moat/{name}/vmm.log");
    // Paths of files in the VMM's mount namespace show relative to that namespace's root. That
    // is the jail root itself on a normal host; under a chroot (the nested test host's init
    // chroots into its root) the jail mount sits where the chroot was: strip that prefix.
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    let root = root.to_string_lossy().into_owned();
    // The access mode the VMM opened fd `fd` with.
    let access = |fd: &str| {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = status_field(&info, "flags")[0].clone();
        i32::from_str_radix(&flags, 8).unwrap() & libc::O_ACCMODE
    };
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let fd = entry.file_name().to_string_lossy().into_owned();
        let target = std::fs::read_link(entry.path()).unwrap();
        let target = target.to_string_lossy().into_owned();
        let target = match target.strip_prefix(&root) {
            Some(rest) if root != "/" && rest.starts_with('/') && !fd_from_host(&fd) => {
                rest.to_owned()
            }
            _ => target,
        };
        let kind = match target.as_str() {
            "/dev/null" if fd == "0" => "stdin",
            t if t == vmm_log && (fd == "1" || fd == "2") => "log",
            "anon_inode:kvm-vm" => "vm",
            t if t.starts_with("anon_inode:kvm-vcpu:") => "vcpu",
            "anon_inode:[eventfd]" | "anon_inode:[eventpoll]" | "anon_inode:[timerfd]" => "event",
            "/disk0" => {
                assert_eq!(access(&fd), libc::O_RDONLY, "ro disk opened writable");
                "disk"
            }
            "/disk1" => {
                assert_eq!(access(&fd), libc::O_RDWR, "scratch disk not writable");
                "scratch"
            }
            "/console.log" => "console",
            "/dev/kvm" => "kvm",
            t if t.starts_with("socket:[") => "socket",
            other => panic!("fd {fd} -> {other} is not on the allowlist"),
        };
        kinds.insert(kind);
    }
    for needed in ["vm", "vcpu", "disk", "scratch", "console", "socket", "log"] {
        assert!(kinds.contains(needed), "no {needed} fd: {kinds:?}");
    }
}

/// stdin, stdout and stderr: opened by the runtime, in the host's namespace.
fn fd_from_host(fd: &str) -> bool {
    matches!(fd, "0" | "1" | "2")
}

/// The limits file values in the VMM's cgroup, v1 or v2 from /proc/<pid>/cgroup.
fn check_cgroup(pid: u32, name: &str) {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = ((MEMORY_MIB + VMM_MEMORY_OVERHEAD_MIB) << 20).to_string();
    let quota = (CPUS * CPU_PERIOD_US).to_string();
    let pids = (CPUS + EXTRA_TASKS).to_string();
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    };
    let group = format!("/moat/{name}");
    let path_of = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
    };
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        let path = path_of("").expect("a v2 cgroup line");
        assert_eq!(path, group, "{cgroups}");
        let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        assert_eq!(
            read(dir.join("cpu.max")),
            format!("{quota} {CPU_PERIOD_US}")
        );
        assert_eq!(read(dir.join("memory.max")), memory);
        assert_eq!(read(dir.join("pids.max")), pids);
    } else {
        for (controller, file, value) in [
            ("cpu", "cpu.cfs_quota_us", &quota),
            ("memory", "memory.limit_in_bytes", &memory),
            ("pids", "pids.max", &pids),
        ] {
            let path = path_of(controller).unwrap_or_else(|| panic!("no {controller}: {cgroups}"));
            assert_eq!(path, group, "{controller}: {cgroups}");
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&path[1..]);
            assert_eq!(&read(dir.join(file)), value, "{controller}");
        }
    }
}

fn assert_no_mount_mentions(name: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = format!("/run/moat/{name}");
    assert!(
        !mounts.contains(&needle),
        "host mounts mention {needle}:\n{mounts}"
    );
}

#[test]
fn a_running_vmm_is_jailed() {
    if !can_run_vmm("a_running_vmm_is_jailed") {
        return;
    }
    let mut run = Running::start("jail", &[]);
    let pid = run.vmm_pid(jailed_and_running);
    let uid = check_threads(pid);
    check_root_and_namespaces(pid);
    check_fds(pid, &run.name);
    check_cgroup(pid, &run.name);
    let slot = uid - FIRST_ID;
    assert!(uids::is_held(Path::new("/run/moat/.uids"), slot));
    // The VMM's bind mounts and pivot_root stay in its own mount namespace.
    assert_no_mount_mentions(&run.name);
    run.stop();
    assert_nothing_left(&run.name);
    assert_no_mount_mentions(&run.name);
    assert!(
        !uids::is_held(Path::new("/run/moat/.uids"), slot),
        "uid slot still held"
    );
}

#[test]
fn no_jail_is_explicit_and_warned_about() {
    if !can_run_vmm("no_jail_is_explicit_and_warned_about") {
        return;
    }
    let mut run = Running::start("nojail", &["--no-jail"]);
    let pid = run.vmm_pid(|pid| tasks(pid).len() as u64 >= CPUS + 2);
    let warning: Vec<String> = run
        .stderr()
        .lines()
        .filter(|l| l.contains("--no-jail"))
        .map(str::to_owned)
        .collect();
    assert_eq!(warning.len(), 1, "{}", run.stderr());
    assert!(
        warning[0].starts_with("moat: warning: --no-jail"),
        "{warning:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(status_field(&status, "Uid")[0], "0");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(theirs, std::fs::read_link("/proc/self/ns/mnt").unwrap());
    run.stop();
    assert_nothing_left(&run.name);
}

/// A root-owned 0700 base with dummy kernel and initramfs files, removed on drop.
struct Base {
    dir: PathBuf,
}

impl Base {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(name));
        std::fs::create_dir_all(dir.join("base")).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(dir.join("base"), mode).unwrap();
        std::fs::write(dir.join("vmlinux"), b"not an elf").unwrap();
        std::fs::write(dir.join("initramfs"), b"").unwrap();
        Self { dir }
    }

    fn base(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// `moat-vmm run` jailed as `id`: (status, stderr).
    fn run(&self, id: &str, uid: &str, kernel: &Path) -> (i32, String) {
        let out = Command::new(vmm_bin())
            .args(["run", "--jail-id", id, "--uid", uid, "--gid", uid])
            .arg("--jail-base")
            .arg(self.base())
            .arg("--kernel")
            .arg(kernel)
            .arg("--initramfs")
            .arg(self.dir.join("initramfs"))
            .args(["--memory-mib", "64", "--console-log", "/console.log"])
            .output()
            .expect("run moat-vmm");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), stderr)
    }

    fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_one_line(stderr: &str, expected: &str) {
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("moat-vmm: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr:?}"
    );
}

fn assert_no_cgroup(id: &str) {
    for dir in moat_tests::cgroup_dirs(id) {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}

#[test]
fn jail_input_errors_are_clear_and_leave_nothing() {
    if !can_run_vmm("jail_input_errors_are_clear_and_leave_nothing") {
        return;
    }
    let b = Base::new("jail-input");
    for (id, expected) in [
        ("../x", "invalid jail id"),
        ("a/b", "invalid jail id"),
        ("a..b", "must not contain \"..\""),
        ("", "invalid jail id"),
    ] {
        let (code, stderr) = b.run(id, "1000999", &b.kernel());
        assert_eq!(code, 2, "{id}: {stderr}");
        assert_one_line(&stderr, expected);
    }
    let (code, stderr) = b.run("ok", "0", &b.kernel());
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(&stderr, "must not be 0");

    let (code, stderr) = b.run("ok", "1000999", &b.dir.join("missing"));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, "missing: not found");
    assert!(names(&b.base()).is_empty(), "left: {:?}", names(&b.base()));
    assert_no_cgroup("ok");

    let root = b.base().join("ln/root");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", root.join("vmlinux")).unwrap();
    let (code, stderr) = b.run("ln", "1000999", &b.kernel());
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, "vmlinux is a symlink");
    std::fs::remove_file(root.join("vmlinux")).unwrap();
    std::fs::hard_link(b.dir.join("initramfs"), root.join("initramfs")).unwrap();
    let (code, stderr) = b.run("ln", "1000999", &b.kernel());
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, "initramfs is a hard link");
    assert_eq!(names(&root), ["initramfs".to_owned()].into());
    assert_no_cgroup("ln");
}

#[test]
fn a_hand_started_jailed_vmm_cleans_up_after_itself() {
    if !can_run_vmm("a_hand_started_jailed_vmm_cleans_up_after_itself") {
        return;
    }
    // Not PID 1: moat-vmm forks itself into a PID namespace; the child enters the jail and
    // fails on the kernel (not an ELF file); the parent forwards its status and removes the
    // placeholders and the cgroup. The console log the VM made is left for the user.
    let b = Base::new("jail-hand");
    let (code, stderr) = b.run("hand", "1000999", &b.kernel());
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("kernel"), "{stderr}");
    let root = b.base().join("hand/root");
    assert_eq!(names(&root), ["console.log".to_owned()].into());
    assert_no_cgroup("hand");
}
