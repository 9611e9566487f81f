//! The container half of an OCI spec (`linux.*`, `mounts`, `hostname`, `domainname`) turned
//! into a [`ContainerPlan`]: validated, every path and string converted before the clone, so
//! the container's init does not allocate. Fields the agent cannot honour are refused with
//! the field's name.

use std::ffi::CString;

use moat_protocol::VOLUMES_DIR;
use oci_spec::runtime::{Linux, LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, Spec};

use super::mountopts::{self, MountOptions};
use super::plan::PlanError;
use super::rootfs::ROOT;

/// Longest hostname (and domain name) Linux accepts.
const MAX_HOSTNAME: usize = 64;

/// One step of creating a missing mount point: `path` is made in `parent` as `name`.
#[derive(Debug, Clone)]
pub struct PathStep {
    /// The path, absolute in the container.
    pub path: CString,
    /// Its parent.
    pub parent: CString,
    /// Its last component.
    pub name: CString,
}

/// What is mounted.
#[derive(Debug, Clone)]
pub enum MountKind {
    /// A new filesystem instance.
    Fs {
        /// The source (a name for pseudo filesystems).
        source: CString,
        /// The filesystem type.
        fstype: CString,
    },
    /// A bind mount of a guest path (a volume, or the guest's /dev/pts).
    Bind {
        /// The guest path.
        source: CString,
        /// rbind.
        recursive: bool,
    },
}

/// One mount of the spec, in the container.
#[derive(Debug, Clone)]
pub struct MountStep {
    /// What.
    pub kind: MountKind,
    /// Destination, absolute in the container.
    pub dest: CString,
    /// The mount point and its missing ancestors, outermost first.
    pub dirs: Vec<PathStep>,
    /// The mount point is a file (a bind of a file).
    pub file: bool,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Propagation flags applied after the mount, 0 for none.
    pub propagation: libc::c_ulong,
    /// The filesystem's data string.
    pub data: Option<CString>,
    /// A tmpfs on /dev: the devices are created in it right after.
    pub fills_dev: bool,
}

/// A device node of the container's /dev.
#[derive(Debug, Clone)]
pub struct DevNode {
    /// Path before the pivot (under [`ROOT`]).
    pub path: CString,
    /// The guest's node bound instead of mknod in a user namespace.
    pub guest: CString,
    /// Mode with the file type bits.
    pub mode: libc::mode_t,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Owner, if not root.
    pub owner: Option<(u32, u32)>,
    /// Directories between /dev and the node, created first (under [`ROOT`]).
    pub parents: Vec<CString>,
}

/// User namespace id maps, written by the agent into /proc/PID/{uid,gid}_map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// uid_map contents.
    pub uid_map: String,
    /// gid_map contents.
    pub gid_map: String,
    /// The host (guest) uid and gid container root maps to: the writable layer's owner.
    pub root: (u32, u32),
}

/// Everything the container's init sets up.
#[derive(Debug, Clone, Default)]
pub struct ContainerPlan {
    /// Namespace flags of the clone (pid, mount, and uts, ipc, net, user as asked).
    pub clone_flags: libc::c_ulong,
    /// unshare(CLONE_NEWCGROUP) after the agent moved the init into its cgroup.
    pub cgroupns: bool,
    /// User namespace maps.
    pub userns: Option<IdMaps>,
    /// The propagation of `/` in the container (`linux.rootfsPropagation`), 0 for none.
    pub propagation: libc::c_ulong,
    /// The mounts, in order.
    pub mounts: Vec<MountStep>,
    /// `root.readonly`: the root is remounted read-only once the mounts are in.
    pub readonly_root: bool,
    /// Devices created in a /dev tmpfs.
    pub devices: Vec<DevNode>,
    /// Symlinks of a /dev tmpfs: (target, link under [`ROOT`]).
    pub dev_links: Vec<(CString, CString)>,
    /// (path under /proc/sys, value).
    pub sysctl: Vec<(CString, Vec<u8>)>,
    /// Hostname.
    pub hostname: Option<Vec<u8>>,
    /// Domain name.
    pub domainname: Option<Vec<u8>>,
    /// `linux.maskedPaths`.
    pub masked: Vec<CString>,
    /// `linux.readonlyPaths`.
    pub readonly: Vec<CString>,
}

