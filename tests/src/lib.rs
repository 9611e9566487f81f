//! Helpers for moat's integration tests: find the built binaries, decide whether VM tests can
//! run here, run `moat` with a timeout and show the guest's console and the VMM log on failure; and
//! registries and images for the image tests ([`registry`]); a private containerd ([`containerd`])
//! and Docker daemon ([`docker`]) for the containerd and docker tests.
#![forbid(unsafe_code)]

pub mod containerd;
pub mod cri;
pub mod docker;
pub mod registry;
pub mod shim;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Generous timeout for one `moat run` (the nested test host is slow).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// `target/release/moat`, or `$MOAT_BIN`.
pub fn moat_bin() -> PathBuf {
    std::env::var_os("MOAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/moat"))
}

/// `target/release/moat-vmm`, or `$MOAT_VMM`.
pub fn vmm_bin() -> PathBuf {
    std::env::var_os("MOAT_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/moat-vmm"))
}

/// The `moat-vmm` built with the `test-hooks` feature (`target/hooks/release/moat-vmm`, built by
/// scripts/test), or `$MOAT_HOOKED_VMM`.
pub fn hooked_vmm_bin() -> PathBuf {
    std::env::var_os("MOAT_HOOKED_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/hooks/release/moat-vmm"))
}

/// Whether microVMs can boot here. `None` means yes; `Some(reason)` means no.
fn vm_unavailable() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            let vmm = vmm_bin();
            if !vmm.exists() {
                return Some(format!(
                    "{} is not built (run scripts/setup)",
                    vmm.display()
                ));
            }
            match Command::new(&vmm).arg("probe").output() {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => Some(format!("cannot run {}: {e}", vmm.display())),
            }
        })
        .clone()
}

/// Call first in every VM test: returns false (after printing why) when VM tests cannot run on
/// this host. In CI (`CI=true`) a VM test that cannot run is a failure, not a skip.
pub fn vm_available(test: &str) -> bool {
    let Some(reason) = vm_unavailable() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: KVM tests must run in CI but cannot: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason} (scripts/test runs VM tests in the nested test host)");
    false
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Where the run's console and VMM logs were kept.
    pub log_dir: PathBuf,
}

