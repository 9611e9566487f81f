//! A recording [`Syscall`] for unit tests: it logs every call as one readable line and fails the
//! calls it was told to fail.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

use super::{CStrArray, Syscall};

/// Records calls; `fail` holds (line prefix, errno) pairs that make matching calls fail.
#[derive(Default)]
pub struct Recorder {
    /// Every call so far, in order.
    pub calls: RefCell<Vec<String>>,
    /// Calls whose line starts with the prefix fail with the errno.
    pub fail: RefCell<Vec<(String, i32)>>,
    /// (path, errno) that execve of `path` fails with; paths not listed fail with ENOENT.
    pub executable: RefCell<Vec<(String, i32)>>,
    /// What `clone_process` returns: 0 (the default) continues as the child.
    pub clone_pid: Cell<libc::pid_t>,
    /// The signals `wait_signal` returns in turn; it panics when they run out.
    pub signals: RefCell<VecDeque<libc::c_int>>,
    /// The (pid, raw status) `reap_any` returns in turn, then `None`; a pid of 0 is `None` too
    /// (the end of one reaping pass).
    pub children: RefCell<VecDeque<(libc::pid_t, libc::c_int)>>,
    /// Paths `open_in_root` reports as directories (to `is_dir` of the descriptor it returns).
    pub dirs: RefCell<Vec<String>>,
    /// The path each descriptor `open_in_root`/`open` returned was opened at (fd = 100 + index).
    pub opened: RefCell<Vec<String>>,
}

fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

