//! One OCI layer (a tar stream, plain, gzip or zstd) applied onto a directory tree, as root:
//! whiteouts and opaque directories remove what the lower layers had, every entry keeps its
//! mode, numeric owner, mtime and `SCHILY.xattr.*` attributes. A hostile layer cannot write
//! outside the tree: a `..` component, a path through a symlink, a hard link out of the tree or
//! to a directory, a NUL in a name, an over-long path or too many entries refuse the whole layer.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};

use crate::guard::HeaderGuard;
pub use crate::names::MAX_DEPTH;
use crate::names::{normalize, pax_number, pax_time, whiteout, Whiteout};
pub use crate::stream::Compression;
use crate::stream::{decompress, HashingReader};
use crate::tree::{self, io_err, Tree, TreeError};

/// The longest path (or hard link or symlink target) an entry may have, in bytes.
pub const MAX_PATH: usize = 4096;
/// The most entries one layer may have.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The tree's root cannot be opened.
    #[error("cannot open the tree {}", .0.display())]
    Root(PathBuf, #[source] io::Error),
    /// The stream cannot be read or decompressed, or is not a tar archive.
    #[error("layer {digest}: cannot read it")]
    Read {
        /// The layer's digest.
        digest: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// An entry breaks the rules for layers.
    #[error("layer {digest}: entry {path:?} refused: {reason}")]
    Refused {
        /// The layer's digest.
        digest: String,
        /// The entry's path as the tar has it.
        path: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// An entry could not be made in the tree.
    #[error("layer {digest}: entry {path:?}: cannot {op}")]
    Entry {
        /// The layer's digest.
        digest: String,
        /// The entry's path as the tar has it.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("layer {digest}: more than {MAX_ENTRIES} entries")]
    TooManyEntries {
        /// The layer's digest.
        digest: String,
    },
}

/// What applying a layer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries in the tar (whiteouts included).
    pub entries: u64,
    /// Bytes of regular files' content written.
    pub bytes: u64,
    /// Bytes of the uncompressed tar stream.
    pub tar_bytes: u64,
    /// The layer's diff ID: `sha256:` and the hex SHA-256 of the uncompressed stream.
    pub diff_id: String,
    /// The blob's compression.
    pub compression: Compression,
}

/// Applies the layer `blob` (identified by `digest` in errors) onto the tree at `root`, and
/// returns what it held, its diff ID included (the whole stream is read, padding too).
pub fn apply_layer(
    root: &Path,
    blob: &mut dyn Read,
    digest: &str,
) -> Result<LayerStats, LayerError> {
    let tree = Tree::open(root).map_err(|e| LayerError::Root(root.to_owned(), e))?;
    let read_err = |source| LayerError::Read {
        digest: digest.to_owned(),
        source,
    };
    let (stream, compression) = decompress(blob).map_err(read_err)?;
    let mut archive = tar::Archive::new(HeaderGuard::new(HashingReader::new(stream)));
    let mut layer = Apply::new(tree, digest);
    layer.budget = space_budget(root);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        layer.entry(&mut entry)?;
    }
    layer.finish()?;
    let mut rest = archive.into_inner().into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    let stats = LayerStats {
        entries: layer.entries,
        bytes: layer.bytes,
        tar_bytes: rest.read_bytes(),
        diff_id: rest.digest(),
        compression,
    };
    tracing::debug!(digest, entries = stats.entries, bytes = stats.bytes, diff_id = %stats.diff_id, "layer applied");
    Ok(stats)
}

/// An entry's metadata, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A layer being applied.
struct Apply<'a> {
    tree: Tree,
    digest: &'a str,
    /// Paths this layer made, and their parents: what opaque directories and whiteouts keep.
    touched: HashSet<PathBuf>,
    /// Directories and their mtimes, set once every entry is in.
    dirs: Vec<(PathBuf, Timespec)>,
    /// [`MAX_ENTRIES`], but for tests.
    max_entries: u64,
    /// Bytes of file data this layer may write (see [`space_budget`]).
    budget: u64,
    entries: u64,
    bytes: u64,
    /// The current entry's path, as the tar has it, for errors.
    shown: String,
}

impl<'a> Apply<'a> {
    fn new(tree: Tree, digest: &'a str) -> Self {
        Apply {
            tree,
            digest,
            touched: HashSet::new(),
            dirs: Vec::new(),
            max_entries: MAX_ENTRIES,
            budget: u64::MAX,
            entries: 0,
            bytes: 0,
            shown: String::new(),
        }
    }

    fn refused(&self, reason: impl Into<String>) -> LayerError {
        LayerError::Refused {
            digest: self.digest.to_owned(),
            path: self.shown.clone(),
            reason: reason.into(),
        }
    }

