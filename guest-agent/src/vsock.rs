//! The agent's connection to the host over AF_VSOCK.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

/// How long to keep trying, and the pause between attempts. An attempt fails at once when the
/// host refuses, but may block for the kernel's connect timeout (2 s) when nothing answers.
const DEADLINE: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(20);

fn connect_once(cid: u32, port: u32) -> io::Result<File> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value that is filled in below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: the address pointer and length describe `addr`, which outlives the call.
    let ret = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_vm).cast(), len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(sock))
}

/// Connects a stream socket to `cid:port`, retrying for up to [`DEADLINE`] (the host may still
/// be setting up its listener).
pub fn connect(cid: u32, port: u32) -> io::Result<File> {
    let start = Instant::now();
    loop {
        match connect_once(cid, port) {
            Ok(file) => return Ok(file),
            Err(e) if start.elapsed() >= DEADLINE => return Err(e),
            Err(_) => thread::sleep(RETRY_PAUSE),
        }
    }
}
