//! Exclusive read-write attach of image volumes: while a VM runs, the `moat` process that
//! started it holds an `flock` on each image file it attached, exclusive for read-write and
//! shared for read-only, so no two kernels ever write one ext4 (in one VM or in two). A
//! read-only attach also refuses an image whose journal still needs recovery: the guest could
//! not replay it on a read-only disk.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::volumes::{is_ext4_file, read_at};

/// Offset of ext4's `s_feature_incompat` (superblock at 1024, field at 0x60).
const EXT4_INCOMPAT_OFFSET: u64 = 1024 + 0x60;
/// `EXT4_FEATURE_INCOMPAT_RECOVER`: the journal has transactions to replay.
const EXT4_INCOMPAT_RECOVER: u32 = 0x4;

/// Errors taking a volume's lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The image cannot be opened or its superblock read.
    #[error("-v/--volume {}: cannot use it", .0.display())]
    Open(PathBuf, #[source] std::io::Error),
    /// The same image twice in one run, one of them read-write.
    #[error("-v/--volume {}: attached twice (at {first} and {second}); an image attached read-write can be attached only once", path.display())]
    Twice {
        /// The image.
        path: PathBuf,
        /// Its first destination.
        first: String,
        /// Its second destination.
        second: String,
    },
    /// Another VM holds the image.
    #[error("-v/--volume {}: in use by {holder}; {}", path.display(), if *.write { "an image attached read-write cannot be attached anywhere else" } else { "it is attached read-write there" })]
    Busy {
        /// The image.
        path: PathBuf,
        /// Who holds it.
        holder: String,
        /// This attach is read-write.
        write: bool,
    },
    /// A read-only attach of an image with a journal to replay.
    #[error("-v/--volume {}: its journal needs recovery (it was not unmounted cleanly); attach it read-write once, or run e2fsck -fy on it, before attaching it read-only", .0.display())]
    NeedsRecovery(PathBuf),
}

/// One attached image: its path, where it goes, and whether it is written.
#[derive(Debug, Clone, Copy)]
pub struct Attach<'a> {
    /// The image file.
    pub path: &'a Path,
    /// The container path (for messages).
    pub destination: &'a str,
    /// Attached read-only.
    pub readonly: bool,
}

/// The held locks; dropping them releases every image.
#[derive(Debug, Default)]
pub struct VolumeLocks {
    _files: Vec<File>,
}

/// Locks every image of `attaches` (exclusive for read-write, shared for read-only) and checks
/// read-only images for a journal to replay. `state_root` names the holders of busy images.
pub fn lock_all(attaches: &[Attach<'_>], state_root: &Path) -> Result<VolumeLocks, LockError> {
    refuse_twice(attaches)?;
    let mut files = Vec::with_capacity(attaches.len());
    for a in attaches {
        let open_err = |e| LockError::Open(a.path.to_owned(), e);
        let mut file = File::open(a.path).map_err(open_err)?;
        let op = if a.readonly {
            FlockOperation::NonBlockingLockShared
        } else {
            FlockOperation::NonBlockingLockExclusive
        };
        if flock(file.as_fd(), op).is_err() {
            return Err(LockError::Busy {
                path: a.path.to_owned(),
                holder: holder_of(&file, state_root),
                write: !a.readonly,
            });
        }
        if a.readonly && needs_recovery(&mut file).map_err(open_err)? {
            return Err(LockError::NeedsRecovery(a.path.to_owned()));
        }
        files.push(file);
    }
    Ok(VolumeLocks { _files: files })
}

/// Refuses one image given twice when either attach writes.
fn refuse_twice(attaches: &[Attach<'_>]) -> Result<(), LockError> {
    let mut seen: Vec<((u64, u64), &Attach<'_>)> = Vec::new();
    for a in attaches {
        let meta = std::fs::metadata(a.path).map_err(|e| LockError::Open(a.path.to_owned(), e))?;
        let key = (meta.dev(), meta.ino());
        if let Some((_, first)) = seen
            .iter()
            .find(|(k, b)| *k == key && !(a.readonly && b.readonly))
        {
            return Err(LockError::Twice {
                path: a.path.to_owned(),
                first: first.destination.to_owned(),
                second: a.destination.to_owned(),
            });
        }
        seen.push((key, a));
    }
    Ok(())
}

/// Whether the file is ext2/3/4 and its superblock says the journal has transactions to replay
/// (any other content has no journal of this kind: false).
fn needs_recovery(file: &mut File) -> std::io::Result<bool> {
    if !is_ext4_file(file)? {
        return Ok(false);
    }
    let mut word = [0u8; 4];
    read_at(file, EXT4_INCOMPAT_OFFSET, &mut word)?;
    Ok(u32::from_le_bytes(word) & EXT4_INCOMPAT_RECOVER != 0)
}

/// Names the process holding a lock on `file`: the container whose VM it started when its
/// state directory says so, else its pid (from `/proc/locks`), else "another process".
fn holder_of(file: &File, state_root: &Path) -> String {
    let Ok(meta) = file.metadata() else {
        return "another process".into();
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let Some(pid) = lock_holder(&locks, meta.dev(), meta.ino()) else {
        return "another process".into();
    };
    match container_of(pid, state_root) {
        Some(id) => format!("container {id} (moat pid {pid})"),
        None => format!("process {pid}"),
    }
}

/// The pid of an FLOCK on (dev, ino) in `/proc/locks` text.
/// Lines: `1: FLOCK  ADVISORY  WRITE 1234 fe:01:5678 0 EOF` (device numbers in hex).
pub fn lock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "1: ->"; only holders count.
        let holder = fields.get(1) == Some(&"FLOCK") && fields.get(4).is_some();
        (holder && fields.get(5) == Some(&want.as_str()))
            .then(|| fields[4].parse().ok())
            .flatten()
    })
}

/// The container whose VMM `pid` started: the state directory whose `vmm.pid` names a child of
/// `pid`.
fn container_of(pid: u32, state_root: &Path) -> Option<String> {
    for entry in std::fs::read_dir(state_root).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("vmm.pid")) else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{}/status", text.trim()));
        let parent = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim().to_owned()))
        });
        if parent.as_deref() == Some(pid.to_string().as_str()) {
            return entry.file_name().into_string().ok();
        }
    }
    None
}

#[cfg(test)]
#[path = "locks_tests.rs"]
mod tests;
