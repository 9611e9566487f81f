//! OCI images built from [`Layer`]s: config, manifest, optionally an index of platforms, as
//! blobs in memory ([`Built`], which the hostile registry serves) or as an OCI image layout
//! directory ([`Built::write`], which skopeo pushes and archives).

use super::layer::{sha256, Layer, LayerBlob};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// OCI image manifest media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The runtime part of an image config (`config` in the JSON), plus its platform.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env`, `NAME=value` each.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// `ExposedPorts` keys, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `architecture` (default `amd64`).
    pub architecture: String,
    /// `os` (default `linux`).
    pub os: String,
    /// `variant`, e.g. `v8` for arm64.
    pub variant: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            entrypoint: None,
            cmd: Some(vec!["/bin/sh".into()]),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            user: None,
            stop_signal: None,
            exposed_ports: Vec::new(),
            labels: BTreeMap::new(),
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }
}

impl ImageConfig {
    /// The `config` object, with only the fields that are set.
    fn runtime_json(&self) -> Value {
        let mut c = Map::new();
        let mut put = |k: &str, v: Value| {
            c.insert(k.to_string(), v);
        };
        if let Some(v) = &self.entrypoint {
            put("Entrypoint", json!(v));
        }
        if let Some(v) = &self.cmd {
            put("Cmd", json!(v));
        }
        if !self.env.is_empty() {
            put("Env", json!(self.env));
        }
        for (key, v) in [
            ("WorkingDir", &self.working_dir),
            ("User", &self.user),
            ("StopSignal", &self.stop_signal),
        ] {
            if let Some(v) = v {
                put(key, json!(v));
            }
        }
        if !self.exposed_ports.is_empty() {
            let ports: Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            put("ExposedPorts", Value::Object(ports));
        }
        if !self.labels.is_empty() {
            put("Labels", json!(self.labels));
        }
        Value::Object(c)
    }
}

/// One image: layers bottom first, and its config.
#[derive(Clone, Debug, Default)]
pub struct Image {
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The config.
    pub config: ImageConfig,
}

impl Image {
    /// An image with `config` and no layers yet.
    pub fn new(config: ImageConfig) -> Self {
        Self {
            layers: Vec::new(),
            config,
        }
    }

    /// Busybox ([`Layer::busybox`]) with the default config.
    pub fn busybox() -> Self {
        Self::default().layer(Layer::busybox())
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// A small image for another platform: one layer with `/arch` holding `arch`.
    pub fn tiny(os: &str, arch: &str) -> Self {
        let config = ImageConfig {
            os: os.into(),
            architecture: arch.into(),
            variant: (arch == "arm64").then(|| "v8".to_string()),
            ..ImageConfig::default()
        };
        Self::new(config).layer(Layer::new().file("arch", format!("{os}/{arch}\n")))
    }
}

/// One built manifest and what it refers to.
#[derive(Clone, Debug)]
pub struct ManifestInfo {
    /// `sha256:` of the manifest JSON.
    pub digest: String,
    /// The manifest JSON.
    pub json: Vec<u8>,
    /// `sha256:` of the config JSON.
    pub config_digest: String,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
    /// `os`, `architecture` of the image.
    pub platform: (String, String),
    /// `variant` of the image's platform.
    pub variant: Option<String>,
}

/// A built image or index: every blob by digest, and the descriptor a tag points at.
#[derive(Clone, Debug)]
pub struct Built {
    /// Every blob (layers, configs, manifests, the index) by `sha256:` digest.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// The manifests, in index order (one when there is no index).
    pub manifests: Vec<ManifestInfo>,
    /// `sha256:` of what a tag points at: the index, or the only manifest.
    pub top_digest: String,
    /// Media type of that: [`INDEX_TYPE`] or [`MANIFEST_TYPE`].
    pub top_media_type: &'static str,
}

/// An OCI image layout directory written by [`Built::write`].
#[derive(Clone, Debug)]
pub struct Written {
    /// The directory.
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) index.json gives the top descriptor.
    pub tag: String,
    /// What was written.
    pub built: Built,
}

impl Written {
    /// skopeo's name for it: `oci:DIR:TAG`.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }
}

/// What an OCI layout holds: one image, or an index of platforms.
#[derive(Clone, Debug)]
pub struct OciLayout {
    images: Vec<Image>,
    index: bool,
}

impl OciLayout {
    /// One image: index.json points at its manifest.
    pub fn single(image: Image) -> Self {
        Self {
            images: vec![image],
            index: false,
        }
    }

    /// An image index: linux/amd64 is `amd64`, linux/arm64 a different tiny image.
    pub fn multi_platform(amd64: Image) -> Self {
        Self::index(vec![amd64, Image::tiny("linux", "arm64")])
    }

