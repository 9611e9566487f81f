//! The privileged system calls of the agent, behind a small trait.
//!
//! Everything the agent does to set up mounts, namespaces, ids and the process's stdio goes
//! through [`Syscall`], so the sequences in [`crate::init`] and [`crate::container`] are unit
//! tested against a recording mock without root. [`Linux`] is the real implementation.
//!
//! The methods are called in a forked child of a multi-threaded process: implementations must not
//! allocate or take locks (the real one only makes system calls; [`io::Error`] from an errno does
//! not allocate).

use std::ffi::{c_char, CStr};
use std::io;
use std::os::fd::RawFd;

mod linux;
#[cfg(test)]
pub mod mock;

pub use linux::Linux;

/// A NULL-terminated array of C string pointers (argv or envp), borrowed from owned strings.
pub struct CStrArray {
    /// Owns the buffers `ptrs` points into.
    #[cfg_attr(not(test), allow(dead_code))]
    strings: Vec<std::ffi::CString>,
    ptrs: Vec<*const c_char>,
}

// SAFETY: the pointers point into `strings`, which the array owns and never mutates; sharing or
// sending the array shares or moves those heap buffers with it.
unsafe impl Send for CStrArray {}
// SAFETY: see `Send`: the array is immutable after construction.
unsafe impl Sync for CStrArray {}

impl CStrArray {
    /// Builds the array; the strings must not contain NUL bytes (checked by the caller).
    pub fn new(strings: Vec<std::ffi::CString>) -> Self {
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Self { strings, ptrs }
    }

    /// The NULL-terminated pointer array, valid as long as `self` lives.
    pub fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }

    /// The strings.
    #[cfg(test)]
    pub fn strings(&self) -> &[std::ffi::CString] {
        &self.strings
    }
}

