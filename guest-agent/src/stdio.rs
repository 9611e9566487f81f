//! Moving processes' stdio over the connection under flow control ([`crate::flow`]): one pump
//! thread per output stream turns reads into data frames while its window has credit (out of
//! credit it stops reading, so the process blocks on a full pipe), and one stdin thread per
//! process writes what the host sends into the process from an unbounded queue (the host keeps
//! to the stdin window), crediting each chunk once written or dropped: the connection's reader
//! never blocks on a process.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use moat_protocol::{encode, write_frame, AgentMessage, FrameError, FrameKind, MAX_PAYLOAD};

use crate::flow::{FlowError, Grant, StdinWindow, Window};

/// Bytes read from an output stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// How often a blocked stdin writer, an idle stdin thread or a stopping pump checks its flag.
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

    fn frame(&self, kind: FrameKind, process: u32, payload: &[u8]) -> Result<(), FrameError> {
        let mut w = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *w, kind, process, payload)?;
        w.flush().map_err(FrameError::Io)
    }

    /// Sends one control message.
    pub fn control(&self, msg: &AgentMessage) -> Result<(), FrameError> {
        self.frame(FrameKind::Control, 0, &encode(msg))
    }

    /// Sends `data` of `process` as frames of `kind`, split at [`MAX_PAYLOAD`].
    pub fn data(&self, kind: FrameKind, process: u32, data: &[u8]) -> Result<(), FrameError> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.frame(kind, process, chunk)?;
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

