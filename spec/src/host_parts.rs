//! The parts of a bundle's config.json that concern the host, not the guest, taken out of the
//! spec before it is validated and sent to the agent: the hooks (run on the host by the OCI
//! verbs), `process.apparmorProfile` (a host profile, for a process that runs in the guest's
//! kernel), `linux.cgroupsPath` (where the VM goes on the host), the bind mounts (their
//! sources are host paths: copied in, since the guest shares no filesystem with the host), and
//! the namespace paths (host namespaces: only a pod's own can be joined, in its VM).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, LinuxNamespace, Mount, Spec};

use crate::validate::SpecError;

/// The directory of a kubelet's emptyDir volume on the host:
/// `/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// What [`take`] took out of a spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostParts {
    /// The hooks, when any list has one.
    pub hooks: Option<Hooks>,
    /// `process.apparmorProfile`, when not empty.
    pub apparmor_profile: Option<String>,
    /// `linux.cgroupsPath`, as written.
    pub cgroups_path: Option<String>,
    /// The bind mounts, in the spec's order (they stay in the spec's `mounts`).
    pub binds: Vec<HostBind>,
    /// The `linux.namespaces` entries that name an existing namespace (their paths taken out:
    /// the entry left asks for a new one unless the runtime joins the path's).
    pub namespace_paths: Vec<LinuxNamespace>,
}

/// A bind mount whose source is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    /// Its index in the spec's `mounts`.
    pub index: usize,
    /// The host path (relative ones resolved against the bundle).
    pub source: PathBuf,
    /// A regular file (else a directory).
    pub is_file: bool,
    /// Mounted read-only (the `ro` option).
    pub readonly: bool,
}

/// Takes the host parts out of `spec` (of the bundle in `dir`). Refused: the hooks the runtime
/// would run in the container's namespaces (`createContainer`, `startContainer`: they would
/// run in the guest, from a host path), and a writable directory bind (no shared filesystem).
/// Binds of the pod's own directories become binds of the guest's ([`guest_bind`]).
pub fn take(spec: &mut Spec, dir: &Path) -> Result<HostParts, SpecError> {
    let mut parts = HostParts {
        hooks: take_hooks(spec)?,
        ..HostParts::default()
    };
    if let Some(process) = spec.process_mut() {
        parts.apparmor_profile = process.apparmor_profile().clone().filter(|p| !p.is_empty());
        process.set_apparmor_profile(None);
    }
    if let Some(linux) = spec.linux_mut() {
        parts.cgroups_path = linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.display().to_string());
        linux.set_cgroups_path(None);
        if let Some(namespaces) = linux.namespaces_mut() {
            for ns in namespaces.iter_mut().filter(|ns| ns.path().is_some()) {
                parts.namespace_paths.push(ns.clone());
                ns.set_path(None);
            }
        }
    }
    let mut guest = Vec::new();
    for (index, mount) in spec.mounts().iter().flatten().enumerate() {
        let options = mount.options().clone().unwrap_or_default();
        let bind = mount.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            continue;
        }
        let field = format!("mounts[{index}].source");
        let source = mount.source().as_ref().ok_or_else(|| SpecError {
            field: field.clone(),
            problem: "a bind mount needs a source".into(),
        })?;
        let readonly = options.iter().any(|o| o == "ro");
        if let Some(bind) = guest_bind(mount, source, readonly, &field)? {
            guest.push((index, bind));
            continue;
        }
        let source = dir.join(source);
        let meta = std::fs::metadata(&source).map_err(|e| SpecError {
            field: field.clone(),
            problem: format!("{}: {e}", source.display()),
        })?;
        if meta.is_dir() && !readonly {
            return Err(SpecError {
                field,
                problem: "a writable directory bind cannot reach the guest (moat has no shared \
                          filesystem): mount it read-only (a snapshot), or use moat run -v \
                          with an ext4 image"
                    .into(),
            });
        }
        if !meta.is_dir() && !meta.is_file() {
            return Err(SpecError {
                field,
                problem: format!("{} is neither a file nor a directory", source.display()),
            });
        }
        parts.binds.push(HostBind {
            index,
            source,
            is_file: meta.is_file(),
            readonly,
        });
    }
    if let Some(mounts) = spec.mounts_mut() {
        for (index, bind) in guest {
            mounts[index] = bind;
        }
    }
    Ok(parts)
}

