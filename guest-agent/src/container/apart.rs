//! A pod's later containers (docs/agent-protocol.md, "Several containers"): made from a thread
//! in a mount namespace of its own, on disks the host put into the VM's disk slots after boot
//! (docs/vmm-control.md).
//!
//! The container's root is assembled at the same paths as the first container's
//! ([`super::rootfs::ROOT`]), in a namespace where the first container's mounts there are
//! detached; the VM's writable-layer disk, mounted by the first container, stays (each
//! container has its own directory on it). The container's init takes a copy of that namespace
//! (its spec's mount namespace) and the thread's own ends with the thread, so the container's
//! mounts live exactly as long as its processes and its disks are then free for the host to
//! swap.
//!
//! The waits for a swapped disk (at `Create`) and for its release (at `Remove`) run on the
//! agent's reader thread: at most 10 s each, during which the VM's other streams wait too.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use moat_protocol::RunRequest;
use oci_spec::runtime::LinuxNamespaceType;

use super::rootfs::{is_mount_point, LOWER, ROOT, SKEL};
use super::{create, Checked, ContainerError, Created, Isolation};
use crate::reaper::Reaper;
use crate::syscall::{Linux, Syscall};

/// How long a disk the host swapped in may take to show its new size in the guest (the
/// capacity change reaches the driver through an interrupt and a work queue).
const DISK_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a removed container's disks may stay busy (its mount namespace ends with its last
/// process, and the filesystems' release follows).
const DISK_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// `_IO(0x12, 97)`: drop the block device's cached blocks.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Creates the container of `req` from a thread in a mount namespace of its own (see the
/// module's docs); as [`create`] otherwise.
pub fn create_apart(
    req: &RunRequest,
    checked: Checked,
    reaper: &Reaper,
    placed: impl FnOnce(libc::pid_t) -> Result<(), ContainerError> + Send,
) -> Result<Created, ContainerError> {
    std::thread::scope(|scope| {
        let made = std::thread::Builder::new()
            .name("create".into())
            .spawn_scoped(scope, move || {
                private_mounts(&Linux).map_err(step("a mount namespace for the container"))?;
                join_namespaces(&Linux, req)?;
                create(req, checked, Isolation::Container, reaper, placed)
            })
            .map_err(step("a thread for the container"))?;
        made.join().unwrap_or_else(|_| {
            Err(step("the container's thread")(io::Error::other(
                "it panicked",
            )))
        })
    })
}

/// This thread joins the namespaces the spec names by path (the pod's: checked when planned),
/// so that the container's init, cloned from it, is in them.
fn join_namespaces(sys: &dyn Syscall, req: &RunRequest) -> Result<(), ContainerError> {
    let namespaces = req
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref());
    for ns in namespaces.into_iter().flatten() {
        let Some(path) = ns.path() else { continue };
        let Some(nstype) = joined(ns.typ(), path) else {
            continue;
        };
        let file = std::fs::File::open(path).map_err(step("opening a namespace to join"))?;
        sys.setns(file.as_raw_fd(), nstype)
            .map_err(step("joining the pod's namespace"))?;
    }
    Ok(())
}

/// The namespace a pod's later container joins instead of a new one: `path` if it is another
/// guest process's `/proc/<pid>/ns/<kind>` of a kind that can be joined (pid, ipc, uts, net:
/// the pod's shared ones; the host maps CRI's paths to these), with its clone flag.
pub fn joined(typ: LinuxNamespaceType, path: &std::path::Path) -> Option<libc::c_int> {
    let (kind, flag) = match typ {
        LinuxNamespaceType::Pid => ("pid", libc::CLONE_NEWPID),
        LinuxNamespaceType::Ipc => ("ipc", libc::CLONE_NEWIPC),
        LinuxNamespaceType::Uts => ("uts", libc::CLONE_NEWUTS),
        LinuxNamespaceType::Network => ("net", libc::CLONE_NEWNET),
        _ => return None,
    };
    let text = path.to_str()?;
    let pid = text
        .strip_prefix("/proc/")?
        .strip_suffix(&format!("/ns/{kind}"))?;
    let valid = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    valid.then_some(flag)
}

fn step(what: &'static str) -> impl Fn(io::Error) -> ContainerError {
    move |source| ContainerError::Spawn { what, source }
}

