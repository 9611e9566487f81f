//! Image names with docker's rules: `alpine` is `docker.io/library/alpine:latest`, a first
//! component with a `.` or `:` or `localhost` is a registry, `@sha256:...` pins a digest.

use oci_client::Reference;

/// Errors of a name.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Not a valid reference.
    #[error("invalid reference format {name:?}: {reason}")]
    Invalid {
        /// What was given.
        name: String,
        /// Why it is not valid.
        reason: String,
    },
}

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    reference: Reference,
}

impl ImageName {
    /// Parses a name as `docker pull` does.
    pub fn parse(name: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: String| ReferenceError::Invalid {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.trim() != name {
            return Err(invalid("empty or padded with spaces".to_owned()));
        }
        let reference: Reference = name.parse().map_err(|e| invalid(format!("{e}")))?;
        let reference = match (reference.tag(), reference.digest()) {
            (None, None) => Reference::with_tag(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                "latest".to_owned(),
            ),
            _ => reference,
        };
        Ok(ImageName { reference })
    }

    /// The reference for the registry client.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// The registry's name as written (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    /// The full name: the store's key (`docker.io/library/alpine:latest`).
    pub fn canonical(&self) -> String {
        self.reference.whole()
    }

    /// The same image pinned to a digest in the same repository.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            digest.to_owned(),
        )
    }

    /// Whether the registry is this host (plain HTTP is allowed there, as docker allows it).
    pub fn is_local(&self) -> bool {
        let host = host_of(self.registry());
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    registry.split_once(':').map_or(registry, |(h, _)| h)
}

/// Splits a stored canonical name into docker's REPOSITORY and TAG columns.
pub fn display_parts(canonical: &str) -> (String, String) {
    if canonical.starts_with("sha256:") {
        return ("<none>".to_owned(), "<none>".to_owned());
    }
    let (name, tag) = match canonical.rsplit_once('@') {
        Some((name, _)) => (name, "<none>"),
        None => match canonical.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (canonical, "<none>"),
        },
    };
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    (short.to_owned(), tag.to_owned())
}

/// The name a user would type for a stored image (`alpine:latest`, `127.0.0.1:5000/a:1`).
pub fn familiar(canonical: &str) -> String {
    if let Some((_, digest)) = canonical.rsplit_once('@') {
        return format!("{}@{digest}", display_parts(canonical).0);
    }
    match display_parts(canonical) {
        (repo, tag) if tag == "<none>" => repo,
        (repo, tag) => format!("{repo}:{tag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_reference_rules() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.19", "docker.io/library/alpine:3.19"),
            ("team/app", "docker.io/team/app:latest"),
            ("localhost/app:1", "localhost/app:1"),
            ("127.0.0.1:5000/team/app:1.4", "127.0.0.1:5000/team/app:1.4"),
            ("registry.example/app", "registry.example/app:latest"),
        ];
        for (given, want) in cases {
            assert_eq!(
                ImageName::parse(given).unwrap().canonical(),
                want,
                "{given}"
            );
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = ImageName::parse(&format!("alpine@{digest}")).unwrap();
        assert_eq!(
            pinned.canonical(),
            format!("docker.io/library/alpine@{digest}")
        );
        for bad in ["", "UPPER", "a b", "x@sha256:12", " alpine"] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn local_registries_and_display_names() {
        assert!(ImageName::parse("127.0.0.1:5000/a").unwrap().is_local());
        assert!(ImageName::parse("localhost:5000/a").unwrap().is_local());
        assert!(!ImageName::parse("registry.example/a").unwrap().is_local());
        assert!(!ImageName::parse("127.evil.example:443/a")
            .unwrap()
            .is_local());
        assert!(ImageName::parse("127.0.0.2:5000/a").unwrap().is_local());
        assert_eq!(
            display_parts("docker.io/library/alpine:3"),
            ("alpine".into(), "3".into())
        );
        assert_eq!(
            display_parts("127.0.0.1:5000/team/app:1.4"),
            ("127.0.0.1:5000/team/app".into(), "1.4".into())
        );
        assert_eq!(familiar("docker.io/team/app:1"), "team/app:1");
        assert_eq!(
            familiar("docker.io/library/alpine@sha256:00"),
            "alpine@sha256:00"
        );
        assert_eq!(host_of("[::1]:5000"), "::1");
    }
}
