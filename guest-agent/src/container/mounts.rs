//! What the container's init does to build its root from a [`ContainerPlan`]: the spec's
//! mounts (each destination resolved inside the root with openat2(RESOLVE_IN_ROOT) and mounted
//! on through its descriptor, so a symlink in the image cannot point a mount outside), the
//! devices of a /dev tmpfs, the pivot into the root, the sysctls, the names, and the masked and
//! read-only paths. System calls only, on data prepared before the clone.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;

use super::child::{Failure, Stage};
use super::rootfs::ROOT;
use super::spec::{ContainerPlan, DevNode, MountKind, MountStep};
use crate::syscall::Syscall;

/// Room for "/proc/self/fd/" and any descriptor number.
const FD_PATH_LEN: usize = 32;

/// `/proc/self/fd/N`, the path a descriptor is mounted on through, formatted without
/// allocating.
struct FdPath([u8; FD_PATH_LEN]);

impl FdPath {
    fn new(fd: RawFd) -> Self {
        let mut buf = [0u8; FD_PATH_LEN];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let (mut n, mut len) = (fd.unsigned_abs(), 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[prefix.len() + i] = digits[len - 1 - i];
        }
        Self(buf)
    }

    fn as_cstr(&self) -> &CStr {
        // The buffer is zeroed past the digits, so it always holds a terminating NUL.
        CStr::from_bytes_until_nul(&self.0).unwrap_or(c"/")
    }
}

/// A descriptor closed on drop.
struct Fd<'a>(&'a dyn Syscall, RawFd);

impl Drop for Fd<'_> {
    fn drop(&mut self) {
        self.0.close(self.1);
    }
}

fn open_in<'a>(sys: &'a dyn Syscall, root: RawFd, path: &CStr) -> io::Result<Fd<'a>> {
    sys.open_in_root(root, path, libc::O_PATH)
        .map(|fd| Fd(sys, fd))
}

const KEPT_FLAGS: libc::c_ulong =
    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
const ATIME_FLAGS: libc::c_ulong =
    libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME | libc::MS_NODIRATIME;

/// Remounts the bind mount at `dest` with `flags`, keeping the flags its source mount has
/// (which a user namespace may not clear).
fn remount_bind(
    sys: &dyn Syscall,
    root: RawFd,
    dest: &CStr,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let fd = open_in(sys, root, dest)?;
    let mut kept = sys.mount_flags(fd.1)?;
    if flags & ATIME_FLAGS != 0 {
        kept &= !ATIME_FLAGS;
    }
    let target = FdPath::new(fd.1);
    let all = libc::MS_REMOUNT | libc::MS_BIND | flags | (kept & (KEPT_FLAGS | ATIME_FLAGS));
    sys.mount(None, target.as_cstr(), None, all, None)
}

