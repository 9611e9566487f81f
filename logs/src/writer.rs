//! The writer: a container's stdout and stderr bytes cut into records at newlines and
//! appended to `<dir>/<base>-json.log`, rotated as docker's json-file driver rotates.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::files::LogPaths;
use crate::record::encode;
use crate::{LogOptions, Stream};

/// Docker's partial-message size: a line that reaches this many bytes without a newline is
/// written as a record of its own, without newline, and the rest of the line follows in the
/// next records.
pub const PARTIAL_SIZE: usize = 16 * 1024;

/// The log files' permissions, docker's.
const FILE_MODE: u32 = 0o640;

/// An error writing a container's log.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot open log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write log file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rotate log file {path}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes one container's log in docker's json-file format.
///
/// Bytes given to [`LogWriter::write`] are cut at newlines; each line, its `\n` included, is one
/// record, written whole by one `write(2)` on a file opened `O_APPEND` (no fsync), so that a
/// reader sees a partial record only at the end of the file while it is being written. A line
/// without its newline yet waits, per stream, until the newline comes, until it is
/// [`PARTIAL_SIZE`] bytes long, or until [`LogWriter::flush_stream`] / [`LogWriter::flush`] /
/// drop (the stream's end) writes it without newline.
///
/// When a record would grow the current file past `max_size`, the file is rotated first: with
/// `max_file` = 1 it restarts empty, otherwise it becomes `.1` (`.1` becomes `.2`, ..., up to
/// `.{max_file - 1}`, the oldest being dropped). The current file's name always exists: the next
/// one is prepared as `<base>-json.log.new`, the full one hard-linked to `.1`, and the next one
/// renamed over it.
#[derive(Debug)]
pub struct LogWriter {
    paths: LogPaths,
    options: LogOptions,
    file: File,
    size: u64,
    pending: [Vec<u8>; 2],
    clock: fn() -> SystemTime,
}

impl LogWriter {
    /// Opens (creating it, or appending to what a previous writer left) `<dir>/<base>-json.log`.
    /// `dir` must exist. Rotated files beyond `max_file` left by an earlier configuration and a
    /// rotation's leftover `.new` file are removed.
    pub fn create(dir: &Path, base_name: &str, options: LogOptions) -> Result<Self, WriteError> {
        let paths = LogPaths::new(dir, base_name);
        remove_stale(&paths, options.max_file)?;
        let file = open_log(paths.current())?;
        let size = file
            .metadata()
            .map_err(|source| WriteError::Open {
                path: paths.current().to_path_buf(),
                source,
            })?
            .len();
        Ok(LogWriter {
            paths,
            options,
            file,
            size,
            pending: [Vec::new(), Vec::new()],
            clock: SystemTime::now,
        })
    }

    /// The current log file, `<dir>/<base>-json.log`.
    pub fn path(&self) -> &Path {
        self.paths.current()
    }

    /// Logs bytes the container wrote on `stream`: every line they complete is written.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), WriteError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let pending = &mut self.pending[stream.index()];
            let room = PARTIAL_SIZE - pending.len();
            let window = &rest[..rest.len().min(room)];
            let taken = match window.iter().position(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                None => window.len(),
            };
            pending.extend_from_slice(&window[..taken]);
            rest = &rest[taken..];
            let complete = pending.last() == Some(&b'\n') || pending.len() == PARTIAL_SIZE;
            if complete {
                self.emit(stream)?;
            }
        }
        Ok(())
    }

    /// Ends a line of `stream` without its newline: what waits is written as a record.
    pub fn flush_stream(&mut self, stream: Stream) -> Result<(), WriteError> {
        self.emit(stream)
    }

    /// [`LogWriter::flush_stream`] for both streams (stdout first).
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.emit(Stream::Stdout)?;
        self.emit(Stream::Stderr)
    }

    /// Writes the stream's pending bytes, if any, as one record.
    fn emit(&mut self, stream: Stream) -> Result<(), WriteError> {
        let mut log = std::mem::take(&mut self.pending[stream.index()]);
        if log.is_empty() {
            return Ok(());
        }
        let record = encode(stream, &log, (self.clock)());
        log.clear();
        self.pending[stream.index()] = log;
        self.append(&record)
    }

    fn append(&mut self, record: &[u8]) -> Result<(), WriteError> {
        let len = record.len() as u64;
        if let Some(max_size) = self.options.max_size {
            if self.size > 0 && self.size.saturating_add(len) > max_size {
                self.rotate()?;
            }
        }
        self.file
            .write_all(record)
            .map_err(|source| WriteError::Write {
                path: self.paths.current().to_path_buf(),
                source,
            })?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WriteError> {
        let next_path = self.paths.next();
        let rotate_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WriteError::Rotate { path, source }
        };
        // O_APPEND excludes O_TRUNC: a leftover is removed rather than truncated.
        ignore_missing(fs::remove_file(&next_path)).map_err(rotate_error(&next_path))?;
        let next = open_log(&next_path)?;
        if self.options.max_file >= 2 {
            self.shift().map_err(rotate_error(self.paths.current()))?;
        }
        fs::rename(&next_path, self.paths.current()).map_err(rotate_error(&next_path))?;
        tracing::debug!(path = %self.paths.current().display(), size = self.size, "log rotated");
        self.file = next;
        self.size = 0;
        Ok(())
    }

    /// `.k` becomes `.k+1` (the oldest, `.{max_file - 1}`, overwritten) and the current file
    /// becomes `.1` too, by a hard link where the file system has them.
    fn shift(&self) -> io::Result<()> {
        let max_file = self.options.max_file;
        for index in (1..max_file - 1).rev() {
            ignore_missing(fs::rename(
                self.paths.rotated(index),
                self.paths.rotated(index + 1),
            ))?;
        }
        let newest = self.paths.rotated(1);
        ignore_missing(fs::remove_file(&newest))?;
        if let Err(e) = fs::hard_link(self.paths.current(), &newest) {
            tracing::debug!(error = %e, "no hard link for log rotation, renaming");
            fs::rename(self.paths.current(), &newest)?;
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "log's last partial lines lost");
        }
    }
}

fn open_log(path: &Path) -> Result<File, WriteError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| WriteError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes `.new` and the rotated files from `.{max_file}` on.
fn remove_stale(paths: &LogPaths, max_file: u32) -> Result<(), WriteError> {
    let remove = |path: PathBuf| match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(WriteError::Rotate { path, source }),
    };
    remove(paths.next())?;
    let mut index = max_file.max(1);
    while remove(paths.rotated(index))? {
        index += 1;
    }
    Ok(())
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
