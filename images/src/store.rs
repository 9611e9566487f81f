//! The image store under `<data root>/images/` (docs/images.md).
//!
//! ```text
//! blobs/sha256/<hex>     verified content: manifests, configs, layers (never partial)
//! rootfs/<chain id>.ext4 one flattened read-only filesystem per chain of layers
//! tmp/<pid>-<n>/         one directory per running command, flock'd while it lives
//! refs.json              the index: reference -> manifest, config, chain id
//! gc.lock                shared by every command that adds or reads; exclusive to collect
//! refs.lock              exclusive around each read-modify-write of refs.json
//! ```
//!
//! A blob is written into the command's tmp directory, hashed while it streams in, and renamed
//! into `blobs/` only once its digest matched: a reader never sees half a blob. A command killed
//! with SIGKILL leaves its tmp directory, whose flock died with it: the next command removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("image store: {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A blob's content does not hash to its digest.
    #[error("blob {expected}: content does not match its digest (got {actual})")]
    DigestMismatch {
        /// The digest the blob was named by.
        expected: String,
        /// What its content hashes to.
        actual: String,
    },
    /// A digest that is not `sha256:` and 64 lowercase hex digits.
    #[error("unsupported or malformed digest {0:?} (moat takes sha256 digests)")]
    BadDigest(String),
    /// A blob is bigger than the limit of its kind.
    #[error("blob {digest}: over the {limit}-byte limit for a {what}")]
    TooBig {
        /// The blob.
        digest: String,
        /// Manifest, config...
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest of a stored image cannot be read: nothing is collected.
    #[error("image store: {0}; nothing was removed")]
    Unreadable(String),
    /// refs.json could not be parsed.
    #[error("image store: {} is corrupt: {source}", path.display())]
    CorruptIndex {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// What the index knows of one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the image manifest (the platform's one, for an index).
    pub manifest: String,
    /// Digest of the image config: the image's ID.
    pub config: String,
    /// The repository digest the registry served (the index's, when it was an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
    /// Chain ID of the layers: names the flattened filesystem.
    pub chain_id: String,
    /// Sum of the compressed layer sizes and the config, as `docker images` counts.
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    refs: BTreeMap<String, ImageRecord>,
}

/// The store at one data root.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A lock held until dropped (flock on an open file).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// The private temporary directory of one command, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    _lock: File,
}

impl TempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Checks `sha256:<64 hex>` and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(StoreError::BadDigest(digest.to_owned())),
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `<pid>-<n>-<nanoseconds>`: unique among the commands of one host and PID namespace, and
/// unlikely to meet another namespace's (a clash only means another try: names are created
/// with `mkdir`, never reused).
fn temp_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos:09}", std::process::id())
}

/// Whether `path` is still the file `file` was opened as.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `sha256:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn flock(file: &File, mode: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor this function borrows; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn private_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("creating", path)(e)),
    }
}

impl Store {
    /// Opens (creating as needed) the store under `data_root`, and removes what killed commands
    /// left in `tmp/`.
    pub fn open(data_root: &Path) -> Result<Self> {
        let dir = data_root.join("images");
        private_dir(data_root)?;
        private_dir(&dir)?;
        for sub in ["blobs", "blobs/sha256", "rootfs", "tmp"] {
            private_dir(&dir.join(sub))?;
        }
        let store = Store { dir };
        store.sweep_tmp()?;
        Ok(store)
    }