/// Creates the mount point of `m` and its missing ancestors, each in its resolved parent.
fn make_mount_point(sys: &dyn Syscall, root: RawFd, m: &MountStep) -> io::Result<()> {
    for (i, step) in m.dirs.iter().enumerate() {
        match open_in(sys, root, &step.path) {
            Ok(_) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent = open_in(sys, root, &step.parent)?;
        let made = match i + 1 == m.dirs.len() && m.file {
            true => sys.create_file_at(parent.1, &step.name, 0o644),
            false => sys.mkdirat(parent.1, &step.name, 0o755),
        };
        match made {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn mount_one(sys: &dyn Syscall, root: RawFd, m: &MountStep) -> io::Result<()> {
    make_mount_point(sys, root, m)?;
    let fd = open_in(sys, root, &m.dest)?;
    let target = FdPath::new(fd.1);
    match &m.kind {
        MountKind::Fs { source, fstype } => {
            let data = m.data.as_deref();
            sys.mount(Some(source), target.as_cstr(), Some(fstype), m.flags, data)?;
        }
        MountKind::Bind { source, recursive } => {
            let rec = if *recursive { libc::MS_REC } else { 0 };
            sys.mount(
                Some(source),
                target.as_cstr(),
                None,
                libc::MS_BIND | rec,
                None,
            )?;
            if m.flags != 0 {
                remount_bind(sys, root, &m.dest, m.flags)?;
            }
        }
    }
    drop(fd);
    if m.propagation != 0 {
        let fd = open_in(sys, root, &m.dest)?;
        let target = FdPath::new(fd.1);
        sys.mount(None, target.as_cstr(), None, m.propagation, None)?;
    }
    Ok(())
}

/// Creates a device of /dev: mknod, or in a user namespace (where mknod is not allowed) an
/// empty file with the guest's node bound on it.
fn make_device(sys: &dyn Syscall, d: &DevNode, userns: bool) -> io::Result<()> {
    for dir in &d.parents {
        match sys.mkdir(dir, 0o755) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    if userns {
        sys.mknod(&d.path, libc::S_IFREG | 0o644, 0, 0)?;
        sys.mount(Some(&d.guest), &d.path, None, libc::MS_BIND, None)?;
    } else {
        sys.mknod(&d.path, d.mode, d.major, d.minor)?;
    }
    if let Some((uid, gid)) = d.owner {
        sys.chown(&d.path, uid, gid)?;
    }
    Ok(())
}

/// Fills a /dev tmpfs: devices and symlinks, with a umask of 0 for their modes.
fn fill_dev(sys: &dyn Syscall, c: &ContainerPlan) -> io::Result<()> {
    let userns = c.userns.is_some();
    sys.umask(0);
    let made = c
        .devices
        .iter()
        .try_for_each(|d| make_device(sys, d, userns))
        .and_then(|()| {
            c.dev_links
                .iter()
                .try_for_each(|(target, link)| sys.symlink(target, link))
        });
    sys.umask(0o022);
    made
}

/// Makes the mounts private (slaves for `rslave`), mounts the spec's mounts in order under
/// [`ROOT`] (filling a /dev tmpfs right after it is mounted), pivots into the root and
/// detaches the old one, then makes the root shared or unbindable if asked.
pub fn build_root(sys: &dyn Syscall, c: &ContainerPlan) -> Result<(), Failure> {
    let at = Failure::at(Stage::Root);
    // rslave keeps receiving the guest's mount events; everything else starts private.
    let first = match c.propagation & libc::MS_SLAVE {
        0 => libc::MS_PRIVATE,
        _ => libc::MS_SLAVE,
    };
    sys.mount(None, c"/", None, libc::MS_REC | first, None)
        .map_err(&at)?;
    // A mount made in this namespace: in a user namespace the copies of the agent's mounts
    // are locked, and pivot_root refuses a locked new root.
    sys.mount(Some(ROOT), ROOT, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(&at)?;
    let root = sys
        .open(ROOT, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(&at)?;
    let root = Fd(sys, root);
    for m in &c.mounts {
        mount_one(sys, root.1, m).map_err(Failure::at(Stage::Mounts))?;
        if m.fills_dev {
            fill_dev(sys, c).map_err(Failure::at(Stage::Devices))?;
        }
    }
    if c.readonly_root {
        remount_bind(sys, root.1, c"/", libc::MS_RDONLY).map_err(&at)?;
    }
    drop(root);
    pivot(sys).map_err(&at)?;
    // Shared or unbindable once pivoted (pivot_root refuses a shared parent of the new root).
    if c.propagation & (libc::MS_SHARED | libc::MS_UNBINDABLE) != 0 {
        sys.mount(None, c"/", None, c.propagation, None)
            .map_err(&at)?;
    }
    Ok(())
}

fn pivot(sys: &dyn Syscall) -> io::Result<()> {
    sys.chdir(ROOT)?;
    sys.pivot_root(c".", c".")?;
    sys.umount_detach(c".")?;
    sys.chdir(c"/")
}

/// After the pivot: the sysctls (while /proc/sys is still writable), the host and domain
/// names, then the masked and read-only paths.
pub fn finish_root(sys: &dyn Syscall, c: &ContainerPlan) -> Result<(), Failure> {
    for (path, value) in &c.sysctl {
        sys.write_file(path, value)
            .map_err(Failure::at(Stage::Sysctl))?;
    }
    let at = Failure::at(Stage::Hostname);
    if let Some(name) = &c.hostname {
        sys.sethostname(name).map_err(&at)?;
    }
    if let Some(name) = &c.domainname {
        sys.setdomainname(name).map_err(&at)?;
    }
    protect_paths(sys, c).map_err(Failure::at(Stage::Paths))
}

fn protect_paths(sys: &dyn Syscall, c: &ContainerPlan) -> io::Result<()> {
    if c.masked.is_empty() && c.readonly.is_empty() {
        return Ok(());
    }
    let root = Fd(sys, sys.open(c"/", libc::O_PATH | libc::O_DIRECTORY)?);
    for path in &c.masked {
        let Some(fd) = existing(sys, root.1, path)? else {
            continue;
        };
        let target = FdPath::new(fd.1);
        if sys.is_dir(fd.1)? {
            let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            let data = Some(c"size=0,nr_inodes=1");
            sys.mount(
                Some(c"tmpfs"),
                target.as_cstr(),
                Some(c"tmpfs"),
                flags,
                data,
            )?;
        } else {
            sys.mount(
                Some(c"/dev/null"),
                target.as_cstr(),
                None,
                libc::MS_BIND,
                None,
            )?;
        }
    }
    for path in &c.readonly {
        let Some(fd) = existing(sys, root.1, path)? else {
            continue;
        };
        let target = FdPath::new(fd.1);
        let bind = libc::MS_BIND | libc::MS_REC;
        sys.mount(Some(target.as_cstr()), target.as_cstr(), None, bind, None)?;
        drop(fd);
        remount_bind(sys, root.1, path, libc::MS_RDONLY)?;
    }
    Ok(())
}

/// Opens `path` in the root; `None` if it does not exist.
fn existing<'a>(sys: &'a dyn Syscall, root: RawFd, path: &CStr) -> io::Result<Option<Fd<'a>>> {
    match open_in(sys, root, path) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths() {
        assert_eq!(FdPath::new(0).as_cstr(), c"/proc/self/fd/0");
        assert_eq!(FdPath::new(105).as_cstr(), c"/proc/self/fd/105");
        assert_eq!(FdPath::new(i32::MAX).as_cstr(), c"/proc/self/fd/2147483647");
    }
}
