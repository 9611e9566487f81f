//! The snapshot mounts of a `Create` (containerd's overlay snapshotter: one overlay with the
//! image's layers as lowerdirs; the native snapshotter: a bind) mounted at the bundle's
//! `rootfs`, as runc's shim does. From there the image code takes over: an overlay root's
//! lower layers become a read-only image cached by their paths, its upper layer the container's
//! writable layer in the guest (docs/containerd.md).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustix::mount::{MountFlags, UnmountFlags};

/// One mount of a `Create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `overlay`, `bind`, `ext4`...
    pub kind: String,
    /// Its source.
    pub source: String,
    /// Its options (`ro`, `rbind`, `lowerdir=...`).
    pub options: Vec<String>,
}

/// The flags and the data string of `options`.
fn split_options(options: &[String]) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MountFlags::BIND,
            "rbind" => flags |= MountFlags::BIND | MountFlags::REC,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// The kernel's limit for a mount's data string.
const MAX_DATA: usize = 4095;

/// Mounts `mounts` in order at `<bundle>/rootfs`; the mount point if anything was mounted.
pub fn mount_all(bundle: &Path, mounts: &[Mount]) -> anyhow::Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, &target) {
            for _ in 0..i {
                let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
            }
            return Err(e);
        }
    }
    Ok(Some(target))
}

fn mount_one(m: &Mount, target: &Path) -> anyhow::Result<()> {
    let (mut flags, data) = split_options(&m.options);
    if m.kind == "bind" {
        flags |= MountFlags::BIND;
    }
    if data.len() > MAX_DATA {
        bail!(
            "the {} mount's options are {} bytes, over the kernel's {MAX_DATA} (too many layers)",
            m.kind,
            data.len()
        );
    }
    let data = CString::new(data).context("a mount option holds a NUL byte")?;
    let fstype = if m.kind == "bind" { "none" } else { &m.kind };
    rustix::mount::mount(
        m.source.as_str(),
        target,
        fstype,
        flags - MountFlags::RDONLY,
        Some(data.as_c_str()),
    )
    .with_context(|| format!("cannot mount the {} rootfs at {}", m.kind, target.display()))?;
    if flags.contains(MountFlags::BIND) && flags.contains(MountFlags::RDONLY) {
        // A bind mount takes `ro` only on a remount.
        rustix::mount::mount_remount(target, flags, c"")
            .with_context(|| format!("cannot make {} read-only", target.display()))?;
    } else if flags.contains(MountFlags::RDONLY) {
        rustix::mount::mount_remount(target, MountFlags::RDONLY, c"")
            .with_context(|| format!("cannot make {} read-only", target.display()))?;
    }
    Ok(())
}

/// Unmounts everything at `<bundle>/rootfs` (what [`mount_all`] mounted, after a crash too).
pub fn unmount_all(bundle: &Path) {
    let target = bundle.join("rootfs");
    for _ in 0..16 {
        if rustix::mount::unmount(&target, UnmountFlags::DETACH).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let options: Vec<String> = ["ro", "rbind", "index=off", "lowerdir=/a:/b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = split_options(&options);
        assert!(flags.contains(MountFlags::RDONLY | MountFlags::BIND | MountFlags::REC));
        assert_eq!(data, "index=off,lowerdir=/a:/b");
    }
}
