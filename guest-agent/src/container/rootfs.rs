//! The container's root, prepared by the agent before it forks: the image device read-only,
//! a tiny tmpfs that supplies the mount points the image may lack, and (unless the root is
//! read-only) an upper layer in the container's own directory on the VM's scratch disk (or a
//! tmpfs in the host test mode), all joined by overlayfs at [`ROOT`].

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use moat_protocol::{RootfsSpec, UpperLayer};

use crate::syscall::Syscall;

/// Where the container's root is assembled.
pub const ROOT: &CStr = c"/run/moat/root";

const BASE: &CStr = c"/run/moat";
/// Where the image is mounted, read-only.
pub(super) const LOWER: &CStr = c"/run/moat/lower";
/// The skeleton layer's tmpfs.
pub(super) const SKEL: &CStr = c"/run/moat/skel";
/// Where the writable layer's backing (scratch disk or tmpfs) is mounted.
pub const RW: &CStr = c"/run/moat/rw";
/// A read-only root's upper layer, a small tmpfs for the mount points the spec's mounts need
/// (the root is remounted read-only once they are mounted, as runc does).
const MOUNT_POINTS: &CStr = c"/run/moat/mount-points";

/// Mount points every root gets, provided by the skeleton layer under the image.
const SKEL_DIRS: [&CStr; 3] = [
    c"/run/moat/skel/proc",
    c"/run/moat/skel/sys",
    c"/run/moat/skel/dev",
];

/// Filesystem types the agent mounts images of.
pub const FSTYPES: [&str; 4] = ["ext4", "ext2", "erofs", "squashfs"];

