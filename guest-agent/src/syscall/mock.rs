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
}

fn s(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

fn flag_names(flags: libc::c_ulong) -> String {
    const NAMES: [(libc::c_ulong, &str); 9] = [
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
    fn mknod_char(
        &self,
        path: &CStr,
        mode: libc::mode_t,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.record(format!("mknod {} {mode:o} {major}:{minor}", s(path)))
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
    fn close_from(&self, first: RawFd) {
        let _ = self.record(format!("close_from {first}"));
    }
}
