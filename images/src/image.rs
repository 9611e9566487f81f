//! Putting an image into the store, from any source (a registry, an archive): the manifest, the
//! config and the layers as verified blobs, then the flattened filesystem, then the references.

use std::path::PathBuf;

use serde::Deserialize;

use crate::flatten::{self, FlattenError};
use crate::manifest::{self, Descriptor, Document, ManifestError, CONFIG_LIMIT, MANIFEST_LIMIT};
use crate::progress::Progress;
use crate::store::{sha256_digest, BlobWriter, ImageRecord, Store, StoreError, TempDir};

/// Errors installing or reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The config could not be read.
    #[error("config {digest}: {source}")]
    Config {
        /// Its digest.
        digest: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The config's diff IDs do not match the layers.
    #[error("config {digest}: {diff_ids} diff IDs for {layers} layers")]
    DiffIds {
        /// The config.
        digest: String,
        /// How many diff IDs it lists.
        diff_ids: usize,
        /// How many layers the manifest has.
        layers: usize,
    },
    /// Flattening the layers failed.
    #[error(transparent)]
    Flatten(#[from] FlattenError),
    /// The source could not give a blob.
    #[error("{0}")]
    Fetch(String),
    /// An index where an image manifest was needed (after platform selection).
    #[error("{0}: an index inside an index is not supported")]
    NestedIndex(String),
}

/// Where blobs come from.
pub trait Source {
    /// Writes the blob `desc` into `out` (which verifies it on commit).
    fn fetch(
        &mut self,
        desc: &Descriptor,
        out: &mut BlobWriter,
        progress: &mut dyn Progress,
    ) -> Result<(), ImageError>;
}

#[derive(Debug, Deserialize)]
struct RootfsOfConfig {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigProbe {
    rootfs: RootfsOfConfig,
}

/// The layers' diff IDs from an image config.
pub fn diff_ids(config: &[u8], digest: &str) -> Result<Vec<String>, ImageError> {
    let probe: ConfigProbe =
        serde_json::from_slice(config).map_err(|source| ImageError::Config {
            digest: digest.to_owned(),
            source,
        })?;
    Ok(probe.rootfs.diff_ids)
}

/// Reads the image manifest of a record from the store.
pub fn manifest_of(store: &Store, record: &ImageRecord) -> Result<manifest::Manifest, ImageError> {
    let bytes = store.read_blob(&record.manifest, "manifest", MANIFEST_LIMIT)?;
    match manifest::parse(&bytes, &record.manifest, "")? {
        Document::Image(m) => Ok(m),
        Document::Index(_) => Err(ImageError::NestedIndex(record.manifest.clone())),
    }
}

/// The blobs a record uses: manifest, config, layers (for the collector).
pub fn blobs_of(store: &Store, record: &ImageRecord) -> Result<Vec<String>, StoreError> {
    let mut blobs = vec![record.manifest.clone(), record.config.clone()];
    blobs.extend(record.repo_digest.iter().cloned());
    match manifest_of(store, record) {
        Ok(m) => blobs.extend(m.layers.into_iter().map(|l| l.digest)),
        // A missing manifest keeps nothing else alive; any other failure stops the collector
        // (it must not take the layers of an image it could not read).
        Err(ImageError::Store(StoreError::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::debug!(manifest = %record.manifest, "manifest missing")
        }
        Err(e) => return Err(StoreError::Unreadable(e.to_string())),
    }
    Ok(blobs)
}

fn fetch_missing(
    store: &Store,
    tmp: &TempDir,
    desc: &Descriptor,
    source: &mut dyn Source,
    progress: &mut dyn Progress,
) -> Result<(), ImageError> {
    if store.has_blob(&desc.digest)? {
        progress.layer_done(&desc.digest, desc.size, true);
        return Ok(());
    }
    let mut writer = store.blob_writer(tmp, &desc.digest)?;
    source.fetch(desc, &mut writer, progress)?;
    writer.commit()?;
    progress.layer_done(&desc.digest, desc.size, false);
    Ok(())
}

/// Refuses what the manifest declares before anything is downloaded: a config over its limit
/// (it is read whole), no layers at all.
fn check_sizes(manifest: &manifest::Manifest, digest: &str) -> Result<(), ImageError> {
    if manifest.config.size > CONFIG_LIMIT {
        return Err(ImageError::Fetch(format!(
            "config {}: {} bytes, over the {CONFIG_LIMIT}-byte limit",
            manifest.config.digest, manifest.config.size
        )));
    }
    if manifest.layers.is_empty() {
        return Err(ImageError::Fetch(format!(
            "manifest {digest}: an image without layers has no filesystem to run"
        )));
    }
    Ok(())
}

/// Installs an image manifest (already chosen for linux/amd64) and everything it needs, and
/// points `names` at it. `repo_digest` is the digest the reference resolved to (the index's).
pub fn install(
    store: &Store,
    names: &[String],
    manifest_bytes: &[u8],
    repo_digest: Option<String>,
    source: &mut dyn Source,
    progress: &mut dyn Progress,
) -> Result<ImageRecord, ImageError> {
    let tmp = store.temp_dir()?;
    let digest = sha256_digest(manifest_bytes);
    let manifest = match manifest::parse(manifest_bytes, &digest, "")? {
        Document::Image(m) => m,
        Document::Index(_) => return Err(ImageError::NestedIndex(digest)),
    };
    store.put_blob(&tmp, &digest, manifest_bytes)?;
    check_sizes(&manifest, &digest)?;
    let mut quiet = crate::progress::Quiet;
    fetch_missing(store, &tmp, &manifest.config, source, &mut quiet)?;
    let config = store.read_blob(&manifest.config.digest, "config", CONFIG_LIMIT)?;
    let diff_ids = diff_ids(&config, &manifest.config.digest)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::DiffIds {
            digest: manifest.config.digest.clone(),
            diff_ids: diff_ids.len(),
            layers: manifest.layers.len(),
        });
    }
    for layer in &manifest.layers {
        fetch_missing(store, &tmp, layer, source, progress)?;
    }
    let chain_id = flatten::chain_id(&diff_ids);
    ensure_rootfs(store, &tmp, &manifest, &diff_ids, &chain_id, progress)?;
    let record = ImageRecord {
        manifest: digest.clone(),
        config: manifest.config.digest.clone(),
        repo_digest,
        chain_id,
        size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
    };
    store.tag(names, &record)?;
    Ok(record)
}

/// [`install`] under the store's use lock; on failure, takes back the blobs it added if no
/// other command is using the store (`moat images` and the store's files are as before).
pub fn install_or_undo(
    store: &Store,
    names: &[String],
    manifest_bytes: &[u8],
    repo_digest: Option<String>,
    source: &mut dyn Source,
    progress: &mut dyn Progress,
) -> Result<ImageRecord, ImageError> {
    let used = store.use_lock()?;
    let result = install(store, names, manifest_bytes, repo_digest, source, progress);
    drop(used);
    // A failed install's blobs, and on success those of an image the names pointed at before
    // and nothing else uses, go now if no other command is using the store.
    if let Err(e) = store.collect_if_idle(&blobs_of) {
        tracing::debug!("cannot collect after the install: {e}");
    }
    result
}

/// Makes sure the flattened filesystem of an image is in the store (once per chain ID).
pub fn ensure_rootfs(
    store: &Store,
    tmp: &TempDir,
    manifest: &manifest::Manifest,
    diff_ids: &[String],
    chain_id: &str,
    progress: &mut dyn Progress,
) -> Result<PathBuf, ImageError> {
    let target = store.rootfs_path(chain_id)?;
    if target.is_file() {
        return Ok(target);
    }
    let _lock = store.rootfs_lock(chain_id)?;
    if target.is_file() {
        return Ok(target);
    }
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| {
            Ok(flatten::Layer {
                blob: store.blob_path(&l.digest)?,
                digest: l.digest.clone(),
                diff_id: diff_id.clone(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    progress.converting(chain_id);
    let started = std::time::Instant::now();
    let out = tmp.path().join("rootfs.ext4");
    flatten::flatten(&layers, tmp.path(), &out)?;
    progress.converted(chain_id, started.elapsed());
    Ok(store.publish_rootfs(&out, chain_id)?)
}

/// The flattened filesystem of a stored image, converting it if it is missing (e.g. removed by
/// hand, or made by an older moat).
pub fn rootfs_of(store: &Store, record: &ImageRecord) -> Result<PathBuf, ImageError> {
    let target = store.rootfs_path(&record.chain_id)?;
    if target.is_file() {
        return Ok(target);
    }
    let tmp = store.temp_dir()?;
    let manifest = manifest_of(store, record)?;
    let config = store.read_blob(&record.config, "config", CONFIG_LIMIT)?;
    let diff_ids = diff_ids(&config, &record.config)?;
    let mut quiet = crate::progress::Quiet;
    ensure_rootfs(
        store,
        &tmp,
        &manifest,
        &diff_ids,
        &record.chain_id,
        &mut quiet,
    )
}
