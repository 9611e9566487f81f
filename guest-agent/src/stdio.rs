//! Moving the process's stdio over the connection: one pump thread per output stream turns
//! reads into data frames, and one stdin thread writes what the host sends into the process
//! through a bounded channel, so the connection's reader never blocks on a process that does not
//! read its stdin for longer than that process lives.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use moat_protocol::{encode, write_frame, AgentMessage, FrameError, FrameKind, MAX_PAYLOAD};

/// Bytes read from an output stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Stdin frames queued for the process before the connection reader waits.
const STDIN_QUEUE: usize = 4;

/// How often a blocked stdin writer checks whether the process ended.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The sending half of the connection; a mutex keeps every frame whole.
pub struct FrameWriter {
    inner: Mutex<Box<dyn Write + Send>>,
}

impl FrameWriter {
    /// Wraps the connection's write side.
    pub fn new(w: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(w),
        })
    }

    fn frame(&self, kind: FrameKind, payload: &[u8]) -> Result<(), FrameError> {
        let mut w = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *w, kind, payload)?;
        w.flush().map_err(FrameError::Io)
    }

    /// Sends one control message.
    pub fn control(&self, msg: &AgentMessage) -> Result<(), FrameError> {
        self.frame(FrameKind::Control, &encode(msg))
    }

    /// Sends `data` as frames of `kind`, split at [`MAX_PAYLOAD`].
    pub fn data(&self, kind: FrameKind, data: &[u8]) -> Result<(), FrameError> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.frame(kind, chunk)?;
        }
        Ok(())
    }
}

/// Waits until `fd` is ready for `events` or `timeout_ms` passed (-1: no timeout).
fn poll_fd(fd: &OwnedFd, events: libc::c_short, timeout_ms: libc::c_int) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes and returns integers only.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Copies everything readable from `fd` into frames of `kind` until end of file (or `EIO`, which
/// is how a pty master reports that the last slave closed). Tolerates a non-blocking `fd`.
pub fn pump(fd: OwnedFd, kind: FrameKind, writer: &FrameWriter) -> io::Result<()> {
    let mut file = File::from(fd.try_clone()?);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => writer.data(kind, &buf[..n]).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => poll_fd(&fd, libc::POLLIN, -1)?,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Starts a [`pump`] thread.
pub fn spawn_pump(
    fd: OwnedFd,
    kind: FrameKind,
    writer: Arc<FrameWriter>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name("pump".into()).spawn(move || {
        // A failed pump only loses this stream's remaining output; the process's exit is still
        // reported by the waiter.
        let _ = pump(fd, kind, &writer);
    })
}

/// Writes all of `data` to the non-blocking `fd`, giving up when `stop` is set.
fn write_all(fd: &OwnedFd, data: &[u8], stop: &AtomicBool) -> io::Result<()> {
    let mut file = File::from(fd.try_clone()?);
    let mut rest = data;
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Acquire) {
                    return Err(e);
                }
                poll_fd(fd, libc::POLLOUT, STOP_POLL.as_millis() as libc::c_int)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts the stdin thread for `fd` and returns the bounded queue that feeds it. The thread
/// ends (closing `fd`, which the process sees as end of file) when the queue's senders are all
/// dropped, when a write fails, or soon after `stop` is set.
pub fn spawn_stdin(fd: OwnedFd, stop: Arc<AtomicBool>) -> io::Result<SyncSender<Vec<u8>>> {
    set_nonblocking(&fd)?;
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(STDIN_QUEUE);
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || loop {
            match rx.recv_timeout(STOP_POLL) {
                Ok(data) => {
                    if write_all(&fd, &data, &stop).is_err() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => {}
                Err(_) => return,
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_protocol::read_frame;
    use std::os::fd::FromRawFd;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are new descriptors owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn large_data_is_split_at_max_payload() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let data = vec![7u8; 2 * MAX_PAYLOAD + 10];
        w.data(FrameKind::Stderr, &data).unwrap();
        let bytes = sink.0.lock().unwrap().clone();
        let mut r = &bytes[..];
        let sizes: Vec<usize> = (0..3)
            .map(|_| read_frame(&mut r).unwrap().payload.len())
            .collect();
        assert_eq!(sizes, [MAX_PAYLOAD, MAX_PAYLOAD, 10]);
        assert!(r.is_empty());
    }

    #[test]
    fn pump_copies_until_eof() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let (r, wr) = pipe();
        let mut wr = File::from(wr);
        let handle = spawn_pump(r, FrameKind::Stdout, Arc::clone(&w)).unwrap();
        wr.write_all(b"hello ").unwrap();
        wr.write_all(b"world").unwrap();
        drop(wr);
        handle.join().unwrap();
        let bytes = sink.0.lock().unwrap().clone();
        let mut r = &bytes[..];
        let mut out = Vec::new();
        while let Ok(f) = read_frame(&mut r) {
            assert_eq!(f.kind, FrameKind::Stdout);
            out.extend(f.payload);
        }
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn stdin_is_delivered_then_closed() {
        let (r, w) = pipe();
        let tx = spawn_stdin(w, Arc::new(AtomicBool::new(false))).unwrap();
        tx.send(b"abc".to_vec()).unwrap();
        tx.send(b"def".to_vec()).unwrap();
        drop(tx);
        let mut out = Vec::new();
        File::from(r).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcdef");
    }

    #[test]
    fn stdin_writer_gives_up_on_a_reader_that_never_reads() {
        let (_r, w) = pipe();
        let stop = Arc::new(AtomicBool::new(false));
        let tx = spawn_stdin(w, Arc::clone(&stop)).unwrap();
        // Far more than a pipe holds: the writer blocks, the queue fills.
        let chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while tx.try_send(chunk.clone()).is_ok() {
            sent += 1;
            assert!(sent < 100, "queue is not bounded");
        }
        stop.store(true, Ordering::Release);
        // Once the writer gives up, the queue's receiver is gone and senders fail fast.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tx.send(chunk.clone()).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "stdin writer did not stop"
            );
        }
    }
}
