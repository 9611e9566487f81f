//! An image's layers flattened into one read-only ext4 image: the layers are applied in order
//! onto a fresh private tree, each checked against its diff ID, and `mkfs.ext4 -d` packs the tree
//! into a temporary file that is synced and renamed to the output. The unpacking runs on its own
//! thread in a private mount namespace where the tree is bind-mounted `nodev,nosuid,noexec`, so
//! the device nodes and setuid files a layer brings are inert even there; the mount goes with the
//! thread. The tree is removed whatever happens, and nothing half-written is ever at the output.

use std::fs::{DirBuilder, File};
use std::io::{self, BufReader};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;
use sha2::{Digest, Sha256};

use crate::layers::{self, LayerError, LayerStats};

/// The directory mkfs.ext4 makes in every new filesystem's root.
const LOST_FOUND: &str = "lost+found";

/// Why an image could not be flattened.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// The private directory under the work directory cannot be made.
    #[error("cannot make a private directory under {}", .0.display())]
    WorkDir(PathBuf, #[source] io::Error),
    /// The temporary image next to the output cannot be made.
    #[error("cannot make a temporary image next to {}", .0.display())]
    Temp(PathBuf, #[source] io::Error),
    /// The unpacking thread cannot start.
    #[error("cannot start the unpacking thread")]
    Thread(#[source] io::Error),
    /// The unpacking thread panicked.
    #[error("the unpacking thread panicked")]
    Panicked,
    /// The private mount namespace cannot be set up.
    #[error("cannot set up the private mount namespace: cannot {0}")]
    Namespace(&'static str, #[source] io::Error),
    /// A layer's blob cannot be opened.
    #[error("layer {digest}: cannot open its blob {}", path.display())]
    Blob {
        /// The layer's digest.
        digest: String,
        /// The blob file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// A layer cannot be applied.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// A layer's uncompressed stream is not the one the image config names.
    #[error("layer {digest}: its diff ID is {actual}, the image config says {expected}")]
    DiffId {
        /// The layer's digest.
        digest: String,
        /// The diff ID from the image config.
        expected: String,
        /// The digest of the layer's uncompressed stream.
        actual: String,
    },
    /// Walking the tree to size the image failed.
    #[error("cannot read {} to size the image", .0.display())]
    Walk(PathBuf, #[source] io::Error),
    /// mkfs.ext4 or debugfs could not run or failed.
    #[error("cannot pack the tree into an ext4 image: {0}")]
    Mkfs(String),
    /// The finished image cannot be synced or renamed to the output.
    #[error("cannot {op} the image {}", path.display())]
    Output {
        /// What was being done.
        op: &'static str,
        /// The output path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob file (compressed or not).
    pub blob: PathBuf,
    /// The blob's digest, named in errors.
    pub digest: String,
    /// The diff ID the image config's `rootfs.diff_ids` gives it.
    pub diff_id: String,
}

/// What flattening did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlattenStats {
    /// Each layer's, in order.
    pub layers: Vec<LayerStats>,
    /// The chain ID of the layers (see [`chain_id`]).
    pub chain_id: String,
    /// Bytes of content the image was sized for.
    pub content_bytes: u64,
    /// Inodes the image was made with room for.
    pub inodes: u64,
    /// The image file's size in bytes.
    pub image_bytes: u64,
}

/// The OCI chain ID of layers with these diff IDs, lowest first: the first layer's is its diff
/// ID, each next one's is `sha256:` and the hex SHA-256 of the previous chain ID, a space and its
/// diff ID. Empty for no layers.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut ids = diff_ids.iter();
    let Some(first) = ids.next() else {
        return String::new();
    };
    ids.fold(first.clone(), |chain, id| {
        let digest = Sha256::digest(format!("{chain} {id}").as_bytes());
        format!("sha256:{}", hex::encode(digest))
    })
}

/// Applies `layers` in order onto a fresh tree in a private directory under `work_dir`, and packs
/// it into the read-only ext4 image `out` (replaced atomically; left alone on failure).
pub fn flatten(
    layers: &[Layer],
    work_dir: &Path,
    out: &Path,
) -> Result<FlattenStats, FlattenError> {
    let private = PrivateDir::create(work_dir)?;
    let tree = private.path.join("rootfs");
    DirBuilder::new()
        .mode(0o755)
        .create(&tree)
        .map_err(|e| FlattenError::WorkDir(work_dir.to_owned(), e))?;
    let temp = TempImage::create(out)?;
    let job = Job {
        layers: layers.to_vec(),
        tree,
        image: temp.path.clone(),
    };
    let worker = std::thread::Builder::new()
        .name("moat-flatten".into())
        .spawn(move || job.run_private())
        .map_err(FlattenError::Thread)?;
    let mut stats = worker.join().map_err(|_| FlattenError::Panicked)??;
    stats.image_bytes = temp.persist(out)?;
    drop(private);
    tracing::info!(out = %out.display(), chain_id = %stats.chain_id, bytes = stats.image_bytes, "image flattened");
    Ok(stats)
}

/// The work of the unpacking thread.
struct Job {
    layers: Vec<Layer>,
    tree: PathBuf,
    image: PathBuf,
}

impl Job {
    /// Enters a private mount namespace, does the work, and unmounts the tree's bind mount.
    fn run_private(self) -> Result<FlattenStats, FlattenError> {
        enter_private_namespace(&self.tree)?;
        let result = self.run();
        if let Err(e) = rustix::mount::unmount(&self.tree, UnmountFlags::DETACH) {
            tracing::warn!(tree = %self.tree.display(), error = %e, "cannot unmount the tree");
        }
        result
    }

    /// Applies the layers, checks their diff IDs, and packs the tree.
    fn run(&self) -> Result<FlattenStats, FlattenError> {
        let mut applied = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            applied.push(apply_checked(&self.tree, layer)?);
        }
        let (content_bytes, inodes) = tree_size(&self.tree)?;
        pack(&self.tree, &self.image, content_bytes, inodes)?;
        let diff_ids: Vec<String> = applied.iter().map(|s| s.diff_id.clone()).collect();
        Ok(FlattenStats {
            layers: applied,
            chain_id: chain_id(&diff_ids),
            content_bytes,
            inodes,
            image_bytes: 0,
        })
    }
}

/// Makes this thread's mount namespace its own, with `tree` bind-mounted onto itself
/// `nodev,nosuid,noexec`. Children the thread spawns inherit the namespace.
fn enter_private_namespace(tree: &Path) -> Result<(), FlattenError> {
    let ns = |op| move |e: rustix::io::Errno| FlattenError::Namespace(op, e.into());
    // SAFETY: the file descriptor table is not unshared (no CLONE_FILES), so every descriptor
    // stays valid on every thread; only this thread's filesystem context and mounts change.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::FS) }
        .map_err(ns("unshare the mount namespace"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(ns("make / private"))?;
    rustix::mount::mount_bind(tree, tree).map_err(ns("bind-mount the tree"))?;
    let flags = MountFlags::BIND | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    rustix::mount::mount_remount(tree, flags, "")
        .map_err(ns("remount the tree nodev,nosuid,noexec"))
}

/// Applies `layer` onto `tree` and checks its diff ID.
fn apply_checked(tree: &Path, layer: &Layer) -> Result<LayerStats, FlattenError> {
    let file = File::open(&layer.blob).map_err(|source| FlattenError::Blob {
        digest: layer.digest.clone(),
        path: layer.blob.clone(),
        source,
    })?;
    let mut blob = BufReader::with_capacity(1 << 20, file);
    let stats = layers::apply_layer(tree, &mut blob, &layer.digest)?;
    if !stats.diff_id.eq_ignore_ascii_case(&layer.diff_id) {
        return Err(FlattenError::DiffId {
            digest: layer.digest.clone(),
            expected: layer.diff_id.clone(),
            actual: stats.diff_id,
        });
    }
    Ok(stats)
}

/// Bytes (4 KiB blocks) and inodes the tree needs in an ext4 image; symlinks are not followed,
/// a hard-linked file counts once per link.
fn tree_size(root: &Path) -> Result<(u64, u64), FlattenError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| FlattenError::Walk(dir.clone(), e))?;
        bytes += 4096;
        inodes += 1;
        for entry in entries {
            let entry = entry.map_err(|e| FlattenError::Walk(dir.clone(), e))?;
            let meta = entry
                .metadata()
                .map_err(|e| FlattenError::Walk(entry.path(), e))?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                inodes += 1;
                bytes += meta.len().div_ceil(4096) * 4096;
            }
        }
    }
    Ok((bytes, inodes))
}

/// Packs `tree` into the ext4 image `image` (a file that exists), sized for `bytes` of content
/// with a quarter more plus 16 MiB, and a quarter more inodes than `inodes` plus 1024: no
/// journal, 4 KiB blocks, 256-byte inodes (room for xattrs and nanosecond times), no reserved
/// blocks, root-owned root. The `lost+found` mkfs adds is removed unless the tree has one.
fn pack(tree: &Path, image: &Path, bytes: u64, inodes: u64) -> Result<(), FlattenError> {
    let size_kib = (bytes + bytes / 4 + (16 << 20)).div_ceil(1024);
    let inodes = inodes + inodes / 4 + 1024;
    let mut mkfs = e2fsprogs("mkfs.ext4");
    mkfs.args(["-q", "-F", "-b", "4096", "-I", "256", "-m", "0"])
        .args(["-O", "^has_journal", "-E", "root_owner=0:0"])
        .args(["-N", &inodes.to_string(), "-d"])
        .arg(tree)
        .arg(image)
        .arg(format!("{size_kib}k"));
    run_e2fsprogs(mkfs, "mkfs.ext4").map_err(FlattenError::Mkfs)?;
    if std::fs::symlink_metadata(tree.join(LOST_FOUND)).is_err() {
        remove_lost_found(image).map_err(FlattenError::Mkfs)?;
    }
    tracing::debug!(tree = %tree.display(), image = %image.display(), size_kib, inodes, "packed");
    Ok(())
}

/// A command of e2fsprogs with no stdin or stdout, its stderr kept, and a fixed PATH.
fn e2fsprogs(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin");
    cmd
}

/// Runs `cmd` (from [`e2fsprogs`]); a failure is its last line on stderr.
fn run_e2fsprogs(mut cmd: Command, program: &str) -> Result<(), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {program} (e2fsprogs): {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().rfind(|l| !l.trim().is_empty());
    Err(sanitize(
        line.unwrap_or(&format!("{program} failed")).trim(),
    ))
}

/// Removes the `lost+found` mkfs.ext4 made in `image` (`debugfs -w -R 'rmdir lost+found'`).
fn remove_lost_found(image: &Path) -> Result<(), String> {
    let output = e2fsprogs("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("rmdir {LOST_FOUND}"))
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run debugfs (e2fsprogs): {e}"))?;
    // debugfs exits 0 when its command fails: anything on stderr but its banner is an error.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("debugfs "));
    match (output.status.success(), error) {
        (true, None) => Ok(()),
        (_, line) => Err(format!(
            "debugfs rmdir {LOST_FOUND}: {}",
            sanitize(line.unwrap_or("failed"))
        )),
    }
}

/// `text` with control characters replaced, fit for a terminal.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A name no other flatten of this process has used: pid, a counter, the time.
fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}-{nanos:08x}", std::process::id())
}

