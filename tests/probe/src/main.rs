//! `moat-probe CALL [ARGS]`: makes one system call the shell tools of the test image cannot
//! make, and prints `CALL ok` or `CALL ERRNAME` (exit 0 either way; 2 on bad usage);
//! `getxattr` prints the value first. Built
//! static (like the agent) and mounted into test containers as a read-only volume.

use std::ffi::CString;
use std::io;

/// `struct clone_args` of clone3(2), the fields up to `tls` (size 64).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

fn result(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

fn clone3() -> io::Result<libc::c_long> {
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; the child (ret 0) only calls
    // _exit, which is safe in a fork-like child.
    let pid = result(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    })?;
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    Ok(0)
}

fn keyctl() -> io::Result<libc::c_long> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a NULL name asks for a new anonymous session keyring; no memory is passed.
    result(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0usize) })
}

fn unshare_user() -> io::Result<libc::c_long> {
    // SAFETY: unshare takes a flag word only.
    result(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into())
}

fn mount_tmpfs(target: &str) -> io::Result<libc::c_long> {
    let target = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all strings are valid NUL-terminated C strings that outlive the call.
    result(
        unsafe {
            libc::mount(
                c"none".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        }
        .into(),
    )
}

fn reboot() -> io::Result<libc::c_long> {
    // SAFETY: with the wrong magic numbers the kernel refuses before doing anything; the test
    // asks for a restart only to see who refuses it (seccomp: EPERM before any capability check).
    result(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) }.into())
}

fn open(path: &str) -> io::Result<libc::c_long> {
    std::fs::File::open(path).map(|_| 0)
}

/// Prints the value of extended attribute `name` of `path` (not following a symlink) and
/// returns its length.
fn getxattr(path: &str, name: &str) -> io::Result<libc::c_long> {
    let (path, name) = (cstring(path)?, cstring(name)?);
    let mut value = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer is writable
    // for the length passed.
    let n = result(unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    } as libc::c_long)?;
    value.truncate(n as usize);
    println!("{}", String::from_utf8_lossy(&value));
    Ok(n)
}

fn cstring(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno_name(e: &io::Error) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EACCES, "EACCES"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::EROFS, "EROFS"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::ENXIO, "ENXIO"),
        (libc::ENODEV, "ENODEV"),
        (libc::EBUSY, "EBUSY"),
    ];
    let code = e.raw_os_error().unwrap_or(0);
    names
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("errno{code}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let outcome = match arg(0) {
        "clone3" => clone3(),
        "keyctl" => keyctl(),
        "unshare-user" => unshare_user(),
        "mount-tmpfs" => mount_tmpfs(arg(1)),
        "reboot" => reboot(),
        "open" => open(arg(1)),
        "getxattr" => getxattr(arg(1), arg(2)),
        _ => {
            eprintln!(
                "usage: moat-probe clone3|keyctl|unshare-user|mount-tmpfs DIR|reboot|open PATH|getxattr PATH NAME"
            );
            std::process::exit(2);
        }
    };
    match outcome {
        Ok(_) => println!("{} ok", arg(0)),
        Err(e) => println!("{} {}", arg(0), errno_name(&e)),
    }
}
