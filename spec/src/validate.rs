//! Checks of an OCI runtime spec before anything starts: each error names the field.

use std::collections::HashSet;
use std::path::{Component, Path};

use oci_spec::runtime::{
    LinuxIdMapping, LinuxNamespaceType, LinuxResources, LinuxThrottleDevice, Spec,
};

/// A spec moat refuses to run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// The field, in the spec's JSON spelling (`linux.uidMappings[1]`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn fail<T>(field: impl Into<String>, problem: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        field: field.into(),
        problem: problem.into(),
    })
}

/// Sysctls a container may set: they are namespaced (IPC and network namespaces).
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Checks `spec`; with `bundle`, also that its root and relative mount sources stay inside it.
pub fn validate(spec: &Spec, bundle: Option<&Path>) -> Result<(), SpecError> {
    check_version(spec.version())?;
    if spec.hooks().is_some() {
        // A bundle's hooks were taken out for the host (host_parts); none reach the guest.
        return fail("hooks", "not supported here: hooks run on the host");
    }
    check_root(spec, bundle)?;
    check_process(spec)?;
    check_mounts(spec)?;
    let namespaces = check_namespaces(spec)?;
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
        && !namespaces.contains(&LinuxNamespaceType::Uts)
    {
        return fail("hostname", "needs a uts namespace in linux.namespaces");
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let user_ns = namespaces.contains(&LinuxNamespaceType::User);
    check_id_maps("linux.uidMappings", linux.uid_mappings(), user_ns)?;
    check_id_maps("linux.gidMappings", linux.gid_mappings(), user_ns)?;
    if let Some(sysctl) = linux.sysctl() {
        let mut names: Vec<&String> = sysctl.keys().collect();
        names.sort();
        for name in names {
            check_sysctl(name, &namespaces)?;
        }
    }
    for (i, device) in linux.devices().iter().flatten().enumerate() {
        let path = device.path().to_string_lossy();
        if !path.starts_with("/dev/") || !clean(device.path()) {
            return fail(
                format!("linux.devices[{i}].path"),
                "must be an absolute path under /dev",
            );
        }
    }
    if let Some(resources) = linux.resources() {
        check_resources(resources)?;
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), SpecError> {
    match version.split('.').next() {
        Some("1") => Ok(()),
        _ => fail("ociVersion", format!("{version:?} is not a 1.x version")),
    }
}

/// Absolute, or relative, without `..`/`.` components.
fn clean(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Whether `path` (relative to `bundle` unless absolute) is inside `bundle`, resolving symlinks
/// of the parts that exist.
fn inside(bundle: &Path, path: &Path) -> bool {
    let full = bundle.join(path);
    let (Ok(base), Ok(resolved)) = (bundle.canonicalize(), full.canonicalize()) else {
        return path.is_relative() && clean(path);
    };
    resolved.starts_with(base)
}

/// An absolute `root.path` that is the bundle or a directory above it.
fn holds_bundle(bundle: &Path, path: &Path) -> bool {
    match (bundle.canonicalize(), path.canonicalize()) {
        (Ok(b), Ok(p)) => b.starts_with(p),
        _ => path == Path::new("/"),
    }
}

/// `root.path` naming the bundle directory itself (its config.json would be in the rootfs).
fn is_bundle_itself(bundle: &Path, path: &Path) -> bool {
    match (bundle.canonicalize(), bundle.join(path).canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn check_root(spec: &Spec, bundle: Option<&Path>) -> Result<(), SpecError> {
    let Some(root) = spec.root() else {
        return fail("root", "missing");
    };
    let path = root.path();
    if path.as_os_str().is_empty() {
        return fail("root.path", "empty");
    }
    let escapes = match bundle {
        // An absolute root may be anywhere (Docker's is its overlay mount), as with runc, but
        // not hold the bundle (the host's `/` would be packed whole, config.json with it).
        Some(bundle) if path.is_absolute() => holds_bundle(bundle, path),
        Some(bundle) => !inside(bundle, path) || is_bundle_itself(bundle, path),
        None => path.is_absolute() || !clean(path),
    };
    if escapes {
        return fail(
            "root.path",
            format!("{} is not inside the bundle", path.display()),
        );
    }
    Ok(())
}

fn check_process(spec: &Spec) -> Result<(), SpecError> {
    let Some(process) = spec.process() else {
        return fail("process", "missing");
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return fail("process.args", "empty: nothing to run");
    }
    let cwd = process.cwd();
    if !cwd.is_absolute() || !clean(cwd) {
        return fail(
            "process.cwd",
            format!("{} must be an absolute path without ..", cwd.display()),
        );
    }
    if cwd == "/proc" || cwd.starts_with("/proc/") {
        // /proc/self/fd/N, /proc/1/cwd and the like lead out of the container's root.
        return fail("process.cwd", "must not be under /proc");
    }
    for (i, limit) in process.rlimits().iter().flatten().enumerate() {
        if limit.soft() > limit.hard() {
            return fail(
                format!("process.rlimits[{i}]"),
                "soft limit above the hard limit",
            );
        }
    }
    Ok(())
}

fn check_mounts(spec: &Spec) -> Result<(), SpecError> {
    for (i, mount) in spec.mounts().iter().flatten().enumerate() {
        let dst = mount.destination();
        if !dst.is_absolute() || !clean(dst) {
            return fail(
                format!("mounts[{i}].destination"),
                format!("{} must be an absolute path without ..", dst.display()),
            );
        }
        if let Some(source) = mount.source() {
            if !clean(source) {
                return fail(
                    format!("mounts[{i}].source"),
                    format!("{} escapes the bundle", source.display()),
                );
            }
        }
    }
    Ok(())
}

fn check_namespaces(spec: &Spec) -> Result<HashSet<LinuxNamespaceType>, SpecError> {
    let mut seen = HashSet::new();
    let list = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for (i, ns) in list.into_iter().flatten().enumerate() {
        if ns.path().is_some() {
            return fail(
                format!("linux.namespaces[{i}].path"),
                "joining an existing namespace is not supported (each container has its own VM)",
            );
        }
        if !seen.insert(ns.typ()) {
            return fail(
                format!("linux.namespaces[{i}]"),
                format!("{} listed twice", ns.typ()),
            );
        }
    }
    Ok(seen)
}

fn check_id_maps(
    field: &str,
    maps: &Option<Vec<LinuxIdMapping>>,
    user_ns: bool,
) -> Result<(), SpecError> {
    let Some(maps) = maps.as_ref().filter(|m| !m.is_empty()) else {
        return Ok(());
    };
    if !user_ns {
        return fail(
            field,
            "id mappings need a user namespace in linux.namespaces",
        );
    }
    let range = |start: u32, size: u32| (u64::from(start), u64::from(start) + u64::from(size));
    let overlap = |a: (u64, u64), b: (u64, u64)| a.0 < b.1 && b.0 < a.1;
    for (i, map) in maps.iter().enumerate() {
        if map.size() == 0 {
            return fail(format!("{field}[{i}].size"), "must be greater than zero");
        }
        if map.host_id() == 0 {
            return fail(
                format!("{field}[{i}].hostID"),
                "maps container ids onto the guest's root (0)",
            );
        }
        let (c, h) = (
            range(map.container_id(), map.size()),
            range(map.host_id(), map.size()),
        );
        for (j, other) in maps[..i].iter().enumerate() {
            let (oc, oh) = (
                range(other.container_id(), other.size()),
                range(other.host_id(), other.size()),
            );
            if overlap(c, oc) || overlap(h, oh) {
                return fail(format!("{field}[{i}]"), format!("overlaps {field}[{j}]"));
            }
        }
    }
    Ok(())
}

fn check_sysctl(name: &str, namespaces: &HashSet<LinuxNamespaceType>) -> Result<(), SpecError> {
    let field = format!("linux.sysctl[{name:?}]");
    let (needs, ok) = if IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.") {
        (LinuxNamespaceType::Ipc, true)
    } else if name.starts_with("net.") {
        (LinuxNamespaceType::Network, true)
    } else {
        (LinuxNamespaceType::Ipc, false)
    };
    if !ok {
        return fail(
            field,
            "not a namespaced sysctl: it would change the whole VM",
        );
    }
    if !namespaces.contains(&needs) {
        return fail(field, format!("needs a {needs} namespace"));
    }
    Ok(())
}

fn check_resources(r: &LinuxResources) -> Result<(), SpecError> {
    const F: &str = "linux.resources";
    if let Some(m) = r.memory() {
        for (name, value) in [
            ("limit", m.limit()),
            ("reservation", m.reservation()),
            ("swap", m.swap()),
        ] {
            if value.is_some_and(|v| v == 0 || v < -1) {
                return fail(
                    format!("{F}.memory.{name}"),
                    "must be greater than zero (or -1)",
                );
            }
        }
        if let (Some(limit), Some(swap)) = (m.limit(), m.swap()) {
            if limit > 0 && swap != -1 && swap < limit {
                return fail(
                    format!("{F}.memory.swap"),
                    "must be at least memory.limit (it includes it)",
                );
            }
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() == 0 || p.limit() < -1 {
            return fail(
                format!("{F}.pids.limit"),
                "must be greater than zero (or -1)",
            );
        }
    }
    if let Some(cpu) = r.cpu() {
        // shares 0 is "not set", as runc reads it (Docker always writes it).
        if cpu.quota().is_some_and(|q| q == 0 || q < -1) {
            return fail(
                format!("{F}.cpu.quota"),
                "must be greater than zero (or -1)",
            );
        }
        if cpu.period() == Some(0) {
            return fail(format!("{F}.cpu.period"), "must be greater than zero");
        }
    }
    if let Some(io) = r.block_io() {
        // weight 0 is "not set", as runc reads it (Docker always writes it).
        if io
            .weight()
            .is_some_and(|w| w != 0 && !(10..=1000).contains(&w))
        {
            return fail(format!("{F}.blockIO.weight"), "must be from 10 to 1000");
        }
        let lists = [
            ("throttleReadBpsDevice", io.throttle_read_bps_device()),
            ("throttleWriteBpsDevice", io.throttle_write_bps_device()),
            ("throttleReadIOPSDevice", io.throttle_read_iops_device()),
            ("throttleWriteIOPSDevice", io.throttle_write_iops_device()),
        ];
        for (name, list) in lists {
            check_throttles(&format!("{F}.blockIO.{name}"), list)?;
        }
    }
    Ok(())
}

fn check_throttles(field: &str, list: &Option<Vec<LinuxThrottleDevice>>) -> Result<(), SpecError> {
    for (i, t) in list.iter().flatten().enumerate() {
        if t.rate() == 0 {
            return fail(format!("{field}[{i}].rate"), "must be greater than zero");
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