/// A fresh directory (0700) under the work directory, removed with all it holds when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(work_dir: &Path) -> Result<PrivateDir, FlattenError> {
        let err = |e| FlattenError::WorkDir(work_dir.to_owned(), e);
        let path = work_dir.join(unique_name("flatten-"));
        // mkdir fails if the name exists: the directory is ours, made 0700 (umask can only
        // narrow it) and owned by us (root).
        DirBuilder::new().mode(0o700).create(&path).map_err(err)?;
        let dir = PrivateDir { path };
        let meta = std::fs::symlink_metadata(&dir.path).map_err(err)?;
        if meta.mode() & 0o077 != 0 || meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(err(io::Error::other("the new directory is not private")));
        }
        Ok(dir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the unpacked tree");
        }
    }
}

/// A temporary image file next to the output, removed when dropped unless persisted.
struct TempImage {
    path: PathBuf,
    kept: bool,
}

impl TempImage {
    fn create(out: &Path) -> Result<TempImage, FlattenError> {
        let err = |e| FlattenError::Temp(out.to_owned(), e);
        let name = out
            .file_name()
            .ok_or_else(|| err(io::ErrorKind::InvalidInput.into()))?;
        let prefix = format!(".{}.", name.to_string_lossy());
        let path = out.with_file_name(unique_name(&prefix) + ".tmp");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(err)?;
        Ok(TempImage { path, kept: false })
    }

    /// Syncs the image, renames it to `out` and syncs the directory; returns its size.
    fn persist(mut self, out: &Path) -> Result<u64, FlattenError> {
        let err = |op| {
            move |source| FlattenError::Output {
                op,
                path: out.to_owned(),
                source,
            }
        };
        let file = File::open(&self.path).map_err(err("open"))?;
        file.sync_all().map_err(err("sync"))?;
        let size = file.metadata().map_err(err("stat"))?.len();
        std::fs::rename(&self.path, out).map_err(err("rename"))?;
        self.kept = true;
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(err("sync the directory of"))?;
        Ok(size)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
#[path = "flatten_tests.rs"]
mod tests;
