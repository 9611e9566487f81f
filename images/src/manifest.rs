//! OCI and Docker v2 schema 2 manifests, image indexes and manifest lists: the fields moat
//! reads, and the choice of the linux/amd64 image in an index.

use serde::{Deserialize, Serialize};

/// Media types moat accepts.
pub mod media {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker v2 schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Every manifest type, for the registry's Accept header.
    pub const ALL: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
}

/// The largest manifest or index moat reads (distribution's own limit is 4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest image config moat reads.
pub const CONFIG_LIMIT: u64 = 8 << 20;
/// The most layers an image may have (docker's overlay driver stops at 125).
pub const MAX_LAYERS: usize = 128;

/// Errors reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("{what} {digest}: {source}")]
    Parse {
        /// Manifest or index.
        what: &'static str,
        /// Its digest.
        digest: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A media type moat does not read.
    #[error("{digest}: unsupported manifest type {media_type:?} (moat reads OCI and Docker v2 schema 2 manifests and indexes)")]
    Unsupported {
        /// The manifest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// An index without a linux/amd64 entry.
    #[error("{name}: no linux/amd64 image in the index (it has: {available})")]
    NoPlatform {
        /// The image.
        name: String,
        /// The platforms it has, comma separated.
        available: String,
    },
    /// More layers than moat takes.
    #[error("{digest}: {count} layers, over the limit of {MAX_LAYERS}")]
    TooManyLayers {
        /// The manifest.
        digest: String,
        /// How many it has.
        count: usize,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// For index entries: the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. amd64.
    pub architecture: String,
    /// e.g. linux.
    pub os: String,
    /// e.g. v8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Media type, when the manifest names it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Document {
    /// An image manifest.
    Image(Manifest),
    /// An index or manifest list: its entries.
    Index(Vec<Descriptor>),
}

fn parse_err(what: &'static str, digest: &str) -> impl FnOnce(serde_json::Error) -> ManifestError {
    let digest = digest.to_owned();
    move |source| ManifestError::Parse {
        what,
        digest,
        source,
    }
}

/// Parses a manifest or index. `content_type` is the registry's (may be empty).
pub fn parse(bytes: &[u8], digest: &str, content_type: &str) -> Result<Document, ManifestError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(parse_err("manifest", digest))?;
    let media_type = probe
        .media_type
        .clone()
        .unwrap_or_else(|| content_type.to_owned());
    let is_index = match media_type.as_str() {
        media::OCI_INDEX | media::DOCKER_LIST => true,
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => false,
        // OCI allows the field to be absent: decide by shape.
        "" | "application/json" => probe.manifests.is_some() && probe.config.is_none(),
        other => {
            return Err(ManifestError::Unsupported {
                digest: digest.to_owned(),
                media_type: other.to_owned(),
            })
        }
    };
    if is_index {
        let index: Index = serde_json::from_slice(bytes).map_err(parse_err("index", digest))?;
        return Ok(Document::Index(index.manifests));
    }
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(parse_err("manifest", digest))?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers {
            digest: digest.to_owned(),
            count: manifest.layers.len(),
        });
    }
    Ok(Document::Image(manifest))
}

/// The linux/amd64 entry of an index (the first one, as docker picks).
pub fn select_amd64<'a>(
    name: &str,
    entries: &'a [Descriptor],
) -> Result<&'a Descriptor, ManifestError> {
    let is_amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    entries
        .iter()
        .find(is_amd64)
        .ok_or_else(|| ManifestError::NoPlatform {
            name: name.to_owned(),
            available: platforms(entries),
        })
}

fn platforms(entries: &[Descriptor]) -> String {
    let names: Vec<String> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if names.is_empty() {
        "no platforms".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str) -> Descriptor {
        Descriptor {
            media_type: media::OCI_MANIFEST.to_owned(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.to_owned(),
                os: os.to_owned(),
                variant: None,
            }),
        }
    }

    #[test]
    fn picks_linux_amd64_and_names_what_an_index_has() {
        let entries = [entry("linux", "arm64"), entry("linux", "amd64")];
        assert_eq!(select_amd64("x", &entries).unwrap(), &entries[1]);
        let err = select_amd64("x", &entries[..1]).unwrap_err().to_string();
        assert_eq!(
            err,
            "x: no linux/amd64 image in the index (it has: linux/arm64)"
        );
        let windows = [entry("windows", "amd64")];
        assert!(select_amd64("x", &windows).is_err());
    }

    #[test]
    fn tells_an_index_from_a_manifest() {
        let d = "sha256:0";
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse(index, d, "").unwrap(), Document::Index(_)));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"sha256:1","size":2}},"layers":[]}}"#,
            media::DOCKER_MANIFEST
        );
        assert!(matches!(
            parse(manifest.as_bytes(), d, "").unwrap(),
            Document::Image(_)
        ));
        let v1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#;
        assert!(matches!(
            parse(v1, d, ""),
            Err(ManifestError::Unsupported { .. })
        ));
    }
}
