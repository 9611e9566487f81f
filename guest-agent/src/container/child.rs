//! What the forked child does between fork and exec. It runs in a copy of a multi-threaded
//! process, so it only makes system calls through [`Syscall`] on data prepared in advance, and
//! reports a failure as a fixed-size [`Failure`] (stage + errno) on the error pipe.
//!
//! In the guest the child is cloned into new PID, mount (and UTS) namespaces ([`clone_flags`]):
//! as PID 1 there it builds the container's root, forks the command as PID 2 and stays as a
//! minimal init ([`run_init`]) that passes signals on to the command, reaps orphans and exits
//! with the command's status. Root in the container can then only halt or reboot its own PID
//! namespace (reboot(2) kills the init), never the guest.

use std::io;
use std::os::fd::RawFd;

use super::mounts::{build_root, finish_root};
use super::plan::ExecPlan;
use super::security::{apply_limits, drop_privileges, load_seccomp_last, Ids};
use super::spec::ContainerPlan;
use super::supervisor::{supervise, INIT_SIGNALS};
use crate::syscall::Syscall;

/// The step of the child's setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Resetting the signal mask and dispositions.
    Signals = 1,
    /// Creating the session or taking the terminal.
    Session = 2,
    /// Installing stdin, stdout and stderr.
    Stdio = 3,
    /// Setting up the container's init: its signal handlers, forking the command.
    Init = 4,
    /// Switching into the container's root.
    Root = 5,
    /// Mounting /proc, /sys and /dev in the root.
    Mounts = 6,
    /// Setting the hostname.
    Hostname = 7,
    /// Setting groups, gid and uid.
    Ids = 8,
    /// Changing into the working directory.
    Cwd = 9,
    /// execve.
    Exec = 10,
    /// Waiting for the agent (id maps, cgroup), joining the cgroup and network setup.
    Namespaces = 11,
    /// Creating the devices of /dev.
    Devices = 12,
    /// Writing the sysctls.
    Sysctl = 13,
    /// Masking paths and making paths read-only.
    Paths = 14,
    /// rlimits, oom_score_adj.
    Limits = 15,
    /// no_new_privs, capabilities.
    Privileges = 16,
    /// Loading the seccomp filter.
    Seccomp = 17,
}

impl Stage {
    fn from_u8(v: u8) -> Option<Self> {
        const ALL: [Stage; 17] = [
            Stage::Namespaces,
            Stage::Devices,
            Stage::Sysctl,
            Stage::Paths,
            Stage::Limits,
            Stage::Privileges,
            Stage::Seccomp,
            Stage::Signals,
            Stage::Session,
            Stage::Stdio,
            Stage::Init,
            Stage::Root,
            Stage::Mounts,
            Stage::Hostname,
            Stage::Ids,
            Stage::Cwd,
            Stage::Exec,
        ];
        ALL.into_iter().find(|s| *s as u8 == v)
    }

    /// What the stage does, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Signals => "resetting signals",
            Self::Session => "creating the session",
            Self::Stdio => "setting up stdio",
            Self::Init => "starting the container's init",
            Self::Root => "entering the container root",
            Self::Mounts => "mounting the spec's mounts",
            Self::Hostname => "setting the hostname",
            Self::Ids => "setting user and group ids",
            Self::Cwd => "changing to the working directory",
            Self::Exec => "executing the command",
            Self::Namespaces => "setting up the namespaces",
            Self::Devices => "creating the devices",
            Self::Sysctl => "writing the sysctls",
            Self::Paths => "masking paths and making paths read-only",
            Self::Limits => "setting rlimits and oom_score_adj",
            Self::Privileges => "dropping privileges",
            Self::Seccomp => "loading the seccomp filter",
        }
    }
}

/// A failed child: the stage and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed.
    pub stage: Stage,
    /// The errno.
    pub errno: i32,
}

/// Size of an encoded [`Failure`].
pub const FAILURE_LEN: usize = 8;

