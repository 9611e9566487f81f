//! The jail root's contents on the host side: empty placeholders that the VMM bind-mounts the
//! real files over inside its own mount namespace (no copies). A destination that already
//! exists, is a symlink or has other hard links is refused: nothing in the jail root may point
//! anywhere else on the host.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::layout::{self, LayoutError};

/// Errors building the jail root.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A file to put in the jail does not exist or cannot be read.
    #[error("{what} {}: {}", path.display(), reason(source))]
    Source {
        /// What it is (kernel, initramfs, disk...).
        what: String,
        /// Its host path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file to put in the jail is not a regular file (or device, for devices).
    #[error("{what} {}: not a regular file", path.display())]
    SourceKind {
        /// What it is.
        what: String,
        /// Its host path.
        path: PathBuf,
    },
    /// A destination is a symlink.
    #[error("jail destination {} is a symlink; refusing it", .0.display())]
    Symlink(PathBuf),
    /// A destination has other hard links.
    #[error("jail destination {} is a hard link (nlink {nlink}); refusing it", path.display())]
    HardLink {
        /// The destination.
        path: PathBuf,
        /// Its link count.
        nlink: u64,
    },
    /// A destination already exists.
    #[error("jail destination {} already exists; refusing to reuse it", .0.display())]
    Exists(PathBuf),
    /// Creating a placeholder failed.
    #[error("cannot create {}", path.display())]
    Create {
        /// The destination.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A directory of the layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "not found".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// What may be bound into the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file (kernel, initramfs) or a regular file or block device (disk).
    File,
    /// A character device (/dev/kvm).
    CharDevice,
}

/// Checks that `path` exists, can be opened for reading and is of the right kind.
pub fn check_source(what: &str, path: &Path, kind: SourceKind) -> Result<(), DirError> {
    let source_err = |source| DirError::Source {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(source_err)?;
    let ft = meta.file_type();
    let ok = match kind {
        SourceKind::File => ft.is_file() || ft.is_block_device(),
        SourceKind::CharDevice => ft.is_char_device(),
    };
    if !ok {
        return Err(DirError::SourceKind {
            what: what.to_owned(),
            path: path.to_owned(),
        });
    }
    if kind == SourceKind::File {
        std::fs::File::open(path).map_err(source_err)?;
    }
    Ok(())
}

/// Checks that nothing exists at `path` (without following a symlink), naming what is there.
pub fn check_destination(path: &Path) -> Result<(), DirError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DirError::Create {
            path: path.to_owned(),
            source,
        }),
        Ok(meta) => Err(existing(path, &meta)),
    }
}

fn existing(path: &Path, meta: &std::fs::Metadata) -> DirError {
    if meta.file_type().is_symlink() {
        DirError::Symlink(path.to_owned())
    } else if !meta.is_dir() && meta.nlink() > 1 {
        DirError::HardLink {
            path: path.to_owned(),
            nlink: meta.nlink(),
        }
    } else {
        DirError::Exists(path.to_owned())
    }
}

/// Creates the empty placeholder `<root>/<name>` (`O_EXCL | O_NOFOLLOW`, mode 0600), and its
/// parent directory inside the root if needed (mode 0711).
pub fn create_placeholder(root: &Path, name: &str) -> Result<PathBuf, DirError> {
    let path = root.join(name);
    if let Some(parent) = Path::new(name)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        layout::ensure_dir(&root.join(parent), layout::ROOT_MODE)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            check_destination(&path)?;
            return Err(DirError::Exists(path));
        }
        Err(source) => return Err(DirError::Create { path, source }),
    };
    let meta = file.metadata().map_err(|source| DirError::Create {
        path: path.clone(),
        source,
    })?;
    if meta.nlink() != 1 {
        return Err(existing(&path, &meta));
    }
    Ok(path)
}

/// Removes the placeholders `names` under `root` and the directories they needed, ignoring the
/// ones already gone.
pub fn remove_placeholders(root: &Path, names: &[String]) {
    for name in names {
        remove_ignoring_missing(&root.join(name), false);
        if let Some(parent) = Path::new(name)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            remove_ignoring_missing(&root.join(parent), true);
        }
    }
}

fn remove_ignoring_missing(path: &Path, dir: bool) {
    let result = if dir {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %path.display(), error = %e, "cannot remove");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn placeholders_are_fresh_empty_files() {
        let tmp = TempDir::new("dir");
        let path = create_placeholder(tmp.path(), "dev/kvm").unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file() && meta.len() == 0 && meta.mode() & 0o777 == 0o600);
        assert!(matches!(
            create_placeholder(tmp.path(), "dev/kvm"),
            Err(DirError::Exists(_))
        ));
        remove_placeholders(tmp.path(), &["dev/kvm".into()]);
        assert!(!tmp.path().join("dev").exists());
    }

    #[test]
    fn symlinked_and_hard_linked_destinations_are_refused() {
        let tmp = TempDir::new("dir-links");
        let target = tmp.path().join("target");
        std::fs::write(&target, b"secret").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("vmlinux")).unwrap();
        let err = create_placeholder(tmp.path(), "vmlinux").unwrap_err();
        assert!(matches!(err, DirError::Symlink(_)), "{err}");
        assert!(err.to_string().contains("is a symlink"));
        // A dangling symlink too: O_NOFOLLOW must not create its target.
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), tmp.path().join("disk0")).unwrap();
        assert!(matches!(
            create_placeholder(tmp.path(), "disk0"),
            Err(DirError::Symlink(_))
        ));
        assert!(!tmp.path().join("nowhere").exists());
        std::fs::hard_link(&target, tmp.path().join("initramfs")).unwrap();
        let err = create_placeholder(tmp.path(), "initramfs").unwrap_err();
        assert!(matches!(err, DirError::HardLink { nlink: 2, .. }), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        assert!(check_destination(&tmp.path().join("free")).is_ok());
    }

    #[test]
    fn sources_must_exist_and_have_the_right_kind() {
        let tmp = TempDir::new("dir-src");
        let err = check_source("kernel", &tmp.path().join("none"), SourceKind::File).unwrap_err();
        assert!(err.to_string().ends_with("none: not found"), "{err}");
        assert!(matches!(
            check_source("kernel", tmp.path(), SourceKind::File),
            Err(DirError::SourceKind { .. })
        ));
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        check_source("kernel", &file, SourceKind::File).unwrap();
        assert!(check_source("kvm", &file, SourceKind::CharDevice).is_err());
        check_source("null", Path::new("/dev/null"), SourceKind::CharDevice).unwrap();
    }
}
