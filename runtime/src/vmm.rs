//! Running `moat-vmm`: the probe, the spawn, and a guard that always kills and reaps it.
//!
//! The VMM is started by [`moat_jail::spawn`]: jailed, as PID 1 of new PID, mount, network,
//! IPC and UTS namespaces; always with an empty environment, in its own process group (so the
//! terminal's Ctrl-C does not reach it and the whole group can be killed at once), and with
//! `SIGKILL` as its parent-death signal, so a killed `moat` leaves no VM behind.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use moat_jail::spawn::{self, SpawnError};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

/// Errors from running the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `moat-vmm probe` says this host cannot run microVMs; the text is its explanation.
    #[error("{0}")]
    Unsupported(String),
    /// The probe failed in an unexpected way.
    #[error("`{} probe` failed ({status})", vmm.display())]
    ProbeFailed {
        /// The binary.
        vmm: PathBuf,
        /// How it ended.
        status: ExitStatus,
    },
    /// The binary could not be run (the probe).
    #[error("cannot start {}", vmm.display())]
    Spawn {
        /// The binary.
        vmm: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The VMM could not be started.
    #[error("cannot start {}", vmm.display())]
    Start {
        /// The binary.
        vmm: PathBuf,
        /// Why.
        #[source]
        source: SpawnError,
    },
    /// A path cannot be passed on the VMM's command line.
    #[error("path {} contains a comma, which moat-vmm's --disk cannot take", .0.display())]
    CommaInPath(PathBuf),
    /// Waiting for the VMM failed.
    #[error("cannot wait for moat-vmm")]
    Wait(#[source] io::Error),
}

/// Runs `moat-vmm probe`: `Ok` when KVM can run guest kernel code natively.
pub fn probe(vmm: &Path) -> Result<(), VmmError> {
    let output = Command::new(vmm)
        .arg("probe")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| VmmError::Spawn {
            vmm: vmm.to_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    match output.status.code() {
        Some(1) if !line.is_empty() => {
            let line = line.strip_prefix("moat-vmm: ").unwrap_or(line);
            Err(VmmError::Unsupported(crate::console::sanitize(line)))
        }
        _ => Err(VmmError::ProbeFailed {
            vmm: vmm.to_owned(),
            status: output.status,
        }),
    }
}

/// Whether the VMM was killed by its seccomp filter (the kernel's SIGSYS).
pub fn killed_by_seccomp(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGSYS)
}

/// `status N` or `killed by signal N`, for messages.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signo)) => format!("killed by signal {signo}"),
        (None, None) => status.to_string(),
    }
}

/// The jail a VMM runs in (`moat-vmm run --jail-id ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// The jail id (the container id).
    pub id: String,
    /// The VM's uid.
    pub uid: u32,
    /// The VM's gid.
    pub gid: u32,
    /// Parent of the state directories.
    pub base: PathBuf,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// The VM's cgroup under that root (`None`: moat/<id>).
    pub cgroup_path: Option<String>,
}

/// A disk of the VM: a host file, attached read-only or read-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The host file (bound into the jail; the VMM opens it before dropping privileges, so a
    /// read-write disk needs no change of owner).
    pub path: PathBuf,
    /// Attached read-only.
    pub readonly: bool,
}

/// What a VM is made of: the `moat-vmm run` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Disks, `/dev/vda` first.
    pub disks: Vec<Disk>,
    /// Read-only disk slots after `disks`, empty until swapped through `control_uds`
    /// ([`crate::vmm_control`]).
    pub disk_slots: usize,
    /// The VMM's control socket (in the jail: relative to its root); `None`: none.
    pub control_uds: Option<PathBuf>,
    /// The vsock Unix socket (in the jail: relative to its root).
    pub vsock_uds: PathBuf,
    /// Serial console log (in the jail: relative to its root).
    pub console_log: PathBuf,
    /// The jail; `None` runs the VMM unjailed (`--no-jail`, debugging only).
    pub jail: Option<JailSpec>,
    /// Run the VMM under its seccomp filters (`false`: `--no-seccomp`, for debugging only).
    pub seccomp: bool,
}

impl VmSpec {
    /// The arguments of `moat-vmm` for this VM (docs/architecture.md).
    pub fn args(&self) -> Result<Vec<OsString>, VmmError> {
        let mut args: Vec<OsString> = vec!["run".into()];
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--kernel", self.kernel.clone().into());
        push("--initramfs", self.initramfs.clone().into());
        push("--cpus", self.cpus.to_string().into());
        push("--memory-mib", self.memory_mib.to_string().into());
        for disk in &self.disks {
            if disk.path.as_os_str().as_encoded_bytes().contains(&b',') {
                return Err(VmmError::CommaInPath(disk.path.clone()));
            }
            let mut value = disk.path.clone().into_os_string();
            if disk.readonly {
                value.push(",ro");
            }
            push("--disk", value);
        }
        if let Some(control) = &self.control_uds {
            push("--control-uds", control.clone().into());
        }
        if self.disk_slots > 0 {
            push("--disk-slots", self.disk_slots.to_string().into());
        }
        push("--vsock-uds", self.vsock_uds.clone().into());
        push("--console-log", self.console_log.clone().into());
        match &self.jail {
            Some(jail) => {
                push("--jail-id", jail.id.clone().into());
                push("--uid", jail.uid.to_string().into());
                push("--gid", jail.gid.to_string().into());
                push("--jail-base", jail.base.clone().into());
                push("--cgroup-root", jail.cgroup_root.clone().into());
                if let Some(path) = &jail.cgroup_path {
                    push("--cgroup-path", path.into());
                }
            }
            None => args.push("--no-jail".into()),
        }
        if !self.seccomp {
            args.push("--no-seccomp".into());
        }
        Ok(args)
    }
}

