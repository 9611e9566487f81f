//! The reader behind `moat logs`: the records of a container's log files printed as
//! `docker logs` prints them, oldest file first, then (with `follow`) the records written
//! meanwhile, across rotations, until the container is done.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::files::{FileId, LogPaths};
use crate::record::Record;
use crate::source::Source;
use crate::time::format_rfc3339_fixed;
use crate::Stream;

/// How often a follower looks for new records.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What `moat logs` prints, docker's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `--tail N`: only the last N records (after `since`/`until`), across files.
    pub tail: Option<usize>,
    /// `-t`: each record's text prefixed by its time (nine fraction digits) and a space.
    pub timestamps: bool,
    /// `--since`: only records of this time or later.
    pub since: Option<SystemTime>,
    /// `--until`: only records of this time or earlier; the first later record ends the
    /// output, and a follower stops once this time has passed.
    pub until: Option<SystemTime>,
    /// `-f`: after what exists, print what is written until `done` and all is printed.
    pub follow: bool,
}

/// An error reading a container's log.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read log file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the logs")]
    Output(#[source] io::Error),
}

/// Whether reading goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// Prints the log `<dir>/<base>-json.log` (and its rotated files): the text of stdout records
/// to `out`, of stderr records to `err`. With `follow`, goes on printing new records, polling
/// every [`POLL_INTERVAL`], until `done()` (the writer is gone for good) has returned true and
/// everything written before has been printed. Malformed and over-long lines are skipped; a
/// line without its newline yet waits for the next poll. An `out` or `err` that is closed
/// (`EPIPE`) ends the reading without error. No log at all prints nothing.
pub fn read_logs(
    dir: &Path,
    base: &str,
    options: ReadOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
    done: &dyn Fn() -> bool,
) -> Result<(), ReadError> {
    let paths = LogPaths::new(dir, base);
    let mut printer = Printer {
        out,
        err,
        options: &options,
    };
    let (flow, newest) = print_existing(&paths, &mut printer)?;
    if flow == Flow::Stop || printer.flush()? == Flow::Stop || !options.follow {
        return Ok(());
    }
    Follower {
        paths: &paths,
        printer: &mut printer,
        active: newest,
    }
    .run(done)
}

/// Writes records as `docker logs` does, keeping to `since` and `until`.
struct Printer<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    options: &'a ReadOptions,
}

impl Printer<'_> {
    fn is_before_since(&self, record: &Record) -> bool {
        self.options.since.is_some_and(|since| record.time < since)
    }

    fn is_after_until(&self, record: &Record) -> bool {
        self.options.until.is_some_and(|until| record.time > until)
    }

    fn until_passed(&self) -> bool {
        self.options
            .until
            .is_some_and(|until| SystemTime::now() > until)
    }

    fn print(&mut self, record: Record) -> Result<Flow, ReadError> {
        if self.is_after_until(&record) {
            return Ok(Flow::Stop);
        }
        if self.is_before_since(&record) {
            return Ok(Flow::Continue);
        }
        let timestamps = self.options.timestamps;
        let to = match record.stream {
            Stream::Stdout => &mut *self.out,
            Stream::Stderr => &mut *self.err,
        };
        let written = if timestamps {
            let time = format_rfc3339_fixed(record.time);
            write!(to, "{time} {}", record.log)
        } else {
            to.write_all(record.log.as_bytes())
        };
        output_flow(written)
    }

    fn flush(&mut self) -> Result<Flow, ReadError> {
        if output_flow(self.out.flush())? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        output_flow(self.err.flush())
    }
}

/// A closed output (`EPIPE`) stops the reading quietly; other output errors are errors.
fn output_flow(result: io::Result<()>) -> Result<Flow, ReadError> {
    match result {
        Ok(()) => Ok(Flow::Continue),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Flow::Stop),
        Err(e) => Err(ReadError::Output(e)),
    }
}

fn open_error(paths: &LogPaths) -> impl FnOnce(io::Error) -> ReadError + '_ {
    |source| ReadError::Open {
        path: paths.current().to_path_buf(),
        source,
    }
}

/// The log's files, newest first.
fn open_sources(paths: &LogPaths) -> Result<Vec<Source>, ReadError> {
    let files = paths.open_all().map_err(open_error(paths))?;
    let sources = files.into_iter();
    Ok(sources
        .map(|(path, file, id)| Source::new(path, file, id))
        .collect())
}

