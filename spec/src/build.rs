//! [`RunOptions`] (what `moat run` was asked) → an OCI runtime spec with docker's defaults.

use std::collections::HashMap;

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxIdMapping, LinuxIdMappingBuilder,
    LinuxNamespace, LinuxNamespaceType, LinuxResources, LinuxSeccomp, Mount, PosixRlimit, Process,
    Root, Spec, User,
};

use crate::caps;
use crate::parse::{CapName, TmpfsArg};
use crate::resources::Limits;

/// The OCI version the specs made here declare.
pub const OCI_VERSION: &str = "1.2.0";

/// Guest id where container id 0 lands with `--userns remap`.
pub const USERNS_HOST_BASE: u32 = 100_000;

/// Ids mapped with `--userns remap`: container 0..65536.
pub const USERNS_SIZE: u32 = 65_536;

/// The annotation that asks the agent for every device node of the guest's /dev in the
/// container (`--privileged`: docker gives a privileged container every host device; moat's
/// container gets its VM's), with the value [`GUEST_DEVICES_ALL`].
pub const GUEST_DEVICES_ANNOTATION: &str = "org.moat.guest-devices";

/// The annotation with the user the process runs as, unresolved (`user`, `user:group`, `uid`,
/// `uid:gid`, `user:gid`, `uid:group`; empty for root): the agent resolves it against the
/// container's own `/etc/passwd` and `/etc/group` and sets `process.user` and `HOME` from it
/// (docs/agent-protocol.md, docs/container-stack.md).
pub const USER_ANNOTATION: &str = "org.moat.user";

/// The value of [`GUEST_DEVICES_ANNOTATION`]: all of them.
pub const GUEST_DEVICES_ALL: &str = "all";

/// Docker's masked paths (unreadable in the container).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A bind mount of a guest path (a volume's mountpoint) into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Guest path, e.g. `/run/moat-volumes/0`.
    pub source: String,
    /// Path in the container.
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
}

/// A device node made in the container's /dev (`--device`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Path in the container.
    pub path: String,
    /// Block (`true`) or character device.
    pub block: bool,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// Permission bits of the node.
    pub file_mode: u32,
    /// Cgroup access, a subset of `rwm`.
    pub access: String,
}

/// What `moat run` was asked for, with every value already parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// (uid, gid): the ids, or where the user is a name (0, 0), for which the capabilities
    /// are made; the agent replaces them with [`RunOptions::user_spec`]'s.
    pub user: (u32, u32),
    /// The user as given, unresolved, sent in [`USER_ANNOTATION`] (`None`: not sent).
    pub user_spec: Option<String>,
    /// Run on a terminal.
    pub terminal: bool,
    /// Hostname.
    pub hostname: String,
    /// `--read-only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `--privileged`: every capability and every device of the guest, no seccomp, no masked
    /// paths, /sys writable.
    pub privileged: bool,
    /// `--cap-add`.
    pub cap_add: Vec<CapName>,
    /// `--cap-drop`.
    pub cap_drop: Vec<CapName>,
    /// `no_new_privileges` (docker's default here: true).
    pub no_new_privileges: bool,
    /// The seccomp filter, made by the caller (`None`: unconfined).
    pub seccomp: Option<LinuxSeccomp>,
    /// `--userns remap`: a user namespace with container 0..65536 → guest 100000..165536.
    pub userns: bool,
    /// `--tmpfs`.
    pub tmpfs: Vec<TmpfsArg>,
    /// Volumes' bind mounts.
    pub binds: Vec<BindMount>,
    /// `--device`.
    pub devices: Vec<Device>,
    /// `--sysctl`.
    pub sysctls: Vec<(String, String)>,
    /// `--ulimit`.
    pub ulimits: Vec<PosixRlimit>,
    /// Cgroup limits.
    pub limits: Limits,
}

impl RunOptions {
    /// The OCI runtime spec for these options (check it with [`crate::validate`]).
    pub fn to_spec(&self) -> Spec {
        let mut spec = Spec::default();
        spec.set_version(OCI_VERSION.into());
        let mut root = Root::default();
        root.set_path("rootfs".into());
        root.set_readonly(Some(self.read_only));
        spec.set_root(Some(root));
        spec.set_hostname(Some(self.hostname.clone()));
        spec.set_domainname(None);
        spec.set_process(Some(self.process()));
        spec.set_mounts(Some(self.mounts()));
        spec.set_hooks(None);
        spec.set_annotations(self.annotations());
        spec.set_linux(Some(self.linux()));
        spec
    }

    fn annotations(&self) -> Option<HashMap<String, String>> {
        let mut annotations = HashMap::new();
        if self.privileged {
            annotations.insert(GUEST_DEVICES_ANNOTATION.into(), GUEST_DEVICES_ALL.into());
        }
        if let Some(user) = &self.user_spec {
            annotations.insert(USER_ANNOTATION.into(), user.clone());
        }
        (!annotations.is_empty()).then_some(annotations)
    }

