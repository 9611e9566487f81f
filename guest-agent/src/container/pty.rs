//! Pseudo-terminals for `terminal` processes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

/// Opens a new pty with the given size (0 rows or columns leave the size unset).
pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: the path is a valid C string.
    let fd = check(unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) })?;
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
        let pty = open(24, 80).unwrap();
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