impl Failure {
    pub(crate) fn at(stage: Stage) -> impl Fn(io::Error) -> Failure {
        move |e| Failure {
            stage,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// Encodes for the error pipe.
    pub fn to_bytes(self) -> [u8; FAILURE_LEN] {
        let mut b = [0u8; FAILURE_LEN];
        b[0] = self.stage as u8;
        b[4..].copy_from_slice(&self.errno.to_le_bytes());
        b
    }

    /// Decodes what the child wrote; `None` for anything malformed.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; FAILURE_LEN] = b.try_into().ok()?;
        let stage = Stage::from_u8(b[0])?;
        Some(Self {
            stage,
            errno: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The descriptors that become the process's stdin, stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub enum ChildStdio {
    /// Three pipe ends.
    Pipes {
        /// Read end of the stdin pipe.
        stdin: RawFd,
        /// Write end of the stdout pipe.
        stdout: RawFd,
        /// Write end of the stderr pipe.
        stderr: RawFd,
    },
    /// The slave side of a pty, which also becomes the controlling terminal.
    Pty {
        /// The slave descriptor.
        slave: RawFd,
    },
}

/// How a process running the child's code ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Setup or exec failed: report it on the error pipe.
    Failed(Failure),
    /// The container's init is done: `_exit` with this code.
    Code(i32),
}

/// The host mode's child, in the agent's root: sets the process up and execs; returns only on
/// failure. The container's init runs the same for its command.
pub fn run(sys: &dyn Syscall, plan: &ExecPlan, stdio: ChildStdio) -> Failure {
    match setup_process(sys, plan, stdio) {
        Ok(()) => exec(sys, plan),
        Err(failure) => failure,
    }
}

/// The guest mode's child, cloned with [`ContainerPlan::clone_flags`] (so PID 1 of its PID
/// namespace), released by the agent once the id maps are written and the cgroup joined:
/// builds the container's root, forks the command as PID 2, drops to the command's privileges
/// and supervises it.
pub fn run_init(
    sys: &dyn Syscall,
    plan: &ExecPlan,
    container: &ContainerPlan,
    stdio: ChildStdio,
) -> Exit {
    if let Err(failure) = setup_container(sys, plan, container) {
        return Exit::Failed(failure);
    }
    let fork = libc::SIGCHLD as libc::c_ulong;
    // SAFETY: this process is a copy of the multi-threaded agent; the new child only runs
    // `run` (system calls on the prepared plan) and then execs or reports and `_exit`s.
    match unsafe { sys.clone_process(fork) } {
        Err(e) => Exit::Failed(Failure::at(Stage::Init)(e)),
        Ok(0) => Exit::Failed(run(sys, plan, stdio)),
        Ok(command) => {
            // Nothing in the container keeps more privilege than the command: the init only
            // waits, forwards signals and reaps.
            let ids = Ids {
                uid: plan.uid,
                gid: plan.gid,
                groups: &plan.groups,
            };
            let dropped = drop_privileges(sys, &plan.security, &ids)
                .and_then(|()| load_seccomp_last(sys, &plan.security));
            if let Err(failure) = dropped {
                let _ = sys.kill(command, libc::SIGKILL);
                return Exit::Failed(failure);
            }
            // The copies of the agent's descriptors (the stdin pipe's write end, the error
            // pipe, the connection) must not outlive the command's exec.
            sys.close_from(0);
            Exit::Code(supervise(sys, command))
        }
    }
}

/// The init's part of the setup: a session of its own, root in its user namespace, its cgroup
/// namespace, the loopback interface, the root with its mounts, sysctls, names and protected
/// paths, the working directory, and the signals it catches.
fn setup_container(sys: &dyn Syscall, plan: &ExecPlan, c: &ContainerPlan) -> Result<(), Failure> {
    sys.reset_signals().map_err(Failure::at(Stage::Signals))?;
    sys.setsid().map_err(Failure::at(Stage::Session))?;
    let at = Failure::at(Stage::Namespaces);
    if c.userns.is_some() {
        sys.setgid(0).map_err(&at)?;
        sys.setuid(0).map_err(&at)?;
    }
    if c.cgroupns {
        sys.unshare(libc::CLONE_NEWCGROUP).map_err(&at)?;
    }
    if c.clone_flags & libc::CLONE_NEWNET as libc::c_ulong != 0 {
        sys.loopback_up().map_err(&at)?;
    }
    build_root(sys, c)?;
    finish_root(sys, c)?;
    create_cwd(sys, plan);
    // Caught and blocked before the command exists, so that none sent to it is lost.
    sys.catch_signals(&INIT_SIGNALS)
        .map_err(Failure::at(Stage::Init))
}

/// The command's part: default signals, its own session (with the pty as controlling terminal),
/// stdio, limits, privileges and ids, working directory, and the seccomp filter last.
fn setup_process(sys: &dyn Syscall, plan: &ExecPlan, stdio: ChildStdio) -> Result<(), Failure> {
    sys.reset_signals().map_err(Failure::at(Stage::Signals))?;
    sys.setsid().map_err(Failure::at(Stage::Session))?;
    install_stdio(sys, stdio)?;
    apply_limits(sys, &plan.security)?;
    let ids = Ids {
        uid: plan.uid,
        gid: plan.gid,
        groups: &plan.groups,
    };
    drop_privileges(sys, &plan.security, &ids)?;
    sys.chdir(&plan.cwd).map_err(Failure::at(Stage::Cwd))?;
    load_seccomp_last(sys, &plan.security)
}

fn install_stdio(sys: &dyn Syscall, stdio: ChildStdio) -> Result<(), Failure> {
    match stdio {
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                sys.dup2(fd, target).map_err(Failure::at(Stage::Stdio))?;
            }
        }
        ChildStdio::Pty { slave } => {
            sys.set_controlling_tty(slave)
                .map_err(Failure::at(Stage::Session))?;
            for target in 0..3 {
                sys.dup2(slave, target).map_err(Failure::at(Stage::Stdio))?;
            }
        }
    }
    Ok(())
}

/// Creates the working directory and its parents where missing, as root; failures are left to
/// the `chdir` that follows, which reports them.
fn create_cwd(sys: &dyn Syscall, plan: &ExecPlan) {
    for dir in &plan.cwd_dirs {
        let _ = sys.mkdir(dir, 0o755);
    }
}

/// Tries every candidate like `execvp`: a missing file moves on to the next, a permission
/// problem is remembered, anything else stops the search.
fn exec(sys: &dyn Syscall, plan: &ExecPlan) -> Failure {
    let mut errno = libc::ENOENT;
    let mut saw_eacces = false;
    for path in &plan.candidates {
        let e = sys
            .execve(path, &plan.argv, &plan.envp)
            .raw_os_error()
            .unwrap_or(libc::EIO);
        match e {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            other => {
                return Failure {
                    stage: Stage::Exec,
                    errno: other,
                }
            }
        }
        errno = e;
    }
    if saw_eacces {
        errno = libc::EACCES;
    }
    Failure {
        stage: Stage::Exec,
        errno,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::plan::ProcessSpec;
    use crate::container::security::{SeccompProgram, Security};
    use crate::container::{plan, spec};
    use crate::syscall::mock::Recorder;
    use oci_spec::runtime::Spec;

    fn plan(args: &[&str], cwd: &str) -> ExecPlan {
        let spec = ProcessSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: cwd.into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![5],
            terminal: false,
            rows: 0,
            cols: 0,
        };
        let security = Security::from_oci(&Spec::default()).unwrap();
        plan::build(&spec, security).unwrap()
    }

    /// oci-spec's default spec (Docker-like: namespaces, mounts, masked and read-only paths)
    /// with a hostname.
    fn container() -> ContainerPlan {
        let mut s = Spec::default();
        s.set_hostname(Some("box".into()));
        spec::build(&s, &|_| false).unwrap()
    }

    const PIPES: ChildStdio = ChildStdio::Pipes {
        stdin: 10,
        stdout: 11,
        stderr: 12,
    };

    fn pos(lines: &[String], needle: &str) -> usize {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
    }

    #[test]
    fn isolated_sequence() {
        let sys = Recorder::default();
        sys.executable
            .borrow_mut()
            .push(("/bin/echo".into(), libc::E2BIG));
        sys.dirs.borrow_mut().push("/proc/acpi".into());
        let exit = run_init(
            &sys,
            &plan(&["echo", "hi"], "/work/dir"),
            &container(),
            PIPES,
        );
        assert_eq!(
            exit,
            Exit::Failed(Failure {
                stage: Stage::Exec,
                errno: libc::E2BIG
            })
        );
        let lines = sys.lines();
        let pos = |needle: &str| pos(&lines, needle);
        assert_eq!(
            &lines[..7],
            [
                "reset_signals",
                "setsid",
                &format!("unshare {:#x}", libc::CLONE_NEWCGROUP),
                "loopback_up",
                "mount - / - rec,private -",
                "mount /run/moat/root /run/moat/root - bind,rec -",
                &format!(
                    "open /run/moat/root {:#o}",
                    libc::O_PATH | libc::O_DIRECTORY
                ),
            ]
        );
        // Each mount point is resolved in the root and mounted on through its descriptor.
        let proc = pos("open_in_root 100 /proc ");
        assert!(lines[proc + 1].starts_with("close"));
        assert!(lines[proc + 2].starts_with("open_in_root 100 /proc "));
        assert!(lines[proc + 3].starts_with("mount proc /proc/self/fd/"));
        // oci-spec's default proc mount has no options.
        assert!(
            lines[proc + 3].ends_with(" proc - -"),
            "{}",
            lines[proc + 3]
        );
        assert!(pos("mount tmpfs /proc/self/fd/") < pos("mknod /run/moat/root/dev/null 20666 1:3"));
        assert!(
            pos("mknod /run/moat/root/dev/tty") < pos("symlink pts/ptmx /run/moat/root/dev/ptmx")
        );
        assert!(pos("umask 0") < pos("mknod") && pos("symlink /proc/self/fd/2") < pos("umask 22"));
        assert!(pos("symlink /proc/self/fd/2") < pos("mount /dev/pts /proc/self/fd/"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("mount sysfs /proc/self/fd/")
                && l.ends_with("sysfs ro,nosuid,nodev,noexec -")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("mount cgroup2 /proc/self/fd/")));
        assert!(pos("mount cgroup2") < pos("chdir /run/moat/root"));
        let pivot = pos("pivot_root . .");
        assert_eq!(lines[pivot - 1], "chdir /run/moat/root");
        assert_eq!(lines[pivot + 1..pivot + 3], ["umount .", "chdir /"]);
        assert!(pivot < pos("sethostname box"));
        // Masked: a directory gets an empty read-only tmpfs, a file /dev/null; read-only paths
        // are bound onto themselves and remounted read-only, keeping their flags.
        let acpi = lines
            .iter()
            .position(|l| l.starts_with("open_in_root") && l.contains(" /proc/acpi "))
            .unwrap();
        assert!(pos("sethostname box") < acpi);
        let acpi = acpi + 1;
        assert!(
            lines[acpi].starts_with("mount tmpfs /proc/self/fd/"),
            "{}",
            lines[acpi]
        );
        assert!(lines[acpi].ends_with("ro,nosuid,nodev,noexec size=0,nr_inodes=1"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("mount /dev/null /proc/self/fd/")));
        assert!(lines.iter().any(|l| l.starts_with("mount - /proc/self/fd/")
            && l.contains(" - ro,nosuid,bind,remount -")));
        assert!(pos("mkdir /work/dir 755") < pos("catch_signals"));
        // The init catches its signals before the command exists; the command (the clone's
        // child here) starts from default signals in a session of its own.
        let clone = pos("clone");
        assert_eq!(lines[clone], format!("clone {:#x}", libc::SIGCHLD));
        assert_eq!(clone, pos("catch_signals") + 1);
        let command = &lines[clone + 1..];
        let pos = |needle: &str| self::pos(command, needle);
        assert_eq!(
            command[..5],
            [
                "reset_signals",
                "setsid",
                "dup2 10 0",
                "dup2 11 1",
                "dup2 12 2"
            ]
        );
        assert_eq!(
            command[5],
            format!("setrlimit {} 1024 1024", libc::RLIMIT_NOFILE)
        );
        assert_eq!(
            command[6],
            format!("prctl {} 1 0", libc::PR_SET_NO_NEW_PRIVS)
        );
        assert_eq!(command[7], format!("prctl {} 1 0", libc::PR_SET_KEEPCAPS));
        // The default bounding set is AUDIT_WRITE, KILL and NET_BIND_SERVICE.
        let drop = format!("prctl {} ", libc::PR_CAPBSET_DROP);
        let dropped = command.iter().filter(|l| l.starts_with(&drop)).count();
        assert_eq!(dropped, 41 - 3);
        assert!(pos(&drop) < pos("setgroups [5]"));
        assert!(pos("setgroups [5]") < pos("setgid 1000") && pos("setgid") < pos("setuid 1000"));
        let caps = (1u64 << 5) | (1 << 10) | (1 << 29);
        assert_eq!(
            command[pos("setuid") + 1],
            format!("capset {caps:#x} {caps:#x} {caps:#x}")
        );
        let ambient = format!(
            "prctl {} {} ",
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE
        );
        assert_eq!(
            command.iter().filter(|l| l.starts_with(&ambient)).count(),
            3
        );
        assert!(pos("capset") < pos("chdir /work/dir"));
        assert!(command[command.len() - 2].starts_with("execve /usr/bin/echo [\"echo\", \"hi\"]"));
        assert!(command[command.len() - 1].starts_with("execve /bin/echo"));
    }

    #[test]
    fn seccomp_is_last_with_no_new_privs_else_before_the_id_change() {
        let filter = vec![libc::sock_filter {
            code: 6,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        }];
        for nnp in [true, false] {
            let sys = Recorder::default();
            let mut plan = plan(&["/bin/true"], "/");
            plan.security.no_new_privs = nnp;
            plan.security.seccomp = Some(SeccompProgram {
                filter: filter.clone(),
                flags: 0,
            });
            run(&sys, &plan, PIPES);
            let lines = sys.lines();
            let seccomp = pos(&lines, "seccomp 0 1");
            if nnp {
                assert_eq!(seccomp + 1, pos(&lines, "execve"));
                assert!(pos(&lines, "chdir /") < seccomp);
            } else {
                assert!(seccomp < pos(&lines, "setuid"));
                assert!(!lines
                    .iter()
                    .any(|l| l.starts_with(&format!("prctl {} ", libc::PR_SET_NO_NEW_PRIVS))));
            }
        }
    }

    #[test]
    fn user_namespace_init_becomes_root_and_binds_devices() {
        let mut s = Spec::default();
        let linux = s.linux_mut().as_mut().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns.push(
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(oci_spec::runtime::LinuxNamespaceType::User)
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(ns));
        let map = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100000u32)
            .size(65536u32)
            .build()
            .unwrap();
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
        let c = spec::build(&s, &|_| false).unwrap();
        assert_ne!(c.clone_flags & libc::CLONE_NEWUSER as libc::c_ulong, 0);
        let sys = Recorder::default();
        run_init(&sys, &plan(&["true"], "/"), &c, PIPES);
        let lines = sys.lines();
        assert_eq!(lines[2..4], ["setgid 0", "setuid 0"]);
        let null = pos(&lines, "mknod /run/moat/root/dev/null 100644 0:0");
        assert_eq!(
            lines[null + 1],
            "mount /dev/null /run/moat/root/dev/null - bind -"
        );
    }