/// Prints the records the files hold (all, or the last `tail`), oldest first, and returns the
/// newest file, read to its end, for a follower.
fn print_existing(
    paths: &LogPaths,
    printer: &mut Printer<'_>,
) -> Result<(Flow, Option<Source>), ReadError> {
    let mut sources = open_sources(paths)?;
    let flow = match printer.options.tail {
        None => print_all(&mut sources, printer)?,
        Some(tail) => print_tail(&mut sources, tail, printer)?,
    };
    let newest = (!sources.is_empty()).then(|| sources.swap_remove(0));
    Ok((flow, newest))
}

fn print_all(sources: &mut [Source], printer: &mut Printer<'_>) -> Result<Flow, ReadError> {
    for source in sources.iter_mut().rev() {
        if source.drain(&mut |record| printer.print(record))? == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// The last `tail` records: the newest file read first, older ones only while they are
/// needed, each keeping at most the records still wanted.
fn print_tail(
    sources: &mut [Source],
    tail: usize,
    printer: &mut Printer<'_>,
) -> Result<Flow, ReadError> {
    let mut picked: Vec<VecDeque<Record>> = Vec::new();
    let mut wanted = tail;
    for (index, source) in sources.iter_mut().enumerate() {
        if index > 0 && wanted == 0 {
            break;
        }
        let mut last = VecDeque::with_capacity(wanted.min(1024));
        source.drain(&mut |record| {
            if !printer.is_before_since(&record) && !printer.is_after_until(&record) {
                last.push_back(record);
                if last.len() > wanted {
                    last.pop_front();
                }
            }
            Ok(Flow::Continue)
        })?;
        wanted -= last.len();
        picked.push(last);
    }
    for record in picked.into_iter().rev().flatten() {
        if printer.print(record)? == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// Prints records as they are written, following the current file across rotations.
struct Follower<'a, 'p> {
    paths: &'a LogPaths,
    printer: &'a mut Printer<'p>,
    /// The file read last: the current one, or the one just rotated away.
    active: Option<Source>,
}

impl Follower<'_, '_> {
    fn run(mut self, done: &dyn Fn() -> bool) -> Result<(), ReadError> {
        loop {
            // Asked before catching up: what was written before `done` is then printed.
            let finished = done() || self.printer.until_passed();
            if self.catch_up()? == Flow::Stop || self.printer.flush()? == Flow::Stop {
                return Ok(());
            }
            if finished {
                return Ok(());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Prints what was written since the last call, in the current file and in any that
    /// rotations put in its place meanwhile.
    fn catch_up(&mut self) -> Result<Flow, ReadError> {
        loop {
            if self.drain_active()? == Flow::Stop {
                return Ok(Flow::Stop);
            }
            let current = FileId::at(self.paths.current()).map_err(open_error(self.paths))?;
            let active = self.active.as_ref().map(|source| source.id);
            if current.is_none() || current == active {
                return Ok(Flow::Continue);
            }
            // Rotated: what was written before the rotation is in the old file.
            if self.drain_active()? == Flow::Stop {
                return Ok(Flow::Stop);
            }
            let mut newer = self.newer_sources(active)?;
            let Some(last) = newer.pop() else {
                return Ok(Flow::Continue);
            };
            if let Some(old) = &self.active {
                if old.has_partial_line() {
                    tracing::debug!("log record cut short at the end of a rotated file, skipped");
                }
            }
            for mut source in newer {
                if source.drain(&mut |record| self.printer.print(record))? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            self.active = Some(last);
        }
    }

    fn drain_active(&mut self) -> Result<Flow, ReadError> {
        match &mut self.active {
            Some(source) => source.drain(&mut |record| self.printer.print(record)),
            None => Ok(Flow::Continue),
        }
    }

    /// The files newer than `old`, oldest first: all of them when `old` is gone (rotated
    /// out of the kept files, or truncated away with max-file 1) or there was none.
    fn newer_sources(&self, old: Option<FileId>) -> Result<Vec<Source>, ReadError> {
        let mut sources = open_sources(self.paths)?;
        if let Some(position) = sources.iter().position(|s| Some(s.id) == old) {
            sources.truncate(position);
        }
        sources.reverse();
        Ok(sources)
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
