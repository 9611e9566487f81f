//! The container's seccomp filter, from `--security-opt seccomp=...`.

use std::path::PathBuf;

use oci_spec::runtime::{Capabilities, LinuxSeccomp};

/// What `--security-opt seccomp=` (or its absence) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    /// No option: docker's default profile.
    Default,
    /// `seccomp=unconfined` (and `--privileged`): no filter.
    Unconfined,
    /// `seccomp=FILE`: a docker seccomp profile (JSON).
    Profile(PathBuf),
}

/// The filter for `choice`, given the container's bounding capabilities (docker's profile allows
/// some syscalls only with a capability).
// LEAD: wire moat_oci_seccomp: Default => `DockerProfile::docker_default().to_oci(bounding)`,
// Profile(path) => `DockerProfile::from_json(&text)?.to_oci(bounding)` (read the file here,
// errors naming the path). Until then the default run is unfiltered, and a profile file is
// refused rather than ignored.
pub fn seccomp_for(
    choice: &SeccompChoice,
    bounding: &Capabilities,
) -> anyhow::Result<Option<LinuxSeccomp>> {
    let _ = bounding;
    match choice {
        SeccompChoice::Default | SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::Profile(path) => Err(anyhow::anyhow!(
            "seccomp profiles are not wired yet ({})",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfined_is_none_and_profiles_are_refused() {
        let caps = Capabilities::new();
        assert_eq!(
            seccomp_for(&SeccompChoice::Unconfined, &caps).unwrap(),
            None
        );
        let err = seccomp_for(&SeccompChoice::Profile("/p.json".into()), &caps).unwrap_err();
        assert!(err.to_string().contains("/p.json"));
    }
}
