//! The client side of a supervisor: starting one for a container directory and talking to it
//! over its control socket.

use std::io::{BufRead, BufReader};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::control::{self, ControlError, Reply, Request, SOCKET};

/// Errors of a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The supervisor could not be started.
    #[error("cannot start the container's supervisor")]
    Spawn(#[source] std::io::Error),
    /// The supervisor failed to create the container.
    #[error("{message}")]
    Failed {
        /// Its one line.
        message: String,
        /// The exit code for it.
        code: i32,
    },
    /// No supervisor answers.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The conversation failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The supervisor went away before it answered.
    #[error("the container's supervisor went away")]
    Gone,
}

impl ClientError {
    /// The exit code a CLI should use.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Failed { code, .. } => *code,
            _ => crate::run::EXIT_RUNTIME_ERROR,
        }
    }
}

/// Starts `moat __supervise DIR` (`exe` is the moat binary) and waits until it has created the
/// container (or failed to). Its log goes to `DIR/supervisor.log`, or with `our_stderr` (a
/// foreground run) to ours, as the runtime's own warnings always did.
pub fn spawn_supervisor(
    exe: &Path,
    dir: &Path,
    on_spawn: &dyn Fn(u32),
    our_stderr: bool,
) -> Result<Child, ClientError> {
    let log = if our_stderr {
        Stdio::inherit()
    } else {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("supervisor.log"))
            .map_err(ClientError::Spawn)?;
        Stdio::from(file)
    };
    let mut child = Command::new(exe)
        .arg("__supervise")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .env("MOAT_SUPERVISOR", "1")
        .spawn()
        .map_err(ClientError::Spawn)?;
    on_spawn(child.id());
    let Some(out) = child.stdout.take() else {
        return Err(ClientError::Spawn(std::io::Error::other("no pipe")));
    };
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    if value.get("ok").and_then(|v| v.as_bool()) == Some(true) {
        return Ok(child);
    }
    let _ = child.wait();
    let message = value
        .get("error")
        .and_then(|v| v.as_str())
        .map(crate::console::sanitize)
        .unwrap_or_else(|| {
            format!(
                "the container's supervisor failed (see {})",
                dir.join("supervisor.log").display()
            )
        });
    let code = value
        .get("code")
        .and_then(|v| v.as_i64())
        .map_or(crate::run::EXIT_RUNTIME_ERROR, |c| c as i32);
    Err(ClientError::Failed { message, code })
}

/// Connects to the supervisor of the container in `dir`.
pub fn connect(dir: &Path, name: &str) -> Result<UnixStream, ClientError> {
    UnixStream::connect(dir.join(SOCKET)).map_err(|_| ClientError::NotRunning(name.to_owned()))
}

/// One request, one answer.
pub fn request(dir: &Path, name: &str, req: &Request) -> Result<Reply, ClientError> {
    let stream = connect(dir, name)?;
    control::send(&stream, req)?;
    control::recv::<Reply>(&stream)?.ok_or(ClientError::Gone)
}

/// Sends `req` (an `Attach` or `Exec`) with the descriptors it names.
pub fn open_process(
    dir: &Path,
    name: &str,
    req: &Request,
    fds: &[BorrowedFd<'_>],
) -> Result<UnixStream, ClientError> {
    let stream = connect(dir, name)?;
    control::send(&stream, req)?;
    control::send_fds(&stream, fds)?;
    Ok(stream)
}

/// Reads the next answer on a process connection.
pub fn next_reply(stream: &UnixStream) -> Result<Reply, ClientError> {
    control::recv::<Reply>(stream)?.ok_or(ClientError::Gone)
}