/// One output stream of a process.
pub struct Pump {
    /// The process.
    pub process: u32,
    /// The frame kind its bytes go as.
    pub kind: FrameKind,
    /// Its credit.
    pub window: Arc<Window>,
    /// Once set, the pump ends at the first read that finds nothing (the process has ended;
    /// what it left in the pipe is sent, a background child's later writes are not waited for);
    /// `None`: it reads until end of file.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Pump {
    /// Copies everything readable from `fd` into frames until end of file (or `EIO`, which is
    /// how a pty master reports that the last slave closed), within the window.
    pub fn run(&self, fd: OwnedFd, writer: &FrameWriter) -> io::Result<()> {
        set_nonblocking(&fd)?;
        let mut file = File::from(fd.try_clone()?);
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let grant = self.window.wait(READ_CHUNK);
            let max = match grant {
                Grant::Send(n) => n,
                Grant::Drop => READ_CHUNK,
            };
            match file.read(&mut buf[..max]) {
                Ok(0) => return Ok(()),
                Ok(_) if grant == Grant::Drop => {}
                Ok(n) => {
                    self.window.spend(n);
                    writer
                        .data(self.kind, self.process, &buf[..n])
                        .map_err(io::Error::other)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.idle(&fd)?,
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for more to read; [`io::ErrorKind::WouldBlock`] once stopped.
    fn idle(&self, fd: &OwnedFd) -> io::Result<()> {
        match &self.stop {
            None => poll_fd(fd, libc::POLLIN, -1),
            Some(stop) if stop.load(Ordering::Acquire) => Err(io::ErrorKind::WouldBlock.into()),
            Some(_) => poll_fd(fd, libc::POLLIN, STOP_POLL.as_millis() as libc::c_int),
        }
    }

    /// Starts the pump's thread.
    pub fn spawn(self, fd: OwnedFd, writer: Arc<FrameWriter>) -> io::Result<JoinHandle<()>> {
        thread::Builder::new().name("pump".into()).spawn(move || {
            // A failed pump only loses this stream's remaining output; the process's exit is
            // still reported by its waiter.
            let _ = self.run(fd, &writer);
        })
    }
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

/// Why [`StdinQueue::push`] did not queue a chunk.
#[derive(Debug)]
pub enum PushError {
    /// The host went over the window: the chunk is dropped, and not credited.
    Flow(FlowError),
    /// The stdin thread has ended (the process's stdin is closed or the process gone): the
    /// caller drops and credits the chunk.
    Gone(usize),
}

/// The feeding end of a process's stdin thread; dropping it closes the process's stdin once
/// what is queued is written.
pub struct StdinQueue {
    tx: Sender<Vec<u8>>,
    window: Arc<StdinWindow>,
}

impl StdinQueue {
    /// Queues `data` without ever blocking.
    pub fn push(&self, data: Vec<u8>) -> Result<(), PushError> {
        let len = data.len();
        self.window.admit(len).map_err(PushError::Flow)?;
        self.tx.send(data).map_err(|_| {
            self.window.release(len);
            PushError::Gone(len)
        })
    }
}

/// Sends `StdinCredit` for `bytes` of `process`; a broken connection is the reader's to see.
pub fn stdin_credit(writer: &FrameWriter, process: u32, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    let _ = writer.control(&AgentMessage::StdinCredit { process, bytes });
}

/// Starts the stdin thread of `process` for `fd`. It writes each chunk (or drops it once the
/// process's stdin is closed) and credits it; it ends, closing `fd`, when the queue is dropped
/// and drained, or soon after `stop` is set (the process ended).
pub fn spawn_stdin(
    fd: OwnedFd,
    process: u32,
    writer: Arc<FrameWriter>,
    stop: Arc<AtomicBool>,
) -> io::Result<StdinQueue> {
    set_nonblocking(&fd)?;
    let window = Arc::new(StdinWindow::default());
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let flow = Arc::clone(&window);
    thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut fd = Some(fd);
        loop {
            match rx.recv_timeout(STOP_POLL) {
                Ok(data) => {
                    if let Some(open) = &fd {
                        if write_all(open, &data, &stop).is_err() {
                            fd = None;
                        }
                    }
                    flow.release(data.len());
                    stdin_credit(&writer, process, data.len());
                }
                Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Acquire) => {}
                Err(_) => return,
            }
            if stop.load(Ordering::Acquire) {
                // The process has ended: credit what is queued, and refuse the rest.
                drop(fd.take());
                while let Ok(data) = rx.try_recv() {
                    flow.release(data.len());
                    stdin_credit(&writer, process, data.len());
                }
                return;
            }
        }
    })?;
    Ok(StdinQueue { tx, window })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_protocol::{decode, read_frame, Frame, WINDOW};
    use std::os::fd::FromRawFd;
    use std::time::Instant;

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

    impl Sink {
        fn frames(&self) -> Vec<Frame> {
            let bytes = self.0.lock().unwrap().clone();
            let mut r = &bytes[..];
            let mut out = Vec::new();
            while let Ok(f) = read_frame(&mut r) {
                out.push(f);
            }
            out
        }
        fn data_len(&self) -> usize {
            let frames = self.frames();
            frames
                .iter()
                .filter(|f| f.kind != FrameKind::Control)
                .map(|f| f.payload.len())
                .sum()
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are new descriptors owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn pump(window: &Arc<Window>) -> Pump {
        Pump {
            process: 7,
            kind: FrameKind::Stdout,
            window: Arc::clone(window),
            stop: None,
        }
    }

    #[test]
    fn large_data_is_split_at_max_payload() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let data = vec![7u8; 2 * MAX_PAYLOAD + 10];
        w.data(FrameKind::Stderr, 3, &data).unwrap();
        let frames = sink.frames();
        let sizes: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
        assert_eq!(sizes, [MAX_PAYLOAD, MAX_PAYLOAD, 10]);
        assert!(frames.iter().all(|f| f.process == 3));
    }

    #[test]
    fn pump_copies_until_eof() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let (r, wr) = pipe();
        let mut wr = File::from(wr);
        let window = Arc::new(Window::default());
        let handle = pump(&window).spawn(r, Arc::clone(&w)).unwrap();
        wr.write_all(b"hello ").unwrap();
        wr.write_all(b"world").unwrap();
        drop(wr);
        handle.join().unwrap();
        let mut out = Vec::new();
        for f in sink.frames() {
            assert_eq!((f.kind, f.process), (FrameKind::Stdout, 7));
            out.extend(f.payload);
        }
        assert_eq!(out, b"hello world");
        assert_eq!(window.available(), WINDOW - 11);
    }

    #[test]
    fn a_pump_out_of_credit_stops_reading_and_resumes_on_credit() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let (r, wr) = pipe();
        let window = Arc::new(Window::default());
        let handle = pump(&window).spawn(r, Arc::clone(&w)).unwrap();
        let total = 3 * WINDOW as usize;
        let writer = thread::spawn(move || {
            File::from(wr).write_all(&vec![1u8; total]).unwrap();
        });
        until("a full window", || sink.data_len() == WINDOW as usize);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(sink.data_len(), WINDOW as usize, "sent past the window");
        assert!(
            !writer.is_finished(),
            "the writer should block on a full pipe"
        );
        window.credit(WINDOW).unwrap();
        until("the second window", || {
            sink.data_len() == 2 * WINDOW as usize
        });
        window.credit(WINDOW).unwrap();
        writer.join().unwrap();
        until("the third window", || sink.data_len() == total);
        // Out of credit, the pump does not even read the end of file.
        thread::sleep(Duration::from_millis(50));
        assert!(!handle.is_finished());
        window.credit(WINDOW).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn a_closed_window_drops_the_rest() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let (r, wr) = pipe();
        let window = Arc::new(Window::default());
        window.spend(WINDOW as usize);
        let handle = pump(&window).spawn(r, Arc::clone(&w)).unwrap();
        let writer = thread::spawn(move || {
            File::from(wr).write_all(&vec![1u8; 1 << 20]).unwrap();
        });
        window.close();
        writer.join().unwrap();
        handle.join().unwrap();
        assert_eq!(sink.data_len(), 0);
    }