fn refuse(field: impl Into<String>, why: impl Into<String>) -> PlanError {
    PlanError::Field {
        field: field.into(),
        why: why.into(),
    }
}

fn cstring(s: &str, field: &str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| refuse(field, "contains a nul byte"))
}

/// Checks an absolute path inside the container: no `..`, not `/` itself.
fn clean_path(path: &str, field: &str) -> Result<String, PlanError> {
    if !path.starts_with('/') {
        return Err(refuse(field, format!("{path:?} is not absolute")));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(refuse(field, format!("{path:?} contains \"..\"")));
    }
    if parts.is_empty() {
        return Err(refuse(field, "the root itself"));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The steps creating `path` (clean, absolute) component by component.
fn path_steps(path: &str, field: &str) -> Result<Vec<PathStep>, PlanError> {
    let mut steps = Vec::new();
    let mut parent = String::from("/");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let full = match parent.as_str() {
            "/" => format!("/{part}"),
            p => format!("{p}/{part}"),
        };
        steps.push(PathStep {
            path: cstring(&full, field)?,
            parent: cstring(&parent, field)?,
            name: cstring(part, field)?,
        });
        parent = full;
    }
    Ok(steps)
}

/// The namespace flags of `linux.namespaces` (a joined one's counts as present but is not
/// cloned: the caller joins it first), whether a cgroup namespace is asked for, and the flags
/// of the joined ones.
fn namespaces(linux: &Linux) -> Result<(libc::c_ulong, bool, libc::c_ulong), PlanError> {
    let field = "linux.namespaces";
    let mut flags = 0;
    let mut present = 0;
    let mut cgroup = false;
    for ns in linux.namespaces().iter().flatten() {
        if let Some(path) = ns.path() {
            let flag = super::apart::joined(ns.typ(), path).ok_or_else(|| {
                refuse(
                    field,
                    format!(
                        "{}: only a pod's pid, ipc, uts or network namespace can be joined",
                        path.display()
                    ),
                )
            })?;
            present |= flag;
            continue;
        }
        flags |= match ns.typ() {
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            LinuxNamespaceType::Cgroup => {
                cgroup = true;
                0
            }
            LinuxNamespaceType::Time => return Err(refuse(field, "time is not supported")),
        };
    }
    for (bit, name) in [(libc::CLONE_NEWPID, "pid"), (libc::CLONE_NEWNS, "mount")] {
        if (flags | present) & bit == 0 {
            return Err(refuse(field, format!("a {name} namespace is required")));
        }
    }
    Ok((flags as libc::c_ulong, cgroup, present as libc::c_ulong))
}

fn id_map(maps: &Option<Vec<LinuxIdMapping>>, field: &str) -> Result<(String, u32), PlanError> {
    let maps = maps.as_deref().unwrap_or_default();
    if maps.is_empty() {
        return Err(refuse(field, "a user namespace needs mappings"));
    }
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let root = maps
        .iter()
        .find(|m| m.container_id() == 0 && m.size() > 0)
        .map(|m| m.host_id())
        .ok_or_else(|| refuse(field, "container root (id 0) is not mapped"))?;
    Ok((text, root))
}

fn user_namespace(linux: &Linux, flags: libc::c_ulong) -> Result<Option<IdMaps>, PlanError> {
    let has_maps = linux.uid_mappings().is_some() || linux.gid_mappings().is_some();
    if flags & libc::CLONE_NEWUSER as libc::c_ulong == 0 {
        if has_maps {
            return Err(refuse(
                "linux.uidMappings",
                "mappings without a user namespace",
            ));
        }
        return Ok(None);
    }
    let (uid_map, uid) = id_map(linux.uid_mappings(), "linux.uidMappings")?;
    let (gid_map, gid) = id_map(linux.gid_mappings(), "linux.gidMappings")?;
    Ok(Some(IdMaps {
        uid_map,
        gid_map,
        root: (uid, gid),
    }))
}

fn refuse_unsupported(linux: &Linux) -> Result<(), PlanError> {
    let fields = [
        ("linux.mountLabel", linux.mount_label().is_some()),
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.personality", linux.personality().is_some()),
        ("linux.timeOffsets", linux.time_offsets().is_some()),
        ("linux.netDevices", linux.net_devices().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
    ];
    match fields.iter().find(|f| f.1) {
        Some((field, _)) => Err(refuse(*field, "not supported")),
        None => Ok(()),
    }
}

fn name(value: &Option<String>, field: &str, uts: bool) -> Result<Option<Vec<u8>>, PlanError> {
    match value.as_deref() {
        None => Ok(None),
        Some(_) if !uts => Err(refuse(field, "needs a uts namespace")),
        Some(h) if h.is_empty() || h.len() > MAX_HOSTNAME => {
            Err(refuse(field, format!("must be 1 to {MAX_HOSTNAME} bytes")))
        }
        Some(h) => Ok(Some(cstring(h, field)?.into_bytes())),
    }
}

/// Builds the plan of `spec`; `is_file` tells whether a bind source is a file.
pub fn build(spec: &Spec, is_file: &dyn Fn(&str) -> bool) -> Result<ContainerPlan, PlanError> {
    let default = Linux::default();
    let linux = spec.linux().as_ref().unwrap_or(&default);
    refuse_unsupported(linux)?;
    let (clone_flags, cgroupns, joined) = match spec.linux() {
        Some(l) => namespaces(l)?,
        None => {
            return Err(refuse(
                "linux.namespaces",
                "pid and mount namespaces are required",
            ))
        }
    };
    let has = |bit: libc::c_int| clone_flags & bit as libc::c_ulong != 0;
    // A hostname is set in a joined uts namespace too, as runc sets it.
    let uts = (clone_flags | joined) & libc::CLONE_NEWUTS as libc::c_ulong != 0;
    let userns = user_namespace(linux, clone_flags)?;
    let propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => 0,
        Some(p) => mountopts::root_propagation(p)
            .ok_or_else(|| refuse("linux.rootfsPropagation", format!("unknown value {p:?}")))?,
    };
    let mut plan = ContainerPlan {
        clone_flags: clone_flags | libc::SIGCHLD as libc::c_ulong,
        cgroupns,
        propagation,
        readonly_root: spec
            .root()
            .as_ref()
            .is_some_and(|r| r.readonly() == Some(true)),
        hostname: name(spec.hostname(), "hostname", uts)?,
        domainname: name(spec.domainname(), "domainname", uts)?,
        ..ContainerPlan::default()
    };
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(refuse(field, "id-mapped mounts are not supported"));
        }
        let dest = m.destination().to_string_lossy();
        let opts = mountopts::parse(m.options().as_deref().unwrap_or_default());
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned());
        let step = mount_step(&field, &dest, m.typ().as_deref(), source, opts, is_file)?;
        plan.mounts.push(step);
    }
    let fills_dev = plan.mounts.iter().any(|m| m.fills_dev);
    plan.devices = devices(linux, fills_dev)?;
    if fills_dev {
        plan.dev_links = DEV_LINKS
            .iter()
            .map(|(t, l)| {
                Ok((
                    cstring(t, "/dev")?,
                    cstring(&format!("{}{l}", root()), "/dev")?,
                ))
            })
            .collect::<Result<_, PlanError>>()?;
    }
    plan.sysctl = sysctls(
        linux,
        has(libc::CLONE_NEWNET),
        has(libc::CLONE_NEWUTS),
        has(libc::CLONE_NEWIPC),
    )?;
    plan.masked = paths(linux.masked_paths(), "linux.maskedPaths")?;
    plan.readonly = paths(linux.readonly_paths(), "linux.readonlyPaths")?;
    plan.userns = userns;
    Ok(plan)
}