    fn process(&self) -> Process {
        let mut process = Process::default();
        process.set_terminal(Some(self.terminal));
        process.set_console_size(None);
        process.set_args(Some(self.args.clone()));
        process.set_env(Some(self.env.clone()));
        process.set_cwd(self.cwd.clone().into());
        let mut user = User::default();
        user.set_uid(self.user.0);
        user.set_gid(self.user.1);
        process.set_user(user);
        let bounding = caps::bounding(self.privileged, &self.cap_add, &self.cap_drop);
        process.set_capabilities(Some(caps::process_caps(
            bounding,
            self.user.0 == 0,
            &self.cap_add,
        )));
        process.set_rlimits((!self.ulimits.is_empty()).then(|| self.ulimits.clone()));
        process.set_no_new_privileges(Some(self.no_new_privileges));
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
        process.set_oom_score_adj(None);
        process
    }

    fn mounts(&self) -> Vec<Mount> {
        let sys = if self.privileged { "rw" } else { "ro" };
        let mut mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", sys],
            ),
            mount(
                "/sys/fs/cgroup",
                "cgroup2",
                "cgroup2",
                &["nosuid", "noexec", "nodev", "relatime", sys],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
            ),
        ];
        for tmpfs in &self.tmpfs {
            let mut options = vec!["nosuid", "noexec", "nodev"];
            options.extend(tmpfs.options.iter().map(String::as_str));
            mounts.push(mount(&tmpfs.destination, "tmpfs", "tmpfs", &options));
        }
        for bind in &self.binds {
            let mode = if bind.readonly { "ro" } else { "rw" };
            let mut m = mount(&bind.destination, "bind", &bind.source, &["rbind", mode]);
            m.set_typ(None);
            mounts.push(m);
        }
        mounts
    }

    fn linux(&self) -> oci_spec::runtime::Linux {
        let mut linux = oci_spec::runtime::Linux::default();
        linux.set_namespaces(Some(self.namespaces()));
        if self.userns {
            linux.set_uid_mappings(Some(vec![userns_map()]));
            linux.set_gid_mappings(Some(vec![userns_map()]));
        }
        let (masked, readonly): (&[&str], &[&str]) = if self.privileged {
            (&[], &[])
        } else {
            (&MASKED_PATHS, &READONLY_PATHS)
        };
        linux.set_masked_paths(Some(masked.iter().map(|p| p.to_string()).collect()));
        linux.set_readonly_paths(Some(readonly.iter().map(|p| p.to_string()).collect()));
        let devices = self.devices.iter().map(linux_device).collect();
        linux.set_devices(Some(devices));
        let sysctl: HashMap<String, String> = self.sysctls.iter().cloned().collect();
        linux.set_sysctl((!sysctl.is_empty()).then_some(sysctl));
        let mut resources = LinuxResources::default();
        resources.set_devices(Some(self.device_rules()));
        self.limits.apply(&mut resources);
        linux.set_resources(Some(resources));
        linux.set_seccomp(self.seccomp.clone().filter(|_| !self.privileged));
        linux
    }

    fn namespaces(&self) -> Vec<LinuxNamespace> {
        let mut types = vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Cgroup,
        ];
        if self.userns {
            types.push(LinuxNamespaceType::User);
        }
        types
            .into_iter()
            .map(|typ| {
                let mut ns = LinuxNamespace::default();
                ns.set_typ(typ);
                ns
            })
            .collect()
    }

    /// Docker's device cgroup: the standard rules, mknod of any node, tun, then `--device`s.
    fn device_rules(&self) -> Vec<LinuxDeviceCgroup> {
        if self.privileged {
            return vec![device_rule(true, None, None, None, "rwm")];
        }
        use LinuxDeviceType::{B, C};
        let mut rules = standard_device_rules();
        rules.push(device_rule(true, Some(C), None, None, "m"));
        rules.push(device_rule(true, Some(B), None, None, "m"));
        rules.push(device_rule(true, Some(C), Some(10), Some(200), "rwm"));
        for d in &self.devices {
            let typ = if d.block { B } else { C };
            rules.push(device_rule(
                true,
                Some(typ),
                Some(d.major),
                Some(d.minor),
                &d.access,
            ));
        }
        rules
    }
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(typ.into()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn userns_map() -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(USERNS_HOST_BASE)
        .size(USERNS_SIZE)
        .build()
        .expect("every field is set")
}

fn linux_device(d: &Device) -> LinuxDevice {
    let mut dev = LinuxDevice::default();
    dev.set_path(d.path.clone().into());
    dev.set_typ(if d.block {
        LinuxDeviceType::B
    } else {
        LinuxDeviceType::C
    });
    dev.set_major(d.major);
    dev.set_minor(d.minor);
    dev.set_file_mode(Some(d.file_mode));
    dev.set_uid(Some(0));
    dev.set_gid(Some(0));
    dev
}

/// runc's default device rules (what a spec without any gets in the guest): deny everything
/// but null, zero, full, random, urandom, tty, console, ptmx and the ptys.
pub fn standard_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::C;
    let mut rules = vec![device_rule(false, None, None, None, "rwm")];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(device_rule(true, Some(C), Some(major), Some(minor), "rwm"));
    }
    rules.push(device_rule(true, Some(C), Some(136), None, "rwm"));
    rules
}

/// One device cgroup rule; no `typ` means all (`a`).
pub fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(typ.unwrap_or(LinuxDeviceType::A)));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.into()));
    r
}

#[cfg(test)]
#[path = "build_tests.rs"]
mod tests;