    #[test]
    fn init_drops_privileges_closes_descriptors_then_supervises() {
        let sys = Recorder::default();
        sys.clone_pid.set(2);
        sys.signals.borrow_mut().push_back(libc::SIGCHLD);
        sys.children.borrow_mut().push_back((2, 3 << 8));
        let exit = run_init(&sys, &plan(&["false"], "/"), &container(), PIPES);
        assert_eq!(exit, Exit::Code(3));
        let lines = sys.lines();
        let clone = pos(&lines, "clone");
        let after = &lines[clone + 1..];
        assert_eq!(after[0], format!("prctl {} 1 0", libc::PR_SET_NO_NEW_PRIVS));
        assert!(pos(after, "setuid 1000") < pos(after, "capset"));
        assert_eq!(
            after[after.len() - 4..],
            [
                "close_from 0",
                "wait_signal 17",
                "reap 2 0x300",
                "reap none"
            ]
        );
    }

    #[test]
    fn host_mode_skips_namespaces_and_mounts() {
        let sys = Recorder::default();
        run(
            &sys,
            &plan(&["/bin/true"], "/"),
            ChildStdio::Pty { slave: 9 },
        );
        assert_eq!(
            sys.lines()[..6],
            [
                "reset_signals",
                "setsid",
                "tiocsctty 9",
                "dup2 9 0",
                "dup2 9 1",
                "dup2 9 2"
            ]
        );
        assert!(!sys
            .lines()
            .iter()
            .any(|l| l.starts_with("mount") || l.starts_with("unshare")));
    }