    fn credits(sink: &Sink) -> usize {
        sink.frames()
            .iter()
            .map(|f| match decode(&f.payload).unwrap() {
                AgentMessage::StdinCredit { process: 5, bytes } => bytes as usize,
                other => panic!("unexpected {other:?}"),
            })
            .sum()
    }

    #[test]
    fn stdin_is_delivered_credited_then_closed() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let (r, wr) = pipe();
        let stop = Arc::new(AtomicBool::new(false));
        let queue = spawn_stdin(wr, 5, w, stop).unwrap();
        queue.push(b"abc".to_vec()).unwrap();
        queue.push(b"def".to_vec()).unwrap();
        drop(queue);
        let mut out = Vec::new();
        File::from(r).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcdef");
        until("the credits", || credits(&sink) == 6);
    }

    #[test]
    fn the_stdin_queue_never_blocks_the_reader() {
        let sink = Sink::default();
        let w = FrameWriter::new(Box::new(sink.clone()));
        let (_r, wr) = pipe();
        // The pipe is full from the start, so the writer cannot take (and credit) any chunk.
        set_nonblocking(&wr).unwrap();
        let mut filler = File::from(wr.try_clone().unwrap());
        while filler.write(&[0u8; 4096]).is_ok() {}
        let stop = Arc::new(AtomicBool::new(false));
        let queue = spawn_stdin(wr, 5, w, Arc::clone(&stop)).unwrap();
        // A whole window for a process that never reads: every push returns at once.
        let chunk = vec![0u8; 64 * 1024];
        let started = Instant::now();
        for _ in 0..WINDOW as usize / chunk.len() {
            queue.push(chunk.clone()).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // Past the window: refused, not queued.
        assert!(matches!(
            queue.push(vec![0u8; 1]),
            Err(PushError::Flow(FlowError::OverWindow { .. }))
        ));
        // The process ends: the queue is dropped and credited, later pushes are refused.
        stop.store(true, Ordering::Release);
        until("every chunk credited", || credits(&sink) == WINDOW as usize);
        until("the thread's end", || {
            matches!(queue.push(vec![0u8; 1]), Err(PushError::Gone(1)))
        });
    }
}
