use oci_spec::runtime::{Capability, Linux, LinuxDeviceType, LinuxNamespaceType};

use super::*;
use crate::parse::{parse_tmpfs, Throttle};
use crate::validate;

fn options() -> RunOptions {
    RunOptions {
        args: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        hostname: "box".into(),
        no_new_privileges: true,
        ..Default::default()
    }
}

fn mount_of<'a>(spec: &'a Spec, dst: &str) -> &'a Mount {
    let mounts = spec.mounts().as_ref().unwrap();
    mounts
        .iter()
        .find(|m| m.destination().to_str() == Some(dst))
        .expect(dst)
}

/// `linux.resources.devices`.
fn device_rules(linux: &Linux) -> &[LinuxDeviceCgroup] {
    let resources = linux.resources().as_ref().unwrap();
    resources.devices().as_deref().unwrap()
}

fn options_of(m: &Mount) -> Vec<&str> {
    m.options()
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect()
}

#[test]
fn docker_defaults() {
    let spec = options().to_spec();
    validate(&spec, None).unwrap();
    assert_eq!(spec.version(), OCI_VERSION);
    assert_eq!(spec.hostname().as_deref(), Some("box"));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(true));
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert_eq!(caps.effective(), caps.bounding());
    let linux = spec.linux().as_ref().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert_eq!(ns.len(), 6);
    assert!(!ns.contains(&LinuxNamespaceType::User));
    assert!(linux.uid_mappings().is_none());
    assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 11);
    assert_eq!(linux.readonly_paths().as_ref().unwrap().len(), 5);
    assert!(linux.seccomp().is_none());
    assert!(options_of(mount_of(&spec, "/sys")).contains(&"ro"));
    assert_eq!(
        mount_of(&spec, "/sys/fs/cgroup").typ().as_deref(),
        Some("cgroup2")
    );
    for dst in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"] {
        mount_of(&spec, dst);
    }
    let rules = device_rules(linux);
    assert!(!rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A));
    let allowed: Vec<_> = rules[1..]
        .iter()
        .map(|r| {
            (
                r.typ().unwrap().as_str().to_owned(),
                r.major(),
                r.minor(),
                r.access().clone().unwrap(),
            )
        })
        .collect();
    assert!(allowed.contains(&("c".into(), Some(1), Some(3), "rwm".into())));
    assert!(allowed.contains(&("c".into(), Some(136), None, "rwm".into())));
    assert!(allowed.contains(&("b".into(), None, None, "m".into())));
    assert_eq!(allowed.len(), 12);
    assert!(linux.resources().as_ref().unwrap().memory().is_none());
}

#[test]
fn non_root_user_has_no_caps_at_all() {
    let spec = RunOptions {
        user: (1000, 1000),
        ..options()
    }
    .to_spec();
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
    let caps = process.capabilities().as_ref().unwrap();
    assert!(caps.effective().as_ref().unwrap().is_empty());
    assert!(caps.permitted().as_ref().unwrap().is_empty());
    assert!(caps.bounding().as_ref().unwrap().is_empty());
}

#[test]
fn privileged() {
    let seccomp = oci_spec::runtime::LinuxSeccomp::default();
    let spec = RunOptions {
        privileged: true,
        seccomp: Some(seccomp),
        ..options()
    }
    .to_spec();
    validate(&spec, None).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.seccomp().is_none());
    assert!(linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
    let rules = device_rules(linux);
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
    let annotations = spec.annotations().clone().unwrap();
    assert_eq!(
        annotations
            .get(GUEST_DEVICES_ANNOTATION)
            .map(String::as_str),
        Some(GUEST_DEVICES_ALL)
    );
    assert!(options().to_spec().annotations().is_none());
    let named = RunOptions {
        user_spec: Some("user:users".into()),
        ..options()
    };
    let annotations = named.to_spec().annotations().clone().unwrap();
    assert_eq!(
        annotations.get(USER_ANNOTATION).map(String::as_str),
        Some("user:users")
    );
    assert_eq!(annotations.len(), 1);
    assert!(options_of(mount_of(&spec, "/sys")).contains(&"rw"));
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert!(caps
        .effective()
        .as_ref()
        .unwrap()
        .contains(&Capability::SysAdmin));
}

#[test]
fn userns_remap() {
    let spec = RunOptions {
        userns: true,
        ..options()
    }
    .to_spec();
    validate(&spec, None).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let map = &linux.uid_mappings().as_ref().unwrap()[0];
    assert_eq!(
        (map.container_id(), map.host_id(), map.size()),
        (0, 100_000, 65_536)
    );
    assert_eq!(linux.gid_mappings(), linux.uid_mappings());
    let ns = linux.namespaces().as_ref().unwrap();
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
}

#[test]
fn mounts_devices_limits_and_the_rest() {
    let opts = RunOptions {
        read_only: true,
        tmpfs: vec![parse_tmpfs("/run:size=1m").unwrap()],
        binds: vec![BindMount {
            source: "/run/moat-volumes/0".into(),
            destination: "/data".into(),
            readonly: true,
        }],
        devices: vec![Device {
            path: "/dev/fuse".into(),
            block: false,
            major: 10,
            minor: 229,
            file_mode: 0o666,
            access: "rw".into(),
        }],
        sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
        ulimits: vec![crate::parse::parse_ulimit("nofile=10:20").unwrap()],
        no_new_privileges: false,
        limits: Limits {
            memory: Some(64 << 20),
            pids_limit: Some(10),
            read_bps: vec![Throttle {
                major: 254,
                minor: 16,
                rate: 1,
            }],
            ..Default::default()
        },
        ..options()
    };
    let spec = opts.to_spec();
    validate(&spec, None).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        options_of(mount_of(&spec, "/run")),
        ["nosuid", "noexec", "nodev", "size=1m"]
    );
    let data = mount_of(&spec, "/data");
    assert_eq!(options_of(data), ["rbind", "ro"]);
    assert_eq!(
        data.source().as_ref().unwrap().to_str(),
        Some("/run/moat-volumes/0")
    );
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.no_new_privileges(), Some(false));
    assert_eq!(process.rlimits().as_ref().unwrap().len(), 1);
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.devices().as_ref().unwrap()[0].major(), 10);
    let rules = device_rules(linux);
    let last = rules.last().unwrap();
    assert_eq!(
        (last.major(), last.minor(), last.access().as_deref()),
        (Some(10), Some(229), Some("rw"))
    );
    assert_eq!(linux.sysctl().as_ref().unwrap()["net.ipv4.ip_forward"], "1");
    let resources = linux.resources().as_ref().unwrap();
    assert_eq!(resources.pids().unwrap().limit(), 10);
    assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
    assert!(resources.block_io().is_some());
}

#[test]
fn spec_round_trips_through_json() {
    let spec = RunOptions {
        userns: true,
        ..options()
    }
    .to_spec();
    let text = serde_json::to_string(&spec).unwrap();
    let back = crate::bundle::parse_spec(&text).unwrap();
    assert_eq!(back, spec);
}
