//! The names of a container's log files and the identity of an open one.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// More rotated files than any `max-file` moat accepts in practice: the reader's search bound.
const MAX_ROTATED: u32 = 10_000;

/// The files of one log: `<dir>/<base>-json.log`, its rotated `.1` (newest) to `.N`, and the
/// `.new` file a rotation prepares before renaming it into place.
#[derive(Debug, Clone)]
pub struct LogPaths {
    current: PathBuf,
}

/// A file's device and inode: what tells a rotated file from its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId(u64, u64);

impl FileId {
    pub fn of(file: &File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        Ok(FileId(meta.dev(), meta.ino()))
    }

    /// The identity of the file at `path`, `None` when there is none.
    pub fn at(path: &Path) -> io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(FileId(meta.dev(), meta.ino()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl LogPaths {
    pub fn new(dir: &Path, base: &str) -> Self {
        LogPaths {
            current: dir.join(format!("{base}-json.log")),
        }
    }

    /// The file being written.
    pub fn current(&self) -> &Path {
        &self.current
    }

    /// The `index`-th rotated file (1: the newest); 0 is the current file.
    pub fn rotated(&self, index: u32) -> PathBuf {
        if index == 0 {
            return self.current.clone();
        }
        let mut name = self.current.clone().into_os_string();
        name.push(format!(".{index}"));
        PathBuf::from(name)
    }

    /// Where a rotation creates the next current file before renaming it into place.
    pub fn next(&self) -> PathBuf {
        let mut name = self.current.clone().into_os_string();
        name.push(".new");
        PathBuf::from(name)
    }

    /// Opens the current file then the rotated ones (newest first, up to the first missing),
    /// one file for each identity: a rotation that happens meanwhile shows the file just opened
    /// as current again as `.1`, which is skipped. Newest first.
    pub fn open_all(&self) -> io::Result<Vec<(PathBuf, File, FileId)>> {
        let mut files: Vec<(PathBuf, File, FileId)> = Vec::new();
        for index in 0..=MAX_ROTATED {
            let path = self.rotated(index);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && index > 0 => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let id = FileId::of(&file)?;
            if files.iter().all(|(_, _, seen)| *seen != id) {
                files.push((path, file, id));
            }
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let paths = LogPaths::new(Path::new("/run/moat/c1"), "c1");
        assert_eq!(paths.current(), Path::new("/run/moat/c1/c1-json.log"));
        assert_eq!(paths.rotated(0), Path::new("/run/moat/c1/c1-json.log"));
        assert_eq!(paths.rotated(2), Path::new("/run/moat/c1/c1-json.log.2"));
        assert_eq!(paths.next(), Path::new("/run/moat/c1/c1-json.log.new"));
    }
}
