//! The runtime's start of `moat-vmm`: a raw `clone` into new PID, mount, network, IPC and UTS
//! namespaces, so the VMM is PID 1 of its own PID namespace and the runtime's direct child.
//!
//! The child only makes async-signal-safe system calls before `execve` (the runtime is
//! multithreaded): parent-death `SIGKILL`, a check that the parent is still alive, its own
//! process group, stdin from /dev/null and stdout/stderr into the log, default signal handling,
//! then `execve` with an EMPTY environment. An exec failure comes back over a close-on-exec
//! pipe.
//!
//! In a new PID namespace `getppid()` is 0, so the "parent died before the prctl" race is closed
//! with a pipe instead: the parent holds its write end for the child's whole life; once the
//! death signal is armed, the child polls the read end, and a hang-up means the parent is gone.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::pipe::PipeFlags;

/// The namespaces a jailed VMM gets.
const NAMESPACES: libc::c_int = libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;
/// Exit status of a child whose parent died before it was set up, or whose exec failed.
const CHILD_FAILED: libc::c_int = 127;

/// Errors starting the child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// An argument holds a NUL byte.
    #[error("argument {0:?} contains a NUL byte")]
    Nul(String),
    /// Preparing or cloning failed.
    #[error("cannot {0}")]
    Setup(&'static str, #[source] io::Error),
    /// The child could not exec the program.
    #[error("cannot execute the program")]
    Exec(#[source] io::Error),
}

/// A started child: its pid, and the pipe end that tells it we are alive.
#[derive(Debug)]
pub struct Child {
    /// The child's pid (in our PID namespace); also its process group id.
    pub pid: libc::pid_t,
    /// Held for the child's whole life (see the module docs).
    _alive: OwnedFd,
}

fn cstring(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(s.to_string_lossy().into_owned()))
}

/// Everything the child needs, prepared before the clone (the child must not allocate).
struct ChildSetup {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: [*const libc::c_char; 1],
    stdin: RawFd,
    log: RawFd,
    alive_read: RawFd,
    alive_write: RawFd,
    error_write: RawFd,
}

