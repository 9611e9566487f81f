//! A private Docker for the docker tests: Debian's `dockerd` 20.10 with a `containerd` 1.6 of its
//! own, both under one temp dir, the daemon's data root on a tmpfs mounted there, and a runtime
//! `moat` registered in its daemon.json ([`Dockerd`]); and the busybox image they load
//! ([`busybox_archive`]).
//!
//! Nothing is shared with a Docker or containerd of the machine: dockerd gets `--containerd` (it
//! would otherwise use `/run/containerd/containerd.sock` whenever that exists), its own sockets,
//! pid file, exec root and trust key, and no iptables or bridge. Two things live outside the temp
//! dir because dockerd 20.10 and containerd 1.6 hard-code them: the shims' sockets in
//! `/run/containerd/s/` (named by a hash of our containerd's address, so they do not clash) and
//! the empty plugin discovery dir `/run/docker/plugins`.
//!
//! The data root is a tmpfs because overlay2 cannot use an overlay as its upper filesystem, and
//! the nested test host's root is one.

use crate::registry::{docker_archive, Image, OciLayout};
use crate::{reader, tail, wait_for, Outcome};
use moat_jail::testutil::TempDir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long dockerd and containerd may take to answer (generous: the nested host is slow).
pub const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Default limit for one docker CLI command.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Size of the tmpfs that holds the data root (images, containers' layers).
const TMPFS_SIZE: &str = "2g";

/// How long dockerd and containerd get to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// `$MOAT_DOCKERD`, or Debian's `/usr/sbin/dockerd`.
pub fn dockerd_bin() -> PathBuf {
    bin_from_env("MOAT_DOCKERD", "/usr/sbin/dockerd")
}

/// `$MOAT_CONTAINERD`, or Debian's `/usr/bin/containerd`.
pub fn containerd_bin() -> PathBuf {
    bin_from_env("MOAT_CONTAINERD", "/usr/bin/containerd")
}

/// `$MOAT_DOCKER_CLI`, or Debian's `/usr/bin/docker`, the CLI that matches dockerd 20.10 (a newer
/// CLI earlier on PATH would negotiate API 1.41 and work too, but need not).
pub fn docker_cli() -> PathBuf {
    bin_from_env("MOAT_DOCKER_CLI", "/usr/bin/docker")
}

/// Call first in every docker test: false (after printing why) when Docker cannot run here (not
/// root, or docker.io not installed). In CI (`CI=true`) that is a failure, not a skip.
pub fn docker_available(test: &str) -> bool {
    let missing: Vec<String> = [dockerd_bin(), containerd_bin(), docker_cli()]
        .iter()
        .filter(|b| !b.exists())
        .map(|b| b.display().to_string())
        .collect();
    let reason = if !nix::unistd::geteuid().is_root() {
        "needs root (it mounts a tmpfs and runs dockerd)".to_string()
    } else if !missing.is_empty() {
        format!("{} missing (run scripts/deps.sh)", missing.join(", "))
    } else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: docker tests must run in CI but cannot: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

fn bin_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// A running dockerd and its containerd; on drop every container is removed, both daemons are
/// stopped, stray shims of this instance killed, the tmpfs unmounted and the temp dir removed.
pub struct Dockerd {
    dockerd: Option<Child>,
    containerd: Option<Child>,
    /// `None` once dropped, or leaked on purpose when a mount under it would not go away.
    dir: Option<TempDir>,
    base: PathBuf,
    /// Directories in /run that dockerd or the shims create and that did not exist before:
    /// removed on drop if empty.
    run_dirs: Vec<&'static str>,
}

/// What dockerd 20.10 and containerd 1.6 create in /run whatever their flags, deepest first.
const RUN_DIRS: [&str; 4] = [
    "/run/containerd/s",
    "/run/containerd",
    "/run/docker/plugins",
    "/run/docker",
];

impl Dockerd {
    /// Starts containerd and dockerd with `moat_bin` registered as the runtime `moat` (the
    /// default runtime stays runc), and waits until `docker info` answers. Panics with both
    /// daemons' logs if they do not come up within [`START_TIMEOUT`].
    pub fn start(moat_bin: &Path) -> Self {
        let dir = TempDir::new("dockerd");
        let base = dir.path().to_path_buf();
        let mut d = Self {
            dockerd: None,
            containerd: None,
            dir: Some(dir),
            base,
            run_dirs: RUN_DIRS
                .into_iter()
                .filter(|d| !Path::new(d).exists())
                .collect(),
        };
        std::fs::create_dir_all(d.base.join("logs")).expect("logs dir");
        std::fs::create_dir_all(d.base.join("cli")).expect("cli config dir");
        std::fs::create_dir_all(d.work_dir()).expect("work dir");
        d.mount_tmpfs();
        std::fs::write(d.base.join("containerd.toml"), d.containerd_config())
            .expect("write containerd.toml");
        std::fs::write(d.base.join("daemon.json"), d.daemon_config(moat_bin))
            .expect("write daemon.json");
        d.containerd = Some(d.spawn_containerd());
        d.wait_containerd();
        d.dockerd = Some(d.spawn_dockerd());
        d.wait_dockerd();
        d
    }

    /// The temp dir that holds everything of this instance (the shims' command lines name it).
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// The API socket (`unix://` + this for `-H`).
    pub fn socket(&self) -> PathBuf {
        self.base.join("docker.sock")
    }

    /// dockerd's `--data-root` (on the tmpfs).
    pub fn data_root(&self) -> PathBuf {
        self.fs().join("docker")
    }

    /// dockerd's `--exec-root` (on the tmpfs): the runtime's `--root` is
    /// `<exec root>/runtime-runc/moby` for every runtime.
    pub fn exec_root(&self) -> PathBuf {
        self.fs().join("exec")
    }

    /// containerd's state dir: bundles are `<this>/io.containerd.runtime.v2.task/moby/<id>`.
    pub fn containerd_state(&self) -> PathBuf {
        self.fs().join("containerd/state")
    }

    /// A directory for the test's own files (archives, bundles), removed with the daemon.
    pub fn work_dir(&self) -> PathBuf {
        self.base.join("work")
    }

    /// containerd's gRPC socket (the shims' `-address`).
    pub fn containerd_socket(&self) -> PathBuf {
        self.base.join("containerd.sock")
    }

    /// Runs `docker ARGS` against this daemon, killed after [`DOCKER_TIMEOUT`].
    pub fn docker(&self, args: &[&str]) -> Outcome {
        self.docker_with(args, None, DOCKER_TIMEOUT)
    }

    /// [`Dockerd::docker`] with `stdin` fed to the CLI and an explicit timeout (code -1 when it
    /// ran out). The outcome's log dir holds dockerd's and containerd's logs.
    pub fn docker_with(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
        let mut cmd = self.cli();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} ({e}): run scripts/deps.sh",
                docker_cli().display()
            )
        });
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
            log_dir: self.base.join("logs"),
        }
    }

    /// `docker ARGS`, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert_eq!(o.code, 0, "docker {args:?} failed\n{}", o.diagnostics());
        o.out()
    }

    /// `docker load -i TAR`, which must succeed; its stdout (`Loaded image: NAME:TAG`).
    #[track_caller]
    pub fn load(&self, tar: &Path) -> String {
        let tar = tar.to_str().expect("utf-8 archive path");
        self.ok(&["load", "-i", tar])
    }

    /// dockerd's log so far.
    pub fn dockerd_log(&self) -> String {
        std::fs::read_to_string(self.base.join("logs/dockerd.log")).unwrap_or_default()
    }

    /// containerd's log so far.
    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.base.join("logs/containerd.log")).unwrap_or_default()
    }

    /// The last lines of both daemons' logs.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- dockerd log (tail)\n{}\n--- containerd log (tail)\n{}\n",
            tail(&self.dockerd_log(), 60),
            tail(&self.containerd_log(), 30)
        )
    }

    fn fs(&self) -> PathBuf {
        self.base.join("fs")
    }

    /// The CLI against this daemon only: its own (empty) config dir, none of the caller's
    /// DOCKER_* settings.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(docker_cli());
        for var in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
            "DOCKER_API_VERSION",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("DOCKER_CONFIG", self.base.join("cli"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()));
        cmd
    }

    #[track_caller]
    fn mount_tmpfs(&self) {
        let fs = self.fs();
        std::fs::create_dir_all(&fs).expect("tmpfs mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={TMPFS_SIZE},mode=0711"))
            .arg("moat-dockerd")
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

    fn containerd_config(&self) -> String {
        let fs = self.fs();
        // The opt plugin would otherwise create /opt/containerd and put it first on PATH.
        format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = fs.join("containerd/root").display(),
            state = self.containerd_state().display(),
            sock = self.containerd_socket().display(),
            opt = fs.join("containerd/opt").display(),
        )
    }

    fn daemon_config(&self, moat_bin: &Path) -> String {
        serde_json::json!({
            "storage-driver": "overlay2",
            "runtimes": {"moat": {"path": moat_bin}},
            "shutdown-timeout": 5,
            // Else /etc/docker/key.json.
            "deprecated-key-path": self.base.join("key.json"),
        })
        .to_string()
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.base.join("logs").join(name)).expect("daemon log")
    }

    fn spawn_containerd(&self) -> Child {
        let log = self.log_file("containerd.log");
        let bin = containerd_bin();
        Command::new(&bin)
            .arg("--config")
            .arg(self.base.join("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({e}): run scripts/deps.sh", bin.display()))
    }

    fn spawn_dockerd(&self) -> Child {
        let log = self.log_file("dockerd.log");
        let bin = dockerd_bin();
        Command::new(&bin)
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.exec_root())
            .arg("--pidfile")
            .arg(self.base.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--containerd")
            .arg(self.containerd_socket())
            .arg("--config-file")
            .arg(self.base.join("daemon.json"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({e}): run scripts/deps.sh", bin.display()))
    }

    /// Waits until containerd's socket exists.
    #[track_caller]
    fn wait_containerd(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.containerd_socket().exists() {
            if let Some(Ok(Some(status))) = self.containerd.as_mut().map(Child::try_wait) {
                panic!("containerd exited: {status}\n{}", self.diagnostics());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not create {} within {START_TIMEOUT:?}\n{}",
                self.containerd_socket().display(),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `docker info` answers.
    #[track_caller]
    fn wait_dockerd(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.dockerd.as_mut().map(Child::try_wait) {
                panic!("dockerd exited: {status}\n{}", self.diagnostics());
            }
            if self.socket().exists() {
                let info = self.docker_with(
                    &["info", "--format", "{{.ServerVersion}}"],
                    None,
                    Duration::from_secs(30),
                );
                if info.code == 0 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "docker info did not succeed within {START_TIMEOUT:?}: {}\n{}",
                    info.err(),
                    self.diagnostics()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not create {} within {START_TIMEOUT:?}\n{}",
                self.socket().display(),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Removes every container (through the runtimes, as a user would), best effort.
    fn remove_containers(&self) {
        let ids = self.docker_with(&["ps", "-aq"], None, Duration::from_secs(30));
        let ids: Vec<String> = ids.out().split_whitespace().map(String::from).collect();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        let _ = self.docker_with(&args, None, Duration::from_secs(120));
    }

    /// Kills the shims this instance's containerd started (they outlive it by design).
    fn kill_stray_shims(&self) {
        let address = self.containerd_socket().display().to_string();
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

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            self.remove_containers();
        }
        for child in [self.dockerd.take(), self.containerd.take()]
            .into_iter()
            .flatten()
        {
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
                "dockerd: mounts left under {}; keeping it",
                self.base.display()
            );
            std::mem::forget(self.dir.take());
        }
    }
}

/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
fn stop(mut child: Child) {
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
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
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

/// Writes a `docker save`-format archive of busybox ([`Image::busybox`]: static busybox with
/// its applets, /etc/passwd and /etc/group) tagged `name_tag` to `path`, for
/// [`Dockerd::load`]. Needs skopeo and busybox-static (scripts/deps.sh).
#[track_caller]
pub fn busybox_archive(path: &Path, name_tag: &str) {
    let layout_dir = TempDir::new("docker-image");
    let written = OciLayout::single(Image::busybox()).write(layout_dir.path(), "t");
    docker_archive(&written, path, name_tag);
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