/// Errors preparing the root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The device is not an absolute path under /dev.
    #[error("rootfs device {0:?} is not a path under /dev")]
    BadDevice(String),
    /// The filesystem type is not supported.
    #[error("rootfs type {0:?} is not one of ext4, ext2, erofs, squashfs")]
    BadFstype(String),
    /// The container id cannot name a directory.
    #[error("container id {0:?} cannot name the container's writable layer directory")]
    BadId(String),
    /// The image's /proc or /dev is a symlink, which would point the container's mounts
    /// elsewhere.
    #[error("the image's {0} is a symlink")]
    Symlink(&'static str),
    /// A mount or directory could not be made.
    #[error("preparing the root: {what} failed")]
    Step {
        /// Which step.
        what: &'static str,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
}

fn step(what: &'static str) -> impl Fn(io::Error) -> RootfsError {
    move |source| RootfsError::Step { what, source }
}

fn mkdir_p(sys: &dyn Syscall, dir: &CStr, mode: libc::mode_t) -> io::Result<()> {
    match sys.mkdir(dir, mode) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn checked_device(device: &str) -> Result<CString, RootfsError> {
    let bad_device = || RootfsError::BadDevice(device.to_owned());
    if !device.starts_with("/dev/") || device.split('/').any(|p| p == "..") {
        return Err(bad_device());
    }
    CString::new(device).map_err(|_| bad_device())
}

fn validate(spec: &RootfsSpec) -> Result<(CString, CString), RootfsError> {
    let device = checked_device(&spec.device)?;
    if let UpperLayer::Disk { device } = &spec.upper {
        checked_device(device)?;
    }
    if !FSTYPES.contains(&spec.fstype.as_str()) {
        return Err(RootfsError::BadFstype(spec.fstype.clone()));
    }
    let fstype = CString::new(spec.fstype.as_str())
        .map_err(|_| RootfsError::BadFstype(spec.fstype.clone()))?;
    Ok((device, fstype))
}

/// Mounts the root described by `spec` at [`ROOT`]; `owner` (the ids container root maps to
/// in a user namespace) owns the writable layer's root, so container root owns `/` (the
/// image's files keep their ids, unmapped there unless the maps cover them).
pub fn prepare(
    sys: &dyn Syscall,
    spec: &RootfsSpec,
    id: &str,
    readonly: bool,
    owner: Option<(u32, u32)>,
) -> Result<(), RootfsError> {
    let (device, fstype) = validate(spec)?;
    for dir in [BASE, LOWER, SKEL, ROOT] {
        mkdir_p(sys, dir, 0o755).map_err(step("creating /run/moat"))?;
    }
    sys.mount(Some(&device), LOWER, Some(&fstype), libc::MS_RDONLY, None)
        .map_err(step("mounting the image"))?;
    let skel_opts = c"mode=0755,size=64k,nr_inodes=16";
    sys.mount(Some(c"tmpfs"), SKEL, Some(c"tmpfs"), 0, Some(skel_opts))
        .map_err(step("mounting the skeleton layer"))?;
    for dir in SKEL_DIRS {
        sys.mkdir(dir, 0o755)
            .map_err(step("creating mount points"))?;
    }
    let (upper, work) = match readonly {
        true => mount_points_layer(sys)?,
        false => writable_layer(sys, spec, id)?,
    };
    if let Some((uid, gid)) = owner {
        sys.chown(&upper, uid, gid)
            .map_err(step("giving the writable layer to container root"))?;
    }
    let opts = overlay_options(&upper, &work)?;
    sys.mount(Some(c"overlay"), ROOT, Some(c"overlay"), 0, Some(&opts))
        .map_err(step("mounting the overlay"))
}

/// A read-only root's upper and work directories, on a tmpfs of their own at [`MOUNT_POINTS`].
fn mount_points_layer(sys: &dyn Syscall) -> Result<(CString, CString), RootfsError> {
    mkdir_p(sys, MOUNT_POINTS, 0o755).map_err(step("creating /run/moat"))?;
    let opts = c"mode=0755,size=1m,nr_inodes=1024";
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    sys.mount(
        Some(c"tmpfs"),
        MOUNT_POINTS,
        Some(c"tmpfs"),
        flags,
        Some(opts),
    )
    .map_err(step("mounting the mount points' layer"))?;
    let (upper, work) = (
        c"/run/moat/mount-points/upper",
        c"/run/moat/mount-points/work",
    );
    for d in [upper, work] {
        mkdir_p(sys, d, 0o755).map_err(step("creating the mount points' layer"))?;
    }
    Ok((upper.to_owned(), work.to_owned()))
}

/// Mounts the writable layer's backing at [`RW`] (once per VM for a disk; the container's
/// directory on it is its own) and makes the container's upper and work directories, or keeps
/// them as they are (a container started again keeps its writes). Returns them.
fn writable_layer(
    sys: &dyn Syscall,
    spec: &RootfsSpec,
    id: &str,
) -> Result<(CString, CString), RootfsError> {
    // The host's rule for names, again: the id goes into a path and the overlay's options.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !id.chars().all(allowed) || !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(RootfsError::BadId(id.to_owned()));
    }
    mkdir_p(sys, RW, 0o755).map_err(step("creating /run/moat"))?;
    match &spec.upper {
        UpperLayer::Disk { device } => {
            let dev = checked_device(device)?;
            // Mounted once, for the VM's first container.
            if !is_mount_point(RW) {
                let flags = libc::MS_NOSUID | libc::MS_NODEV;
                sys.mount(Some(&dev), RW, Some(c"ext4"), flags, None)
                    .map_err(step("mounting the writable layer's disk"))?;
            }
        }
        UpperLayer::Memory { mib } => {
            let opts = CString::new(format!("mode=0755,size={}m", (*mib).max(1)))
                .map_err(|_| RootfsError::BadId(id.to_owned()))?;
            sys.mount(Some(c"tmpfs"), RW, Some(c"tmpfs"), 0, Some(&opts))
                .map_err(step("mounting the writable layer"))?;
        }
    }
    let base = format!("{}/containers", RW.to_string_lossy());
    let dir = format!("{base}/{id}");
    let path = |s: String| CString::new(s).map_err(|_| RootfsError::BadId(id.to_owned()));
    let (upper, work) = (path(format!("{dir}/upper"))?, path(format!("{dir}/work"))?);
    mkdir_p(sys, &path(base)?, 0o700).map_err(step("creating the writable layer"))?;
    mkdir_p(sys, &path(dir)?, 0o700).map_err(step("creating the writable layer"))?;
    for d in [&upper, &work] {
        mkdir_p(sys, d, 0o755).map_err(step("creating the writable layer"))?;
    }
    Ok((upper, work))
}

/// Whether `dir` is a mount point: on another device than its parent.
pub(super) fn is_mount_point(dir: &CStr) -> bool {
    use std::os::unix::fs::MetadataExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    let dev = |p: &std::path::Path| std::fs::symlink_metadata(p).map(|m| m.dev()).ok();
    match (dev(path), path.parent().and_then(dev)) {
        (Some(own), Some(parent)) => own != parent,
        _ => false,
    }
}

fn overlay_options(upper: &CStr, work: &CStr) -> Result<CString, RootfsError> {
    let text = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        LOWER.to_string_lossy(),
        SKEL.to_string_lossy(),
        upper.to_string_lossy(),
        work.to_string_lossy()
    );
    CString::new(text).map_err(|_| RootfsError::BadId(String::new()))
}