    /// The error for a failure in the tree: a symlink or a non-directory on the way is a
    /// refusal.
    fn tree_err(&self, e: TreeError) -> LayerError {
        match e {
            TreeError::Symlink(at) => {
                self.refused(format!("the path passes through the symlink {at:?}"))
            }
            TreeError::NotDirectory(at) => self.refused(format!("{at:?} is not a directory")),
            TreeError::Io { op, source } => LayerError::Entry {
                digest: self.digest.to_owned(),
                path: self.shown.clone(),
                op,
                source,
            },
        }
    }

    /// Applies one entry.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(LayerError::TooManyEntries {
                digest: self.digest.to_owned(),
            });
        }
        let raw = entry.path_bytes().into_owned();
        self.shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let rel = normalize(&raw).map_err(|r| self.refused(r))?;
        if let Some(whiteout) = whiteout(&rel).map_err(|r| self.refused(r))? {
            return self.whiteout(&rel, whiteout);
        }
        let meta = self.meta(entry)?;
        self.touch(&rel);
        match kind {
            k if k.is_file() || k.is_contiguous() || k.is_gnu_sparse() => {
                self.file(&rel, entry, &meta)
            }
            k if k.is_dir() => self.dir(&rel, &meta),
            k if k.is_symlink() => self.symlink(&rel, entry, &meta),
            k if k.is_hard_link() => self.hard_link(&rel, entry),
            k if k.is_character_special() => {
                self.node(&rel, FileType::CharacterDevice, entry, &meta)
            }
            k if k.is_block_special() => self.node(&rel, FileType::BlockDevice, entry, &meta),
            k if k.is_fifo() => self.node(&rel, FileType::Fifo, entry, &meta),
            k => Err(self.refused(format!("unsupported entry type {:?}", k.as_byte() as char))),
        }
    }

    /// Records `rel` and its parents as made by this layer.
    fn touch(&mut self, rel: &Path) {
        let mut at = Some(rel);
        while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
            if !self.touched.insert(path.to_owned()) {
                break;
            }
            at = path.parent();
        }
    }

    /// The entry's metadata; PAX `uid`, `gid` and `mtime` records win over the header's.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, LayerError> {
        let header = entry.header();
        let bad = |field: &str| self.refused(format!("bad {field} in the header"));
        let mut uid = header.uid().map_err(|_| bad("uid"))?;
        let mut gid = header.gid().map_err(|_| bad("gid"))?;
        let mut mtime = Timespec {
            tv_sec: header.mtime().map_err(|_| bad("mtime"))? as i64,
            tv_nsec: 0,
        };
        let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
        let mut xattrs = Vec::new();
        let pax = entry.pax_extensions().map_err(|_| bad("PAX records"))?;
        for record in pax.into_iter().flatten() {
            let record = record.map_err(|_| bad("PAX records"))?;
            let value = record.value_bytes();
            match record.key_bytes() {
                b"uid" => uid = pax_number(value).ok_or_else(|| bad("PAX uid"))?,
                b"gid" => gid = pax_number(value).ok_or_else(|| bad("PAX gid"))?,
                b"mtime" => mtime = pax_time(value).ok_or_else(|| bad("PAX mtime"))?,
                key => {
                    // overlayfs' own attributes would act on the guest's overlay (the image
                    // is its lower layer): not an image's to set.
                    match key.strip_prefix(b"SCHILY.xattr.") {
                        Some(name) if name.starts_with(b"trusted.overlay.") => {}
                        Some(name) => {
                            xattrs.push((OsString::from_vec(name.to_vec()), value.to_vec()))
                        }
                        None => {}
                    }
                }
            }
        }
        let id = |v: u64, field| u32::try_from(v).map_err(|_| bad(field));
        Ok(Meta {
            mode,
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mtime,
            xattrs,
        })
    }

    /// Opens the directory that holds `rel`, making missing parents, and `rel`'s name.
    fn parent<'p>(&self, rel: &'p Path) -> Result<(OwnedFd, &'p OsStr), LayerError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(self.refused("the root must be a directory"));
        };
        let dir = self.tree.dir(parent, true).map_err(|e| self.tree_err(e))?;
        Ok((dir, name))
    }

    /// Removes whatever is at `name` in `dir` (a directory with what it holds).
    fn clear(&self, dir: &OwnedFd, name: &OsStr) -> Result<(), LayerError> {
        tree::remove(dir, name).map_err(|e| self.tree_err(e))
    }

    fn file<R: Read>(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, name)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.tree_err(io_err("create the file")(e)))?;
        let mut file = File::from(fd);
        self.bytes += self.copy_data(entry, &mut file)?;
        self.fd_meta(file.as_fd(), meta)?;
        self.times(&file, meta.mtime)
    }

    /// Copies an entry's data into `file`: a failure to read is the layer's, to write the entry's.
    fn copy_data(&self, data: &mut impl Read, file: &mut File) -> Result<u64, LayerError> {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LayerError::Read {
                        digest: self.digest.to_owned(),
                        source,
                    })
                }
            };
            total += n as u64;
            if self.bytes + total > self.budget {
                return Err(self.refused(format!(
                    "the layer unpacks to more than {} bytes, half the space free where it is unpacked \
                     (the image's filesystem needs the other half)",
                    self.budget
                )));
            }
            file.write_all(&buf[..n])
                .map_err(|e| self.io_err("write the file", e))?;
        }
    }

    fn dir(&mut self, rel: &Path, meta: &Meta) -> Result<(), LayerError> {
        if let (Some(_), Some(name)) = (rel.parent(), rel.file_name()) {
            let (dir, _) = self.parent(rel)?;
            match tree::stat(&dir, name).map_err(|e| self.tree_err(e))? {
                Some(st) if tree::is_dir(&st) => {}
                other => {
                    if other.is_some() {
                        self.clear(&dir, name)?;
                    }
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| self.tree_err(io_err("make the directory")(e)))?;
                }
            }
        }
        let fd = self.tree.dir(rel, false).map_err(|e| self.tree_err(e))?;
        self.fd_meta(fd.as_fd(), meta)?;
        self.dirs.push((rel.to_owned(), meta.mtime));
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        rel: &Path,
        entry: &tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let target = entry.link_name_bytes().unwrap_or_default().into_owned();
        if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
            return Err(self.refused("bad symlink target"));
        }
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, name)?;
        rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, name)
            .map_err(|e| self.tree_err(io_err("make the symlink")(e)))?;
        self.at_meta(&dir, name, meta, false)
    }

    fn hard_link<R: Read>(
        &mut self,
        rel: &Path,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let raw = entry.link_name_bytes().unwrap_or_default().into_owned();
        let target = normalize(&raw).map_err(|r| self.refused(format!("hard link target: {r}")))?;
        let (Some(tparent), Some(tname)) = (target.parent(), target.file_name()) else {
            return Err(self.refused("hard link to the root"));
        };
        let tdir = self.tree.dir(tparent, false).map_err(|e| match e {
            TreeError::Symlink(at) => self.refused(format!(
                "hard link target passes through the symlink {at:?}"
            )),
            e => self.tree_err(e),
        })?;
        match tree::stat(&tdir, tname).map_err(|e| self.tree_err(e))? {
            None => return Err(self.refused("hard link target does not exist")),
            Some(st) if tree::is_dir(&st) => return Err(self.refused("hard link to a directory")),
            Some(_) if target == rel => return Ok(()),
            Some(_) => {}
        }
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, name)?;
        rustix::fs::linkat(&tdir, tname, &dir, name, AtFlags::empty())
            .map_err(|e| self.tree_err(io_err("make the hard link")(e)))
    }

    fn node<R: Read>(
        &mut self,
        rel: &Path,
        kind: FileType,
        entry: &tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let header = entry.header();
        let number = |n: io::Result<Option<u32>>| n.ok().flatten().unwrap_or(0);
        let (major, minor) = (number(header.device_major()), number(header.device_minor()));
        if kind == FileType::CharacterDevice && (major, minor) == (0, 0) {
            // overlayfs' whiteout: layers say `.wh.NAME`; this one would act on the guest's
            // overlay instead.
            return Err(self.refused("a 0:0 character device (an overlay whiteout)"));
        }
        let dev = rustix::fs::makedev(major, minor);
        let (dir, name) = self.parent(rel)?;
        self.clear(&dir, name)?;
        rustix::fs::mknodat(&dir, name, kind, Mode::from_raw_mode(0o600), dev)
            .map_err(|e| self.tree_err(io_err("make the node")(e)))?;
        self.at_meta(&dir, name, meta, true)
    }

    /// Owner, then mode (chown clears setuid), then xattrs (chown clears `security.capability`)
    /// of an open file or directory.
    fn fd_meta(&self, fd: std::os::fd::BorrowedFd<'_>, meta: &Meta) -> Result<(), LayerError> {
        let err = |op| move |e| self.tree_err(io_err(op)(e));
        rustix::fs::fchown(fd, Some(uid(meta.uid)), Some(gid(meta.gid))).map_err(err("chown"))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(err("chmod"))?;
        for (key, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, key, value, XattrFlags::empty())
                .map_err(err("set an extended attribute"))?;
        }
        Ok(())
    }

    /// Owner, mode (`chmod` when set), xattrs and times of `name` in `dir`, a symlink or a node
    /// this layer just made, never following a symlink there.
    fn at_meta(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), LayerError> {
        let err = |op| move |e| self.tree_err(io_err(op)(e));
        let (owner, group) = (Some(uid(meta.uid)), Some(gid(meta.gid)));
        rustix::fs::chownat(dir, name, owner, group, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("chown"))?;
        if chmod {
            // fchmodat cannot refuse to follow a symlink, but `name` is the device node or FIFO
            // made just now, in a tree nothing else writes to.
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(err("chmod"))?;
        }
        for (key, value) in &meta.xattrs {
            match tree::set_xattr_at(dir.as_fd(), name, key, value) {
                Ok(()) => {}
                // Linux takes no user.* attribute on a symlink or a device node (EPERM), as
                // docker's applier also lets pass.
                Err(TreeError::Io { source, .. })
                    if key.as_bytes().starts_with(b"user.")
                        && source.raw_os_error() == Some(libc::EPERM) =>
                {
                    tracing::debug!(entry = %self.shown, "user.* attribute on a non-file skipped");
                }
                Err(e) => return Err(self.tree_err(e)),
            }
        }
        let times = Timestamps {
            last_access: meta.mtime,
            last_modification: meta.mtime,
        };
        rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(err("set the times"))
    }

    /// Sets an open file's times to `mtime`.
    fn times(&self, fd: &impl AsFd, mtime: Timespec) -> Result<(), LayerError> {
        let times = Timestamps {
            last_access: mtime,
            last_modification: mtime,
        };
        rustix::fs::futimens(fd, &times).map_err(|e| self.tree_err(io_err("set the times")(e)))
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> LayerError {
        self.tree_err(TreeError::Io { op, source })
    }

    /// A whiteout at `rel`: removes what the lower layers had, keeps what this layer made.
    fn whiteout(&mut self, rel: &Path, whiteout: Whiteout) -> Result<(), LayerError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        // A whiteout of something that is not there is nothing to do (the OCI spec).
        let dir = match self.tree.dir(parent, false) {
            Ok(dir) => dir,
            Err(TreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(self.tree_err(e)),
        };
        if matches!(whiteout, Whiteout::Opaque) {
            self.touch(parent);
        }
        match whiteout {
            Whiteout::Ignored => Ok(()),
            Whiteout::Opaque => self.clear_lower(parent),
            Whiteout::Remove(name) => {
                let target = parent.join(&name);
                if !self.touched.contains(&target) {
                    return self.clear(&dir, &name);
                }
                match tree::stat(&dir, &name).map_err(|e| self.tree_err(e))? {
                    Some(st) if tree::is_dir(&st) => self.clear_lower(&target),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Removes from the directory `rel` everything this layer did not make, recursively.
    fn clear_lower(&self, rel: &Path) -> Result<(), LayerError> {
        let dir = self.tree.dir(rel, false).map_err(|e| self.tree_err(e))?;
        for name in tree::list(&dir).map_err(|e| self.tree_err(e))? {
            let name = OsStr::from_bytes(&name);
            let child = rel.join(name);
            if !self.touched.contains(&child) {
                self.clear(&dir, name)?;
                continue;
            }
            match tree::stat(&dir, name).map_err(|e| self.tree_err(e))? {
                Some(st) if tree::is_dir(&st) => self.clear_lower(&child)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets the directories' mtimes, now that nothing more is made in them.
    fn finish(&mut self) -> Result<(), LayerError> {
        for (rel, mtime) in std::mem::take(&mut self.dirs) {
            self.shown = rel.to_string_lossy().into_owned();
            match self.tree.dir(&rel, false) {
                Ok(fd) => self.times(&fd, mtime)?,
                // Removed by a later whiteout of the same layer, or replaced by a later entry
                // (the last one wins): no directory to date.
                Err(TreeError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(TreeError::Symlink(_) | TreeError::NotDirectory(_)) => {}
                Err(e) => return Err(self.tree_err(e)),
            }
        }
        Ok(())
    }
}

/// Half the space free for unprivileged users on the filesystem of `root` (root may write into
/// the reserved blocks, which must stay the host's): a layer writes at most that, the packed
/// image needs about as much again. No bound when the filesystem cannot tell.
fn space_budget(root: &Path) -> u64 {
    rustix::fs::statvfs(root)
        .map(|st| st.f_bavail.saturating_mul(st.f_frsize) / 2)
        .unwrap_or(u64::MAX)
}

fn uid(id: u32) -> Uid {
    Uid::from_raw(id)
}

fn gid(id: u32) -> Gid {
    Gid::from_raw(id)
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