    #[test]
    fn path_lookup_semantics() {
        // Nothing found anywhere: ENOENT.
        let sys = Recorder::default();
        let f = run(&sys, &plan(&["nope"], "/"), PIPES);
        assert_eq!(
            f,
            Failure {
                stage: Stage::Exec,
                errno: libc::ENOENT
            }
        );
        assert_eq!(
            sys.lines()
                .iter()
                .filter(|l| l.starts_with("execve"))
                .count(),
            2
        );
        // A non-executable match is remembered while the search goes on.
        let sys = Recorder::default();
        sys.executable
            .borrow_mut()
            .push(("/usr/bin/x".into(), libc::EACCES));
        let f = run(&sys, &plan(&["x"], "/"), PIPES);
        assert_eq!(
            f,
            Failure {
                stage: Stage::Exec,
                errno: libc::EACCES
            }
        );
        // Any other error stops the search.
        let sys = Recorder::default();
        sys.executable
            .borrow_mut()
            .push(("/usr/bin/x".into(), libc::ENOEXEC));
        let f = run(&sys, &plan(&["x"], "/"), PIPES);
        assert_eq!(
            f,
            Failure {
                stage: Stage::Exec,
                errno: libc::ENOEXEC
            }
        );
        assert_eq!(
            sys.lines()
                .iter()
                .filter(|l| l.starts_with("execve"))
                .count(),
            1
        );
    }