/// A running `moat-vmm`. Dropping it kills the VMM's process group and reaps the VMM.
#[derive(Debug)]
pub struct VmmProcess {
    child: spawn::Child,
    pid: Pid,
    reaped: Option<ExitStatus>,
}

impl VmmProcess {
    /// Starts `vmm` with `args`, an empty environment, stdin from /dev/null, stdout and stderr
    /// into `log`; as PID 1 of new namespaces when `jailed`.
    ///
    /// The parent-death signal fires when the *thread* that spawned the VMM ends: call this from
    /// a thread that outlives the VM (the CLI uses its main thread).
    pub fn spawn(
        vmm: &Path,
        args: &[OsString],
        log: &File,
        jailed: bool,
    ) -> Result<Self, VmmError> {
        let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let child = spawn::spawn(vmm, &args, log, jailed).map_err(|source| VmmError::Start {
            vmm: vmm.to_owned(),
            source,
        })?;
        let pid = Pid::from_raw(child.pid).ok_or_else(|| VmmError::Start {
            vmm: vmm.to_owned(),
            source: SpawnError::Setup("clone", io::Error::other("no pid")),
        })?;
        Ok(Self {
            child,
            pid,
            reaped: None,
        })
    }

    /// The VMM's pid (also its process group id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Returns its exit status if it has exited, without reaping it (so its pid, and the process
    /// group id, stay reserved until [`VmmProcess::kill_and_reap`]).
    pub fn exited(&self) -> Result<Option<ExitStatus>, VmmError> {
        if let Some(status) = self.reaped {
            return Ok(Some(status));
        }
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        let status = rustix::process::waitid(WaitId::Pid(self.pid), options)
            .map_err(|e| VmmError::Wait(e.into()))?;
        Ok(status.and_then(|s| {
            if let Some(code) = s.exit_status() {
                Some(ExitStatus::from_raw((code & 0xff) << 8))
            } else {
                s.terminating_signal().map(ExitStatus::from_raw)
            }
        }))
    }

    /// Waits up to `timeout` for the VMM to exit on its own; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>, VmmError> {
        let deadline = Instant::now() + timeout;
        let pidfd = rustix::process::pidfd_open(self.pid, rustix::process::PidfdFlags::empty());
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match &pidfd {
                Ok(fd) => {
                    let mut fds = [PollFd::new(fd, PollFlags::IN)];
                    let ts = Timespec::try_from(left).unwrap_or(Timespec {
                        tv_sec: 1,
                        tv_nsec: 0,
                    });
                    // An interrupted poll is retried by the loop.
                    let _ = poll(&mut fds, Some(&ts));
                }
                Err(_) => std::thread::sleep(left.min(Duration::from_millis(5))),
            }
        }
    }

    /// Kills the whole process group (if the VMM was not reaped yet) and reaps the VMM.
    pub fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            // The unreaped VMM keeps its pid, so the group id cannot have been reused.
            let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
            self.reaped = self.reap();
        }
        self.reaped
    }
}

