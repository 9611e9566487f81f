//! The request's volumes, mounted by the agent at their mount points under
//! [`VOLUMES_DIR`] before the container is created; the spec's bind mounts take them as
//! sources.

use std::ffi::CString;
use std::io;
use std::path::Path;

use moat_protocol::{VolumeSpec, EMPTY_DIRS, SHM_DIR, VOLUMES_DIR};

use super::rootfs::FSTYPES;
use crate::syscall::Syscall;

/// Errors mounting a volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The device is not a path under /dev.
    #[error("volume device {0:?} is not a path under /dev")]
    BadDevice(String),
    /// The filesystem type is not supported.
    #[error("volume type {0:?} is not one of ext4, ext2, erofs, squashfs")]
    BadFstype(String),
    /// The mount point is not a directory directly under the volumes directory.
    #[error("volume mount point {0:?} is not a directory directly under {VOLUMES_DIR}")]
    BadMountpoint(String),
    /// An emptyDir volume's directory could not be made.
    #[error("making the emptyDir volume {dir} failed")]
    EmptyDir {
        /// The directory.
        dir: String,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
    /// A directory or mount failed.
    #[error("mounting volume {device} at {mountpoint} failed")]
    Mount {
        /// The device.
        device: String,
        /// The mount point.
        mountpoint: String,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
}

/// A validated volume: device, fstype and mount point as C strings, and its flags.
struct Volume {
    device: CString,
    fstype: CString,
    mountpoint: CString,
    flags: libc::c_ulong,
}

fn validate(v: &VolumeSpec) -> Result<Volume, VolumeError> {
    let bad_device = || VolumeError::BadDevice(v.device.clone());
    if !v.device.starts_with("/dev/") || v.device.split('/').any(|p| p == "..") {
        return Err(bad_device());
    }
    if !FSTYPES.contains(&v.fstype.as_str()) {
        return Err(VolumeError::BadFstype(v.fstype.clone()));
    }
    let bad_mountpoint = || VolumeError::BadMountpoint(v.mountpoint.clone());
    let name = v
        .mountpoint
        .strip_prefix(VOLUMES_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(bad_mountpoint)?;
    // The shared directories' mount points are the agent's own.
    let shared = [SHM_DIR, EMPTY_DIRS].contains(&v.mountpoint.as_str());
    if shared || !is_one_component(name) {
        return Err(bad_mountpoint());
    }
    let c = |s: &str, e: &dyn Fn() -> VolumeError| CString::new(s).map_err(|_| e());
    Ok(Volume {
        device: c(&v.device, &bad_device)?,
        fstype: c(&v.fstype, &|| VolumeError::BadFstype(v.fstype.clone()))?,
        mountpoint: c(&v.mountpoint, &bad_mountpoint)?,
        flags: if v.readonly { libc::MS_RDONLY } else { 0 },
    })
}

/// Whether `name` names one entry of a directory (no `/`, not `.` or `..`).
fn is_one_component(name: &str) -> bool {
    !(name.is_empty() || name.contains('/') || name == "." || name == "..")
}

/// Checks every volume of a request, before anything is mounted.
pub fn check(volumes: &[VolumeSpec]) -> Result<(), VolumeError> {
    volumes.iter().try_for_each(|v| validate(v).map(drop))
}

fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Makes the emptyDir volumes the spec's bind mounts name (`EMPTY_DIRS/<name>`, one level
/// down) that do not exist yet, mode 0777 as the kubelet makes them: the first container of
/// the pod that names one makes it, the others share it.
pub fn make_empty_dirs(spec: &oci_spec::runtime::Spec) -> Result<(), VolumeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let prefix = format!("{EMPTY_DIRS}/");
    for mount in spec.mounts().iter().flatten() {
        let Some(source) = mount.source().as_ref().and_then(|s| s.to_str()) else {
            continue;
        };
        let Some(name) = source.strip_prefix(&prefix) else {
            continue;
        };
        let failed = |error| VolumeError::EmptyDir {
            dir: source.to_owned(),
            source: error,
        };
        if !is_one_component(name) {
            return Err(failed(io::Error::from(io::ErrorKind::InvalidInput)));
        }
        let dir = Path::new(source);
        match std::fs::DirBuilder::new().mode(0o777).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
                .map_err(failed)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(())
}

/// Mounts every volume at its mount point (a [`VolumeSpec::copy`] one as a writable copy).
pub fn mount_all(sys: &dyn Syscall, volumes: &[VolumeSpec]) -> Result<(), VolumeError> {
    for v in volumes {
        let vol = validate(v)?;
        let failed = |source| VolumeError::Mount {
            device: v.device.clone(),
            mountpoint: v.mountpoint.clone(),
            source,
        };
        let dir = CString::new(VOLUMES_DIR).unwrap_or_default();
        ignore_exists(sys.mkdir(&dir, 0o755)).map_err(failed)?;
        ignore_exists(sys.mkdir(&vol.mountpoint, 0o755)).map_err(failed)?;
        match v.copy {
            true => mount_copy(sys, &vol).map_err(failed)?,
            false => sys
                .mount(
                    Some(&vol.device),
                    &vol.mountpoint,
                    Some(&vol.fstype),
                    vol.flags,
                    None,
                )
                .map_err(failed)?,
        }
    }
    Ok(())
}

/// A writable copy of the volume's files: the disk mounted read-only aside, its top-level
/// regular files copied (mode and owner kept) into a tmpfs at the mount point, the disk
/// unmounted again, so that nothing holds it (the host may swap its slot after `remove`).
fn mount_copy(sys: &dyn Syscall, vol: &Volume) -> io::Result<()> {
    let aside = CString::new(format!("{}.copy", vol.mountpoint.to_string_lossy()))?;
    ignore_exists(sys.mkdir(&aside, 0o700))?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys.mount(Some(&vol.device), &aside, Some(&vol.fstype), flags, None)?;
    let size = CString::new(format!("mode=0755,size={}", moat_protocol::COPY_VOLUME_MAX))?;
    let copied = sys
        .mount(
            Some(c"tmpfs"),
            &vol.mountpoint,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&size),
        )
        .and_then(|()| copy_files(&aside, &vol.mountpoint));
    let unmounted = sys.umount(&aside);
    copied.and(unmounted)
}

fn copy_files(from: &CString, to: &CString) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (from, to) = (Path::new(from.to_str().unwrap_or_default()), to.to_str());
    let to = Path::new(to.unwrap_or_default());
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target)?;
        std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::mock::Recorder;

    fn vol(device: &str, fstype: &str, mountpoint: &str, readonly: bool) -> VolumeSpec {
        VolumeSpec {
            device: device.into(),
            fstype: fstype.into(),
            readonly,
            mountpoint: mountpoint.into(),
            sectors: None,
            copy: false,
        }
    }

    #[test]
    fn mounts_each_volume() {
        let sys = Recorder::default();
        let vols = [
            vol("/dev/vdb", "ext4", "/run/moat-volumes/0", false),
            vol("/dev/vdc", "erofs", "/run/moat-volumes/1", true),
        ];
        mount_all(&sys, &vols).unwrap();
        let mounts = sys.lines_starting("mount");
        assert_eq!(
            mounts,
            [
                "mount /dev/vdb /run/moat-volumes/0 ext4 - -",
                "mount /dev/vdc /run/moat-volumes/1 erofs ro -"
            ]
        );
    }

    #[test]
    fn bad_volumes() {
        let bad = [
            vol("vdb", "ext4", "/run/moat-volumes/0", false),
            vol("/dev/../etc", "ext4", "/run/moat-volumes/0", false),
            vol("/dev/vdb", "nfs", "/run/moat-volumes/0", false),
            vol("/dev/vdb", "ext4", "/run/moat-volumes", false),
            vol("/dev/vdb", "ext4", "/run/moat-volumes/..", false),
            vol("/dev/vdb", "ext4", "/run/moat-volumes/a/b", false),
            vol("/dev/vdb", "ext4", "/etc", false),
        ];
        for v in bad {
            assert!(check(std::slice::from_ref(&v)).is_err(), "{v:?}");
        }
    }
}
