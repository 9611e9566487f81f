//! moat's container logs (docs/logs.md): docker's `json-file` log driver. A container's
//! supervisor feeds its stdout and stderr to a [`LogWriter`], which appends one JSON record per
//! line to `<dir>/<base>-json.log` and rotates it; `moat logs` prints them with [`read_logs`],
//! following the file while the container runs.
#![forbid(unsafe_code)]

mod files;
pub mod options;
pub mod reader;
pub mod record;
mod source;
#[cfg(test)]
mod test_dir;
pub mod time;
pub mod writer;

pub use options::{LogOptions, OptionsError};
pub use reader::{read_logs, ReadError, ReadOptions};
pub use writer::{LogWriter, WriteError, PARTIAL_SIZE};

/// The container's output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`, as the records' `stream` says.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}
