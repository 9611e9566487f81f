//! The host process an OCI container's (or exec's) pid names: it holds the process's tied
//! connection to the supervisor (the supervisor kills the process when that connection goes, so
//! a killed relay takes its process with it), forwards every signal it gets to the process, the
//! size of its terminal with SIGWINCH, and exits with the process's status (128+N for signal N).
//! The process's stdio went to the supervisor with the connection: the supervisor writes into
//! the very descriptors the relay's parent was given.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use moat_runtime::sandbox::control::{self, Request};
use signal_hook::iterator::Signals;

/// `moat __relay`: stdin is the process's connection.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The terminal (a pty slave) whose size the process gets
    #[arg(long, value_name = "PATH")]
    tty: Option<PathBuf>,
}

/// Signals a relay cannot catch or must not forward (its own child events, urgent data).
const NOT_FORWARDED: [i32; 9] = [
    libc_sig::SIGILL,
    libc_sig::SIGFPE,
    libc_sig::SIGKILL,
    libc_sig::SIGSEGV,
    libc_sig::SIGCHLD,
    libc_sig::SIGSTOP,
    libc_sig::SIGURG,
    libc_sig::SIGBUS,
    libc_sig::SIGTRAP,
];

/// Signal numbers (x86_64 Linux) the relay treats apart.
mod libc_sig {
    pub const SIGILL: i32 = 4;
    pub const SIGTRAP: i32 = 5;
    pub const SIGBUS: i32 = 7;
    pub const SIGFPE: i32 = 8;
    pub const SIGKILL: i32 = 9;
    pub const SIGSEGV: i32 = 11;
    pub const SIGCHLD: i32 = 17;
    pub const SIGSTOP: i32 = 19;
    pub const SIGURG: i32 = 23;
    pub const SIGWINCH: i32 = 28;
}

/// Every signal the relay forwards: the standard ones it may catch, and the real-time ones.
fn forwarded() -> Vec<i32> {
    (1..=31)
        .chain(34..=64)
        .filter(|s| !NOT_FORWARDED.contains(s))
        .collect()
}

/// `moat __relay`.
pub fn relay_main(args: &RelayArgs) -> anyhow::Result<i32> {
    moat_jail::privs::own_network_namespace()
        .context("cannot make the relay's network namespace")?;
    // Ready: `spawn` returns (and hooks may look at our namespaces) only after this byte.
    let mut out = std::io::stdout();
    std::io::Write::write_all(&mut out, b"r")?;
    std::io::Write::flush(&mut out)?;
    let stream = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let tty = match &args.tty {
        Some(path) => {
            // A session of our own whose controlling terminal is the pty: its resizes reach
            // us as SIGWINCH.
            let _ = rustix::process::setsid();
            Some(File::options().read(true).write(true).open(path)?)
        }
        None => None,
    };
    serve(&stream, tty)
}

/// Relays for the process of `stream` until it ends; its exit code.
pub fn serve(stream: &UnixStream, tty: Option<File>) -> anyhow::Result<i32> {
    let mut signals = Signals::new(forwarded()).context("catching signals")?;
    let handle = signals.handle();
    let conn = stream.try_clone()?;
    let forwarder = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(tty) = &tty {
                send_size(&conn, tty);
            }
            for signo in signals.forever() {
                match (&tty, signo) {
                    (Some(tty), libc_sig::SIGWINCH) => send_size(&conn, tty),
                    (None, libc_sig::SIGWINCH) => {}
                    _ => {
                        let _ = control::send(&conn, &Request::Signal { signo, all: false });
                    }
                }
            }
        })?;
    let code = crate::attach::wait_exit(stream);
    handle.close();
    let _ = forwarder.join();
    Ok(code?)
}

fn send_size(conn: &UnixStream, tty: &File) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(tty) {
        if ws.ws_row > 0 && ws.ws_col > 0 {
            let req = Request::Resize {
                rows: ws.ws_row,
                cols: ws.ws_col,
            };
            let _ = control::send(conn, &req);
        }
    }
}

/// Starts `moat __relay` for the process of `stream` (the relay's stdin), with no other
/// descriptor of ours: the pipes a shim gave us must close when the process's output ends.
pub fn spawn(stream: UnixStream, tty: Option<&Path>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("__relay");
    if let Some(tty) = tty {
        cmd.arg("--tty").arg(tty);
    }
    let mut child = cmd
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(stream)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the relay process")?;
    // Its one byte says it is in its own network namespace.
    let mut ready = [0u8; 1];
    let said = child.stdout.take().map(|mut out| out.read(&mut ready));
    if !matches!(said, Some(Ok(1))) {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("the relay process did not start");
    }
    Ok(child)
}

/// Writes `pid` to `path` as runc does: digits only, replaced atomically.
pub fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{}.tmp", name.unwrap_or_default()));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write the pid file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catchable_signal_is_forwarded_but_child_events() {
        let all = forwarded();
        for s in [1, 2, 3, 6, 10, 12, 13, 14, 15, 20, 28, 34, 64] {
            assert!(all.contains(&s), "{s}");
        }
        for s in [9, 17, 19] {
            assert!(!all.contains(&s), "{s}");
        }
    }

    #[test]
    fn pid_files_hold_digits_only() {
        let dir = std::env::temp_dir().join(format!("moat-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pid");
        write_pid_file(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
