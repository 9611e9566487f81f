//! A private containerd 1.6 for the docker and containerd tests ([`Containerd`]): its root and
//! state on a tmpfs under one temp dir, its own socket and config, `ctr` against it only.
//!
//! Two things live outside the temp dir because containerd 1.6 and the shims hard-code them:
//! the shims' sockets in `/run/containerd/s/` (named by a hash of our containerd's address, so
//! they do not clash) and, for dockerd, `/run/docker/plugins`. Directories there that did not
//! exist before are removed on drop if empty.
//!
//! The root is a tmpfs because the overlay snapshotter (and Docker's overlay2) cannot use an
//! overlay as its upper filesystem, and the nested test host's root is one.

use crate::{reader, tail, wait_for, Outcome};
use moat_jail::testutil::TempDir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long containerd (and dockerd) may take to answer (generous: the nested host is slow).
pub const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Default limit for one `ctr` command.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(300);

/// Size of the tmpfs that holds the data (images, snapshots, containers' layers).
const TMPFS_SIZE: &str = "2g";

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What containerd 1.6 (and dockerd 20.10) create in /run whatever their flags, deepest first.
const RUN_DIRS: [&str; 4] = [
    "/run/containerd/s",
    "/run/containerd",
    "/run/docker/plugins",
    "/run/docker",
];

/// `$MOAT_CONTAINERD`, or Debian's `/usr/bin/containerd`.
pub fn containerd_bin() -> PathBuf {
    bin_from_env("MOAT_CONTAINERD", "/usr/bin/containerd")
}

/// `$MOAT_CTR`, or Debian's `/usr/bin/ctr`.
pub fn ctr_bin() -> PathBuf {
    bin_from_env("MOAT_CTR", "/usr/bin/ctr")
}

pub(crate) fn bin_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Call first in every containerd test: false (after printing why) when containerd cannot run
/// here (not root, or not installed). In CI (`CI=true`) that is a failure, not a skip.
pub fn containerd_available(test: &str) -> bool {
    daemon_available(test, "containerd", &[containerd_bin(), ctr_bin()])
}

/// Whether the `kind` tests (`containerd`, `docker`) can run: root, and every one of `bins`
/// installed; else false after printing why, or in CI (`CI=true`) a panic.
pub(crate) fn daemon_available(test: &str, kind: &str, bins: &[PathBuf]) -> bool {
    let missing: Vec<String> = bins
        .iter()
        .filter(|b| !b.exists())
        .map(|b| b.display().to_string())
        .collect();
    let reason = if !nix::unistd::geteuid().is_root() {
        format!("needs root (it mounts a tmpfs and runs {kind})")
    } else if !missing.is_empty() {
        format!("{} missing (run scripts/deps.sh)", missing.join(", "))
    } else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {kind} tests must run in CI but cannot: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// How to start a [`Containerd`].
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Prefix of the temp dir.
    pub name: &'static str,
    /// Extra TOML appended to the config (runtimes, the CRI plugin's settings).
    pub extra_config: String,
    /// Keep the CRI plugin (else disabled, as dockerd runs it).
    pub cri: bool,
    /// Directories put first on containerd's PATH (where it finds `containerd-shim-*-v2`).
    pub path: Vec<PathBuf>,
}

/// A running containerd; on drop it is stopped, stray shims of this instance killed, the tmpfs
/// unmounted and the temp dir removed.
pub struct Containerd {
    child: Option<Child>,
    /// `None` once dropped, or leaked on purpose when a mount under it would not go away.
    dir: Option<TempDir>,
    base: PathBuf,
    run_dirs: Vec<&'static str>,
}

impl Containerd {
    /// Starts containerd with `opts` and waits until its socket exists; panics with its log if
    /// it does not come up within [`START_TIMEOUT`].
    pub fn start(opts: &Options) -> Self {
        let dir = TempDir::new(opts.name);
        let base = dir.path().to_path_buf();
        let mut c = Self {
            child: None,
            dir: Some(dir),
            base,
            run_dirs: RUN_DIRS
                .into_iter()
                .filter(|d| !Path::new(d).exists())
                .collect(),
        };
        std::fs::create_dir_all(c.log_dir()).expect("logs dir");
        std::fs::create_dir_all(c.work_dir()).expect("work dir");
        c.mount_tmpfs();
        std::fs::write(c.base.join("containerd.toml"), c.config(opts))
            .expect("write containerd.toml");
        c.child = Some(c.spawn(opts));
        c.wait_socket();
        c
    }

    /// The temp dir that holds everything of this instance (the shims' command lines name it).
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// The tmpfs for data (containerd's root and state, a docker data root).
    pub fn fs(&self) -> PathBuf {
        self.base.join("fs")
    }

    /// containerd's state dir: bundles are `<this>/io.containerd.runtime.v2.task/<ns>/<id>`.
    pub fn state(&self) -> PathBuf {
        self.fs().join("containerd/state")
    }

    /// containerd's root dir (content, snapshots).
    pub fn root(&self) -> PathBuf {
        self.fs().join("containerd/root")
    }

    /// A directory for the test's own files (archives, bundles), removed with the daemon.
    pub fn work_dir(&self) -> PathBuf {
        self.base.join("work")
    }

    /// Where the daemons' logs go.
    pub fn log_dir(&self) -> PathBuf {
        self.base.join("logs")
    }

