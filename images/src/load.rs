//! `moat load`: a `docker save` archive (manifest.json) or an OCI image layout tar (index.json),
//! from a file or stdin. The archive's files are unpacked into the command's private tmp
//! directory (regular files only, each name checked), then installed like a pull.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::image::{self, ImageError, Source};
use crate::manifest::{self, media, Descriptor, Document, MANIFEST_LIMIT};
use crate::progress::Progress;
use crate::reference::ImageName;
use crate::store::{sha256_digest, BlobWriter, ImageRecord, Store, TempDir};

/// Errors of a load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The archive could not be read.
    #[error("reading the archive: {0}")]
    Read(io::Error),
    /// An entry name that is not a plain relative path.
    #[error("archive entry {0:?}: not a plain relative path")]
    BadEntry(String),
    /// Neither manifest.json nor index.json.
    #[error("not an image archive: no manifest.json (docker save) or index.json (OCI layout)")]
    NotAnArchive,
    /// A file the archive's manifest names is missing or malformed.
    #[error("archive: {0}")]
    Malformed(String),
    /// A RepoTag or ref name that is not a valid reference.
    #[error("archive: {0}")]
    Name(#[from] crate::reference::ReferenceError),
    /// Installing failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The most entries an archive may have (an image archive has a few per layer).
const MAX_ENTRIES: usize = 10_000;

/// The largest JSON file of an archive moat reads.
const JSON_LIMIT: u64 = MANIFEST_LIMIT;

fn safe_name(raw: &Path) -> Result<PathBuf, LoadError> {
    let mut out = PathBuf::new();
    for part in raw.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(LoadError::BadEntry(raw.display().to_string())),
        }
    }
    Ok(out)
}

/// Unpacks the archive's regular files into `dir`; symlinks (docker's duplicate layers) and hard
/// links (archives repacked by GNU tar) are returned as name -> target, resolved later inside
/// the archive.
fn unpack(input: &mut dyn Read, dir: &Path) -> Result<BTreeMap<PathBuf, PathBuf>, LoadError> {
    let mut links = BTreeMap::new();
    let mut archive = tar::Archive::new(input);
    for (n, entry) in archive.entries().map_err(LoadError::Read)?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(LoadError::Malformed(format!(
                "more than {MAX_ENTRIES} entries: not an image archive"
            )));
        }
        let mut entry = entry.map_err(LoadError::Read)?;
        let name = safe_name(&entry.path().map_err(LoadError::Read)?)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(LoadError::Read)?
                .ok_or_else(|| LoadError::BadEntry(name.display().to_string()))?;
            // A symlink is relative to its directory, a hard link to the archive's root.
            let base = match kind.is_symlink() {
                true => name.parent().unwrap_or(Path::new("")),
                false => Path::new(""),
            };
            links.insert(name.clone(), base.join(target.as_ref()));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(LoadError::Read)?;
        }
        let mut file = File::create(&path).map_err(LoadError::Read)?;
        io::copy(&mut entry, &mut file).map_err(LoadError::Read)?;
    }
    Ok(links)
}