/// The system calls the agent makes to build a container and start its process.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()>;
    /// umount2(2) with `MNT_DETACH`.
    fn umount_detach(&self, target: &CStr) -> io::Result<()>;
    /// umount2(2) without flags: fails with `EBUSY` while the mount is in use.
    fn umount(&self, target: &CStr) -> io::Result<()>;
    /// sync(2).
    fn sync(&self);
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()>;
    /// chroot(2).
    fn chroot(&self, path: &CStr) -> io::Result<()>;
    /// unlink(2).
    fn unlink(&self, path: &CStr) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &CStr) -> io::Result<()>;
    /// mkdir(2); the mode is subject to the umask.
    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()>;
    /// symlink(2): creates `link` pointing to `target`.
    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()>;
    /// unshare(2).
    fn unshare(&self, flags: libc::c_int) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &[u8]) -> io::Result<()>;
    /// setgroups(2).
    fn setgroups(&self, groups: &[libc::gid_t]) -> io::Result<()>;
    /// setresgid(2) with all three ids equal.
    fn setgid(&self, gid: libc::gid_t) -> io::Result<()>;
    /// setresuid(2) with all three ids equal.
    fn setuid(&self, uid: libc::uid_t) -> io::Result<()>;
    /// setsid(2).
    fn setsid(&self) -> io::Result<()>;
    /// ioctl(fd, TIOCSCTTY): makes the terminal `fd` the controlling terminal.
    fn set_controlling_tty(&self, fd: RawFd) -> io::Result<()>;
    /// dup2(2); the new descriptor does not have `FD_CLOEXEC`.
    fn dup2(&self, from: RawFd, to: RawFd) -> io::Result<()>;
    /// Unblocks every signal and resets every disposition to the default.
    fn reset_signals(&self) -> io::Result<()>;
    /// umask(2).
    fn umask(&self, mask: libc::mode_t);
    /// execve(2); returns only on failure.
    fn execve(&self, path: &CStr, argv: &CStrArray, envp: &CStrArray) -> io::Error;
    /// clone(2) without a new stack, which works like fork: `flags` are namespace flags and the
    /// exit signal. Returns the child's pid in the parent and 0 in the child.
    ///
    /// # Safety
    /// The calling process may have other threads, whose locks stay taken in the child's copy:
    /// until it execs or exits, the child must only make system calls on data prepared before.
    unsafe fn clone_process(&self, flags: libc::c_ulong) -> io::Result<libc::pid_t>;
    /// Installs a handler that does nothing for each of `signals` and blocks them, so that
    /// [`Syscall::wait_signal`] takes them. (The init of a PID namespace only receives the
    /// signals it has a handler for: with `SIG_DFL` they are dropped.)
    fn catch_signals(&self, signals: &[libc::c_int]) -> io::Result<()>;
    /// sigwaitinfo(2) on `signals`: the number of the next one pending.
    fn wait_signal(&self, signals: &[libc::c_int]) -> io::Result<libc::c_int>;
    /// kill(2).
    fn kill(&self, pid: libc::pid_t, signo: libc::c_int) -> io::Result<()>;
    /// waitpid(-1, WNOHANG): a child that has ended and its raw wait status, `None` if none has
    /// yet.
    fn reap_any(&self) -> io::Result<Option<(libc::pid_t, libc::c_int)>>;
    /// Closes the descriptors `first..=last`.
    fn close_range(&self, first: RawFd, last: RawFd);
    /// The raw getcwd(2) system call: whether the working directory is reachable from the
    /// root (the kernel answers "(unreachable)/..." for a directory outside it).
    fn cwd_in_root(&self) -> io::Result<bool>;
    /// openat2(2) of `path` under the directory `root` with `RESOLVE_IN_ROOT` (symlinks and
    /// `..` cannot leave it) and `RESOLVE_NO_MAGICLINKS`; `flags` are added to `O_CLOEXEC`.
    fn open_in_root(&self, root: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<RawFd>;
    /// open(2) with `O_CLOEXEC` added.
    fn open(&self, path: &CStr, flags: libc::c_int) -> io::Result<RawFd>;
    /// close(2); errors are of no use to the caller.
    fn close(&self, fd: RawFd);
    /// mkdirat(2).
    fn mkdirat(&self, dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()>;
    /// Creates the empty regular file `name` in `dir` (no symlink followed), for a mount point.
    fn create_file_at(&self, dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()>;
    /// Whether `fd` is a directory (fstat).
    fn is_dir(&self, fd: RawFd) -> io::Result<bool>;
    /// The `MS_RDONLY`/`MS_NOSUID`/`MS_NODEV`/`MS_NOEXEC`/atime flags of the mount `fd` is on
    /// (fstatfs), which a bind remount must keep.
    fn mount_flags(&self, fd: RawFd) -> io::Result<libc::c_ulong>;
    /// mknod(2); `mode` includes the file type bits.
    fn mknod(&self, path: &CStr, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()>;
    /// lchown(2).
    fn chown(&self, path: &CStr, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()>;
    /// Writes `data` to the existing file `path` in one write(2).
    fn write_file(&self, path: &CStr, data: &[u8]) -> io::Result<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &[u8]) -> io::Result<()>;
    /// prlimit64(2) of this process.
    fn setrlimit(&self, resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()>;
    /// prctl(2) with two arguments (the rest 0).
    fn prctl(
        &self,
        option: libc::c_int,
        arg2: libc::c_ulong,
        arg3: libc::c_ulong,
    ) -> io::Result<()>;
    /// capset(2) of this thread: the three sets as bit masks.
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()>;
    /// seccomp(SECCOMP_SET_MODE_FILTER, flags, program).
    fn seccomp_filter(&self, flags: u32, filter: &[libc::sock_filter]) -> io::Result<()>;
    /// Brings the loopback interface up (SIOCSIFFLAGS) in this network namespace.
    fn loopback_up(&self) -> io::Result<()>;
    /// Reads one byte: `Ok(false)` at end of file.
    fn read_byte(&self, fd: RawFd) -> io::Result<bool>;
    /// Writes all of `data` to `fd` in one write(2).
    fn write_fd(&self, fd: RawFd, data: &[u8]) -> io::Result<()>;
    /// setns(2): joins the namespace `fd` refers to (`nstype` one `CLONE_NEW*` flag).
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> io::Result<()>;
}
