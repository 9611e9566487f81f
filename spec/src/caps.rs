//! Capability sets: docker's defaults, `--cap-add`/`--cap-drop`, and every capability.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use crate::parse::CapName;

/// Docker's default capabilities, in the bounding, effective and permitted sets of a root
/// process.
pub const DOCKER_DEFAULT: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability Linux 6.1 knows (`--privileged`, `--cap-add ALL`).
pub const ALL: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// The bounding set: docker's defaults (or all, privileged), then the adds, then the drops
/// (docker's order: a drop wins over an add of the same capability, `ALL` first).
pub fn bounding(privileged: bool, add: &[CapName], drop: &[CapName]) -> Capabilities {
    let mut set: Capabilities = if privileged {
        ALL.into_iter().collect()
    } else {
        DOCKER_DEFAULT.into_iter().collect()
    };
    for name in add {
        match name {
            CapName::All => set.extend(ALL),
            CapName::One(cap) => {
                set.insert(*cap);
            }
        }
    }
    for name in drop {
        match name {
            CapName::All => set.clear(),
            CapName::One(cap) => {
                set.remove(cap);
            }
        }
    }
    // An explicit add after `--cap-drop ALL` is docker's way to keep only a few.
    if drop.contains(&CapName::All) {
        for name in add {
            if let CapName::One(cap) = name {
                set.insert(*cap);
            }
        }
    }
    set
}

/// The process's sets: `bounding` in bounding/effective/permitted for root; for another user
/// every set is empty except that the bounding set keeps what `--cap-add` named (docker keeps its
/// whole default bounding set there, which a non-root process could only use through a setuid
/// or file-capability binary: moat leaves nothing to regain); inheritable and ambient empty.
pub fn process_caps(bounding: Capabilities, root: bool, added: &[CapName]) -> LinuxCapabilities {
    let mut caps = LinuxCapabilities::default();
    let (working, bounding) = if root {
        (bounding.clone(), bounding)
    } else {
        let kept = bounding
            .iter()
            .filter(|c| {
                added
                    .iter()
                    .any(|a| matches!(a, CapName::One(x) if x == *c))
            })
            .copied()
            .collect();
        (Capabilities::new(), kept)
    };
    caps.set_effective(Some(working.clone()));
    caps.set_permitted(Some(working));
    caps.set_bounding(Some(bounding));
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_adds_and_drops() {
        let set = bounding(false, &[], &[]);
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::NetRaw));
        let set = bounding(
            false,
            &[CapName::One(Capability::NetAdmin)],
            &[CapName::One(Capability::NetRaw)],
        );
        assert!(set.contains(&Capability::NetAdmin) && !set.contains(&Capability::NetRaw));
        let set = bounding(false, &[CapName::One(Capability::Chown)], &[CapName::All]);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [Capability::Chown]);
        assert_eq!(bounding(false, &[CapName::All], &[]).len(), ALL.len());
        assert_eq!(bounding(true, &[], &[]).len(), ALL.len());
        let set = bounding(
            false,
            &[CapName::One(Capability::Kill)],
            &[CapName::One(Capability::Kill)],
        );
        assert!(!set.contains(&Capability::Kill));
    }

    #[test]
    fn all_has_no_duplicates() {
        let set: Capabilities = ALL.into_iter().collect();
        assert_eq!(set.len(), ALL.len());
    }

    #[test]
    fn non_root_keeps_only_added_caps_in_bounding() {
        let caps = process_caps(bounding(false, &[], &[]), false, &[]);
        assert!(caps.bounding().as_ref().unwrap().is_empty());
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert!(caps.permitted().as_ref().unwrap().is_empty());
        let add = [CapName::One(Capability::NetAdmin)];
        let caps = process_caps(bounding(false, &add, &[]), false, &add);
        let kept: Vec<_> = caps.bounding().as_ref().unwrap().iter().copied().collect();
        assert_eq!(kept, [Capability::NetAdmin]);
        assert!(caps.effective().as_ref().unwrap().is_empty());
        let caps = process_caps(bounding(false, &[], &[]), true, &[]);
        assert_eq!(caps.effective().as_ref().unwrap().len(), 14);
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
    }
}
