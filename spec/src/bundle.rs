//! An OCI bundle on the host: `config.json`, parsed and validated, and its root directory.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::host_parts::{self, HostParts};
use crate::validate::{validate, SpecError};

/// Errors reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// config.json cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// config.json is not valid JSON or not an OCI runtime spec.
    #[error("{}: {field}: {problem}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON path of the bad value (`.` for the document).
        field: String,
        /// serde's message, first line.
        problem: String,
    },
    /// The spec is refused.
    #[error("{}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The refused field.
        #[source]
        source: SpecError,
    },
}

/// A bundle ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The validated spec, as in config.json.
    pub spec: Spec,
    /// The root filesystem directory on the host.
    pub rootfs: PathBuf,
    /// What of config.json concerns the host (taken out of `spec`).
    pub host: HostParts,
}

/// Reads `dir/config.json`, validates it, and checks that `root.path` is a directory inside `dir`.
pub fn load_bundle(dir: &Path) -> Result<Bundle, BundleError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let spec = parse_spec(&text).map_err(|(field, problem)| BundleError::Parse {
        path: path.clone(),
        field,
        problem,
    })?;
    let invalid = |source| BundleError::Invalid {
        path: path.clone(),
        source,
    };
    let mut spec = spec;
    let host = host_parts::take(&mut spec, dir).map_err(invalid)?;
    validate(&spec, Some(dir)).map_err(invalid)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    let rootfs = dir.join(&root);
    if !rootfs.is_dir() {
        return Err(invalid(SpecError {
            field: "root.path".into(),
            problem: format!("{} is not a directory", rootfs.display()),
        }));
    }
    Ok(Bundle { spec, rootfs, host })
}

/// Parses a config.json; the error is (JSON path of the bad value, problem).
pub fn parse_spec(text: &str) -> Result<Spec, (String, String)> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            root if root == "?" => ".".to_owned(),
            path => path,
        };
        let problem = e.inner().to_string();
        let problem = problem.lines().next().unwrap_or("invalid").to_owned();
        (field, problem)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_capability_names_its_field() {
        let text = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},
            "capabilities":{"bounding":["CAP_CHOWN","CAP_NOPE"]}},"root":{"path":"rootfs"}}"#;
        let (field, problem) = parse_spec(text).unwrap_err();
        assert_eq!(field, "process.capabilities.bounding[1]");
        assert!(problem.contains("NOPE"), "{problem}");
    }

    #[test]
    fn not_json() {
        let (field, _) = parse_spec("{").unwrap_err();
        assert_eq!(field, ".");
    }
}