    /// The store's directory (`<data root>/images`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sweep_tmp(&self) -> Result<()> {
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err("reading", &tmp))? {
            let path = entry.map_err(io_err("reading", &tmp))?.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(false) {
                tracing::debug!(path = %path.display(), "removing what a killed command left");
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
        Ok(())
    }

    /// A fresh private temporary directory, locked for this process's life.
    pub fn temp_dir(&self) -> Result<TempDir> {
        loop {
            let path = self.dir.join("tmp").join(temp_name());
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("creating", &path)(e)),
            }
            // Another command's sweep may take the directory between its creation and the
            // lock: then it is gone (or another one), and a fresh name is tried.
            let Ok(lock) = File::open(&path) else {
                continue;
            };
            flock(&lock, libc::LOCK_EX).map_err(io_err("locking", &path))?;
            if same_file(&lock, &path) {
                return Ok(TempDir { path, _lock: lock });
            }
        }
    }

    fn lock(&self, name: &str, mode: libc::c_int) -> Result<Lock> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        flock(&file, mode).map_err(io_err("locking", &path))?;
        Ok(Lock { _file: file })
    }

    /// Held while a command adds blobs or resolves an image: no collection runs meanwhile.
    pub fn use_lock(&self) -> Result<Lock> {
        self.lock("gc.lock", libc::LOCK_SH)
    }

    /// Path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// Whether a verified blob is present.
    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_path(digest)?.is_file())
    }

    /// Reads a whole blob of at most `limit` bytes.
    pub fn read_blob(&self, digest: &str, what: &'static str, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(io_err("reading", &path))?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooBig {
                digest: digest.to_owned(),
                what,
                limit,
            });
        }
        Ok(bytes)
    }

    /// Starts writing blob `digest` into `tmp`; [`BlobWriter::commit`] verifies and publishes it.
    pub fn blob_writer(&self, tmp: &TempDir, digest: &str) -> Result<BlobWriter> {
        let target = self.blob_path(digest)?;
        let part = tmp.path().join(format!("{}.part", digest_hex(digest)?));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&part)
            .map_err(io_err("creating", &part))?;
        Ok(BlobWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            written: 0,
            part,
            target,
            digest: digest.to_owned(),
        })
    }

    /// Stores bytes already in memory under their digest, which must match.
    pub fn put_blob(&self, tmp: &TempDir, digest: &str, bytes: &[u8]) -> Result<()> {
        if self.has_blob(digest)? {
            let actual = sha256_digest(bytes);
            return check_digest(digest, actual);
        }
        let mut writer = self.blob_writer(tmp, digest)?;
        writer
            .write_all(bytes)
            .map_err(io_err("writing", tmp.path()))?;
        writer.commit()
    }

    /// Path of the flattened filesystem of a chain ID.
    pub fn rootfs_path(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("rootfs")
            .join(format!("{}.ext4", digest_hex(chain_id)?)))
    }

    /// Held while one chain is being flattened, so two commands do not both do it.
    pub fn rootfs_lock(&self, chain_id: &str) -> Result<Lock> {
        self.lock(
            &format!("rootfs/{}.lock", digest_hex(chain_id)?),
            libc::LOCK_EX,
        )
    }

    /// Publishes a finished file as the flattened filesystem of `chain_id`.
    pub fn publish_rootfs(&self, file: &Path, chain_id: &str) -> Result<PathBuf> {
        let target = self.rootfs_path(chain_id)?;
        fs::rename(file, &target).map_err(io_err("publishing", &target))?;
        sync_dir(target.parent().unwrap_or(&self.dir))?;
        Ok(target)
    }

    fn refs_path(&self) -> PathBuf {
        self.dir.join("refs.json")
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.refs_path();
        let index: Index = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::CorruptIndex { path, source })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        for record in index.refs.values() {
            for digest in [&record.manifest, &record.config, &record.chain_id] {
                digest_hex(digest)?;
            }
        }
        Ok(index)
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let path = self.refs_path();
        let tmp = self.dir.join("refs.json.new");
        let bytes = serde_json::to_vec_pretty(index).expect("the index serializes");
        let mut file = File::create(&tmp).map_err(io_err("writing", &tmp))?;
        file.write_all(&bytes).map_err(io_err("writing", &tmp))?;
        file.sync_all().map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("writing", &path))?;
        sync_dir(&self.dir)
    }

    /// Every reference and its record, sorted by reference.
    pub fn list(&self) -> Result<BTreeMap<String, ImageRecord>> {
        let _lock = self.lock("refs.lock", libc::LOCK_SH)?;
        Ok(self.read_index()?.refs)
    }

    /// Sets references to a record (after its blobs and rootfs are in place).
    pub fn tag(&self, names: &[String], record: &ImageRecord) -> Result<()> {
        let _lock = self.lock("refs.lock", libc::LOCK_EX)?;
        let mut index = self.read_index()?;
        for name in names {
            index.refs.insert(name.clone(), record.clone());
        }
        self.write_index(&index)
    }

    /// Removes references; returns the records removed.
    pub fn untag(&self, names: &[String]) -> Result<Vec<ImageRecord>> {
        let _lock = self.lock("refs.lock", libc::LOCK_EX)?;
        let mut index = self.read_index()?;
        let removed = names.iter().filter_map(|n| index.refs.remove(n)).collect();
        self.write_index(&index)?;
        Ok(removed)
    }

    /// Removes every blob and rootfs no reference uses. Waits for the commands using the store.
    /// `layers_of` lists the blobs of a record (manifest, config, layers).
    pub fn collect(
        &self,
        layers_of: &dyn Fn(&Store, &ImageRecord) -> Result<Vec<String>>,
    ) -> Result<u64> {
        let gc = self.lock("gc.lock", libc::LOCK_EX)?;
        self.collect_locked(gc, layers_of)
    }

    /// [`Store::collect`] only if no other command is using the store now (after a failed pull
    /// or load, to take back what it added; a busy store is collected by a later `moat rmi`).
    pub fn collect_if_idle(
        &self,
        layers_of: &dyn Fn(&Store, &ImageRecord) -> Result<Vec<String>>,
    ) -> Result<Option<u64>> {
        let path = self.dir.join("gc.lock");
        let file = File::open(&path).map_err(io_err("opening", &path))?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err("locking", &path))? {
            return Ok(None);
        }
        self.collect_locked(Lock { _file: file }, layers_of)
            .map(Some)
    }

    fn collect_locked(
        &self,
        _gc: Lock,
        layers_of: &dyn Fn(&Store, &ImageRecord) -> Result<Vec<String>>,
    ) -> Result<u64> {
        let _refs = self.lock("refs.lock", libc::LOCK_SH)?;
        let index = self.read_index()?;
        let mut keep = BTreeSet::new();
        let mut chains = BTreeSet::new();
        for record in index.refs.values() {
            keep.extend(layers_of(self, record)?);
            chains.insert(digest_hex(&record.chain_id)?.to_owned());
        }
        let keep: BTreeSet<String> = keep
            .iter()
            .filter_map(|d| digest_hex(d).ok().map(str::to_owned))
            .collect();
        let mut freed = remove_unlisted(&self.dir.join("blobs/sha256"), &keep, "")?;
        freed += remove_unlisted(&self.dir.join("rootfs"), &chains, ".ext4")?;
        Ok(freed)
    }

    /// Bytes used by blobs and by flattened filesystems (allocated, as `du` counts).
    pub fn disk_usage(&self) -> Result<(u64, u64)> {
        Ok((
            dir_usage(&self.dir.join("blobs/sha256"))?,
            dir_usage(&self.dir.join("rootfs"))?,
        ))
    }
}