    #[test]
    fn failures_stop_at_their_stage() {
        let sys = Recorder::failing("pivot_root", libc::EINVAL);
        let exit = run_init(&sys, &plan(&["true"], "/"), &container(), PIPES);
        let failure = |stage, errno| Exit::Failed(Failure { stage, errno });
        assert_eq!(exit, failure(Stage::Root, libc::EINVAL));
        assert!(!sys
            .lines()
            .iter()
            .any(|l| l.starts_with("execve") || l.starts_with("clone")));
        for call in ["catch_signals", "clone"] {
            let sys = Recorder::failing(call, libc::EAGAIN);
            let exit = run_init(&sys, &plan(&["true"], "/"), &container(), PIPES);
            assert_eq!(exit, failure(Stage::Init, libc::EAGAIN));
            assert!(!sys.lines().iter().any(|l| l.starts_with("execve")));
        }
        let sys = Recorder::failing("setuid", libc::EPERM);
        let f = run(&sys, &plan(&["true"], "/"), PIPES);
        assert_eq!(
            f,
            Failure {
                stage: Stage::Ids,
                errno: libc::EPERM
            }
        );
        let sys = Recorder::failing("chdir /nowhere", libc::ENOENT);
        let f = run(&sys, &plan(&["true"], "/nowhere"), PIPES);
        assert_eq!(
            f,
            Failure {
                stage: Stage::Cwd,
                errno: libc::ENOENT
            }
        );
    }

    #[test]
    fn failure_encoding() {
        let f = Failure {
            stage: Stage::Cwd,
            errno: libc::ENOTDIR,
        };
        assert_eq!(Failure::from_bytes(&f.to_bytes()), Some(f));
        assert_eq!(Failure::from_bytes(&[0; FAILURE_LEN]), None);
        assert_eq!(Failure::from_bytes(&[1, 0, 0]), None);
    }
}