/// Refuses an image whose /proc or /dev is a symlink (checked on the assembled root, before
/// any of the container's mounts).
pub fn check_pseudo_dirs() -> Result<(), RootfsError> {
    for (name, path) in [
        ("/proc", "/run/moat/root/proc"),
        ("/dev", "/run/moat/root/dev"),
    ] {
        let meta = std::fs::symlink_metadata(path).map_err(step("inspecting the root"))?;
        if meta.file_type().is_symlink() {
            return Err(RootfsError::Symlink(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::mock::Recorder;

    fn spec() -> RootfsSpec {
        RootfsSpec {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            upper: UpperLayer::Disk {
                device: "/dev/vdc".into(),
            },
            sectors: None,
        }
    }

    #[test]
    fn writable_root_sequence() {
        let sys = Recorder::default();
        prepare(&sys, &spec(), "c1", false, None).unwrap();
        let mounts = sys.lines_starting("mount");
        assert_eq!(
            mounts,
            [
                "mount /dev/vda /run/moat/lower ext4 ro -",
                "mount tmpfs /run/moat/skel tmpfs - mode=0755,size=64k,nr_inodes=16",
                "mount /dev/vdc /run/moat/rw ext4 nosuid,nodev -",
                "mount overlay /run/moat/root overlay - lowerdir=/run/moat/lower:/run/moat/skel,\
             upperdir=/run/moat/rw/containers/c1/upper,workdir=/run/moat/rw/containers/c1/work",
            ]
        );
        assert!(sys
            .lines()
            .contains(&"mkdir /run/moat/rw/containers/c1 700".to_string()));
        assert!(sys
            .lines()
            .contains(&"mkdir /run/moat/skel/proc 755".to_string()));
        assert!(!sys.lines().iter().any(|l| l.starts_with("chown")));
    }

    #[test]
    fn user_namespace_root_owns_the_writable_layer() {
        let sys = Recorder::default();
        prepare(&sys, &spec(), "c1", false, Some((100000, 100000))).unwrap();
        let lines = sys.lines();
        let chown = lines
            .iter()
            .position(|l| l == "chown /run/moat/rw/containers/c1/upper 100000:100000");
        let overlay = lines.iter().position(|l| l.starts_with("mount overlay"));
        assert!(chown.unwrap() < overlay.unwrap(), "{lines:?}");
    }

    #[test]
    fn memory_upper_layer_disk_errors_and_bad_ids() {
        let sys = Recorder::default();
        let mut s = spec();
        s.upper = UpperLayer::Memory { mib: 64 };
        prepare(&sys, &s, "c1", false, None).unwrap();
        assert!(sys
            .lines()
            .contains(&"mount tmpfs /run/moat/rw tmpfs - mode=0755,size=64m".to_string()));
        let sys = Recorder::default();
        prepare(&sys, &spec(), "c2", false, None).unwrap();
        assert!(sys
            .lines()
            .iter()
            .any(|l| l.contains("containers/c2/upper")));
        // A disk that cannot be mounted is an error, never a silent fallback.
        let sys = Recorder::failing("mount /dev/vdc", libc::EBUSY);
        assert!(matches!(
            prepare(&sys, &spec(), "c3", false, None),
            Err(RootfsError::Step { .. })
        ));
        for bad in ["", ".", "..", "a/b", "-x", "a,upperdir=/", "a:b", "a\\b"] {
            assert!(matches!(
                prepare(&Recorder::default(), &spec(), bad, false, None),
                Err(RootfsError::BadId(_))
            ));
        }
    }

    #[test]
    fn readonly_root_has_an_upper_layer_only_for_mount_points() {
        let sys = Recorder::default();
        prepare(&sys, &spec(), "c1", true, None).unwrap();
        let last = sys.lines().pop().unwrap();
        assert_eq!(
            last,
            "mount overlay /run/moat/root overlay - lowerdir=/run/moat/lower:/run/moat/skel,\
             upperdir=/run/moat/mount-points/upper,workdir=/run/moat/mount-points/work"
        );
        assert!(sys.lines().contains(
            &"mount tmpfs /run/moat/mount-points tmpfs nosuid,nodev mode=0755,size=1m,nr_inodes=1024"
                .to_string()
        ));
        assert!(!sys.lines().iter().any(|l| l.contains("/run/moat/rw")));
    }

    #[test]
    fn existing_directories_are_fine_but_mount_errors_stop() {
        let sys = Recorder::failing("mkdir /run/moat ", libc::EEXIST);
        prepare(&sys, &spec(), "c1", false, None).unwrap();
        let sys = Recorder::failing("mount /dev/vda", libc::ENXIO);
        let err = prepare(&sys, &spec(), "c1", false, None).unwrap_err();
        assert!(matches!(
            err,
            RootfsError::Step {
                what: "mounting the image",
                ..
            }
        ));
        assert!(!sys.lines().iter().any(|l| l.contains("overlay")));
    }

    #[test]
    fn bad_specs() {
        let mut s = spec();
        s.device = "vda".into();
        assert!(matches!(
            prepare(&Recorder::default(), &s, "c1", false, None),
            Err(RootfsError::BadDevice(_))
        ));
        s.device = "/dev/../etc/x".into();
        assert!(matches!(
            prepare(&Recorder::default(), &s, "c1", false, None),
            Err(RootfsError::BadDevice(_))
        ));
        let mut s = spec();
        s.fstype = "ext4,upperdir=/".into();
        assert!(matches!(
            prepare(&Recorder::default(), &s, "c1", false, None),
            Err(RootfsError::BadFstype(_))
        ));
    }
}