    /// An image index with no linux/amd64: linux/arm64, and windows/amd64 (right arch, wrong
    /// os), both tiny.
    pub fn without_amd64() -> Self {
        Self::index(vec![
            Image::tiny("linux", "arm64"),
            Image::tiny("windows", "amd64"),
        ])
    }

    /// An image index of these images (platforms from their configs).
    pub fn index(images: Vec<Image>) -> Self {
        Self {
            images,
            index: true,
        }
    }

    /// Builds every blob.
    pub fn build(&self) -> Built {
        let mut blobs = BTreeMap::new();
        let manifests: Vec<ManifestInfo> = self
            .images
            .iter()
            .map(|image| build_image(image, &mut blobs))
            .collect();
        if !self.index {
            return Built {
                top_digest: manifests[0].digest.clone(),
                top_media_type: MANIFEST_TYPE,
                blobs,
                manifests,
            };
        }
        let index = index_json(&manifests);
        let top_digest = sha256(&index);
        blobs.insert(top_digest.clone(), index);
        Built {
            blobs,
            manifests,
            top_digest,
            top_media_type: INDEX_TYPE,
        }
    }

    /// Builds and writes the layout to `dir` (created), tagged `tag`.
    pub fn write(&self, dir: &Path, tag: &str) -> Written {
        self.build().write(dir, tag)
    }
}

impl Built {
    /// Writes an OCI image layout: `oci-layout`, `index.json` (one descriptor, tagged `tag`),
    /// `blobs/sha256/HEX` for every blob.
    pub fn write(self, dir: &Path, tag: &str) -> Written {
        let blob_dir = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blob_dir).expect("create layout dir");
        for (digest, data) in &self.blobs {
            let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
            std::fs::write(blob_dir.join(hex), data).expect("write blob");
        }
        let layout = json!({"imageLayoutVersion": "1.0.0"});
        std::fs::write(dir.join("oci-layout"), layout.to_string()).expect("write oci-layout");
        let top = &self.blobs[&self.top_digest];
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [{
                "mediaType": self.top_media_type,
                "digest": self.top_digest,
                "size": top.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(dir.join("index.json"), index.to_string()).expect("write index.json");
        Written {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            built: self,
        }
    }

    /// The manifest for `os`/`arch`, if any.
    pub fn manifest_for(&self, os: &str, arch: &str) -> Option<&ManifestInfo> {
        self.manifests
            .iter()
            .find(|m| m.platform.0 == os && m.platform.1 == arch)
    }

    /// The bytes a tag resolves to (the index or the only manifest).
    pub fn top(&self) -> &[u8] {
        &self.blobs[&self.top_digest]
    }
}

/// Builds one image's layers, config and manifest into `blobs`.
fn build_image(image: &Image, blobs: &mut BTreeMap<String, Vec<u8>>) -> ManifestInfo {
    let layers: Vec<LayerBlob> = image.layers.iter().map(Layer::blob).collect();
    let config = config_json(&image.config, &layers);
    let config_digest = sha256(&config);
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    });
    let json = serde_json::to_vec(&manifest).expect("manifest json");
    let digest = sha256(&json);
    for layer in &layers {
        blobs.insert(layer.digest.clone(), layer.blob.clone());
    }
    blobs.insert(config_digest.clone(), config.clone());
    blobs.insert(digest.clone(), json.clone());
    ManifestInfo {
        digest,
        json,
        config_digest,
        config,
        layers,
        platform: (image.config.os.clone(), image.config.architecture.clone()),
        variant: image.config.variant.clone(),
    }
}

/// The image config JSON: platform, runtime config, `rootfs.diff_ids`, one history entry per
/// layer.
fn config_json(config: &ImageConfig, layers: &[LayerBlob]) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let history: Vec<Value> = (0..layers.len())
        .map(|i| json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("moat test layer {i}")}))
        .collect();
    let mut value = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": config.architecture,
        "os": config.os,
        "config": config.runtime_json(),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if let Some(variant) = &config.variant {
        value["variant"] = json!(variant);
    }
    serde_json::to_vec(&value).expect("config json")
}

/// The image index JSON of `manifests`, each with its platform.
fn index_json(manifests: &[ManifestInfo]) -> Vec<u8> {
    let entries: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let mut platform = json!({"os": m.platform.0, "architecture": m.platform.1});
            if let Some(variant) = &m.variant {
                platform["variant"] = json!(variant);
            }
            json!({
                "mediaType": MANIFEST_TYPE,
                "digest": m.digest,
                "size": m.json.len(),
                "platform": platform,
            })
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": entries});
    serde_json::to_vec(&index).expect("index json")
}
