//! The loop of the container's init (PID 1 of the container's PID namespace, see [`super::child`]):
//! it passes the signals it receives on to the command (PID 2), reaps every process orphaned in
//! the namespace, and ends with the command's status. Only system calls, no allocation: it runs
//! in a copy of the multi-threaded agent.

use crate::syscall::Syscall;

/// The signals the container's init passes on to the command: all but those it cannot catch
/// (KILL, STOP), its own SIGCHLD, the ones a fault of its own would raise (ILL TRAP ABRT BUS
/// FPE SEGV SYS) and the C library's reserved real-time signals 32 and 33.
const fn forwarded(signo: libc::c_int) -> bool {
    !matches!(
        signo,
        libc::SIGKILL
            | libc::SIGSTOP
            | libc::SIGCHLD
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGSYS
            | 32
            | 33
    )
}

/// Everything the init catches: the forwarded signals (1..=64) and SIGCHLD.
pub const INIT_SIGNALS: [libc::c_int; 53] = init_signals();

const fn init_signals() -> [libc::c_int; 53] {
    let mut out = [0; 53];
    let (mut n, mut signo) = (0, 1);
    while signo <= 64 {
        if forwarded(signo) || signo == libc::SIGCHLD {
            out[n] = signo;
            n += 1;
        }
        signo += 1;
    }
    assert!(n == out.len());
    out
}

/// The container's exit code when its init cannot wait for signals any more.
pub const INIT_FAILED: i32 = 255;

/// The init's loop: passes signals on to `command`, reaps every child, and returns the exit code
/// once `command` has ended: its own, or 128 + the signal that killed it.
pub fn supervise(sys: &dyn Syscall, command: libc::pid_t) -> i32 {
    loop {
        let signo = match sys.wait_signal(&INIT_SIGNALS) {
            Ok(signo) => signo,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // The init cannot wait any more: end the container rather than spin.
            Err(_) => {
                let _ = sys.kill(command, libc::SIGKILL);
                return INIT_FAILED;
            }
        };
        if signo != libc::SIGCHLD {
            // The command may have ended already: ESRCH is fine.
            let _ = sys.kill(command, signo);
        } else if let Some(code) = reap(sys, command) {
            return code;
        }
    }
}

/// Reaps every child that has ended; the exit code if `command` was among them.
fn reap(sys: &dyn Syscall, command: libc::pid_t) -> Option<i32> {
    let mut code = None;
    while let Ok(Some((pid, raw))) = sys.reap_any() {
        if pid != command {
            continue;
        }
        if libc::WIFEXITED(raw) {
            code = Some(libc::WEXITSTATUS(raw));
        } else if libc::WIFSIGNALED(raw) {
            code = Some(128 + libc::WTERMSIG(raw));
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::mock::Recorder;

    #[test]
    fn forwards_signals_and_reaps() {
        let sys = Recorder::default();
        sys.signals
            .borrow_mut()
            .extend([libc::SIGTERM, libc::SIGCHLD]);
        // An orphan, then the command, killed by the SIGTERM; the init reaps until none is left.
        sys.children
            .borrow_mut()
            .extend([(7, 0), (2, libc::SIGTERM)]);
        assert_eq!(supervise(&sys, 2), 128 + libc::SIGTERM);
        assert_eq!(
            sys.lines(),
            [
                "wait_signal 15",
                "kill 2 15",
                "wait_signal 17",
                "reap 7 0x0",
                "reap 2 0xf",
                "reap none"
            ]
        );
        // An exit code passes through unchanged; a SIGCHLD for others does not end the loop.
        let sys = Recorder::default();
        sys.signals
            .borrow_mut()
            .extend([libc::SIGCHLD, libc::SIGCHLD]);
        sys.children
            .borrow_mut()
            .extend([(9, 0), (0, 0), (2, 3 << 8)]);
        assert_eq!(supervise(&sys, 2), 3);
        assert_eq!(sys.lines().iter().filter(|l| *l == "reap none").count(), 2);
    }

    #[test]
    fn caught_signals() {
        for signo in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGTERM,
            libc::SIGWINCH,
            libc::SIGCONT,
            libc::SIGCHLD,
            34,
            64,
        ] {
            assert!(INIT_SIGNALS.contains(&signo), "{signo}");
        }
        for signo in [libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV, 32, 33] {
            assert!(!INIT_SIGNALS.contains(&signo), "{signo}");
        }
    }
}