impl Outcome {
    /// stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Everything a reader needs to see why a run failed.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "exit code {}\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}\n",
            self.code,
            tail(&self.out(), 40),
            tail(&self.err(), 40)
        );
        for entry in std::fs::read_dir(&self.log_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            s += &format!(
                "--- {} (tail)\n{}\n",
                entry.path().display(),
                tail(&text, 40)
            );
        }
        s
    }

    /// Panics with the diagnostics unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "unexpected exit code\n{}",
            self.diagnostics()
        );
        self
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A fresh directory for one run's kept logs (`MOAT_LOG_DIR`).
fn log_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("moat-test-logs-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// Runs `moat ARGS` with `stdin` fed to it, capturing stdout and stderr, killed after `timeout`.
pub fn moat(args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    moat_with(args, stdin, RUN_TIMEOUT)
}

/// [`moat`] with an explicit timeout.
pub fn moat_with(args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
    moat_with_env(args, stdin, timeout, &[])
}

/// [`moat_with`] with extra environment variables.
pub fn moat_with_env(
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    env: &[(&str, &std::ffi::OsStr)],
) -> Outcome {
    let log_dir = log_dir();
    let mut cmd = Command::new(moat_bin());
    cmd.args(args)
        .envs(env.iter().copied())
        .env("MOAT_LOG_DIR", &log_dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn moat");
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let code = match wait_for(&mut child, timeout) {
        Some(code) => code,
        None => {
            // moat keeps its logs only when it ends by itself: copy them from the running VM.
            keep_live_logs(&log_dir);
            let _ = child.kill();
            let _ = child.wait();
            -1
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Outcome {
        code,
        stdout,
        stderr,
        log_dir,
    }
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child`, killing it after `timeout`; returns its shell-style status (-1: timed out).
pub fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration) -> i32 {
    wait_for(child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        -1
    })
}

/// Waits up to `timeout` for `child`; its shell-style status, or `None` if it still runs.
fn wait_for(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    while start.elapsed() <= timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Copies the console and VMM logs of every VM running now into `dir` (named after the VM).
fn keep_live_logs(dir: &Path) {
    for vm in std::fs::read_dir("/run/moat")
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = vm.file_name().to_string_lossy().into_owned();
        for name in ["console.log", "vmm.log", "root/console.log"] {
            let from = vm.path().join(name);
            let to = dir.join(format!("live-{id}-{}", name.replace('/', "-")));
            let _ = std::fs::copy(from, to);
        }
    }
}

/// Pids of running `moat-vmm` processes whose command line mentions `needle`.
pub fn vmm_processes_mentioning(needle: &str) -> Vec<u32> {
    processes_mentioning("moat-vmm", needle)
}

/// The cgroup directories a jailed VM named `name` gets, on cgroup v2 and v1 (docs/jailer.md).
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    ["", "cpu", "memory", "pids"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join("moat").join(name))
        .collect()
}

/// Asserts that nothing of the run named `name` is left: no state dir, no VMM process, no
/// cgroup.
#[track_caller]
pub fn assert_nothing_left(name: &str) {
    let state = Path::new("/run/moat").join(name);
    assert!(!state.exists(), "state dir {} left behind", state.display());
    for dir in cgroup_dirs(name) {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    let pids = vmm_processes_mentioning(name);
    assert!(
        pids.is_empty(),
        "moat-vmm processes left behind for {name}: {pids:?}"
    );
    let scratch = scratch_disk(name);
    assert!(
        !scratch.exists(),
        "scratch disk {} left behind",
        scratch.display()
    );
    let data = scratch
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("containers").join(name));
    if let Some(data) = data {
        assert!(
            !data.exists(),
            "container data {} left behind",
            data.display()
        );
    }
    let supervisors = processes_mentioning("__supervise", &format!("/run/moat/{name}"));
    assert!(
        supervisors.is_empty(),
        "supervisors left behind for {name}: {supervisors:?}"
    );
}

/// Pids of processes whose command line has both `a` and `b`.
pub fn processes_mentioning(a: &str, b: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(a) && cmdline.contains(b) {
            pids.push(pid);
        }
    }
    pids
}

/// Where the writable layer's disk of the run named `name` lives (docs/storage.md).
pub fn scratch_disk(name: &str) -> PathBuf {
    let root = std::env::var_os("MOAT_DATA_ROOT")
        .filter(|r| !r.is_empty())
        .map_or_else(|| PathBuf::from("/var/lib/moat"), PathBuf::from);
    root.join("scratch").join(format!("{name}.ext4"))
}

/// Makes a fresh ext4 image file of `size` (mkfs.ext4's syntax, e.g. `32M`) at `path`.
#[track_caller]
pub fn ext4_image(path: &Path, size: &str) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .arg(size)
        .output()
        .expect("mkfs.ext4");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `moat ARGS` in the background and returns once the container printed `ready` as its
/// first line of output (its stderr goes to ours).
#[track_caller]
pub fn start_until_ready(args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(moat_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn moat");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    out.read_line(&mut line).expect("read");
    assert_eq!(
        line, "ready\n",
        "the container of `moat {args:?}` did not start"
    );
    child
}

/// A unique container name for a test.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The static `moat-probe` (tests/probe, built by scripts/build), or `$MOAT_PROBE`.
pub fn probe_bin() -> PathBuf {
    std::env::var_os("MOAT_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/x86_64-unknown-linux-gnu/release/moat-probe"))
}

/// A directory holding only `moat-probe`, for `-v DIR:/probe:ro`; removed when dropped.
pub struct ProbeVolume(moat_jail::testutil::TempDir);

impl ProbeVolume {
    /// Copies the probe into a fresh directory.
    pub fn new() -> Self {
        let dir = moat_jail::testutil::TempDir::new("moat-probe");
        let probe = probe_bin();
        std::fs::copy(&probe, dir.path().join("moat-probe"))
            .unwrap_or_else(|e| panic!("copy {} ({e}): run scripts/build", probe.display()));
        Self(dir)
    }

    /// The `-v` argument that mounts it at /probe, read-only.
    pub fn volume_arg(&self) -> String {
        format!("{}:/probe:ro", self.0.path().display())
    }
}

impl Default for ProbeVolume {
    fn default() -> Self {
        Self::new()
    }
}

/// Fills `root` with the host's static busybox, links for `applets`, and the usual directories.
pub fn busybox_rootfs(root: &Path, applets: &[&str]) {
    for dir in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(dir)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet link");
    }
}
