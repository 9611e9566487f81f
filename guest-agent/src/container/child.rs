//! What the forked child does between fork and exec. It runs in a copy of a multi-threaded
//! process, so it only makes system calls through [`Syscall`] on data prepared in advance, and
//! reports a failure as a fixed-size [`Failure`] (stage + errno) on the error pipe.
//!
//! In the guest the child is cloned into new PID, mount (and UTS) namespaces ([`clone_flags`]):
//! as PID 1 there it builds the container's root, forks the command as PID 2 and stays as a
//! minimal init ([`run_init`]) that passes signals on to the command, reaps orphans and exits
//! with the command's status. Root in the container can then only halt or reboot its own PID
//! namespace (reboot(2) kills the init), never the guest.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

use super::plan::ExecPlan;
use super::rootfs::ROOT;
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
}

impl Stage {
    fn from_u8(v: u8) -> Option<Self> {
        const ALL: [Stage; 10] = [
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
            Self::Mounts => "mounting /proc, /sys and /dev",
            Self::Hostname => "setting the hostname",
            Self::Ids => "setting user and group ids",
            Self::Cwd => "changing to the working directory",
            Self::Exec => "executing the command",
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
    fn at(stage: Stage) -> impl Fn(io::Error) -> Failure {
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

/// The flags to clone the container's init with: new PID and mount namespaces, and a UTS
/// namespace for a hostname; `SIGCHLD` when it ends, like fork.
pub fn clone_flags(plan: &ExecPlan) -> libc::c_ulong {
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS;
    if plan.hostname.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    (flags | libc::SIGCHLD) as libc::c_ulong
}

/// The host mode's child, in the agent's root: sets the process up and execs; returns only on
/// failure. The container's init runs the same for its command.
pub fn run(sys: &dyn Syscall, plan: &ExecPlan, stdio: ChildStdio) -> Failure {
    match setup_process(sys, plan, stdio) {
        Ok(()) => exec(sys, plan),
        Err(failure) => failure,
    }
}

/// The guest mode's child, cloned with [`clone_flags`] (so PID 1 of its PID namespace): builds
/// the container's root, forks the command as PID 2 and supervises it.
pub fn run_init(sys: &dyn Syscall, plan: &ExecPlan, stdio: ChildStdio) -> Exit {
    if let Err(failure) = setup_container(sys, plan) {
        return Exit::Failed(failure);
    }
    let fork = libc::SIGCHLD as libc::c_ulong;
    // SAFETY: this process is a copy of the multi-threaded agent; the new child only runs
    // `run` (system calls on the prepared plan) and then execs or reports and `_exit`s.
    match unsafe { sys.clone_process(fork) } {
        Err(e) => Exit::Failed(Failure::at(Stage::Init)(e)),
        Ok(0) => Exit::Failed(run(sys, plan, stdio)),
        Ok(command) => {
            // The copies of the agent's descriptors (the stdin pipe's write end, the error
            // pipe, the connection) must not outlive the command's exec.
            sys.close_from(0);
            Exit::Code(supervise(sys, command))
        }
    }
}

/// The init's part of the setup, as root: a session of its own, the root with its mounts, the
/// hostname, the working directory, and the signals it catches.
fn setup_container(sys: &dyn Syscall, plan: &ExecPlan) -> Result<(), Failure> {
    sys.reset_signals().map_err(Failure::at(Stage::Signals))?;
    sys.setsid().map_err(Failure::at(Stage::Session))?;
    enter_root(sys).map_err(Failure::at(Stage::Root))?;
    sys.umask(0);
    let mounted = mount_pseudo_fs(sys);
    sys.umask(0o022);
    mounted.map_err(Failure::at(Stage::Mounts))?;
    if let Some(name) = &plan.hostname {
        sys.sethostname(name)
            .map_err(Failure::at(Stage::Hostname))?;
    }
    create_cwd(sys, plan);
    // Caught and blocked before the command exists, so that none sent to it is lost.
    sys.catch_signals(&INIT_SIGNALS)
        .map_err(Failure::at(Stage::Init))
}

/// The command's part: default signals, its own session (with the pty as controlling terminal),
/// stdio, ids and working directory.
fn setup_process(sys: &dyn Syscall, plan: &ExecPlan, stdio: ChildStdio) -> Result<(), Failure> {
    sys.reset_signals().map_err(Failure::at(Stage::Signals))?;
    sys.setsid().map_err(Failure::at(Stage::Session))?;
    install_stdio(sys, stdio)?;
    sys.setgroups(&plan.groups)
        .map_err(Failure::at(Stage::Ids))?;
    sys.setgid(plan.gid).map_err(Failure::at(Stage::Ids))?;
    sys.setuid(plan.uid).map_err(Failure::at(Stage::Ids))?;
    sys.chdir(&plan.cwd).map_err(Failure::at(Stage::Cwd))
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

/// Makes every mount private, mounts the container's /dev (a tmpfs with the guest's devpts bound
/// in: the guest runs this one container, and a pty the agent allocates must be found under the
/// container's /dev/pts), pivots into [`ROOT`] and detaches the old root.
fn enter_root(sys: &dyn Syscall) -> io::Result<()> {
    sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let dev_opts = c"mode=0755,size=64k,nr_inodes=64";
    let dev_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    sys.mount(
        Some(c"tmpfs"),
        ROOT_DEV,
        Some(c"tmpfs"),
        dev_flags,
        Some(dev_opts),
    )?;
    sys.mkdir(ROOT_DEV_PTS, 0o755)?;
    sys.mount(Some(c"/dev/pts"), ROOT_DEV_PTS, None, libc::MS_BIND, None)?;
    sys.chdir(ROOT)?;
    sys.pivot_root(c".", c".")?;
    sys.umount_detach(c".")?;
    sys.chdir(c"/")
}

/// The container's /dev and /dev/pts before the pivot.
const ROOT_DEV: &CStr = c"/run/moat/root/dev";
const ROOT_DEV_PTS: &CStr = c"/run/moat/root/dev/pts";

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The character devices of the container's /dev: (path, major, minor).
const DEVICES: [(&CStr, u32, u32); 6] = [
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
    (c"/dev/tty", 5, 0),
];

/// The symlinks of the container's /dev: (target, link).
const LINKS: [(&CStr, &CStr); 5] = [
    (c"pts/ptmx", c"/dev/ptmx"),
    (c"/proc/self/fd", c"/dev/fd"),
    (c"/proc/self/fd/0", c"/dev/stdin"),
    (c"/proc/self/fd/1", c"/dev/stdout"),
    (c"/proc/self/fd/2", c"/dev/stderr"),
];

/// Mounts /proc and a read-only /sys and fills /dev; expects a umask of 0.
fn mount_pseudo_fs(sys: &dyn Syscall) -> io::Result<()> {
    sys.mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        NOSUID_NODEV_NOEXEC,
        None,
    )?;
    let ro = NOSUID_NODEV_NOEXEC | libc::MS_RDONLY;
    sys.mount(Some(c"sysfs"), c"/sys", Some(c"sysfs"), ro, None)?;
    for (path, major, minor) in DEVICES {
        sys.mknod_char(path, 0o666, major, minor)?;
    }
    sys.mkdir(c"/dev/shm", 0o1777)?;
    let shm_opts = c"mode=1777,size=65536k";
    sys.mount(
        Some(c"shm"),
        c"/dev/shm",
        Some(c"tmpfs"),
        NOSUID_NODEV_NOEXEC,
        Some(shm_opts),
    )?;
    for (target, link) in LINKS {
        sys.symlink(target, link)?;
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
    use crate::container::plan;
    use crate::container::plan::ProcessSpec;
    use crate::syscall::mock::Recorder;

    fn plan(args: &[&str], cwd: &str, hostname: Option<&str>) -> ExecPlan {
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
        plan::build(&spec, hostname).unwrap()
    }

    const PIPES: ChildStdio = ChildStdio::Pipes {
        stdin: 10,
        stdout: 11,
        stderr: 12,
    };

    #[test]
    fn isolated_sequence() {
        let sys = Recorder::default();
        sys.executable
            .borrow_mut()
            .push(("/bin/echo".into(), libc::E2BIG));
        let exit = run_init(
            &sys,
            &plan(&["echo", "hi"], "/work/dir", Some("box")),
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
        let pos = |needle: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle}"))
        };
        assert_eq!(&lines[..2], ["reset_signals", "setsid"]);
        assert_eq!(
            &lines[2..10],
            [
                "mount - / - rec,private -",
                "mount tmpfs /run/moat/root/dev tmpfs nosuid,noexec mode=0755,size=64k,nr_inodes=64",
                "mkdir /run/moat/root/dev/pts 755",
                "mount /dev/pts /run/moat/root/dev/pts - bind -",
                "chdir /run/moat/root",
                "pivot_root . .",
                "umount .",
                "chdir /"
            ]
        );
        assert!(pos("umount .") < pos("mount proc /proc proc nosuid,nodev,noexec -"));
        assert!(lines.contains(&"mount sysfs /sys sysfs ro,nosuid,nodev,noexec -".into()));
        assert!(pos("mknod /dev/null 666 1:3") < pos("mount shm /dev/shm tmpfs"));
        assert!(pos("symlink pts/ptmx /dev/ptmx") < pos("symlink /proc/self/fd/2 /dev/stderr"));
        assert!(pos("umask 0") < pos("mknod") && pos("symlink /proc/self/fd/2") < pos("umask 22"));
        assert!(pos("sethostname box") < pos("mkdir /work 755"));
        assert!(pos("mkdir /work/dir 755") < pos("catch_signals"));
        // The init catches its signals before the command exists; the command (the clone's
        // child here) starts from default signals in a session of its own.
        let clone = pos("clone");
        assert_eq!(lines[clone], format!("clone {:#x}", libc::SIGCHLD));
        assert_eq!(clone, pos("catch_signals") + 1);
        assert_eq!(
            &lines[clone + 1..lines.len() - 2],
            [
                "reset_signals",
                "setsid",
                "dup2 10 0",
                "dup2 11 1",
                "dup2 12 2",
                "setgroups [5]",
                "setgid 1000",
                "setuid 1000",
                "chdir /work/dir"
            ]
        );
        assert!(lines[lines.len() - 2].starts_with("execve /usr/bin/echo [\"echo\", \"hi\"]"));
        assert!(lines[lines.len() - 1].starts_with("execve /bin/echo"));
    }

    #[test]
    fn init_closes_descriptors_then_supervises() {
        let sys = Recorder::default();
        sys.clone_pid.set(2);
        sys.signals.borrow_mut().push_back(libc::SIGCHLD);
        sys.children.borrow_mut().push_back((2, 3 << 8));
        let exit = run_init(&sys, &plan(&["false"], "/", None), PIPES);
        assert_eq!(exit, Exit::Code(3));
        let lines = sys.lines();
        let clone = lines.iter().position(|l| l.starts_with("clone")).unwrap();
        assert_eq!(
            &lines[clone + 1..],
            [
                "close_from 0",
                "wait_signal 17",
                "reap 2 0x300",
                "reap none"
            ]
        );
    }

    #[test]
    fn clone_flags_for_the_init() {
        let base = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD;
        let flags = clone_flags(&plan(&["true"], "/", None));
        assert_eq!(flags, base as libc::c_ulong);
        let flags = clone_flags(&plan(&["true"], "/", Some("box")));
        assert_eq!(flags, (base | libc::CLONE_NEWUTS) as libc::c_ulong);
    }

    #[test]
    fn host_mode_skips_namespaces_and_mounts() {
        let sys = Recorder::default();
        run(
            &sys,
            &plan(&["/bin/true"], "/", None),
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
        let f = run(&sys, &plan(&["nope"], "/", None), PIPES);
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
        let f = run(&sys, &plan(&["x"], "/", None), PIPES);
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
        let f = run(&sys, &plan(&["x"], "/", None), PIPES);
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
        let exit = run_init(&sys, &plan(&["true"], "/", None), PIPES);
        let failure = |stage, errno| Exit::Failed(Failure { stage, errno });
        assert_eq!(exit, failure(Stage::Root, libc::EINVAL));
        assert!(!sys
            .lines()
            .iter()
            .any(|l| l.starts_with("execve") || l.starts_with("clone")));
        for call in ["catch_signals", "clone"] {
            let sys = Recorder::failing(call, libc::EAGAIN);
            let exit = run_init(&sys, &plan(&["true"], "/", None), PIPES);
            assert_eq!(exit, failure(Stage::Init, libc::EAGAIN));
            assert!(!sys.lines().iter().any(|l| l.starts_with("execve")));
        }
        let sys = Recorder::failing("setuid", libc::EPERM);
        let f = run(&sys, &plan(&["true"], "/", None), PIPES);
        assert_eq!(
            f,
            Failure {
                stage: Stage::Ids,
                errno: libc::EPERM
            }
        );
        let sys = Recorder::failing("chdir /nowhere", libc::ENOENT);
        let f = run(&sys, &plan(&["true"], "/nowhere", None), PIPES);
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
