//! A bundle root that is an overlay mount (Docker's overlay2 `merged` directory) travels as
//! layers instead of one packed copy: its image layers become a read-only ext4 image cached
//! under the data root, keyed by the layers themselves, and only the container's own layers
//! (Docker's `-init` layer and the upperdir, which may already hold files) are copied, into the
//! container's writable layer. A start then copies what the container has, not the image.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::volumes::{pack_directory, VolumeError};

/// Errors turning an overlay's layers into disks.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Creating, mounting or renaming under the cache failed.
    #[error("cannot prepare the image layers of {}: {what}", root.display())]
    Cache {
        /// The bundle root.
        root: PathBuf,
        /// What failed.
        what: String,
    },
    /// Packing the layers failed.
    #[error(transparent)]
    Pack(#[from] VolumeError),
    /// Copying the container's own layers failed.
    #[error("cannot copy the container layer {}: {detail}", layer.display())]
    Copy {
        /// The layer directory.
        layer: PathBuf,
        /// cp's last line.
        detail: String,
    },
}

/// The layers under an overlay root, each list topmost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredRoot {
    /// The overlay's mount point (the bundle root).
    pub root: PathBuf,
    /// The image's layers: every lowerdir but Docker's `-init` layer.
    pub image: Vec<PathBuf>,
    /// The container's own: the upperdir, then the `-init` layer if there is one.
    pub container: Vec<PathBuf>,
}

/// The layers of `dir` if it is an overlay mount point whose layer paths all resolve to
/// directories (relative ones against the overlay2 root two levels up, as Docker mounts them
/// when its options get long); `None` otherwise (then the directory is packed whole).
pub fn layered_root(dir: &Path) -> Option<LayeredRoot> {
    let root = std::fs::canonicalize(dir).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let options = overlay_options(&mountinfo, &root)?;
    let base = root.parent()?.parent()?;
    let (lowers, upper) = parse_options(&options);
    let resolve = |p: &str| {
        let path = std::fs::canonicalize(base.join(p)).ok()?;
        path.is_dir().then_some(path)
    };
    let mut image = lowers
        .iter()
        .map(|l| resolve(l))
        .collect::<Option<Vec<_>>>()?;
    let mut container: Vec<PathBuf> = upper.iter().map(|u| resolve(u)).collect::<Option<_>>()?;
    let is_init = |p: &Path| {
        p.parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().ends_with("-init"))
    };
    if image.first().is_some_and(|p| is_init(p)) {
        container.push(image.remove(0));
    }
    (!image.is_empty()).then_some(LayeredRoot {
        root,
        image,
        container,
    })
}

/// The super options of the last overlay mounted at `root` in `mountinfo`.
fn overlay_options(mountinfo: &str, root: &Path) -> Option<String> {
    let wanted = root.to_str()?;
    mountinfo.lines().rev().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = unescape(before.split(' ').nth(4)?);
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let options = after.nth(1)?;
        (fstype == "overlay" && mount_point == wanted).then(|| options.to_owned())
    })
}

/// mountinfo's octal escapes (`\040` for a space...).
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `lowerdir` (split at `:`, topmost first) and `upperdir` of overlay options.
fn parse_options(options: &str) -> (Vec<String>, Option<String>) {
    let mut lowers = Vec::new();
    let mut upper = None;
    for option in options.split(',') {
        if let Some(l) = option.strip_prefix("lowerdir=") {
            lowers = l.split(':').map(str::to_owned).collect();
        } else if let Some(u) = option.strip_prefix("upperdir=") {
            upper = Some(u.to_owned());
        }
    }
    (lowers, upper)
}

