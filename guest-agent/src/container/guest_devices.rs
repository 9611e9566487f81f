//! `--privileged`'s devices: every device node of the guest's /dev, made in the container's
//! /dev tmpfs, as docker makes every host device in a privileged container's /dev (the device
//! filter of such a spec allows all). The spec asks with moat-spec's
//! [`GUEST_DEVICES_ANNOTATION`]; the guest's /dev is read by the agent before the clone, so
//! the container's init only makes the nodes ([`super::mounts`]).
//!
//! Left as the container's /dev has them otherwise: the mounts of their own (`pts`, `shm`,
//! `mqueue`), the `/dev/ptmx` link to `pts/ptmx`, and the console (the agent's).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use moat_spec::{GUEST_DEVICES_ALL, GUEST_DEVICES_ANNOTATION};
use oci_spec::runtime::Spec;

use super::plan::PlanError;
use super::spec::{dev_node, ContainerPlan};

/// Directories of the guest's /dev left out: mounts of their own in the container.
const SKIPPED_DIRS: [&str; 3] = ["pts", "shm", "mqueue"];

/// Nodes left out: `ptmx` is a link to `pts/ptmx` in the container, `console` is the agent's.
const SKIPPED_NODES: [&str; 2] = ["ptmx", "console"];

/// A device node of the guest's /dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDevice {
    /// Its path, absolute (`/dev/vda`, `/dev/net/tun`).
    pub path: String,
    /// `S_IFCHR` or `S_IFBLK` and the permission bits.
    pub mode: libc::mode_t,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

/// Whether `spec` asks for every device of the guest.
pub fn wanted(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(GUEST_DEVICES_ANNOTATION))
        .is_some_and(|v| v == GUEST_DEVICES_ALL)
}

/// The character and block devices under `dev` (the guest's /dev), sorted by path, named as
/// under /dev; symlinks are not followed.
pub fn scan(dev: &Path) -> io::Result<Vec<GuestDevice>> {
    let mut found = Vec::new();
    let mut pending = vec![(dev.to_owned(), String::from("/dev"))];
    while let Some((dir, name)) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{name}/{file}");
            let meta = entry.metadata()?;
            let kind = meta.file_type();
            let top = name == "/dev";
            if kind.is_dir() && !(top && SKIPPED_DIRS.contains(&file.as_str())) {
                pending.push((entry.path(), path));
            } else if (kind.is_char_device() || kind.is_block_device())
                && !(top && SKIPPED_NODES.contains(&file.as_str()))
            {
                found.push(device(path, &meta));
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn device(path: String, meta: &std::fs::Metadata) -> GuestDevice {
    let rdev = meta.rdev();
    GuestDevice {
        path,
        mode: meta.mode() & (libc::S_IFMT | 0o7777),
        major: libc::major(rdev),
        minor: libc::minor(rdev),
    }
}

/// Adds `found` to the devices of the container's /dev tmpfs (none if it has none); a path the
/// plan already makes keeps the plan's node.
pub fn add(plan: &mut ContainerPlan, found: &[GuestDevice]) -> Result<(), PlanError> {
    if !plan.mounts.iter().any(|m| m.fills_dev) {
        return Ok(());
    }
    for d in found {
        let node = dev_node(&d.path, d.mode, d.major, d.minor)?;
        if !plan.devices.iter().any(|n| n.path == node.path) {
            plan.devices.push(node);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{mounts, spec};
    use crate::syscall::mock::Recorder;

    fn privileged_spec() -> Spec {
        moat_spec::RunOptions {
            args: vec!["sh".into()],
            cwd: "/".into(),
            hostname: "box".into(),
            privileged: true,
            ..Default::default()
        }
        .to_spec()
    }

    fn guest() -> Vec<GuestDevice> {
        let node = |path: &str, mode, major, minor| GuestDevice {
            path: path.into(),
            mode,
            major,
            minor,
        };
        vec![
            node("/dev/kmsg", libc::S_IFCHR | 0o644, 1, 11),
            node("/dev/net/tun", libc::S_IFCHR | 0o666, 10, 200),
            node("/dev/null", libc::S_IFCHR | 0o666, 1, 3),
            node("/dev/vda", libc::S_IFBLK | 0o660, 254, 0),
        ]
    }

    #[test]
    fn only_privileged_specs_ask() {
        assert!(wanted(&privileged_spec()));
        assert!(!wanted(&Spec::default()));
        let mut spec = privileged_spec();
        spec.set_annotations(None);
        assert!(!wanted(&spec));
    }

    #[test]
    fn privileged_container_makes_every_guest_device() {
        let mut plan = spec::build(&privileged_spec(), &|_| false).unwrap();
        let standard = plan.devices.len();
        add(&mut plan, &guest()).unwrap();
        // /dev/null is a standard node already: made once.
        assert_eq!(plan.devices.len(), standard + 3);
        let sys = Recorder::default();
        mounts::build_root(&sys, &plan).unwrap();
        let made = sys.lines_starting("mknod ");
        let root = "/run/moat/root";
        for want in [
            format!("mknod {root}/dev/kmsg 20644 1:11"),
            format!("mknod {root}/dev/net/tun 20666 10:200"),
            format!("mknod {root}/dev/vda 60660 254:0"),
        ] {
            assert!(made.contains(&want), "{want} not in {made:#?}");
        }
        let nulls = made.iter().filter(|l| l.contains("/dev/null ")).count();
        assert_eq!(nulls, 1, "{made:#?}");
        let lines = sys.lines();
        let mkdir = lines
            .iter()
            .position(|l| l.starts_with(&format!("mkdir {root}/dev/net ")));
        let tun = lines.iter().position(|l| l.contains("/dev/net/tun"));
        assert!(mkdir.is_some() && mkdir < tun, "{lines:#?}");
        // The container's own mounts in /dev are still its own.
        for m in ["/dev/pts", "/dev/shm", "/dev/mqueue"] {
            let dests: Vec<_> = plan
                .mounts
                .iter()
                .map(|m| m.dest.to_str().unwrap())
                .collect();
            assert!(dests.contains(&m), "{m} not in {dests:?}");
        }
    }

    #[test]
    fn without_a_dev_tmpfs_nothing_is_added() {
        let mut plan = spec::build(&privileged_spec(), &|_| false).unwrap();
        plan.mounts.retain(|m| !m.fills_dev);
        plan.devices.clear();
        add(&mut plan, &guest()).unwrap();
        assert!(plan.devices.is_empty());
    }

    #[test]
    fn scan_finds_the_nodes_and_skips_the_container_mounts() {
        let found = scan(Path::new("/dev")).unwrap();
        let null = found
            .iter()
            .find(|d| d.path == "/dev/null")
            .expect("/dev/null");
        assert_eq!(
            (null.mode & libc::S_IFMT, null.major, null.minor),
            (libc::S_IFCHR, 1, 3)
        );
        for d in &found {
            assert!(d.path.starts_with("/dev/"), "{d:?}");
            let kind = d.mode & libc::S_IFMT;
            assert!(kind == libc::S_IFCHR || kind == libc::S_IFBLK, "{d:?}");
            for skipped in ["/dev/pts/", "/dev/shm/", "/dev/mqueue/"] {
                assert!(!d.path.starts_with(skipped), "{d:?}");
            }
            assert!(d.path != "/dev/ptmx" && d.path != "/dev/console", "{d:?}");
        }
        assert!(found.windows(2).all(|w| w[0].path < w[1].path));
    }
}