/// The guest's bind for a bind of one of the pod's own directories, which the VM keeps for its
/// containers to share instead of the host's (the host's are empty at create, and cannot reach
/// the guest): `/dev/shm` (CRI binds the sandbox's shm directory into each of a pod's
/// containers; Docker its shareable IPC's) becomes a bind of [`moat_protocol::SHM_DIR`], and
/// a kubelet emptyDir `…/kubernetes.io~empty-dir/<name>` one of
/// [`moat_protocol::EMPTY_DIRS`]`/<name>`. `None` for any other bind.
fn guest_bind(
    mount: &Mount,
    source: &Path,
    readonly: bool,
    field: &str,
) -> Result<Option<Mount>, SpecError> {
    let guest_source = if mount.destination() == Path::new("/dev/shm") {
        moat_protocol::SHM_DIR.to_owned()
    } else {
        let Some(name) = empty_dir_name(source) else {
            return Ok(None);
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if name.is_empty() || name.starts_with('.') || !name.chars().all(valid) {
            return Err(SpecError {
                field: field.to_owned(),
                problem: format!("{name:?} is not an emptyDir volume's name"),
            });
        }
        format!("{}/{name}", moat_protocol::EMPTY_DIRS)
    };
    let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
    options.push(if readonly { "ro" } else { "rw" }.to_owned());
    let mut bind = mount.clone();
    bind.set_typ(Some("bind".into()));
    bind.set_source(Some(guest_source.into()));
    bind.set_options(Some(options));
    Ok(Some(bind))
}

/// The name of the kubelet emptyDir volume at `source`, whose parent is the emptyDir plugin's.
fn empty_dir_name(source: &Path) -> Option<String> {
    let parent = source.parent()?;
    (parent.file_name()? == EMPTY_DIR_PLUGIN).then(|| {
        source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// The hooks of `spec` (taken out), `None` when every list is empty.
fn take_hooks(spec: &mut Spec) -> Result<Option<Hooks>, SpecError> {
    let Some(hooks) = spec.hooks().clone() else {
        return Ok(None);
    };
    spec.set_hooks(None);
    let in_guest = [
        ("hooks.createContainer", hooks.create_container()),
        ("hooks.startContainer", hooks.start_container()),
    ];
    for (field, list) in in_guest {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(SpecError {
                field: field.into(),
                problem: "not supported: it would run in the container, in its VM, where the \
                          host path it names does not exist"
                    .into(),
            });
        }
    }
    let any = [
        hooks.prestart(),
        hooks.create_runtime(),
        hooks.poststart(),
        hooks.poststop(),
    ]
    .iter()
    .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()));
    Ok(any.then_some(hooks))
}

/// The cgroup of `linux.cgroupsPath` relative to the hierarchy's root: a path as is (Docker's
/// cgroupfs driver: `/docker/<id>`), or systemd's `slice:prefix:name` as systemd lays it out
/// (`system.slice:docker:<id>` is `system.slice/docker-<id>.scope`).
pub fn cgroup_dir(path: &str) -> Result<String, SpecError> {
    let bad = |problem: &str| SpecError {
        field: "linux.cgroupsPath".into(),
        problem: format!("{path:?}: {problem}"),
    };
    let parts: Vec<&str> = path.split(':').collect();
    let dir = match parts[..] {
        [_] => path.trim_start_matches('/').to_owned(),
        [slice, prefix, name] if !slice.contains('/') && !name.contains('/') => {
            let unit = if name.ends_with(".slice") {
                name.to_owned()
            } else {
                format!("{prefix}-{name}.scope")
            };
            let slices = expand_slice(if slice.is_empty() {
                "system.slice"
            } else {
                slice
            })
            .ok_or_else(|| bad("not a systemd slice name"))?;
            if slices.is_empty() {
                unit
            } else {
                format!("{slices}/{unit}")
            }
        }
        _ => return Err(bad("neither a path nor slice:prefix:name")),
    };
    let plain = !dir.is_empty()
        && Path::new(&dir)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(bad("must be a path of plain names"));
    }
    Ok(dir)
}

