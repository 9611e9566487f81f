//! Where the container's own process writes: its log (docker's `json-file`, moat-logs) and,
//! while a client is attached (`moat run` in the foreground, the OCI relay), that client's
//! stdout and stderr, written directly through the descriptors it passed.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use moat_protocol::OutputStream;

use super::mux::Sink;
use super::record::Plan;

/// An attached client's descriptors.
pub(crate) struct Attached {
    pub(crate) stdout: Option<File>,
    pub(crate) stderr: Option<File>,
    /// The runtime's notices (an OOM kill) go to its stderr.
    pub(crate) notices: bool,
}

/// The main process's destinations.
pub(crate) struct MainOutput {
    log: Mutex<moat_logs::LogWriter>,
    attached: Mutex<Option<Attached>>,
}

impl MainOutput {
    /// Opens (appends to) the container's log in `dir` with the plan's options.
    pub(crate) fn open(dir: &Path, plan: &Plan) -> io::Result<Self> {
        let options = moat_logs::LogOptions::parse(&plan.log_options).map_err(io::Error::other)?;
        let log = moat_logs::LogWriter::create(dir, &plan.config.id, options)
            .map_err(io::Error::other)?;
        Ok(Self {
            log: Mutex::new(log),
            attached: Mutex::new(None),
        })
    }

    /// A sink for one of the main process's writer threads.
    pub(crate) fn sink(self: &Arc<Self>) -> MainSink {
        MainSink(Arc::clone(self))
    }

    /// Sets (or with `None` drops) the attached client.
    pub(crate) fn attach(&self, client: Option<Attached>) {
        *self.attached.lock().unwrap_or_else(PoisonError::into_inner) = client;
    }

    /// Writes what is pending in the log.
    pub(crate) fn flush(&self) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = log.flush() {
            tracing::warn!(error = %e, "cannot write the container's log");
        }
    }

    /// Tells the attached client that the OOM killer struck.
    pub(crate) fn oom_notice(&self, plan: &Plan) {
        let line = oom_line(plan);
        let mut attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        let noticed = attached.as_mut().filter(|a| a.notices);
        if let Some(err) = noticed.and_then(|a| a.stderr.as_mut()) {
            let _ = writeln!(err, "{line}");
        }
    }

    fn deliver(&self, stream: OutputStream, bytes: &[u8]) {
        {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let stream = match stream {
                OutputStream::Stdout => moat_logs::Stream::Stdout,
                OutputStream::Stderr => moat_logs::Stream::Stderr,
            };
            if let Err(e) = log.write(stream, bytes) {
                tracing::debug!(error = %e, "cannot write the container's log");
            }
        }
        let mut attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(client) = attached.as_mut() else {
            return;
        };
        let out = match stream {
            OutputStream::Stdout => &mut client.stdout,
            OutputStream::Stderr => &mut client.stderr,
        };
        if let Some(file) = out {
            if file.write_all(bytes).is_err() {
                *out = None;
            }
        }
    }
}

/// A [`Sink`] into [`MainOutput`].
pub(crate) struct MainSink(Arc<MainOutput>);

impl Sink for MainSink {
    fn deliver(&mut self, stream: OutputStream, bytes: &[u8]) {
        self.0.deliver(stream, bytes);
    }
}

fn oom_line(plan: &Plan) -> String {
    crate::session::oom_line(&plan.config.id, &plan.config.spec)
}
