//! Dropping everything the VMM does not need once its VM is built: inherited fds, resource
//! headroom, root, supplementary groups, capabilities (every set and the bounding set), and the
//! ability to regain privileges through exec (`no_new_privs`).

use std::io;

use rustix::process::{Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets};

/// Highest capability number tried when clearing the bounding set (`PR_CAPBSET_DROP` answers
/// `EINVAL` past the kernel's last capability).
const MAX_CAP: libc::c_ulong = 63;

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    /// uid or gid 0 was asked for.
    #[error("the jail's uid and gid must not be 0 (got {uid}:{gid})")]
    Root {
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
    },
    /// A step failed.
    #[error("cannot {0}")]
    Step(&'static str, #[source] io::Error),
    /// A check after the drop found something left.
    #[error("privileges remain after the drop: {0}")]
    Remains(&'static str),
}

/// The unprivileged ids the VMM runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
}

impl Ids {
    /// `uid:gid`, refusing root's.
    pub fn new(uid: u32, gid: u32) -> Result<Self, PrivsError> {
        if uid == 0 || gid == 0 {
            return Err(PrivsError::Root { uid, gid });
        }
        Ok(Self { uid, gid })
    }
}

fn check(what: &'static str, ret: libc::c_int) -> Result<(), PrivsError> {
    if ret == -1 {
        return Err(PrivsError::Step(what, io::Error::last_os_error()));
    }
    Ok(())
}

/// Closes every fd from 3 up (`close_range`).
///
/// # Safety
/// No live object may own one of those fds: call it first thing in `main`, before anything
/// opens a file.
pub unsafe fn close_inherited_fds() -> Result<(), PrivsError> {
    // SAFETY: close_range takes plain integers; the caller guarantees no object owns fds >= 3.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    check("close inherited fds", ret as libc::c_int)
}

/// The highest open fd below `limit`, if any.
pub fn highest_open_fd(limit: i32) -> Option<i32> {
    (0..limit).rev().find(|&fd| {
        // SAFETY: F_GETFD only reads the flags of whatever fd number is given; it neither
        // creates nor closes fds.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    })
}

/// Sets the hard and soft limits: `nofile` open files, files at most `fsize` bytes, no core
/// dumps (they would hold guest memory).
pub fn set_rlimits(nofile: u64, fsize: u64) -> Result<(), PrivsError> {
    for (resource, value, what) in [
        (Resource::Nofile, nofile, "set RLIMIT_NOFILE"),
        (Resource::Fsize, fsize, "set RLIMIT_FSIZE"),
        (Resource::Core, 0, "set RLIMIT_CORE"),
    ] {
        let limit = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        rustix::process::setrlimit(resource, limit)
            .map_err(|e| PrivsError::Step(what, e.into()))?;
    }
    Ok(())
}

/// Becomes `ids` with no supplementary groups and no capabilities at all, and sets
/// `no_new_privs`. Must run as root before any thread is started (so every thread inherits the
/// result), and is checked afterwards.
pub fn drop_privileges(ids: Ids) -> Result<(), PrivsError> {
    // SAFETY: setgroups with a zero count reads no memory.
    check("clear supplementary groups", unsafe {
        libc::setgroups(0, std::ptr::null())
    })?;
    clear_bounding_set()?;
    rustix::thread::clear_ambient_capability_set()
        .map_err(|e| PrivsError::Step("clear the ambient capabilities", e.into()))?;
    // SAFETY: plain integer arguments; glibc applies the change to every thread.
    check("set the gid", unsafe {
        libc::setresgid(ids.gid, ids.gid, ids.gid)
    })?;
    // SAFETY: as above.
    check("set the uid", unsafe {
        libc::setresuid(ids.uid, ids.uid, ids.uid)
    })?;
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, none)
        .map_err(|e| PrivsError::Step("clear the capabilities", e.into()))?;
    rustix::thread::set_no_new_privs(true)
        .map_err(|e| PrivsError::Step("set no_new_privs", e.into()))?;
    verify(ids)
}

fn clear_bounding_set() -> Result<(), PrivsError> {
    for cap in 0..=MAX_CAP {
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number and touches no memory.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(PrivsError::Step("clear the bounding set", err));
        }
    }
    Ok(())
}

/// Checks that the drop took: the ids, empty capability sets, an empty bounding set.
fn verify(ids: Ids) -> Result<(), PrivsError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the three pointers are to live local variables.
    check("read the uids", unsafe {
        libc::getresuid(&mut r, &mut e, &mut s)
    })?;
    if [r, e, s] != [ids.uid; 3] {
        return Err(PrivsError::Remains("uid"));
    }
    // SAFETY: as above.
    check("read the gids", unsafe {
        libc::getresgid(&mut r, &mut e, &mut s)
    })?;
    if [r, e, s] != [ids.gid; 3] {
        return Err(PrivsError::Remains("gid"));
    }
    let sets = rustix::thread::capabilities(None)
        .map_err(|e| PrivsError::Step("read the capabilities", e.into()))?;
    if !(sets.effective.is_empty() && sets.permitted.is_empty() && sets.inheritable.is_empty()) {
        return Err(PrivsError::Remains("capabilities"));
    }
    // SAFETY: PR_CAPBSET_READ takes an integer and touches no memory.
    if unsafe { libc::prctl(libc::PR_CAPBSET_READ, 0, 0, 0, 0) } != 0 {
        return Err(PrivsError::Remains("bounding set"));
    }
    Ok(())
}

/// Moves the calling thread (call it before any other thread starts) into a new, empty network
/// namespace: an OCI relay's, so that what a hook configures in "the container's" namespace
/// (`/proc/<relay pid>/ns/net`, as Docker's libnetwork-setkey does) never lands in the host's.
pub fn own_network_namespace() -> std::io::Result<()> {
    // SAFETY: unshare(CLONE_NEWNET) changes only which network namespace the thread's new
    // sockets belong to; no memory, descriptor or file-system state is touched.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ids_are_refused() {
        assert!(matches!(Ids::new(0, 5), Err(PrivsError::Root { .. })));
        assert!(matches!(Ids::new(5, 0), Err(PrivsError::Root { .. })));
        assert_eq!(Ids::new(5, 6).unwrap(), Ids { uid: 5, gid: 6 });
    }

    #[test]
    fn highest_fd_is_found() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert!(highest_open_fd(fd + 1) == Some(fd));
    }

    #[test]
    fn a_forked_child_drops_everything() {
        // The drop is irreversible: do it in a child process and report through the status.
        // SAFETY: the child only makes syscalls and exits; it never returns into the test
        // harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = drop_privileges(Ids::new(65534, 65534).unwrap()).is_ok()
                && rustix::thread::no_new_privs() == Ok(true)
                && set_rlimits(64, 1 << 20).is_ok();
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; status points to a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
