//! Test helpers: temporary directories and tar layers built entry by entry.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tar::{EntryType, Header};

/// A directory under `$TMPDIR` (default `/var/tmp`, a real filesystem with xattrs), removed when
/// dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("TMPDIR").map_or_else(|| "/var/tmp".into(), PathBuf::from);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("moat-images-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tar layer being built. Paths are written as given (`..` included), in the GNU header.
pub(crate) struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

/// The mtime entries get unless told otherwise.
pub(crate) const MTIME: u64 = 1_600_000_000;

impl Layer {
    pub(crate) fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// A header of `kind` at `path` (raw bytes, up to 100), mode, root-owned, [`MTIME`].
    fn header(kind: EntryType, path: &str, mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(0);
        header
    }

    fn append(&mut self, mut header: Header, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, (0, 0), MTIME)
    }

    pub(crate) fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        (uid, gid): (u64, u64),
        mtime: u64,
    ) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, path, mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        self.append(header, data)
    }

    /// A file with a long name (GNU long name entry, as `tar` writes past 100 bytes).
    pub(crate) fn long_file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
        self
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        let mut header = Self::header(EntryType::Directory, path, mode);
        header.set_mtime(mtime);
        self.append(header, &[])
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(kind, path, 0o777);
        let link = &mut header.as_old_mut().linkname;
        link[..target.len()].copy_from_slice(target.as_bytes());
        self.append(header, &[])
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, path, target)
    }

    pub(crate) fn hard_link(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, path, target)
    }

    pub(crate) fn node(
        &mut self,
        kind: EntryType,
        path: &str,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut header = Self::header(kind, path, 0o620);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        self.append(header, &[])
    }

    /// PAX records for the next entry.
    pub(crate) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    /// The tar stream.
    pub(crate) fn tar(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// `sha256:` and the hex SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}