struct Archive {
    dir: PathBuf,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl Archive {
    /// The unpacked file of an archive name, following the archive's own symlinks.
    fn file(&self, name: &str) -> Result<PathBuf, LoadError> {
        let mut name = normalize(Path::new(name))?;
        for _ in 0..8 {
            match self.links.get(&name) {
                Some(target) => name = normalize(target)?,
                None => break,
            }
        }
        let path = self.dir.join(&name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(LoadError::Malformed(format!(
                "{} is missing",
                name.display()
            )))
        }
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, LoadError> {
        let bytes = read_limited(&self.file(name)?)?;
        serde_json::from_slice(&bytes).map_err(|e| LoadError::Malformed(format!("{name}: {e}")))
    }

    fn blob(&self, digest: &str) -> Result<PathBuf, LoadError> {
        let hex =
            crate::store::digest_hex(digest).map_err(|e| LoadError::Malformed(e.to_string()))?;
        self.file(&format!("blobs/sha256/{hex}"))
    }
}

/// Resolves `..` lexically inside the archive; refuses to leave it.
fn normalize(path: &Path) -> Result<PathBuf, LoadError> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir if out.pop() => {}
            _ => return Err(LoadError::BadEntry(path.display().to_string())),
        }
    }
    Ok(out)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, LoadError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(JSON_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(LoadError::Read)?;
    if bytes.len() as u64 > JSON_LIMIT {
        return Err(LoadError::Malformed(format!(
            "{} is over {JSON_LIMIT} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Blobs by digest from files of the unpacked archive.
struct FileSource {
    files: BTreeMap<String, PathBuf>,
}

impl Source for FileSource {
    fn fetch(
        &mut self,
        desc: &Descriptor,
        out: &mut BlobWriter,
        _progress: &mut dyn Progress,
    ) -> Result<(), ImageError> {
        let path = self.files.get(&desc.digest).ok_or_else(|| {
            ImageError::Fetch(format!("blob {}: not in the archive", desc.digest))
        })?;
        let mut file = File::open(path)
            .map_err(|e| ImageError::Fetch(format!("blob {}: {e}", desc.digest)))?;
        io::copy(&mut file, out)
            .map_err(|e| ImageError::Fetch(format!("blob {}: {e}", desc.digest)))?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    manifests: Vec<OciIndexEntry>,
}

#[derive(Debug, Deserialize)]
struct OciIndexEntry {
    #[serde(flatten)]
    desc: Descriptor,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One image of an archive, ready to install.
struct Loaded {
    names: Vec<String>,
    manifest: Vec<u8>,
    source: FileSource,
}

fn file_descriptor(path: &Path, media_type: &str) -> Result<(Descriptor, PathBuf), LoadError> {
    let digest = crate::store::file_digest(path).map_err(LoadError::Read)?;
    let size = fs::metadata(path).map_err(LoadError::Read)?.len();
    Ok((
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
            platform: None,
        },
        path.to_owned(),
    ))
}

/// docker save's manifest.json: synthesizes an OCI manifest for each entry.
fn docker_images(archive: &Archive) -> Result<Vec<Loaded>, LoadError> {
    let entries: Vec<DockerEntry> = archive.json("manifest.json")?;
    let mut images = Vec::new();
    for entry in entries {
        let (config, config_path) = file_descriptor(
            &archive.file(&entry.config)?,
            "application/vnd.oci.image.config.v1+json",
        )?;
        let mut files = BTreeMap::from([(config.digest.clone(), config_path)]);
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (desc, path) = file_descriptor(
                &archive.file(layer)?,
                "application/vnd.oci.image.layer.v1.tar",
            )?;
            files.insert(desc.digest.clone(), path);
            layers.push(desc);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| ImageName::parse(t).map(|n| n.canonical()))
            .collect::<Result<Vec<_>, _>>()?;
        images.push(Loaded {
            names,
            manifest: serde_json::to_vec(&manifest).expect("a manifest serializes"),
            source: FileSource { files },
        });
    }
    Ok(images)
}

/// An OCI layout's index.json: every image (indexes resolved to linux/amd64).
fn oci_images(archive: &Archive) -> Result<Vec<Loaded>, LoadError> {
    let index: OciIndex = archive.json("index.json")?;
    let mut images = Vec::new();
    for entry in index.manifests {
        let mut bytes = read_limited(&archive.blob(&entry.desc.digest)?)?;
        let label = entry.desc.digest.clone();
        if let Document::Index(list) =
            manifest::parse(&bytes, &label, &entry.desc.media_type).map_err(ImageError::from)?
        {
            let chosen = manifest::select_amd64(&label, &list).map_err(ImageError::from)?;
            bytes = read_limited(&archive.blob(&chosen.digest)?)?;
        }
        let Document::Image(m) = manifest::parse(&bytes, &label, "").map_err(ImageError::from)?
        else {
            return Err(ImageError::NestedIndex(label).into());
        };
        let mut files = BTreeMap::new();
        for desc in std::iter::once(&m.config).chain(&m.layers) {
            files.insert(desc.digest.clone(), archive.blob(&desc.digest)?);
        }
        // containerd's annotation is a full name; the OCI one is often a bare tag (`latest`),
        // which names no repository: such an image is loaded untagged.
        let name = entry
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| {
                entry
                    .annotations
                    .get("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains('/') || n.contains(':'))
            });
        let names = match name {
            Some(n) => vec![ImageName::parse(n)?.canonical()],
            None => vec![],
        };
        images.push(Loaded {
            names,
            manifest: bytes,
            source: FileSource { files },
        });
    }
    Ok(images)
}

/// Loads every image of an archive; returns the stored names (or the image ID of an untagged
/// image) and records.
pub fn load(
    store: &Store,
    input: &mut dyn Read,
    progress: &mut dyn Progress,
) -> Result<Vec<(Vec<String>, ImageRecord)>, LoadError> {
    let tmp: TempDir = store.temp_dir().map_err(ImageError::from)?;
    let dir = tmp.path().join("archive");
    let links = unpack(input, &dir)?;
    let archive = Archive { dir, links };
    let images = if archive.dir.join("manifest.json").is_file() {
        docker_images(&archive)?
    } else if archive.dir.join("index.json").is_file() {
        oci_images(&archive)?
    } else {
        return Err(LoadError::NotAnArchive);
    };
    let mut loaded = Vec::new();
    for mut image in images {
        let names = if image.names.is_empty() {
            // Untagged: kept under its manifest digest, shown as <none>.
            vec![sha256_digest(&image.manifest)]
        } else {
            image.names.clone()
        };
        let record = image::install_or_undo(
            store,
            &names,
            &image.manifest,
            None,
            &mut image.source,
            progress,
        )?;
        loaded.push((image.names, record));
    }
    Ok(loaded)
}
