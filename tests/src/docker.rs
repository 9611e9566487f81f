//! A private Docker for the docker tests: Debian's `dockerd` 20.10 with a [`Containerd`] 1.6 of
//! its own, both under one temp dir, the daemon's data root on its tmpfs, and a runtime `moat`
//! registered in its daemon.json ([`Dockerd`]); and the busybox image they load
//! ([`busybox_archive`]).
//!
//! Nothing is shared with a Docker or containerd of the machine: dockerd gets `--containerd` (it
//! would otherwise use `/run/containerd/containerd.sock` whenever that exists), its own sockets,
//! pid file, exec root and trust key, and no iptables or bridge.

use crate::containerd::{self, bin_from_env, run_captured, Containerd, Options};
use crate::registry::{docker_archive, Image, OciLayout};
use crate::{tail, Outcome};
use moat_jail::testutil::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::containerd::{containerd_bin, processes_mentioning, START_TIMEOUT};

/// Default limit for one docker CLI command.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// `$MOAT_DOCKERD`, or Debian's `/usr/sbin/dockerd`.
pub fn dockerd_bin() -> PathBuf {
    bin_from_env("MOAT_DOCKERD", "/usr/sbin/dockerd")
}

/// `$MOAT_DOCKER_CLI`, or Debian's `/usr/bin/docker`, the CLI that matches dockerd 20.10 (a newer
/// CLI earlier on PATH would negotiate API 1.41 and work too, but need not).
pub fn docker_cli() -> PathBuf {
    bin_from_env("MOAT_DOCKER_CLI", "/usr/bin/docker")
}

/// Call first in every docker test: false (after printing why) when Docker cannot run here (not
/// root, or docker.io not installed). In CI (`CI=true`) that is a failure, not a skip.
pub fn docker_available(test: &str) -> bool {
    let bins = [dockerd_bin(), containerd_bin(), docker_cli()];
    containerd::daemon_available(test, "dockerd", &bins)
}

/// A running dockerd and its containerd; on drop every container is removed and dockerd is
/// stopped, then its containerd ([`Containerd`]'s drop).
pub struct Dockerd {
    dockerd: Option<Child>,
    containerd: Containerd,
    base: PathBuf,
}

impl Dockerd {
    /// Starts containerd and dockerd with `moat_bin` registered as the runtime `moat` (the
    /// default runtime stays runc), and waits until `docker info` answers. Panics with both
    /// daemons' logs if they do not come up within [`START_TIMEOUT`].
    pub fn start(moat_bin: &Path) -> Self {
        let containerd = Containerd::start(&Options {
            name: "dockerd",
            ..Options::default()
        });
        let base = containerd.dir().to_path_buf();
        let mut d = Self {
            dockerd: None,
            containerd,
            base,
        };
        std::fs::create_dir_all(d.base.join("cli")).expect("cli config dir");
        std::fs::write(d.base.join("daemon.json"), d.daemon_config(moat_bin))
            .expect("write daemon.json");
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
        self.containerd.fs().join("docker")
    }

    /// dockerd's `--exec-root` (on the tmpfs): the runtime's `--root` is
    /// `<exec root>/runtime-runc/moby` for every runtime.
    pub fn exec_root(&self) -> PathBuf {
        self.containerd.fs().join("exec")
    }

    /// containerd's state dir: bundles are `<this>/io.containerd.runtime.v2.task/moby/<id>`.
    pub fn containerd_state(&self) -> PathBuf {
        self.containerd.state()
    }

    /// A directory for the test's own files (archives, bundles), removed with the daemon.
    pub fn work_dir(&self) -> PathBuf {
        self.containerd.work_dir()
    }

    /// containerd's gRPC socket (the shims' `-address`).
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd.socket()
    }

    /// Runs `docker ARGS` against this daemon, killed after [`DOCKER_TIMEOUT`].
    pub fn docker(&self, args: &[&str]) -> Outcome {
        self.docker_with(args, None, DOCKER_TIMEOUT)
    }

    /// [`Dockerd::docker`] with `stdin` fed to the CLI and an explicit timeout (code -1 when it
    /// ran out). The outcome's log dir holds dockerd's and containerd's logs.
    pub fn docker_with(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
        let mut cmd = self.cli();
        cmd.args(args);
        run_captured(cmd, stdin, timeout, self.containerd.log_dir())
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
        std::fs::read_to_string(self.containerd.log_dir().join("dockerd.log")).unwrap_or_default()
    }

    /// containerd's log so far.
    pub fn containerd_log(&self) -> String {
        self.containerd.log()
    }

    /// The last lines of both daemons' logs.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- dockerd log (tail)\n{}\n--- containerd log (tail)\n{}\n",
            tail(&self.dockerd_log(), 60),
            tail(&self.containerd_log(), 30)
        )
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

    fn spawn_dockerd(&self) -> Child {
        let log = std::fs::File::create(self.containerd.log_dir().join("dockerd.log"))
            .expect("dockerd log");
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
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            self.remove_containers();
        }
        if let Some(child) = self.dockerd.take() {
            containerd::stop(child);
        }
        // Then `self.containerd` drops: containerd stops, its shims go, the tmpfs is unmounted.
    }
}

/// Writes a `docker save`-format archive of busybox ([`Image::busybox`]: static busybox with
/// its applets, /etc/passwd and /etc/group) tagged `name_tag` to `path`, for
/// [`Dockerd::load`] and `ctr images import`. Needs skopeo and busybox-static
/// (scripts/deps.sh).
#[track_caller]
pub fn busybox_archive(path: &Path, name_tag: &str) {
    image_archive(path, Image::busybox(), name_tag);
}

/// Writes `image` as a docker-archive tarball tagged `name_tag` to `path`, as
/// [`busybox_archive`] does busybox.
#[track_caller]
pub fn image_archive(path: &Path, image: Image, name_tag: &str) {
    let layout_dir = TempDir::new("docker-image");
    let written = OciLayout::single(image).write(layout_dir.path(), "t");
    docker_archive(&written, path, name_tag);
}
