//! Which image a `moat run` boots: a stored image (pulled first by `--pull`'s rule) or a built-in
//! one, and the stored image's filesystem held for the run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use moat_images::lookup::find;
use moat_images::reference::ImageName;
use moat_images::store::{Store, TempDir};

use crate::images::{open_store, pull_name, RegistryArgs, Report};

/// docker's `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PullPolicy {
    /// Pull before every run.
    Always,
    /// Pull when the store has no such image (and no built-in image has the name).
    #[default]
    Missing,
    /// Never pull.
    Never,
}

/// The image of a run.
#[derive(Debug)]
pub enum RunImage {
    /// A built-in image (the run's IMAGE names it).
    BuiltIn,
    /// A stored image.
    Stored(StoredImage),
}

/// A stored image held for one run.
#[derive(Debug)]
pub struct StoredImage {
    /// The name the store knows it by.
    pub name: String,
    /// A hard link to its filesystem in the run's private tmp directory: `moat rmi` during the
    /// run removes the store's name for it, not the run's.
    pub disk: PathBuf,
    /// The image config (JSON).
    pub config: Vec<u8>,
    /// Removed (with the link) when the run ends; a killed run's is swept by the next command.
    pub _tmp: TempDir,
}

/// Finds (pulling as `policy` says) the image `name`. `builtin` tells whether a built-in image
/// of that name exists.
pub fn resolve(
    name: &str,
    policy: PullPolicy,
    registry: &RegistryArgs,
    data_root: &Path,
    builtin: &dyn Fn(&str) -> bool,
) -> Result<RunImage> {
    let store = open_store(data_root)?;
    // Held from the lookup until the run holds its image: no `moat rmi` collects in between.
    let _use = store.use_lock()?;
    let found = match policy {
        PullPolicy::Always => None,
        _ => find(&store, name)?,
    };
    let found = match (found, policy) {
        (Some(found), _) => found,
        (None, PullPolicy::Missing | PullPolicy::Never) if builtin(name) => {
            return Ok(RunImage::BuiltIn)
        }
        (None, PullPolicy::Never) => {
            bail!("No such image: {name} (not in the store, and --pull never)")
        }
        (None, _) => {
            let parsed = ImageName::parse(name)?;
            // Progress goes to stderr (stdout is the container's); a pull that fails before
            // its first layer prints only the error line.
            pull_name(&store, &parsed, registry, Report::Stderr)
                .with_context(|| format!("image {name}"))?;
            find(&store, &parsed.canonical())?
                .with_context(|| format!("{name}: pulled, but not in the store"))?
        }
    };
    hold(&store, found.key, &found.record)
}

/// Links the image's filesystem for the run; the caller holds the store's use lock.
fn hold(store: &Store, name: String, record: &moat_images::store::ImageRecord) -> Result<RunImage> {
    let disk = moat_images::image::rootfs_of(store, record)?;
    let config = store.read_blob(
        &record.config,
        "config",
        moat_images::manifest::CONFIG_LIMIT,
    )?;
    let tmp = store.temp_dir()?;
    let link = tmp.path().join("rootfs.ext4");
    std::fs::hard_link(&disk, &link)
        .with_context(|| format!("holding {} for the run", disk.display()))?;
    Ok(RunImage::Stored(StoredImage {
        name,
        disk: link,
        config,
        _tmp: tmp,
    }))
}
