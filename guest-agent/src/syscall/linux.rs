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

    fn umount(&self, target: &CStr) -> io::Result<()> {
        // SAFETY: `target` is a valid C string for the duration of the call.
        check(unsafe { libc::umount2(target.as_ptr(), 0) })
    }

    fn sync(&self) {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() }
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

    fn close_range(&self, first: RawFd, last: RawFd) {
        if first > last || first < 0 {
            return;
        }
        // SAFETY: close_range takes no pointers; the caller no longer uses these descriptors.
        let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last as libc::c_uint, 0) };
        if ret < 0 {
            // Kernels before 5.9: close the range of descriptors the agent can have one by one.
            for fd in first..=last.min(FALLBACK_CLOSE_LIMIT) {
                // SAFETY: as above; closing a descriptor that is not open is just EBADF.
                unsafe { libc::close(fd) };
            }
        }
    }
    fn cwd_in_root(&self) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        // SAFETY: the kernel writes at most `buf.len()` bytes into our stack buffer. The raw
        // system call, because libc's getcwd turns an unreachable directory into ENOENT.
        let ret = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(buf[0] == b'/')
    }
    fn open_in_root(&self, root: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<RawFd> {
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: `path` is a C string and `how` a local of the size passed; the kernel only
        // reads both.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        fd_result(ret)
    }

    fn open(&self, path: &CStr, flags: libc::c_int) -> io::Result<RawFd> {
        // SAFETY: `path` is a C string; no mode is read without O_CREAT.
        let ret = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        fd_result(ret.into())
    }

    fn close(&self, fd: RawFd) {
        // SAFETY: the caller owns `fd` and no longer uses it.
        unsafe { libc::close(fd) };
    }

    fn mkdirat(&self, dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
        // SAFETY: `name` is a C string.
        check(unsafe { libc::mkdirat(dir, name.as_ptr(), mode) })
    }

    fn create_file_at(&self, dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY;
        // SAFETY: `name` is a C string; the descriptor is closed right away.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        let fd = fd_result(fd.into())?;
        self.close(fd);
        Ok(())
    }

    fn is_dir(&self, fd: RawFd) -> io::Result<bool> {
        // SAFETY: `st` is a local the kernel fills.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            check(libc::fstat(fd, &mut st))?;
            Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        }
    }

    fn mount_flags(&self, fd: RawFd) -> io::Result<libc::c_ulong> {
        // SAFETY: `st` is a local the kernel fills.
        let f = unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            check(libc::fstatvfs(fd, &mut st))?;
            st.f_flag as libc::c_ulong
        };
        const MAP: [(libc::c_ulong, libc::c_ulong); 7] = [
            (libc::ST_RDONLY, libc::MS_RDONLY),
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ];
        Ok(MAP
            .iter()
            .filter(|(st, _)| f & st != 0)
            .fold(0, |acc, (_, ms)| acc | ms))
    }

    fn mknod(&self, path: &CStr, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
        let dev = libc::makedev(major, minor);
        // SAFETY: `path` is a valid C string; mknod does not keep it.
        check(unsafe { libc::mknod(path.as_ptr(), mode, dev) })
    }

    fn chown(&self, path: &CStr, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        // SAFETY: `path` is a valid C string.
        check(unsafe { libc::lchown(path.as_ptr(), uid, gid) })
    }

    fn write_file(&self, path: &CStr, data: &[u8]) -> io::Result<()> {
        let fd = self.open(path, libc::O_WRONLY | libc::O_NOFOLLOW)?;
        // SAFETY: the pointer and length describe `data`; the descriptor is ours.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        let err = io::Error::last_os_error();
        self.close(fd);
        match n {
            n if n < 0 => Err(err),
            n if n as usize != data.len() => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    }

    fn setdomainname(&self, name: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`, which the kernel only reads.
        check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) })
    }

    fn setrlimit(&self, resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
        let limit = libc::rlimit64 {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `limit` is a local the kernel reads; the old limit is not asked for.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                resource,
                &limit,
                ptr::null_mut::<u8>(),
            )
        };
        check(ret as libc::c_int)
    }

    fn prctl(
        &self,
        option: libc::c_int,
        arg2: libc::c_ulong,
        arg3: libc::c_ulong,
    ) -> io::Result<()> {
        // SAFETY: the options used take integer arguments, no pointers.
        check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
        let data = [0, 1].map(|i| CapData {
            effective: half(effective, i),
            permitted: half(permitted, i),
            inheritable: half(inheritable, i),
        });
        // SAFETY: `header` and the two `data` entries are locals laid out as the kernel's
        // version 3 structures; capset only reads them.
        let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        check(ret as libc::c_int)
    }

    fn seccomp_filter(&self, flags: u32, filter: &[libc::sock_filter]) -> io::Result<()> {
        let len =
            u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let prog = libc::sock_fprog {
            len,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points to `filter`, alive for the call; the kernel copies it.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        };
        check(ret as libc::c_int)
    }

    fn loopback_up(&self) -> io::Result<()> {
        // SAFETY: a datagram socket for the ioctls, closed below; `req` is a zeroed local
        // ifreq with the name "lo" the kernel reads and fills.
        unsafe {
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let sock = fd_result(sock.into())?;
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'l' as libc::c_char;
            req.ifr_name[1] = b'o' as libc::c_char;
            let mut ret = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
            if ret == 0 {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                ret = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
            }
            let err = io::Error::last_os_error();
            libc::close(sock);
            if ret < 0 {
                return Err(err);
            }
        }
        Ok(())
    }

    fn read_byte(&self, fd: RawFd) -> io::Result<bool> {
        let mut b = 0u8;
        loop {
            // SAFETY: reads at most one byte into a local.
            let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
            match n {
                1 => return Ok(true),
                0 => return Ok(false),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn write_fd(&self, fd: RawFd, data: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `data`; the caller owns the descriptor.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != data.len() => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    }

    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
        // SAFETY: setns takes a descriptor and a flag, no pointers.
        if unsafe { libc::setns(fd, nstype) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn fd_result(ret: libc::c_long) -> io::Result<RawFd> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as RawFd)
    }
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// How far [`Syscall::close_range`] closes without close_range(2): the agent's descriptors
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