    /// containerd's gRPC socket (the shims' `-address`).
    pub fn socket(&self) -> PathBuf {
        self.base.join("containerd.sock")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir().join("containerd.log")).unwrap_or_default()
    }

    /// The last lines of containerd's log.
    pub fn diagnostics(&self) -> String {
        format!("--- containerd log (tail)\n{}\n", tail(&self.log(), 60))
    }

    /// Runs `ctr ARGS` against this containerd (namespace `ns`), `stdin` fed to it, killed after
    /// `timeout` (code -1).
    pub fn ctr(&self, ns: &str, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
        let mut cmd = Command::new(ctr_bin());
        cmd.env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", ns])
            .args(args);
        run_captured(cmd, stdin, timeout, self.log_dir())
    }

    /// Runs `cmd` (a terminal wrapper of `ctr` such as script(1): output captured), killed
    /// after `timeout` (code -1); the outcome shows this containerd's log. Its stdin is a pipe
    /// that stays open and empty until it ends: at an EOF, script(1) would type its EOF
    /// character into the terminal, where the task's terminal echoes it amid its output.
    pub fn run(&self, mut cmd: Command, timeout: Duration) -> Outcome {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the terminal wrapper");
        let stdin = child.stdin.take();
        let outcome = captured(child, None, timeout, self.log_dir());
        drop(stdin);
        outcome
    }

    /// `ctr ARGS` in namespace `ns`, which must succeed; its stdout.
    #[track_caller]
    pub fn ctr_ok(&self, ns: &str, args: &[&str]) -> String {
        let o = self.ctr(ns, args, None, CTR_TIMEOUT);
        assert_eq!(
            o.code,
            0,
            "ctr {args:?} failed\n{}{}",
            o.diagnostics(),
            self.diagnostics()
        );
        o.out()
    }

    #[track_caller]
    fn mount_tmpfs(&self) {
        let fs = self.fs();
        std::fs::create_dir_all(&fs).expect("tmpfs mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={TMPFS_SIZE},mode=0711"))
            .arg("moat-containerd")
            .arg(&fs)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs at {} (needs root): {}",
            fs.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config(&self, opts: &Options) -> String {
        let fs = self.fs();
        let disabled = if opts.cri {
            ""
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        // The opt plugin would otherwise create /opt/containerd and put it first on PATH.
        format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             {disabled}\
             [grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             {extra}\n",
            root = self.root().display(),
            state = self.state().display(),
            sock = self.socket().display(),
            opt = fs.join("containerd/opt").display(),
            extra = opts.extra_config,
        )
    }

    fn spawn(&self, opts: &Options) -> Child {
        let log = std::fs::File::create(self.log_dir().join("containerd.log")).expect("log");
        let bin = containerd_bin();
        let mut path = opts.path.clone();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        Command::new(&bin)
            .arg("--config")
            .arg(self.base.join("containerd.toml"))
            .env("PATH", std::env::join_paths(path).expect("PATH"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({e}): run scripts/deps.sh", bin.display()))
    }

    /// Waits until containerd's socket exists.
    #[track_caller]
    fn wait_socket(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.socket().exists() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited: {status}\n{}", self.diagnostics());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not create {} within {START_TIMEOUT:?}\n{}",
                self.socket().display(),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the shims this instance's containerd started (they outlive it by design).
    fn kill_stray_shims(&self) {
        let address = self.socket().display().to_string();
        for pid in processes_whose_argv(|argv| {
            argv.first().is_some_and(|a| a.contains("containerd-shim"))
                && argv.iter().any(|a| *a == address)
        }) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Unmounts everything under the temp dir, deepest first; whether nothing is left mounted.
    fn unmount_all(&self) -> bool {
        for _ in 0..3 {
            let mut points = mounts_under(&self.base);
            if points.is_empty() {
                return true;
            }
            points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in points {
                let ok = Command::new("umount")
                    .arg(&p)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(&p).status();
                }
            }
        }
        mounts_under(&self.base).is_empty()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child);
        }
        self.kill_stray_shims();
        for d in &self.run_dirs {
            let _ = std::fs::remove_dir(d);
        }
        if self.unmount_all() {
            self.dir = None;
        } else {
            eprintln!(
                "containerd: mounts left under {}; keeping it",
                self.base.display()
            );
            std::mem::forget(self.dir.take());
        }
    }
}

/// Runs `cmd` with `stdin` fed to it, capturing its output, killed after `timeout` (code -1);
/// the outcome's log dir is `log_dir`.
pub(crate) fn run_captured(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    log_dir: PathBuf,
) -> Outcome {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program} ({e}): run scripts/deps.sh"));
    captured(child, stdin, timeout, log_dir)
}

/// The outcome of `child` (stdout and stderr piped), `stdin` fed to it, killed after `timeout`.
fn captured(
    mut child: std::process::Child,
    stdin: Option<&[u8]>,
    timeout: Duration,
    log_dir: PathBuf,
) -> Outcome {
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &data);
        })
    });
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let code = wait_for(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        -1
    });
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Outcome {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        log_dir,
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
pub(crate) fn stop(mut child: Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    if wait_for(&mut child, STOP_GRACE).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Pids of the processes with an argument that contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    processes_whose_argv(|argv| argv.iter().any(|a| a.contains(needle)))
}

/// Pids of the processes whose argv (NUL-split `/proc/PID/cmdline`) matches.
fn processes_whose_argv(matches: impl Fn(&[&str]) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let raw = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let argv: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
        if matches(&argv) {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points at or under `dir`, from this process's mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\NNN` octal.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/x\\134y\\011z"), "/x\\y\tz");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/odd\\"), "/odd\\");
    }
}
