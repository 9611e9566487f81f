//! The real [`Syscall`] implementation: thin wrappers over libc, no allocation.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::ptr;

use super::{CStrArray, Syscall};

/// The highest signal number on Linux x86_64 (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// Makes the system calls for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        // SAFETY: every pointer is NULL or points to a NUL-terminated string that outlives the
        // call; mount(2) only reads them.
        check(unsafe {
            libc::mount(
                opt_ptr(source),
                target.as_ptr(),
                opt_ptr(fstype),
                flags,
                opt_ptr(data).cast(),
            )
        })
    }

    fn umount_detach(&self, target: &CStr) -> io::Result<()> {
        // SAFETY: `target` is a valid C string for the duration of the call.
        check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()> {
        // SAFETY: pivot_root takes two path pointers, both valid C strings here.
        let ret =
            unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn chroot(&self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is a valid C string.
        check(unsafe { libc::chroot(path.as_ptr()) })
    }

    fn unlink(&self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is a valid C string.
        check(unsafe { libc::unlink(path.as_ptr()) })
    }

    fn chdir(&self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is a valid C string.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        // SAFETY: `path` is a valid C string.
        check(unsafe { libc::mkdir(path.as_ptr(), mode) })
    }

    fn mknod_char(
        &self,
        path: &CStr,
        mode: libc::mode_t,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let dev = libc::makedev(major, minor);
        // SAFETY: `path` is a valid C string; mknod does not keep it.
        check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) })
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()> {
        // SAFETY: both are valid C strings.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn unshare(&self, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: unshare takes no pointers.
        check(unsafe { libc::unshare(flags) })
    }

    fn sethostname(&self, name: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`, which the kernel only reads.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn setgroups(&self, groups: &[libc::gid_t]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `groups`, which the kernel only reads. The raw
        // system call changes only this thread, the only one of the cloned child (the C
        // library's wrapper would wait for the parent's threads, copied into its bookkeeping).
        let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        check(ret as libc::c_int)
    }

    fn setgid(&self, gid: libc::gid_t) -> io::Result<()> {
        // SAFETY: no pointers; the raw system call changes only this thread, which is the only
        // thread of the forked child.
        let ret = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        check(ret as libc::c_int)
    }

    fn setuid(&self, uid: libc::uid_t) -> io::Result<()> {
        // SAFETY: as for `setgid`.
        let ret = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        check(ret as libc::c_int)
    }

    fn setsid(&self) -> io::Result<()> {
        // SAFETY: setsid takes no arguments.
        check(unsafe { libc::setsid() })
    }

    fn set_controlling_tty(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: TIOCSCTTY takes an integer argument, no pointer.
        check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) })
    }

    fn dup2(&self, from: RawFd, to: RawFd) -> io::Result<()> {
        // SAFETY: dup2 only manipulates the descriptor table.
        check(unsafe { libc::dup2(from, to) })
    }

    fn reset_signals(&self) -> io::Result<()> {
        // SAFETY: `set` is a local, initialised by sigemptyset before use; sigaction gets a
        // zeroed struct whose handler is SIG_DFL.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            check(libc::sigprocmask(libc::SIG_SETMASK, &set, ptr::null_mut()))?;
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_DFL;
            for signo in 1..=MAX_SIGNAL {
                if signo != libc::SIGKILL && signo != libc::SIGSTOP {
                    // Numbers reserved by the C library fail with EINVAL; nothing to reset there.
                    libc::sigaction(signo, &act, ptr::null_mut());
                }
            }
        }
        Ok(())
    }

    fn umask(&self, mask: libc::mode_t) {
        // SAFETY: umask cannot fail and takes no pointers.
        unsafe { libc::umask(mask) };
    }

    fn execve(&self, path: &CStr, argv: &CStrArray, envp: &CStrArray) -> io::Error {
        // SAFETY: `path` is a C string and both arrays are NULL-terminated arrays of C strings
        // owned by `argv`/`envp`, alive for the call.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        io::Error::last_os_error()
    }

    unsafe fn clone_process(&self, flags: libc::c_ulong) -> io::Result<libc::pid_t> {
        // SAFETY: with a NULL stack the child runs on its copy of the caller's stack, returning
        // from this call like fork's child; no other pointer is passed (parent/child tid and tls
        // are unused without the flags that ask for them). The caller keeps the child to system
        // calls, as this function's contract requires.
        let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as libc::pid_t)
        }
    }

    fn catch_signals(&self, signals: &[libc::c_int]) -> io::Result<()> {
        // SAFETY: `act` is zeroed plain data with an emptied mask and a handler that does
        // nothing (and so is async-signal-safe); sigaction and sigprocmask only read it and
        // `set`. This runs single-threaded (in a forked child), so sigprocmask is the thread's.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART;
            for &signo in signals {
                check(libc::sigaction(signo, &act, ptr::null_mut()))?;
            }
            let set = signal_set(signals);
            check(libc::sigprocmask(libc::SIG_BLOCK, &set, ptr::null_mut()))
        }
    }

    fn wait_signal(&self, signals: &[libc::c_int]) -> io::Result<libc::c_int> {
        let set = signal_set(signals);
        // SAFETY: `set` is an initialised signal set and `info` a local the kernel fills.
        let ret = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&set, &mut info)
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    fn kill(&self, pid: libc::pid_t, signo: libc::c_int) -> io::Result<()> {
        // SAFETY: kill takes no pointers.
        check(unsafe { libc::kill(pid, signo) })
    }

    fn reap_any(&self) -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
        let mut raw = 0;
        // SAFETY: `raw` is a valid out-pointer; WNOHANG makes the call non-blocking.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        match pid {
            0 => Ok(None),
            p if p < 0 => Err(io::Error::last_os_error()),
            p => Ok(Some((p, raw))),
        }
    }

    fn close_from(&self, first: RawFd) {
        // SAFETY: close_range takes no pointers; the caller no longer uses these descriptors.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
        if ret < 0 {
            // Kernels before 5.9: close the range of descriptors the agent can have one by one.
            for fd in first..FALLBACK_CLOSE_LIMIT {
                // SAFETY: as above; closing a descriptor that is not open is just EBADF.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// How far [`Syscall::close_from`] closes without close_range(2): the agent's descriptors
/// (connection, pipes, a pty) are few and low-numbered.
const FALLBACK_CLOSE_LIMIT: RawFd = 1024;

/// The handler of [`Syscall::catch_signals`]: the signals are blocked and taken with
/// sigwaitinfo, but a namespace init needs a handler for them to be sent at all.
extern "C" fn ignore_signal(_: libc::c_int) {}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it and sigaddset only sets bits
    // (an invalid number is refused with EINVAL).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signo in signals {
            libc::sigaddset(&mut set, signo);
        }
        set
    }
}
