//! The processes of the container as the conversation sees them: their stdio threads, and the
//! waiters that report their ends in the protocol's order (an exec's `Exited` after its last
//! output frame; when the main process ends, every exec is killed and reported, then pending
//! OOM kills, then the main process's `Exited`, last).

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use moat_protocol::{AgentMessage, FrameKind, OutputStream};

use super::KillScope;
use crate::container::Process;
use crate::flow::Window;
use crate::limits::ContainerCgroup;
use crate::reaper::Reaper;
use crate::stdio::{spawn_stdin, FrameWriter, Pump, StdinQueue};
use crate::syscall::{Linux, Syscall};

/// A started process, as the connection's reader sees it.
pub struct Proc {
    /// Its guest pid.
    pub pid: libc::pid_t,
    /// Its stdin queue, until `StdinEof`.
    pub stdin: Option<StdinQueue>,
    /// Its pty master, in terminal mode.
    pub pty: Option<OwnedFd>,
    /// The windows of its output streams.
    pub windows: Vec<(OutputStream, Arc<Window>)>,
    /// Set once it has been reaped.
    pub exited: Arc<AtomicBool>,
}

impl Proc {
    /// Whether it has ended.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// The window of `stream`.
    pub fn window(&self, stream: OutputStream) -> Option<&Arc<Window>> {
        self.windows
            .iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, w)| w)
    }
}

/// What the main process's waiter needs of each exec.
struct ExecEnd {
    pid: libc::pid_t,
    exited: Arc<AtomicBool>,
    windows: Vec<Arc<Window>>,
    waiter: JoinHandle<()>,
}

/// The container's execs, shared by the reader (which adds them) and the main process's waiter
/// (which closes the set when the container ends).
#[derive(Default)]
pub struct Execs {
    open: bool,
    ends: Vec<ExecEnd>,
}

/// [`Execs`] behind its lock.
pub type SharedExecs = Arc<Mutex<Execs>>;

/// Locks `execs`.
pub fn lock(execs: &SharedExecs) -> MutexGuard<'_, Execs> {
    execs.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Execs {
    /// An open set: the container runs.
    pub fn open() -> SharedExecs {
        Arc::new(Mutex::new(Self {
            open: true,
            ends: Vec::new(),
        }))
    }

    /// Whether execs may still start.
    pub fn is_open(&self) -> bool {
        self.open
    }
}

fn stream_of(kind: FrameKind) -> OutputStream {
    match kind {
        FrameKind::Stderr => OutputStream::Stderr,
        _ => OutputStream::Stdout,
    }
}

/// The stdio threads of `process` (id `id`); the pumps stop at the first empty read once `stop`
/// is set, if given.
fn plumb(
    id: u32,
    process: Process,
    writer: &Arc<FrameWriter>,
    stop: Option<&Arc<AtomicBool>>,
) -> io::Result<(Proc, Vec<JoinHandle<()>>)> {
    let exited = Arc::new(AtomicBool::new(false));
    let stdio = process.stdio;
    let stdin = spawn_stdin(stdio.stdin, id, Arc::clone(writer), Arc::clone(&exited))?;
    let (mut windows, mut pumps) = (Vec::new(), Vec::new());
    for (kind, fd) in stdio.outputs {
        let window = Arc::new(Window::default());
        let pump = Pump {
            process: id,
            kind,
            window: Arc::clone(&window),
            stop: stop.cloned(),
        };
        pumps.push(pump.spawn(fd, Arc::clone(writer))?);
        windows.push((stream_of(kind), window));
    }
    let proc = Proc {
        pid: process.pid,
        stdin: Some(stdin),
        pty: stdio.pty,
        windows,
        exited,
    };
    Ok((proc, pumps))
}

/// How the main process's end is handled.
pub struct MainEnd {
    /// The agent's reaper.
    pub reaper: Arc<Reaper>,
    /// The connection.
    pub writer: Arc<FrameWriter>,
    /// What to kill.
    pub kill: KillScope,
    /// The container's cgroup.
    pub cgroup: Option<Arc<ContainerCgroup>>,
    /// The execs.
    pub execs: SharedExecs,
}