fn remove_unlisted(dir: &Path, keep: &BTreeSet<String>, suffix: &str) -> Result<u64> {
    let mut freed = 0;
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = match name.strip_suffix(suffix) {
            Some(stem) if suffix.is_empty() || name.ends_with(suffix) => stem,
            _ if name.ends_with(".lock") => {
                let stem = name.trim_end_matches(".lock");
                if !keep.contains(stem) {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            _ => continue,
        };
        if !keep.contains(stem) {
            freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
        }
    }
    Ok(freed)
}

fn dir_usage(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(io_err("reading", dir))? {
        let entry = entry.map_err(io_err("reading", dir))?;
        if let Ok(meta) = entry.metadata() {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", dir))
}

fn check_digest(expected: &str, actual: String) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(StoreError::DigestMismatch {
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// A blob being written: hashes what it is given; [`BlobWriter::commit`] checks the digest.
pub struct BlobWriter {
    file: io::BufWriter<File>,
    hasher: Sha256,
    written: u64,
    part: PathBuf,
    target: PathBuf,
    digest: String,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the digest, syncs and renames the blob into place. On a mismatch the partial
    /// file is removed and the error names the digest.
    pub fn commit(mut self) -> Result<()> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        let flushed = self
            .file
            .flush()
            .and_then(|()| self.file.get_ref().sync_data());
        if let Err(e) = check_digest(&self.digest, actual) {
            let _ = fs::remove_file(&self.part);
            return Err(e);
        }
        flushed.map_err(io_err("writing", &self.part))?;
        fs::rename(&self.part, &self.target).map_err(io_err("publishing", &self.target))?;
        sync_dir(self.target.parent().expect("blobs have a parent"))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
