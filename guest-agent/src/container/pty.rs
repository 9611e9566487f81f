//! Pseudo-terminals for `terminal` processes.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::syscall::{Linux, Syscall};

/// A pty pair: the agent keeps the master, the process gets the slave.
pub struct Pty {
    /// The master side.
    pub master: OwnedFd,
    /// The slave side.
    pub slave: OwnedFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `devpts`'s `f_type`.
const DEVPTS_SUPER_MAGIC: libc::c_long = 0x1cd1;

/// Opens a new pty with the given size (0 rows or columns leave the size unset) in the devpts
/// instance of `ptmx` (a container's, from [`container_ptmx`]), or without one from
/// `/dev/ptmx`: the instance at `/dev/pts` in the calling thread's mount namespace.
pub fn open(ptmx: Option<&OwnedFd>, rows: u16, cols: u16) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    let path = match ptmx {
        // Reopening the node through its descriptor opens that instance's ptmx.
        Some(node) => CString::new(format!("/proc/self/fd/{}", node.as_raw_fd()))?,
        None => c"/dev/ptmx".to_owned(),
    };
    // SAFETY: the path is a valid C string.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points to a live local.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags as an integer and returns a new descriptor.
    let fd = check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    if rows > 0 && cols > 0 {
        set_size(&master, rows, cols)?;
    }
    Ok(Pty { master, slave })
}

/// The ptmx of the devpts instance at `/dev/pts` in the container whose init is `init`, where
/// its execs' ptys belong: found inside its root (`RESOLVE_IN_ROOT`, no symlink followed at the
/// end) and opened `O_PATH`, and only if it is a devpts ptmx (5:2 on a devpts), so that the
/// container's own files make the agent open nothing else. `None`: the container has none.
pub fn container_ptmx(init: libc::pid_t) -> io::Result<Option<OwnedFd>> {
    let root = CString::new(format!("/proc/{init}/root"))?;
    let root = Linux.open(&root, libc::O_PATH | libc::O_DIRECTORY)?;
    // SAFETY: `root` was just opened and is owned by nobody else.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let flags = libc::O_PATH | libc::O_NOFOLLOW;
    let node = match Linux.open_in_root(root.as_raw_fd(), c"dev/pts/ptmx", flags) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: `node` was just opened and is owned by nobody else.
    let node = unsafe { OwnedFd::from_raw_fd(node) };
    Ok(is_devpts_ptmx(&node)?.then_some(node))
}

fn is_devpts_ptmx(node: &OwnedFd) -> io::Result<bool> {
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs to the live local.
    check(unsafe { libc::fstatfs(node.as_raw_fd(), &mut fs) })?;
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", node.as_raw_fd()))?;
    let is_ptmx = meta.file_type().is_char_device() && meta.rdev() == libc::makedev(5, 2);
    Ok(fs.f_type as libc::c_long == DEVPTS_SUPER_MAGIC && is_ptmx)
}

/// Gives the slave to the process's user, readable and writable only by it (like a login
/// terminal), so that it can reopen it (e.g. as /dev/tty).
pub fn give_to(slave: &OwnedFd, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: fchown and fchmod take a descriptor and integers only.
    unsafe {
        check(libc::fchown(slave.as_raw_fd(), uid, gid))?;
        check(libc::fchmod(slave.as_raw_fd(), 0o620))?;
    }
    Ok(())
}

/// Sets the terminal size of the pty whose master is `master`.
pub fn set_size(master: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize through the pointer, which points to a live local.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_resize() {
        let pty = open(None, 24, 80).unwrap();
        let mut size: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize to a live local.
        let ret = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(ret, 0);
        assert_eq!((size.ws_row, size.ws_col), (24, 80));
        set_size(&pty.master, 50, 132).unwrap();
        // SAFETY: as above.
        unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!((size.ws_row, size.ws_col), (50, 132));
    }
}
