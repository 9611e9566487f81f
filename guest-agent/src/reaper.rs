//! Reaping children. The agent is PID 1, so every orphan of the guest becomes its child; a
//! dedicated thread waits for `SIGCHLD` (blocked in every thread, taken with `sigwait`) and reaps
//! them all. The exit status of a process the agent registered (the container's process) is kept
//! until someone asks for it; every other status is dropped.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use moat_protocol::ExitStatus;

/// Reaps children and hands out the statuses of registered ones.
#[derive(Default)]
pub struct Reaper {
    /// Registered pids and, once reaped, their status.
    state: Mutex<HashMap<libc::pid_t, Option<ExitStatus>>>,
    exited: Condvar,
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Blocks `SIGCHLD` in the calling thread; call it before any thread is started so that every
/// thread inherits the mask and only the reaper's `sigwait` takes the signal.
pub fn block_sigchld() -> io::Result<()> {
    let set = sigchld_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Decodes a wait status; `None` for stop/continue notifications.
pub fn decode_status(raw: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(raw) {
        Some(ExitStatus::Code {
            code: libc::WEXITSTATUS(raw),
        })
    } else if libc::WIFSIGNALED(raw) {
        Some(ExitStatus::Signaled {
            signo: libc::WTERMSIG(raw),
        })
    } else {
        None
    }
}

impl Reaper {
    /// Starts the reaping thread. [`block_sigchld`] must have been called first.
    pub fn start() -> io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())?;
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<libc::pid_t, Option<ExitStatus>>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let set = sigchld_set();
        loop {
            self.reap_all();
            let mut sig = 0;
            // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
        }
    }

    /// Reaps every child that has ended.
    fn reap_all(&self) {
        loop {
            let mut raw = 0;
            // SAFETY: `raw` is a valid out-pointer; WNOHANG makes the call non-blocking.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let Some(status) = decode_status(raw) else {
                continue;
            };
            let mut state = self.lock();
            if let Some(slot) = state.get_mut(&pid) {
                *slot = Some(status);
                self.exited.notify_all();
            }
        }
    }

    /// Runs `fork_fn` (which forks and returns the child's pid) with the registry locked, and
    /// registers the pid before the reaper can look at it, so even an instant exit is kept.
    pub fn spawn_registered(
        &self,
        fork_fn: impl FnOnce() -> io::Result<libc::pid_t>,
    ) -> io::Result<libc::pid_t> {
        let mut state = self.lock();
        let pid = fork_fn()?;
        state.insert(pid, None);
        Ok(pid)
    }

    /// Waits until the registered `pid` has ended and returns its status.
    pub fn wait(&self, pid: libc::pid_t) -> ExitStatus {
        let mut state = self.lock();
        loop {
            match state.get(&pid) {
                Some(Some(status)) => {
                    let status = *status;
                    state.remove(&pid);
                    return status;
                }
                Some(None) => {}
                // Not registered: nothing will ever be reported; say it was killed.
                None => {
                    return ExitStatus::Signaled {
                        signo: libc::SIGKILL,
                    }
                }
            }
            state = self
                .exited
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops tracking `pid`; its status is dropped when it is reaped.
    pub fn forget(&self, pid: libc::pid_t) {
        self.lock().remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode() {
        assert_eq!(decode_status(3 << 8), Some(ExitStatus::Code { code: 3 }));
        assert_eq!(decode_status(9), Some(ExitStatus::Signaled { signo: 9 }));
        assert_eq!(decode_status(0x137f), None);
    }
}
