//! The client end of an attached process (`moat run` in the foreground, `moat exec`, the OCI
//! relay): it hands its stdio to the supervisor, forwards the signals it gets and its terminal's
//! size, and exits with the process's code.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use moat_runtime::sandbox::client::{self, ClientError};
use moat_runtime::sandbox::control::{self, Reply, Request};
use moat_runtime::terminal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

/// Where caught signals go: the supervisor's pid while it boots, then the process connection.
#[derive(Default)]
pub enum Target {
    /// Nowhere yet.
    #[default]
    None,
    /// The supervisor process (its boot is interrupted).
    Pid(u32),
    /// The attached process.
    Conn(UnixStream),
}

/// Catches the signals a client forwards and sends them to the current target.
pub fn forward_signals() -> std::io::Result<Arc<Mutex<Target>>> {
    let target = Arc::new(Mutex::new(Target::None));
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])?;
    let t = Arc::clone(&target);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signo in signals.forever() {
                deliver(&t.lock().unwrap_or_else(PoisonError::into_inner), signo);
            }
        })?;
    Ok(target)
}

fn deliver(target: &Target, signo: i32) {
    match target {
        Target::None => {}
        Target::Pid(pid) if signo != SIGWINCH => {
            let sig = rustix::process::Signal::from_named_raw(signo);
            if let (Some(pid), Some(sig)) = (rustix::process::Pid::from_raw(*pid as i32), sig) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
        Target::Pid(_) => {}
        Target::Conn(stream) if signo == SIGWINCH => send_size(stream),
        Target::Conn(stream) => {
            let _ = control::send(stream, &Request::Signal { signo, all: false });
        }
    }
}

/// Sends the terminal's size on a process connection.
pub fn send_size(stream: &UnixStream) {
    if let Some((rows, cols)) = terminal::window_size() {
        let _ = control::send(stream, &Request::Resize { rows, cols });
    }
}

/// Opens a process connection for `req` with our stdio (stdin only when `stdin`).
pub fn open_with_stdio(
    dir: &Path,
    name: &str,
    req: &Request,
    stdin: bool,
) -> Result<UnixStream, ClientError> {
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    if stdin {
        fds.push(i.as_fd());
    }
    fds.push(o.as_fd());
    fds.push(e.as_fd());
    client::open_process(dir, name, req, &fds)
}

/// Sets where caught signals go.
pub fn set_target(target: &Mutex<Target>, to: Target) {
    *target.lock().unwrap_or_else(PoisonError::into_inner) = to;
}

/// Sets `target` to the connection `stream`.
pub fn target_conn(target: &Mutex<Target>, stream: &UnixStream) {
    if let Ok(clone) = stream.try_clone() {
        *target.lock().unwrap_or_else(PoisonError::into_inner) = Target::Conn(clone);
    }
}

/// Waits for the `Exited` of an attached process; its code.
pub fn wait_exit(stream: &UnixStream) -> Result<i32, ClientError> {
    loop {
        match client::next_reply(stream)? {
            Reply::Exited { code } => return Ok(code),
            Reply::Error { message, code } => return Err(ClientError::Failed { message, code }),
            _ => {}
        }
    }
}

/// `moat exec`: runs `req` (an `Exec`) in the container of `dir` with our stdio; its code.
pub fn exec(
    dir: &Path,
    name: &str,
    req: &Request,
    stdin: bool,
    tty: bool,
    detach: bool,
    target: &Mutex<Target>,
) -> Result<i32, ClientError> {
    let stream = open_with_stdio(dir, name, req, stdin)?;
    match client::next_reply(&stream)? {
        Reply::Started { .. } => {}
        Reply::Error { message, code } => return Err(ClientError::Failed { message, code }),
        _ => return Err(ClientError::Gone),
    }
    if detach {
        return Ok(0);
    }
    target_conn(target, &stream);
    let _raw = if tty && stdin {
        terminal::RawMode::enter().ok().flatten()
    } else {
        None
    };
    if tty {
        send_size(&stream);
    }
    wait_exit(&stream)
}