/// systemd's layout of slice `a-b.slice`: `a.slice/a-b.slice` (`-.slice` is the root).
fn expand_slice(slice: &str) -> Option<String> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(String::new());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut dirs = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        dirs.push(format!("{prefix}.slice"));
    }
    Some(dirs.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_as_docker_writes_them() {
        assert_eq!(cgroup_dir("/docker/abc").unwrap(), "docker/abc");
        assert_eq!(
            cgroup_dir("system.slice:docker:abc").unwrap(),
            "system.slice/docker-abc.scope"
        );
        assert_eq!(
            cgroup_dir("machine-tenant.slice:moat:x").unwrap(),
            "machine.slice/machine-tenant.slice/moat-x.scope"
        );
        assert_eq!(cgroup_dir("-.slice:p:n").unwrap(), "p-n.scope");
        for bad in ["", "/", "/a/../b", "a:b", "x.slice:p:../n", "bad:p:n"] {
            assert!(cgroup_dir(bad).is_err(), "{bad:?}");
        }
    }

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn host_parts_leave_the_spec() {
        let dir = std::env::temp_dir().join(format!("moat-host-parts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let mut s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": "docker-default"},
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["rbind"]},
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "data", "options": ["rbind", "rw"]},
                {"destination": "/cache", "type": "bind", "options": ["rbind", "rw"],
                 "source": "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache"}
            ],
            "linux": {"cgroupsPath": "/docker/x"}
        }));
        let parts = take(&mut s, &dir).unwrap();
        assert!(s.hooks().is_none() && parts.hooks.is_some());
        assert_eq!(parts.apparmor_profile.as_deref(), Some("docker-default"));
        assert_eq!(parts.cgroups_path.as_deref(), Some("/docker/x"));
        let binds: Vec<(usize, bool, bool)> = parts
            .binds
            .iter()
            .map(|b| (b.index, b.is_file, b.readonly))
            .collect();
        assert_eq!(binds, [(1, true, false), (2, false, true)]);
        // CRI's writable /dev/shm bind and a kubelet emptyDir: binds of the guest's own.
        let guest = |i: usize| {
            let m = &s.mounts().as_ref().unwrap()[i];
            let source = m.source().as_ref().unwrap().display().to_string();
            (
                m.typ().clone().unwrap(),
                source,
                m.options().clone().unwrap(),
            )
        };
        let options = ["rbind", "nosuid", "nodev", "rw"]
            .map(str::to_owned)
            .to_vec();
        let shm = (
            "bind".to_owned(),
            "/run/moat-volumes/shm".to_owned(),
            options.clone(),
        );
        assert_eq!(guest(3), shm);
        let cache = "/run/moat-volumes/empty-dir/cache".to_owned();
        assert_eq!(guest(4), ("bind".to_owned(), cache, options));
        let mut bad_name = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/d", "type": "bind", "options": ["rbind"],
                        "source": "/p/kubernetes.io~empty-dir/.."}]
        }));
        let err = take(&mut bad_name, &dir).unwrap_err();
        assert_eq!(err.field, "mounts[0].source", "{err}");

        let mut writable = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/d", "type": "bind", "source": "data", "options": ["rbind"]}]
        }));
        assert_eq!(
            take(&mut writable, &dir).unwrap_err().field,
            "mounts[0].source"
        );
        let mut in_guest = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "hooks": {"startContainer": [{"path": "/bin/true"}]}
        }));
        assert_eq!(
            take(&mut in_guest, &dir).unwrap_err().field,
            "hooks.startContainer"
        );
        let mut empty = spec(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "hooks": {}
        }));
        assert_eq!(take(&mut empty, &dir).unwrap().hooks, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