/// The cached image of `layers` under `<data root>/layers`, made if missing: the layers merged
/// (a read-only overlay mounted at `work`) and packed. Layer directories do not change once an
/// image has them, so their paths are the key.
pub fn image_disk(
    data_root: &Path,
    root: &LayeredRoot,
    work: &Path,
) -> Result<PathBuf, LayerError> {
    let failed = |what: String| LayerError::Cache {
        root: root.root.clone(),
        what,
    };
    let mut key = Sha256::new();
    for layer in &root.image {
        key.update(layer.as_os_str().as_encoded_bytes());
        key.update(b"\n");
    }
    let key: String = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let dir = data_root.join("layers");
    let disk = dir.join(format!("{key}.ext4"));
    if disk.is_file() {
        tracing::debug!(disk = %disk.display(), "image layers cached");
        return Ok(disk);
    }
    crate::disks::make_private_dir(data_root).map_err(failed)?;
    crate::disks::make_private_dir(&dir).map_err(failed)?;
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    let packed = match root.image.as_slice() {
        [one] => pack_directory(one, &tmp, "rootfs").map_err(LayerError::from),
        layers => pack_merged(layers, work, &tmp, &failed),
    };
    let result = packed.and_then(|()| {
        record_layers(&dir.join(format!("{key}.layers")), &root.image).map_err(failed)?;
        std::fs::rename(&tmp, &disk).map_err(|e| failed(format!("rename: {e}")))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    tracing::debug!(disk = %disk.display(), layers = root.image.len(), "image layers packed");
    Ok(disk)
}

/// Mounts `layers` as a read-only overlay at `work`, packs it into `image`, unmounts.
fn pack_merged(
    layers: &[PathBuf],
    work: &Path,
    image: &Path,
    failed: &dyn Fn(String) -> LayerError,
) -> Result<(), LayerError> {
    use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
    let mut lowerdir = String::new();
    for layer in layers {
        let text = layer.to_str().filter(|t| !t.contains([':', ',']));
        let text = text.ok_or_else(|| failed(format!("{}: unusable path", layer.display())))?;
        if !lowerdir.is_empty() {
            lowerdir.push(':');
        }
        lowerdir.push_str(text);
    }
    std::fs::create_dir_all(work).map_err(|e| failed(format!("{}: {e}", work.display())))?;
    let options = std::ffi::CString::new(format!("lowerdir={lowerdir}"))
        .map_err(|_| failed("a layer path holds a NUL".into()))?;
    mount(
        "overlay",
        work,
        "overlay",
        MountFlags::RDONLY,
        Some(options.as_c_str()),
    )
    .map_err(|e| failed(format!("mounting the layers: {e}")))?;
    let packed = pack_directory(work, image, "rootfs").map_err(LayerError::from);
    if let Err(e) = unmount(work, UnmountFlags::DETACH) {
        tracing::warn!(dir = %work.display(), error = %e, "cannot unmount the merged layers");
    }
    let _ = std::fs::remove_dir(work);
    packed
}

/// Writes the layers an image was made of beside it, one per line (what `system prune` checks).
fn record_layers(path: &Path, layers: &[PathBuf]) -> Result<(), String> {
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for layer in layers {
        writeln!(file, "{}", layer.display()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Removes the cached layer images whose layers are gone (the image was removed); their count.
pub fn prune(data_root: &Path) -> usize {
    let dir = data_root.join("layers");
    let mut removed = 0;
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "layers") {
            continue;
        }
        let listed = std::fs::read_to_string(&path).unwrap_or_default();
        if listed.lines().all(|l| Path::new(l).is_dir()) && !listed.is_empty() {
            continue;
        }
        let _ = std::fs::remove_file(path.with_extension("ext4"));
        let _ = std::fs::remove_file(&path);
        removed += 1;
    }
    removed
}

/// Copies the container's layers into `upper`, the lowest first, each over the ones below
/// (`cp -a`, so owners, modes, xattrs and overlay whiteouts travel as they are).
pub fn copy_container_layers(root: &LayeredRoot, upper: &Path) -> Result<(), LayerError> {
    std::fs::create_dir_all(upper).map_err(|e| LayerError::Copy {
        layer: upper.to_owned(),
        detail: e.to_string(),
    })?;
    for layer in root.container.iter().rev() {
        let out = std::process::Command::new("cp")
            .args(["-a", "--remove-destination"])
            .arg(layer.join("."))
            .arg(upper)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .map_err(|e| e.to_string());
        let detail = match out {
            Ok(o) if o.status.success() => continue,
            Ok(o) => String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_owned(),
            Err(e) => e,
        };
        return Err(LayerError::Copy {
            layer: layer.clone(),
            detail: crate::console::sanitize(&detail),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