/// Starts the stdio threads and the waiter of the container's main process.
pub fn watch_main(id: u32, process: Process, end: MainEnd) -> io::Result<Proc> {
    let (proc, pumps) = plumb(id, process, &end.writer, None)?;
    let (pid, flag) = (proc.pid, Arc::clone(&proc.exited));
    thread::Builder::new()
        .name("waiter".into())
        .spawn(move || {
            let status = end.reaper.wait(pid);
            flag.store(true, Ordering::Release);
            // The container ends with its process, as with a pid namespace: whatever it left
            // behind is killed, so the outputs reach end of file.
            match (end.kill, &end.cgroup) {
                (KillScope::Cgroup, Some(c)) => c.kill(),
                (kill, _) => kill.kill(Some(pid)),
            }
            end_execs(&end.execs);
            for pump in pumps {
                let _ = pump.join();
            }
            // OOM kills the watch has not reported yet come before the exit; then the
            // cgroup goes (which ends the watch).
            if let Some(c) = &end.cgroup {
                c.report_ooms(&end.writer);
                c.remove();
            }
            // In the guest, what the container wrote goes to the disks now, while the host
            // waits for the exit without a deadline: the power-off after it has little left
            // to flush within the host's shutdown timeout.
            if end.kill == KillScope::Everything {
                Linux.sync();
            }
            // If this fails the reader sees the broken connection too.
            let _ = end.writer.control(&AgentMessage::Exited {
                process: id,
                status,
            });
        })?;
    Ok(proc)
}

/// Closes the exec set, kills every exec still running and waits for their `Exited`.
fn end_execs(execs: &SharedExecs) {
    let ends = {
        let mut set = lock(execs);
        set.open = false;
        std::mem::take(&mut set.ends)
    };
    for end in &ends {
        // Their output is not waited for any more: a stream out of credit is dropped.
        for window in &end.windows {
            window.close();
        }
        if !end.exited.load(Ordering::Acquire) {
            kill_exec(end.pid, libc::SIGKILL);
        }
    }
    for end in ends {
        let _ = end.waiter.join();
    }
}

/// Sends `signo` to an exec and its process group (it leads its own session).
pub fn kill_exec(pid: libc::pid_t, signo: libc::c_int) {
    let _ = Linux.kill(-pid, signo);
    let _ = Linux.kill(pid, signo);
}

/// Starts the stdio threads and the waiter of exec `id` and adds it to `execs` (whose lock the
/// caller holds).
pub fn watch_exec(
    id: u32,
    process: Process,
    reaper: &Arc<Reaper>,
    writer: &Arc<FrameWriter>,
    execs: &mut Execs,
) -> io::Result<Proc> {
    let stop = Arc::new(AtomicBool::new(false));
    let (proc, pumps) = plumb(id, process, writer, Some(&stop))?;
    let (pid, flag) = (proc.pid, Arc::clone(&proc.exited));
    let (reaper, writer) = (Arc::clone(reaper), Arc::clone(writer));
    let waiter = thread::Builder::new()
        .name("exec-waiter".into())
        .spawn(move || {
            let status = reaper.wait(pid);
            flag.store(true, Ordering::Release);
            stop.store(true, Ordering::Release);
            for pump in pumps {
                let _ = pump.join();
            }
            let _ = writer.control(&AgentMessage::Exited {
                process: id,
                status,
            });
        })?;
    execs.ends.push(ExecEnd {
        pid,
        exited: Arc::clone(&proc.exited),
        windows: proc.windows.iter().map(|(_, w)| Arc::clone(w)).collect(),
        waiter,
    });
    Ok(proc)
}

/// The processes the reader knows, by id; an id stays taken after its process ended.
#[derive(Default)]
pub struct Procs {
    map: HashMap<u32, Proc>,
}

impl Procs {
    /// The process `id`.
    pub fn get(&self, id: u32) -> Option<&Proc> {
        self.map.get(&id)
    }

    /// The process `id`, to change.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Proc> {
        self.map.get_mut(&id)
    }

    /// Whether `id` was ever used.
    pub fn contains(&self, id: u32) -> bool {
        self.map.contains_key(&id)
    }

    /// Adds a started process.
    pub fn insert(&mut self, id: u32, proc: Proc) {
        self.map.insert(id, proc);
    }

    /// Every process still running.
    pub fn running(&self) -> impl Iterator<Item = (u32, &Proc)> {
        self.map
            .iter()
            .filter(|(_, p)| !p.has_exited())
            .map(|(id, p)| (*id, p))
    }
}
