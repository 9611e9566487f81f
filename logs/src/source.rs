//! One open log file read record by record, from where the last read stopped: what a
//! follower keeps across polls, and what survives the file's rotation (the open descriptor).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::files::FileId;
use crate::reader::{Flow, ReadError};
use crate::record::{decode, Record};

/// Lines longer than this are not records moat writes (16 KiB of log escaped at most six
/// times, plus the fields): they are skipped.
pub const MAX_LINE: usize = 1 << 20;

const CHUNK: usize = 64 * 1024;

/// A log file open for reading.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    file: File,
    pub id: FileId,
    /// The bytes of a line whose newline has not been read yet.
    carry: Vec<u8>,
    /// Set while the rest of a line past [`MAX_LINE`] is thrown away.
    skipping: bool,
}

impl Source {
    pub fn new(path: PathBuf, file: File, id: FileId) -> Self {
        Source {
            path,
            file,
            id,
            carry: Vec::new(),
            skipping: false,
        }
    }

    /// Whether a line without its newline is waiting: at the end of a rotated file, a record
    /// cut short.
    pub fn has_partial_line(&self) -> bool {
        !self.carry.is_empty() || self.skipping
    }

    /// Reads to the end of the file, giving `each` the record of every complete line; a line
    /// not finished yet waits for the next call. Stops early when `each` says so.
    pub fn drain(
        &mut self,
        each: &mut dyn FnMut(Record) -> Result<Flow, ReadError>,
    ) -> Result<Flow, ReadError> {
        let mut chunk = vec![0; CHUNK];
        loop {
            let read = match self.file.read(&mut chunk) {
                Ok(0) => return Ok(Flow::Continue),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    let path = self.path.clone();
                    return Err(ReadError::Read { path, source });
                }
            };
            if self.split(&chunk[..read], each)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
    }

    /// Cuts `data` at newlines; the part after the last one is carried.
    fn split(
        &mut self,
        mut data: &[u8],
        each: &mut dyn FnMut(Record) -> Result<Flow, ReadError>,
    ) -> Result<Flow, ReadError> {
        while let Some(newline) = data.iter().position(|&b| b == b'\n') {
            let record = self.complete_line(&data[..newline]);
            data = &data[newline + 1..];
            if let Some(record) = record {
                if each(record)? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
        }
        self.carry_part(data);
        Ok(Flow::Continue)
    }

    /// The record of the carried bytes and `last`, a line's end.
    fn complete_line(&mut self, last: &[u8]) -> Option<Record> {
        if std::mem::take(&mut self.skipping) || self.carry.len() + last.len() > MAX_LINE {
            tracing::debug!(path = %self.path.display(), "log line too long, skipped");
            self.carry.clear();
            return None;
        }
        let record = if self.carry.is_empty() {
            decode(last)
        } else {
            self.carry.extend_from_slice(last);
            decode(&self.carry)
        };
        self.carry.clear();
        if record.is_none() && !last.is_empty() {
            tracing::debug!(path = %self.path.display(), "malformed log line skipped");
        }
        record
    }

    fn carry_part(&mut self, part: &[u8]) {
        if self.skipping {
            return;
        }
        if self.carry.len() + part.len() > MAX_LINE {
            self.carry.clear();
            self.skipping = true;
            return;
        }
        self.carry.extend_from_slice(part);
    }
}