/// Starts `program args...` with an empty environment, stdin from /dev/null, stdout and stderr
/// into `log`, in its own process group, killed if the calling thread ends; in new namespaces
/// when `namespaces` is set.
pub fn spawn(
    program: &Path,
    args: &[&OsStr],
    log: &File,
    namespaces: bool,
) -> Result<Child, SpawnError> {
    let program_c = cstring(program.as_os_str())?;
    let mut strings = vec![program_c.clone()];
    for arg in args {
        strings.push(cstring(arg)?);
    }
    let mut argv: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let setup_err = |what| move |e: rustix::io::Errno| SpawnError::Setup(what, e.into());
    let stdin = File::open("/dev/null").map_err(|e| SpawnError::Setup("open /dev/null", e))?;
    let (alive_read, alive_write) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(setup_err("create a pipe"))?;
    let (error_read, error_write) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(setup_err("create a pipe"))?;
    let setup = ChildSetup {
        program: program_c,
        argv,
        envp: [std::ptr::null()],
        stdin: stdin.as_raw_fd(),
        log: log.as_raw_fd(),
        alive_read: alive_read.as_raw_fd(),
        alive_write: alive_write.as_raw_fd(),
        error_write: error_write.as_raw_fd(),
    };
    let flags = libc::SIGCHLD | if namespaces { NAMESPACES } else { 0 };
    // SAFETY: a clone without CLONE_VM and without a new stack behaves like fork: the child
    // gets a copy of this address space and continues here. It only runs `child_main`, which
    // makes async-signal-safe system calls on memory prepared above and never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags as libc::c_ulong, 0, 0, 0, 0) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child (see above).
        unsafe { child_main(&setup) }
    }
    if pid < 0 {
        return Err(SpawnError::Setup("clone", io::Error::last_os_error()));
    }
    let pid = pid as libc::pid_t;
    drop((error_write, alive_read, stdin));
    let mut errno = [0u8; 4];
    let n = read_full(&error_read, &mut errno);
    if n == errno.len() {
        reap(pid);
        return Err(SpawnError::Exec(io::Error::from_raw_os_error(
            i32::from_ne_bytes(errno),
        )));
    }
    Ok(Child {
        pid,
        _alive: alive_write,
    })
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::read(fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    n
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child; status points to a local.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// The child between clone and exec.
///
/// # Safety
/// Only in the child of the clone in [`spawn`]; `setup` points into memory the parent prepared.
unsafe fn child_main(setup: &ChildSetup) -> ! {
    // SAFETY: raw system calls on integers and on pointers into `setup`, which lives in this
    // (copied) address space; nothing allocates or takes a lock.
    unsafe {
        libc::close(setup.alive_write);
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(setup.error_write);
        }
        let mut pfd = libc::pollfd {
            fd: setup.alive_read,
            events: libc::POLLIN,
            revents: 0,
        };
        // All write ends closed means the parent died before the death signal was armed.
        if libc::poll(&mut pfd, 1, 0) != 0 {
            libc::_exit(CHILD_FAILED);
        }
        if libc::setpgid(0, 0) != 0
            || libc::dup2(setup.stdin, 0) < 0
            || libc::dup2(setup.log, 1) < 0
            || libc::dup2(setup.log, 2) < 0
        {
            fail(setup.error_write);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for signo in 1..libc::SIGRTMAX() {
            if signo != libc::SIGKILL && signo != libc::SIGSTOP {
                libc::signal(signo, libc::SIG_DFL);
            }
        }
        libc::execve(
            setup.program.as_ptr(),
            setup.argv.as_ptr(),
            setup.envp.as_ptr(),
        );
        fail(setup.error_write)
    }
}

/// Reports errno to the parent and exits.
///
/// # Safety
/// Only in the cloned child.
unsafe fn fail(error_write: RawFd) -> ! {
    // SAFETY: errno location and a 4-byte local buffer; write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(error_write, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(CHILD_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn wait(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: our own child; status points to a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    fn run(script: &str, namespaces: bool) -> (i32, String) {
        let tmp = TempDir::new("spawn");
        let log_path = tmp.path().join("log");
        let log = File::create(&log_path).unwrap();
        let child = spawn(
            Path::new("/bin/sh"),
            &[OsStr::new("-c"), OsStr::new(script)],
            &log,
            namespaces,
        )
        .unwrap();
        let code = wait(child.pid);
        (code, std::fs::read_to_string(log_path).unwrap())
    }

    #[test]
    fn plain_child_has_an_empty_environment_and_its_own_group() {
        let (code, out) = run(
            "wc -c </proc/$$/environ; cut -d' ' -f5 /proc/$$/stat; echo $$; read x; echo r$?",
            false,
        );
        assert_eq!(code, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0].trim(), "0", "empty environment: {out}");
        assert_eq!(lines[1], lines[2], "pgid == pid: {out}");
        assert_eq!(lines[3], "r1", "stdin is /dev/null: {out}");
    }

    #[test]
    fn namespaced_child_is_pid_1_in_new_namespaces() {
        let script = "echo $$; for n in pid mnt net ipc uts; do readlink /proc/self/ns/$n; done; \
                      exit 7";
        let (code, out) = run(script, true);
        assert_eq!(code, 7);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "1", "{out}");
        for (i, ns) in ["pid", "mnt", "net", "ipc", "uts"].iter().enumerate() {
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(lines[i + 1], host.to_string_lossy(), "{ns}: {out}");
        }
    }

    #[test]
    fn exec_failure_is_reported() {
        let tmp = TempDir::new("spawn-fail");
        let log = File::create(tmp.path().join("log")).unwrap();
        let err = spawn(&tmp.path().join("none"), &[], &log, false).unwrap_err();
        assert!(matches!(err, SpawnError::Exec(ref e) if e.kind() == io::ErrorKind::NotFound));
    }
}