/// This thread leaves the agent's mount namespace for a copy of it (`CLONE_FS` too: a thread
/// shares its process's filesystem context otherwise) whose mounts do not propagate, detaches
/// the first container's root there, and mounts a devpts instance of the container's own on
/// `/dev/pts`: the pty the agent opens for it (`/dev/ptmx` finds the instance at `pts` beside
/// it) and the container's `/dev/pts` (a bind of this one) are its alone.
pub fn private_mounts(sys: &dyn Syscall) -> io::Result<()> {
    sys.unshare(libc::CLONE_FS | libc::CLONE_NEWNS)?;
    sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    for dir in [ROOT, SKEL, LOWER] {
        if is_mount_point(dir) {
            sys.umount_detach(dir)?;
        }
    }
    sys.mount(
        Some(c"devpts"),
        c"/dev/pts",
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
}

/// The disks of `req` that the host swapped in (those with an expected size): the ones its
/// `Remove` frees for the host. A disk attached at boot may be the first container's too.
pub fn devices(req: &RunRequest) -> Vec<String> {
    let root = (&req.rootfs.device, req.rootfs.sectors);
    let volumes = req.volumes.iter().map(|v| (&v.device, v.sectors));
    std::iter::once(root)
        .chain(volumes)
        .filter(|(_, sectors)| sectors.is_some())
        .map(|(device, _)| device.clone())
        .collect()
}

/// The devices of `req` that the host swapped in (those with an expected size) once the guest
/// sees their size, with no block of an earlier disk cached.
pub fn ready_devices(req: &RunRequest) -> Result<(), ContainerError> {
    let root = (&req.rootfs.device, req.rootfs.sectors);
    let volumes = req.volumes.iter().map(|v| (&v.device, v.sectors));
    for (device, sectors) in std::iter::once(root).chain(volumes) {
        if let Some(sectors) = sectors {
            wait_for_size(device, sectors)?;
            let fd = open_device(device, 0).map_err(disk_error(device, "opening"))?;
            flush_buffers(&fd).map_err(disk_error(device, "dropping the cached blocks of"))?;
        }
    }
    Ok(())
}

/// Waits until none of `devices` is in use (an exclusive open succeeds), then drops their
/// cached blocks.
pub fn release_devices(devices: &[String]) -> Result<(), ContainerError> {
    for device in devices {
        let deadline = Instant::now() + DISK_RELEASE_TIMEOUT;
        let fd = loop {
            match open_device(device, libc::O_EXCL) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(disk_error(device, "releasing")(e)),
            }
        };
        flush_buffers(&fd).map_err(disk_error(device, "dropping the cached blocks of"))?;
    }
    Ok(())
}

fn disk_error<'a>(
    device: &'a str,
    what: &'static str,
) -> impl Fn(io::Error) -> ContainerError + 'a {
    move |e| ContainerError::Disk(format!("{what} {device}: {e}"))
}

fn wait_for_size(device: &str, sectors: u64) -> Result<(), ContainerError> {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    let size_file = format!("/sys/block/{name}/size");
    let deadline = Instant::now() + DISK_READY_TIMEOUT;
    let mut seen = None;
    while Instant::now() < deadline {
        seen = std::fs::read_to_string(&size_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if seen == Some(sectors) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(ContainerError::Disk(format!(
        "{device} did not become the disk the host attached: {} sectors, {} expected",
        seen.map_or("unknown".into(), |s| s.to_string()),
        sectors
    )))
}

fn open_device(device: &str, extra: libc::c_int) -> io::Result<OwnedFd> {
    let path = CString::new(device).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fd = Linux.open(&path, libc::O_RDONLY | libc::O_CLOEXEC | extra)?;
    // SAFETY: `open` just returned this descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn flush_buffers(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is a block device we hold open.
    if unsafe { libc::ioctl(fd.as_raw_fd(), BLKFLSBUF, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::mock::Recorder;

    #[test]
    fn a_private_namespace_first_whose_mounts_do_not_propagate() {
        let rec = Recorder::default();
        private_mounts(&rec).unwrap();
        let lines = rec.lines();
        assert!(lines[0].starts_with("unshare"), "{lines:?}");
        assert!(lines[1].starts_with("mount - / - "), "{lines:?}");
        assert!(lines[1].contains("private"), "{lines:?}");
        let pts = lines.last().unwrap();
        assert!(pts.starts_with("mount devpts /dev/pts devpts"), "{lines:?}");
        assert!(pts.contains("newinstance"), "{lines:?}");
    }

    #[test]
    fn devices_of_a_request() {
        let mut req = moat_protocol::RunRequest {
            id: "c".into(),
            process: 2,
            rootfs: moat_protocol::RootfsSpec {
                device: "/dev/vdc".into(),
                fstype: "ext4".into(),
                upper: moat_protocol::UpperLayer::Memory { mib: 1 },
                sectors: Some(8),
            },
            volumes: vec![],
            spec: Default::default(),
        };
        assert_eq!(devices(&req), ["/dev/vdc"]);
        let volume = |device: &str, sectors| moat_protocol::VolumeSpec {
            device: device.into(),
            fstype: "ext4".into(),
            readonly: true,
            mountpoint: "/run/moat-volumes/1".into(),
            sectors,
            copy: false,
        };
        req.volumes.push(volume("/dev/vdb", None));
        req.volumes.push(volume("/dev/vdd", Some(16)));
        assert_eq!(devices(&req), ["/dev/vdc", "/dev/vdd"]);
    }

    #[test]
    fn errors_name_the_device() {
        let err = release_devices(&["/dev/nonexistent-moat".into()]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("releasing /dev/nonexistent-moat: "),
            "{err}"
        );
    }
}