fn flag_names(flags: libc::c_ulong) -> String {
    const NAMES: [(libc::c_ulong, &str); 14] = [
        (libc::MS_SLAVE, "slave"),
        (libc::MS_SHARED, "shared"),
        (libc::MS_UNBINDABLE, "unbindable"),
        (libc::MS_NOATIME, "noatime"),
        (libc::MS_RELATIME, "relatime"),
        (libc::MS_MOVE, "move"),
        (libc::MS_RDONLY, "ro"),
        (libc::MS_NOSUID, "nosuid"),
        (libc::MS_NODEV, "nodev"),
        (libc::MS_NOEXEC, "noexec"),
        (libc::MS_BIND, "bind"),
        (libc::MS_REC, "rec"),
        (libc::MS_PRIVATE, "private"),
        (libc::MS_REMOUNT, "remount"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

impl Recorder {
    /// A recorder that fails calls starting with `prefix` with `errno`.
    pub fn failing(prefix: &str, errno: i32) -> Self {
        let r = Self::default();
        r.fail.borrow_mut().push((prefix.into(), errno));
        r
    }

    /// The recorded calls.
    pub fn lines(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// The recorded calls whose line starts with `prefix` (e.g. every `mount`).
    pub fn lines_starting(&self, prefix: &str) -> Vec<String> {
        let calls = self.calls.borrow();
        calls
            .iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn record(&self, line: String) -> io::Result<()> {
        let failure = self
            .fail
            .borrow()
            .iter()
            .find(|(p, _)| line.starts_with(p))
            .map(|f| f.1);
        self.calls.borrow_mut().push(line);
        match failure {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        self.record(format!(
            "mount {} {} {} {} {}",
            source.map_or("-".into(), s),
            s(target),
            fstype.map_or("-".into(), s),
            flag_names(flags),
            data.map_or("-".into(), s),
        ))
    }
    fn umount_detach(&self, target: &CStr) -> io::Result<()> {
        self.record(format!("umount {}", s(target)))
    }
    fn umount(&self, target: &CStr) -> io::Result<()> {
        self.record(format!("umount2 {}", s(target)))
    }
    fn sync(&self) {
        let _ = self.record("sync".to_owned());
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()> {
        self.record(format!("pivot_root {} {}", s(new_root), s(put_old)))
    }
    fn chroot(&self, path: &CStr) -> io::Result<()> {
        self.record(format!("chroot {}", s(path)))
    }
    fn unlink(&self, path: &CStr) -> io::Result<()> {
        self.record(format!("unlink {}", s(path)))
    }
    fn chdir(&self, path: &CStr) -> io::Result<()> {
        self.record(format!("chdir {}", s(path)))
    }
    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record(format!("mkdir {} {mode:o}", s(path)))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()> {
        self.record(format!("symlink {} {}", s(target), s(link)))
    }
    fn unshare(&self, flags: libc::c_int) -> io::Result<()> {
        self.record(format!("unshare {flags:#x}"))
    }
    fn sethostname(&self, name: &[u8]) -> io::Result<()> {
        self.record(format!("sethostname {}", String::from_utf8_lossy(name)))
    }
    fn setgroups(&self, groups: &[libc::gid_t]) -> io::Result<()> {
        self.record(format!("setgroups {groups:?}"))
    }
    fn setgid(&self, gid: libc::gid_t) -> io::Result<()> {
        self.record(format!("setgid {gid}"))
    }
    fn setuid(&self, uid: libc::uid_t) -> io::Result<()> {
        self.record(format!("setuid {uid}"))
    }
    fn setsid(&self) -> io::Result<()> {
        self.record("setsid".into())
    }
    fn set_controlling_tty(&self, fd: RawFd) -> io::Result<()> {
        self.record(format!("tiocsctty {fd}"))
    }
    fn dup2(&self, from: RawFd, to: RawFd) -> io::Result<()> {
        self.record(format!("dup2 {from} {to}"))
    }
    fn reset_signals(&self) -> io::Result<()> {
        self.record("reset_signals".into())
    }
    fn umask(&self, mask: libc::mode_t) {
        let _ = self.record(format!("umask {mask:o}"));
    }
    fn execve(&self, path: &CStr, argv: &CStrArray, envp: &CStrArray) -> io::Error {
        let path = s(path);
        let _ = self.record(format!(
            "execve {path} {:?} {:?}",
            argv.strings(),
            envp.strings()
        ));
        let errno = self
            .executable
            .borrow()
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(libc::ENOENT, |e| e.1);
        io::Error::from_raw_os_error(errno)
    }
    unsafe fn clone_process(&self, flags: libc::c_ulong) -> io::Result<libc::pid_t> {
        self.record(format!("clone {flags:#x}"))?;
        Ok(self.clone_pid.get())
    }
    fn catch_signals(&self, signals: &[libc::c_int]) -> io::Result<()> {
        self.record(format!("catch_signals {signals:?}"))
    }
    fn wait_signal(&self, _signals: &[libc::c_int]) -> io::Result<libc::c_int> {
        let signo = self.signals.borrow_mut().pop_front();
        let signo = signo.expect("wait_signal called after the scripted signals");
        self.record(format!("wait_signal {signo}"))?;
        Ok(signo)
    }
    fn kill(&self, pid: libc::pid_t, signo: libc::c_int) -> io::Result<()> {
        self.record(format!("kill {pid} {signo}"))
    }
    fn reap_any(&self) -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
        let child = self.children.borrow_mut().pop_front().filter(|c| c.0 != 0);
        match child {
            Some((pid, raw)) => self.record(format!("reap {pid} {raw:#x}"))?,
            None => self.record("reap none".into())?,
        }
        Ok(child)
    }
    fn close_range(&self, first: RawFd, last: RawFd) {
        let _ = self.record(format!("close_range {first} {last}"));
    }
    fn cwd_in_root(&self) -> io::Result<bool> {
        self.record("getcwd".into())?;
        Ok(true)
    }
    fn open_in_root(&self, root: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<RawFd> {
        self.record(format!("open_in_root {root} {} {flags:#o}", s(path)))?;
        Ok(self.new_fd(s(path)))
    }
    fn open(&self, path: &CStr, flags: libc::c_int) -> io::Result<RawFd> {
        self.record(format!("open {} {flags:#o}", s(path)))?;
        Ok(self.new_fd(s(path)))
    }
    fn close(&self, fd: RawFd) {
        let _ = self.record(format!("close {fd}"));
    }
    fn mkdirat(&self, dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record(format!("mkdirat {dir} {} {mode:o}", s(name)))
    }
    fn create_file_at(&self, dir: RawFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record(format!("create_file_at {dir} {} {mode:o}", s(name)))
    }
    fn is_dir(&self, fd: RawFd) -> io::Result<bool> {
        let path = self.path_of(fd);
        Ok(self.dirs.borrow().contains(&path))
    }
    fn mount_flags(&self, _fd: RawFd) -> io::Result<libc::c_ulong> {
        Ok(libc::MS_NOSUID)
    }
    fn mknod(&self, path: &CStr, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
        self.record(format!("mknod {} {mode:o} {major}:{minor}", s(path)))
    }
    fn chown(&self, path: &CStr, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        self.record(format!("chown {} {uid}:{gid}", s(path)))
    }
    fn write_file(&self, path: &CStr, data: &[u8]) -> io::Result<()> {
        self.record(format!(
            "write {} {}",
            s(path),
            String::from_utf8_lossy(data)
        ))
    }
    fn setdomainname(&self, name: &[u8]) -> io::Result<()> {
        self.record(format!("setdomainname {}", String::from_utf8_lossy(name)))
    }
    fn setrlimit(&self, resource: libc::c_int, soft: u64, hard: u64) -> io::Result<()> {
        self.record(format!("setrlimit {resource} {soft} {hard}"))
    }
    fn prctl(
        &self,
        option: libc::c_int,
        arg2: libc::c_ulong,
        arg3: libc::c_ulong,
    ) -> io::Result<()> {
        self.record(format!("prctl {option} {arg2} {arg3}"))
    }
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
        self.record(format!(
            "capset {effective:#x} {permitted:#x} {inheritable:#x}"
        ))
    }
    fn seccomp_filter(&self, flags: u32, filter: &[libc::sock_filter]) -> io::Result<()> {
        self.record(format!("seccomp {flags} {}", filter.len()))
    }
    fn loopback_up(&self) -> io::Result<()> {
        self.record("loopback_up".into())
    }
    fn read_byte(&self, fd: RawFd) -> io::Result<bool> {
        self.record(format!("read_byte {fd}"))?;
        Ok(true)
    }
    fn write_fd(&self, fd: RawFd, data: &[u8]) -> io::Result<()> {
        self.record(format!("write_fd {fd} {}", data.len()))
    }
    fn setns(&self, fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
        self.record(format!("setns {fd} {nstype:#x}"))
    }
}

impl Recorder {
    fn new_fd(&self, path: String) -> RawFd {
        let mut opened = self.opened.borrow_mut();
        opened.push(path);
        99 + opened.len() as RawFd
    }

    /// The path descriptor `fd` was opened at.
    pub fn path_of(&self, fd: RawFd) -> String {
        let i = usize::try_from(fd - 100).unwrap_or(usize::MAX);
        self.opened.borrow().get(i).cloned().unwrap_or_default()
    }
}
