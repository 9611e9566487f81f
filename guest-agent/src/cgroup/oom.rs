//! OOM kills of a cgroup: `memory.events`' `oom_kill` counter, and a watch that wakes up when
//! the kernel changes that file (kernfs sends inotify IN_MODIFY for it).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{io_error, CgroupError};

/// Reads `oom_kill` from a `memory.events` file.
pub fn read_oom_kills(events: &Path) -> Result<u64, CgroupError> {
    let text = std::fs::read_to_string(events).map_err(|source| CgroupError::Io {
        op: "reading",
        path: events.to_owned(),
        source,
    })?;
    parse_oom_kills(&text).ok_or_else(|| CgroupError::Malformed {
        path: events.to_owned(),
        what: "no oom_kill line",
    })
}

/// The `oom_kill N` line of memory.events' text.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

fn add_watch(inotify: &OwnedFd, path: &Path, mask: u32) -> Result<(), CgroupError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io_error("watching", path)(io::Error::other(e)))?;
    // SAFETY: a valid inotify fd and a NUL-terminated path that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), c_path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io_error("watching", path)(io::Error::last_os_error()));
    }
    Ok(())
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches one cgroup's OOM kills; `next` from one thread, `stop` from any other.
#[derive(Debug)]
pub struct OomWatch {
    events: PathBuf,
    inotify: OwnedFd,
    stop: OwnedFd,
    /// The count last returned (or seen when the watch began).
    last: AtomicU64,
    /// The cgroup is gone.
    ended: AtomicBool,
}

impl OomWatch {
    /// Starts watching the memory.events of the cgroup `dir`, and `dir`'s parent: kernfs
    /// notifies neither a file's watch nor the directory's own (IN_DELETE_SELF) when a cgroup
    /// is removed, but rmdir(2) sends the parent's watch IN_DELETE. Any wake-up finding
    /// memory.events gone ends the watch.
    pub(super) fn new(dir: &Path) -> Result<Self, CgroupError> {
        let events = dir.join("memory.events");
        // SAFETY: plain syscalls with flags only; the results are checked by `owned`.
        let inotify = owned(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) })
            .map_err(io_error("inotify_init1 for", &events))?;
        // SAFETY: as above.
        let stop = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
            .map_err(io_error("eventfd for", &events))?;
        add_watch(&inotify, &events, libc::IN_MODIFY)?;
        let parent = dir.parent().unwrap_or(dir);
        add_watch(&inotify, parent, libc::IN_DELETE | libc::IN_ONLYDIR)?;
        let last = AtomicU64::new(read_oom_kills(&events)?);
        Ok(Self {
            events,
            inotify,
            stop,
            last,
            ended: AtomicBool::new(false),
        })
    }

    /// Blocks until the cgroup's OOM-kill count grows, then returns the new count; `Ok(None)`
    /// once [`stop`](Self::stop) was called or the cgroup is gone. Changes of memory.events
    /// that leave `oom_kill` as it was (memory.high or memory.max events) are waited through.
    pub fn next(&self) -> Result<Option<u64>, CgroupError> {
        loop {
            if self.ended.load(Ordering::Relaxed) || !self.wait()? {
                return Ok(None);
            }
            let count = match read_oom_kills(&self.events) {
                Ok(count) => count,
                Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    self.ended.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            if count > self.last.swap(count, Ordering::Relaxed) {
                return Ok(Some(count));
            }
        }
    }

    /// Wakes [`next`](Self::next) up for good: it returns `Ok(None)` from now on.
    pub fn stop(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. It can only fail if the
        // counter would overflow, i.e. after 2^64 - 2 stops: then it is already signalled.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits for an inotify event (true) or the stop signal / the watch's end (false).
    fn wait(&self) -> Result<bool, CgroupError> {
        let mut fds = [
            libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two valid pollfd entries, their count, no timeout.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("polling the inotify watch of", &self.events)(e));
            }
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        self.drain()
    }

    /// Reads the pending inotify events; false if a watch ended (IN_IGNORED: the parent or
    /// the file itself is gone).
    fn drain(&self) -> Result<bool, CgroupError> {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a live buffer of the length given.
        let n = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(io_error("reading the inotify watch of", &self.events)(e));
        }
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut at = 0;
        while at + header <= n as usize {
            // SAFETY: at + header <= n bytes the kernel wrote; read_unaligned copes with the
            // byte buffer's alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
            if ev.mask & libc::IN_IGNORED != 0 {
                self.ended.store(true, Ordering::Relaxed);
                return Ok(false);
            }
            at += header + ev.len as usize;
        }
        Ok(true)
    }
}