fn root() -> &'static str {
    ROOT.to_str().unwrap_or("/run/moat/root")
}

fn paths(list: &Option<Vec<String>>, field: &str) -> Result<Vec<CString>, PlanError> {
    list.iter()
        .flatten()
        .map(|p| cstring(&clean_path(p, field)?, field))
        .collect()
}

/// Symlinks of a /dev tmpfs: (target, link).
const DEV_LINKS: [(&str, &str); 5] = [
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// The character devices every /dev tmpfs gets: (name, major, minor).
const DEFAULT_DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The container's node at `path` (absolute, under /dev); in a user namespace the guest's node
/// of the same path is bound there.
pub(super) fn dev_node(
    path: &str,
    mode: libc::mode_t,
    major: u32,
    minor: u32,
) -> Result<DevNode, PlanError> {
    let field = "linux.devices";
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let parents = (2..parts.len())
        .map(|n| cstring(&format!("{}/{}", root(), parts[..n].join("/")), field))
        .collect::<Result<_, _>>()?;
    Ok(DevNode {
        parents,
        path: cstring(&format!("{}{path}", root()), field)?,
        guest: cstring(path, field)?,
        mode,
        major,
        minor,
        owner: None,
    })
}

fn devices(linux: &Linux, fills_dev: bool) -> Result<Vec<DevNode>, PlanError> {
    let field = "linux.devices";
    let listed = linux.devices().as_deref().unwrap_or_default();
    if !fills_dev {
        if !listed.is_empty() {
            return Err(refuse(field, "needs a tmpfs mounted on /dev"));
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = format!("/dev/{name}");
        if !listed.iter().any(|d| d.path().to_string_lossy() == path) {
            out.push(dev_node(&path, libc::S_IFCHR | 0o666, major, minor)?);
        }
    }
    for d in listed {
        let path = clean_path(&d.path().to_string_lossy(), field)?;
        if !path.starts_with("/dev/") || path.starts_with("/dev/pts/") {
            return Err(refuse(field, format!("{path:?} is not under /dev")));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => return Err(refuse(field, "type \"a\" is not a node")),
        };
        let number = |v: i64| u32::try_from(v).map_err(|_| refuse(field, "bad major/minor"));
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        let (major, minor) = (number(d.major())?, number(d.minor())?);
        let mut node = dev_node(&path, kind | mode, major, minor)?;
        // In a user namespace the node is the guest's bound in: find it by its numbers (the
        // container's path may be another name).
        if let Some(guest) = guest_node(kind, major, minor) {
            node.guest = cstring(&guest, field)?;
        }
        if d.uid().is_some() || d.gid().is_some() {
            node.owner = Some((d.uid().unwrap_or(0), d.gid().unwrap_or(0)));
        }
        out.push(node);
    }
    Ok(out)
}

/// The guest's /dev path of the device `major:minor` (sysfs `uevent`'s DEVNAME), if it has one.
fn guest_node(kind: libc::mode_t, major: u32, minor: u32) -> Option<String> {
    let class = match kind {
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        _ => return None,
    };
    let uevent =
        std::fs::read_to_string(format!("/sys/dev/{class}/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    (!name.contains("..")).then(|| format!("/dev/{name}"))
}

/// Checks a sysctl key is namespaced in the namespaces the container has.
fn sysctl_allowed(key: &str, net: bool, uts: bool, ipc: bool) -> bool {
    let ipc_key = key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("kernel.shm")
        || key.starts_with("fs.mqueue.");
    (ipc && ipc_key)
        || (net && key.starts_with("net."))
        || (uts && (key == "kernel.hostname" || key == "kernel.domainname"))
}

fn sysctls(
    linux: &Linux,
    net: bool,
    uts: bool,
    ipc: bool,
) -> Result<Vec<(CString, Vec<u8>)>, PlanError> {
    let mut keys: Vec<(&String, &String)> = linux.sysctl().iter().flatten().collect();
    keys.sort();
    keys.into_iter()
        .map(|(key, value)| {
            let field = format!("linux.sysctl[{key}]");
            let bad = key
                .split('.')
                .any(|p| p.is_empty() || p == ".." || p.contains('/'));
            if bad || !sysctl_allowed(key, net, uts, ipc) {
                return Err(refuse(
                    field,
                    "not namespaced in this container's namespaces",
                ));
            }
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            Ok((cstring(&path, &field)?, value.clone().into_bytes()))
        })
        .collect()
}

fn mount_step(
    field: &str,
    dest: &str,
    typ: Option<&str>,
    source: Option<String>,
    opts: MountOptions,
    is_file: &dyn Fn(&str) -> bool,
) -> Result<MountStep, PlanError> {
    let dest = clean_path(dest, &format!("{field}.destination"))?;
    let data = match opts.data.is_empty() {
        true => None,
        false => Some(cstring(&opts.data.join(","), field)?),
    };
    let mut step = MountStep {
        kind: MountKind::Fs {
            source: c"none".into(),
            fstype: c"none".into(),
        },
        dirs: path_steps(&dest, field)?,
        dest: cstring(&dest, field)?,
        file: false,
        flags: opts.flags,
        propagation: opts.propagation,
        data,
        fills_dev: false,
    };
    // A pseudo filesystem's source is only a name, shown in the mount table.
    let name = source.clone().filter(|s| !s.is_empty());
    let fs = |fstype: &str| -> Result<MountKind, PlanError> {
        Ok(MountKind::Fs {
            source: cstring(name.as_deref().unwrap_or(fstype), field)?,
            fstype: cstring(fstype, field)?,
        })
    };
    let typ = typ.unwrap_or(if opts.bind { "bind" } else { "" });
    let no_data = |what: &str| match opts.data.first() {
        Some(o) => Err(refuse(
            field,
            format!("option {o:?} does not apply to {what}"),
        )),
        None => Ok(()),
    };
    step.kind = match typ {
        _ if opts.bind => {
            no_data("a bind mount")?;
            bind_source(field, source, opts.recursive, is_file, &mut step)?
        }
        "bind" => return Err(refuse(field, "type bind needs the bind or rbind option")),
        "proc" | "mqueue" | "tmpfs" => fs(typ)?,
        "sysfs" => {
            if !opts.rw {
                step.flags |= libc::MS_RDONLY;
            }
            fs("sysfs")?
        }
        "cgroup" | "cgroup2" => {
            no_data("cgroup2 (v1 controllers are not supported)")?;
            fs("cgroup2")?
        }
        // The devpts instance at /dev/pts where the container is made, where the agent
        // allocates its terminals: the guest's for the VM's first container, one of its own for
        // each later one (`apart::private_mounts`). The spec's options for a new instance
        // (newinstance, ptmxmode, mode, gid) do not apply.
        "devpts" => {
            step.data = None;
            MountKind::Bind {
                source: c"/dev/pts".into(),
                recursive: false,
            }
        }
        other => return Err(refuse(field, format!("type {other:?} is not supported"))),
    };
    step.fills_dev = typ == "tmpfs" && dest == "/dev";
    Ok(step)
}

fn bind_source(
    field: &str,
    source: Option<String>,
    recursive: bool,
    is_file: &dyn Fn(&str) -> bool,
    step: &mut MountStep,
) -> Result<MountKind, PlanError> {
    let sfield = format!("{field}.source");
    let source = source.ok_or_else(|| refuse(&sfield, "a bind mount needs a source"))?;
    let clean = clean_path(&source, &sfield)?;
    if !clean.starts_with(&format!("{VOLUMES_DIR}/")) {
        return Err(refuse(
            sfield,
            format!("{source:?} is not a volume under {VOLUMES_DIR}"),
        ));
    }
    step.file = is_file(&clean);
    step.data = None;
    Ok(MountKind::Bind {
        source: cstring(&clean, &sfield)?,
        recursive,
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
