//! What a bundle's host parts (moat_spec::host_parts) become: bind sources as volumes (file
//! binds copied into one disk, read-only directory binds packed as snapshots), the cgroup the
//! VM goes in, the hooks for the OCI verbs, and one warning line for an AppArmor profile.

use std::path::Path;

use moat_runtime::config::ConfigError;
use moat_runtime::run::{volume_mountpoint, MAX_VOLUMES};
use moat_runtime::volumes::{Volume, VolumeSource};
use moat_spec::{BundleError, HostParts, SpecError};
use oci_spec::runtime::{Hooks, Spec};

/// The host parts kept in the run's config.
#[derive(Debug, Default)]
pub struct Host {
    /// The VM's cgroup, relative to the hierarchy's root.
    pub cgroup_path: Option<String>,
    /// The hooks (for the OCI verbs).
    pub hooks: Option<Hooks>,
    /// The namespaces the bundle joins (paths).
    pub namespace_paths: Vec<oci_spec::runtime::LinuxNamespace>,
}

/// Applies `host` (of the bundle in `dir`) to `spec`: its bind mounts' sources become volume
/// paths in the guest. Returns the spec, its volumes and what the config keeps.
pub fn apply(
    dir: &Path,
    mut spec: Spec,
    host: HostParts,
) -> Result<(Spec, Vec<Volume>, Host), ConfigError> {
    let invalid = |source: SpecError| ConfigError::Bundle {
        dir: dir.to_owned(),
        source: BundleError::Invalid {
            path: dir.join("config.json"),
            source,
        },
    };
    if let Some(profile) = &host.apparmor_profile {
        // The profile is the host's; the process runs under the guest's kernel, confined by
        // the VM and by the container stack there (docs/docker.md).
        eprintln!(
            "moat: warning: process.apparmorProfile {profile:?} not applied: it names a host \
             AppArmor profile and the process runs in its own VM's kernel"
        );
    }
    let cgroup_path = host
        .cgroups_path
        .as_deref()
        .map(moat_spec::host_parts::cgroup_dir)
        .transpose()
        .map_err(invalid)?;
    let volumes = bind_volumes(&mut spec, &host).map_err(invalid)?;
    // The root is a disk in the guest; its host path (Docker's overlay mount) means nothing
    // there, and the agent takes only a relative one.
    if let Some(root) = spec.root_mut() {
        root.set_path("rootfs".into());
    }
    Ok((
        spec,
        volumes,
        Host {
            cgroup_path,
            hooks: host.hooks,
            namespace_paths: host.namespace_paths,
        },
    ))
}

/// The volumes of the bind mounts in `host`, each mount's source pointed at its volume.
fn bind_volumes(spec: &mut Spec, host: &HostParts) -> Result<Vec<Volume>, SpecError> {
    let mut volumes = Vec::new();
    let mut files = Vec::new();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for bind in host.binds.iter().filter(|b| !b.is_file) {
        let mount = &mut mounts[bind.index];
        mount.set_source(Some(volume_mountpoint(volumes.len()).into()));
        volumes.push(Volume {
            source: VolumeSource::Directory(bind.source.clone()),
            destination: mount.destination().display().to_string(),
            readonly: true,
        });
    }
    let files_volume = volumes.len();
    for bind in host.binds.iter().filter(|b| b.is_file) {
        let at = format!("{}/{}", volume_mountpoint(files_volume), files.len());
        mounts[bind.index].set_source(Some(at.into()));
        files.push(bind.source.clone());
    }
    if !files.is_empty() {
        volumes.push(Volume {
            source: VolumeSource::Files(files),
            destination: "the bind-mounted files".into(),
            // A copy: the container may write it (Docker's are writable), the host keeps its own.
            readonly: false,
        });
    }
    if volumes.len() > MAX_VOLUMES {
        return Err(SpecError {
            field: "mounts".into(),
            problem: format!(
                "{} bind mounts need more than {MAX_VOLUMES} disks (all files share one)",
                host.binds.len()
            ),
        });
    }
    spec.set_mounts(Some(mounts));
    Ok(volumes)
}