impl VmmProcess {
    fn reap(&self) -> Option<ExitStatus> {
        loop {
            match rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => return Some(ExitStatus::from_raw(status.as_raw())),
                Ok(None) => return None,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(pid = self.child.pid, error = %e, "cannot reap moat-vmm");
                    return None;
                }
            }
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_vmm as script, TempDir};

    #[test]
    fn vmm_arguments_follow_the_contract() {
        let spec = VmSpec {
            kernel: "/a/vmlinux".into(),
            initramfs: "/a/initramfs.cpio".into(),
            cpus: 2,
            memory_mib: 256,
            disks: vec![
                Disk {
                    path: "/a/images/busybox.ext4".into(),
                    readonly: true,
                },
                Disk {
                    path: "/v.ext4".into(),
                    readonly: false,
                },
            ],
            disk_slots: 0,
            control_uds: None,
            vsock_uds: "/run/moat/x/vsock.sock".into(),
            console_log: "/run/moat/x/console.log".into(),
            jail: None,
            seccomp: true,
        };
        let args: Vec<String> = spec
            .args()
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "run --kernel /a/vmlinux --initramfs /a/initramfs.cpio --cpus 2 --memory-mib 256 \
             --disk /a/images/busybox.ext4,ro --disk /v.ext4 --vsock-uds /run/moat/x/vsock.sock \
             --console-log /run/moat/x/console.log --no-jail"
        );
        let jailed = VmSpec {
            vsock_uds: "/vsock.sock".into(),
            console_log: "/console.log".into(),
            jail: Some(JailSpec {
                id: "x".into(),
                uid: 1_000_003,
                gid: 1_000_003,
                base: "/run/moat".into(),
                cgroup_root: "/sys/fs/cgroup".into(),
                cgroup_path: None,
            }),
            ..spec.clone()
        };
        let args: Vec<String> = jailed
            .args()
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.join(" ").ends_with(
            "--vsock-uds /vsock.sock --console-log /console.log --jail-id x --uid 1000003 \
             --gid 1000003 --jail-base /run/moat --cgroup-root /sys/fs/cgroup"
        ));
        let slots = VmSpec {
            disk_slots: 4,
            control_uds: Some("/control.sock".into()),
            ..jailed.clone()
        };
        let args = slots.args().unwrap();
        let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
        assert!(args
            .join(" ")
            .contains("--control-uds /control.sock --disk-slots 4 --vsock-uds /vsock.sock"));
        let unfiltered = VmSpec {
            seccomp: false,
            ..spec.clone()
        };
        let args = unfiltered.args().unwrap();
        assert_eq!(args.last().unwrap(), "--no-seccomp");
        let bad = VmSpec {
            disks: vec![Disk {
                path: "/a,b".into(),
                readonly: true,
            }],
            ..spec
        };
        assert!(matches!(bad.args(), Err(VmmError::CommaInPath(_))));
    }

    #[test]
    fn probe_reports_the_vmm_line() {
        let tmp = TempDir::new("probe");
        let vmm = script(tmp.path(), "echo 'moat-vmm: no kvm here' >&2; exit 1");
        let err = probe(&vmm).unwrap_err();
        assert_eq!(err.to_string(), "no kvm here");
        let vmm = script(tmp.path(), "exit 0");
        probe(&vmm).unwrap();
        let vmm = script(tmp.path(), "exit 3");
        assert!(matches!(probe(&vmm), Err(VmmError::ProbeFailed { .. })));
        assert!(matches!(
            probe(&tmp.path().join("none")),
            Err(VmmError::Spawn { .. })
        ));
    }

    #[test]
    fn process_group_is_killed_and_reaped() {
        let tmp = TempDir::new("vmm-kill");
        // The fake VMM starts a grandchild in its group; both must die.
        let vmm = script(tmp.path(), "sleep 60 & echo $! > \"$1\"; exec sleep 60");
        let pidfile = tmp.path().join("grandchild");
        let log = File::create(tmp.path().join("log")).unwrap();
        let mut proc = VmmProcess::spawn(&vmm, &[pidfile.clone().into()], &log, false).unwrap();
        assert!(proc.exited().unwrap().is_none());
        assert!(proc
            .wait_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let status = proc.kill_and_reap().unwrap();
        assert_eq!(status.signal(), Some(9));
        // The grandchild was killed; once its (foreign) parent reaps it, it is gone.
        let proc_path = PathBuf::from(format!("/proc/{grandchild}/stat"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(stat) = std::fs::read_to_string(&proc_path) {
            if stat
                .split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
            {
                break;
            }
            assert!(Instant::now() < deadline, "grandchild survived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn exit_status_is_seen_without_reaping() {
        let tmp = TempDir::new("vmm-exit");
        let vmm = script(tmp.path(), "echo boom >&2; exit 4");
        let log_path = tmp.path().join("log");
        let log = File::create(&log_path).unwrap();
        let mut proc = VmmProcess::spawn(&vmm, &[], &log, false).unwrap();
        let status = proc.wait_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(proc.exited().unwrap().unwrap().code(), Some(4));
        assert_eq!(proc.kill_and_reap().unwrap().code(), Some(4));
        assert_eq!(std::fs::read_to_string(log_path).unwrap(), "boom\n");
    }

    #[test]
    fn a_jailed_vmm_is_pid_1_and_its_namespace_dies_with_it() {
        let tmp = TempDir::new("vmm-ns");
        // The fake VMM is PID 1 of its own namespace; its background child dies with it.
        let vmm = script(tmp.path(), "[ $$ = 1 ] || exit 9; sleep 60 & exec sleep 60");
        let log = File::create(tmp.path().join("log")).unwrap();
        let mut proc = VmmProcess::spawn(&vmm, &[], &log, true).unwrap();
        assert!(proc
            .wait_timeout(Duration::from_millis(200))
            .unwrap()
            .is_none());
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", proc.pid().as_raw_nonzero()));
        assert_ne!(
            ns.unwrap(),
            std::fs::read_link("/proc/self/ns/pid").unwrap()
        );
        assert_eq!(proc.kill_and_reap().unwrap().signal(), Some(9));
    }
}
