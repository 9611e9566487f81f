//! The container's seccomp filter, from `--security-opt seccomp=...`.

use std::path::PathBuf;

use anyhow::Context;
use moat_oci_seccomp::DockerProfile;
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
pub fn seccomp_for(
    choice: &SeccompChoice,
    bounding: &Capabilities,
) -> anyhow::Result<Option<LinuxSeccomp>> {
    let profile = match choice {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default => DockerProfile::docker_default(),
        SeccompChoice::Profile(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--security-opt seccomp={}", path.display()))?;
            DockerProfile::from_json(&text)
                .with_context(|| format!("--security-opt seccomp={}", path.display()))?
        }
    };
    let mut names: Vec<String> = bounding.iter().map(|c| format!("CAP_{c}")).collect();
    names.sort();
    let seccomp = profile.to_oci(&names).with_context(|| match choice {
        SeccompChoice::Profile(path) => format!("--security-opt seccomp={}", path.display()),
        _ => "docker's default seccomp profile".to_string(),
    })?;
    Ok(Some(seccomp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Capability;

    #[test]
    fn unconfined_is_none_and_the_default_depends_on_caps() {
        let none = Capabilities::new();
        assert_eq!(
            seccomp_for(&SeccompChoice::Unconfined, &none).unwrap(),
            None
        );
        let rules = |caps: &Capabilities| {
            let s = seccomp_for(&SeccompChoice::Default, caps).unwrap().unwrap();
            s.syscalls().clone().unwrap_or_default()
        };
        let allows = |caps: &Capabilities, name: &str| {
            rules(caps)
                .iter()
                .any(|r| r.names().iter().any(|n| n == name))
        };
        assert!(!allows(&none, "mount"));
        let admin: Capabilities = [Capability::SysAdmin].into_iter().collect();
        assert!(allows(&admin, "mount"));
    }

    #[test]
    fn a_missing_or_bad_profile_names_the_file() {
        let caps = Capabilities::new();
        let err =
            seccomp_for(&SeccompChoice::Profile("/nonexistent/p.json".into()), &caps).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/p.json"));
        let dir = moat_jail::testutil::TempDir::new("seccomp-profile");
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["fooo"],"action":"SCMP_ACT_ERRNO"}]}"#).unwrap();
        let err = seccomp_for(&SeccompChoice::Profile(path.clone()), &caps).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("bad.json") && text.contains("fooo"), "{text}");
    }
}
