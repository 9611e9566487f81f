//! The container's root, prepared by the agent before it forks: the image device read-only,
//! a tiny tmpfs that supplies the mount points the image may lack, and (unless the root is
//! read-only) a tmpfs upper layer, all joined by overlayfs at [`ROOT`].

use std::ffi::{CStr, CString};
use std::io;

use moat_protocol::RootfsSpec;

use crate::syscall::Syscall;

/// Where the container's root is assembled.
pub const ROOT: &CStr = c"/run/moat/root";

const BASE: &CStr = c"/run/moat";
const LOWER: &CStr = c"/run/moat/lower";
const SKEL: &CStr = c"/run/moat/skel";
const RW: &CStr = c"/run/moat/rw";
const UPPER: &CStr = c"/run/moat/rw/upper";
const WORK: &CStr = c"/run/moat/rw/work";

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

fn validate(spec: &RootfsSpec) -> Result<(CString, CString), RootfsError> {
    let bad_device = || RootfsError::BadDevice(spec.device.clone());
    if !spec.device.starts_with("/dev/") || spec.device.contains("/../") {
        return Err(bad_device());
    }
    if !FSTYPES.contains(&spec.fstype.as_str()) {
        return Err(RootfsError::BadFstype(spec.fstype.clone()));
    }
    let device = CString::new(spec.device.as_str()).map_err(|_| bad_device())?;
    let fstype = CString::new(spec.fstype.as_str()).map_err(|_| bad_device())?;
    Ok((device, fstype))
}

/// Mounts the root described by `spec` at [`ROOT`]; `owner` (the ids container root maps to
/// in a user namespace) owns the writable layer's root, so container root owns `/` (the
/// image's files keep their ids, unmapped there unless the maps cover them).
pub fn prepare(
    sys: &dyn Syscall,
    spec: &RootfsSpec,
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
    if readonly {
        let opts = c"lowerdir=/run/moat/lower:/run/moat/skel";
        sys.mount(
            Some(c"overlay"),
            ROOT,
            Some(c"overlay"),
            libc::MS_RDONLY,
            Some(opts),
        )
        .map_err(step("mounting the overlay"))?;
        return Ok(());
    }
    mkdir_p(sys, RW, 0o755).map_err(step("creating /run/moat"))?;
    let upper_opts = CString::new(format!("mode=0755,size={}m", spec.upper_mib.max(1)))
        .map_err(|_| RootfsError::BadDevice(spec.device.clone()))?;
    sys.mount(Some(c"tmpfs"), RW, Some(c"tmpfs"), 0, Some(&upper_opts))
        .map_err(step("mounting the writable layer"))?;
    for dir in [UPPER, WORK] {
        sys.mkdir(dir, 0o755)
            .map_err(step("creating the writable layer"))?;
    }
    if let Some((uid, gid)) = owner {
        sys.chown(UPPER, uid, gid)
            .map_err(step("giving the writable layer to container root"))?;
    }
    let opts =
        c"lowerdir=/run/moat/lower:/run/moat/skel,upperdir=/run/moat/rw/upper,workdir=/run/moat/rw/work";
    sys.mount(Some(c"overlay"), ROOT, Some(c"overlay"), 0, Some(opts))
        .map_err(step("mounting the overlay"))
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
            upper_mib: 64,
        }
    }

    #[test]
    fn writable_root_sequence() {
        let sys = Recorder::default();
        prepare(&sys, &spec(), false, None).unwrap();
        let mounts = sys.lines_starting("mount");
        assert_eq!(
            mounts,
            [
                "mount /dev/vda /run/moat/lower ext4 ro -",
                "mount tmpfs /run/moat/skel tmpfs - mode=0755,size=64k,nr_inodes=16",
                "mount tmpfs /run/moat/rw tmpfs - mode=0755,size=64m",
                "mount overlay /run/moat/root overlay - lowerdir=/run/moat/lower:/run/moat/skel,\
             upperdir=/run/moat/rw/upper,workdir=/run/moat/rw/work",
            ]
        );
        assert!(sys
            .lines()
            .contains(&"mkdir /run/moat/skel/proc 755".to_string()));
        assert!(!sys.lines().iter().any(|l| l.starts_with("chown")));
    }

    #[test]
    fn user_namespace_root_owns_the_writable_layer() {
        let sys = Recorder::default();
        prepare(&sys, &spec(), false, Some((100000, 100000))).unwrap();
        let lines = sys.lines();
        let chown = lines
            .iter()
            .position(|l| l == "chown /run/moat/rw/upper 100000:100000");
        let overlay = lines.iter().position(|l| l.starts_with("mount overlay"));
        assert!(chown.unwrap() < overlay.unwrap(), "{lines:?}");
    }

    #[test]
    fn readonly_root_has_no_upper_layer() {
        let sys = Recorder::default();
        prepare(&sys, &spec(), true, None).unwrap();
        let last = sys.lines().pop().unwrap();
        assert_eq!(
            last,
            "mount overlay /run/moat/root overlay ro lowerdir=/run/moat/lower:/run/moat/skel"
        );
        assert!(!sys.lines().iter().any(|l| l.contains("/run/moat/rw")));
    }

    #[test]
    fn existing_directories_are_fine_but_mount_errors_stop() {
        let sys = Recorder::failing("mkdir /run/moat ", libc::EEXIST);
        prepare(&sys, &spec(), false, None).unwrap();
        let sys = Recorder::failing("mount /dev/vda", libc::ENXIO);
        let err = prepare(&sys, &spec(), false, None).unwrap_err();
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
            prepare(&Recorder::default(), &s, false, None),
            Err(RootfsError::BadDevice(_))
        ));
        s.device = "/dev/../etc/x".into();
        assert!(matches!(
            prepare(&Recorder::default(), &s, false, None),
            Err(RootfsError::BadDevice(_))
        ));
        let mut s = spec();
        s.fstype = "ext4,upperdir=/".into();
        assert!(matches!(
            prepare(&Recorder::default(), &s, false, None),
            Err(RootfsError::BadFstype(_))
        ));
    }
}
