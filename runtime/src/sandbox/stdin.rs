//! Stdin of the supervisor's processes: copied from a client's descriptor into the agent's
//! window, once the process runs.

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_protocol::{HostMessage, MAIN_PROCESS};

use super::mux::Mux;
use super::record::Status;
use super::server::mux;
use super::supervisor::Shared;

fn wait_running(shared: &Shared) -> bool {
    loop {
        match shared.state().status {
            Status::Running | Status::Paused => return true,
            Status::Exited => return false,
            Status::Created | Status::Creating => {}
        }
        if shared.wait_ended_for(Duration::from_millis(20)).is_some() {
            return false;
        }
    }
}

pub(super) fn pump_stdin_when_running(shared: Arc<Shared>, stdin: File) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            if wait_running(&shared) {
                if let Some(mux) = mux(&shared) {
                    pump_stdin(&mux, MAIN_PROCESS, stdin, &AtomicBool::new(false));
                }
            }
        });
}

pub(super) fn close_stdin_when_running(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            if wait_running(&shared) {
                if let Some(mux) = mux(&shared) {
                    let _ = mux.send(&HostMessage::StdinEof {
                        process: MAIN_PROCESS,
                    });
                }
            }
        });
}

/// Copies `stdin` into process `id` until its end (or until `stop` is set: the process ended,
/// and a client's terminal must not lose keystrokes to us), then closes the process's stdin.
pub(super) fn pump_stdin(mux: &Mux, id: u32, mut stdin: File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if !readable(&stdin, stop) {
            return;
        }
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match mux.stdin(id, &buf[..n]) {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = mux.send(&HostMessage::StdinEof { process: id });
}

/// Waits until `file` is readable; false once `stop` is set.
fn readable(file: &File, stop: &AtomicBool) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let mut fds = [PollFd::new(file, PollFlags::IN)];
        let tick = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        match poll(&mut fds, Some(&tick)) {
            Ok(n) if n > 0 => return true,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return true,
        }
    }
}
