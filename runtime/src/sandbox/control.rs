//! The supervisor's control socket (`<state dir>/control.sock`, 0600, root): what clients (the
//! CLI, the OCI relay) ask and what the supervisor answers, as control frames of
//! `moat-protocol`'s framing, one JSON message each. A client that attaches to a process sends
//! its stdio descriptors right after its request, as `SCM_RIGHTS` on one byte: the supervisor
//! writes the process's output to them and reads its stdin from them directly.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use moat_protocol::{decode, encode, read_frame, write_frame, FrameError, FrameKind};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// The control socket's name in the state directory.
pub const SOCKET: &str = "control.sock";

/// Errors on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A frame could not be sent or read.
    #[error("talking to the container's supervisor failed")]
    Frame(#[from] FrameError),
    /// A message was not understood.
    #[error("the container's supervisor sent a malformed message")]
    Malformed(#[from] moat_protocol::MessageError),
    /// Descriptors could not be passed.
    #[error("cannot pass file descriptors to the container's supervisor")]
    Fds(#[source] io::Error),
}

/// How a client's stdio is attached to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioSpec {
    /// The client sends a stdin descriptor (else the process's stdin is closed at once).
    pub stdin: bool,
    /// The process runs on a terminal (then only stdout carries its output).
    pub tty: bool,
    /// The process ends (SIGKILL) if this client goes away (the OCI relay's rule).
    pub tied: bool,
    /// The client takes events ([`Reply::Oom`]) on the connection before the end, instead of
    /// notices on the process's stderr (the shim).
    #[serde(default)]
    pub events: bool,
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Attach to the main process before it starts; stdio descriptors follow. The connection
    /// stays open for `Signal`/`Resize` and gets `Exited` when the container has ended.
    Attach(StdioSpec),
    /// Start the created container.
    Start,
    /// Run another process in the running container; descriptors follow as for `Attach`.
    Exec {
        /// Attachment.
        stdio: StdioSpec,
        /// What to run.
        spec: Box<oci_spec::runtime::Process>,
        /// A user by name (`USER[:GROUP]`).
        user: Option<String>,
    },
    /// On an attach/exec connection: signal its process; else the main process (`all`: every
    /// process of the container).
    Signal {
        /// Signal number.
        signo: i32,
        /// Every process.
        all: bool,
    },
    /// On an attach/exec connection: resize its terminal.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// The stop signal, then SIGKILL after `timeout` seconds (default: the plan's); answered
    /// once the container has ended.
    Stop {
        /// Grace period in seconds.
        timeout: Option<u32>,
    },
    /// Kill the container if it runs and remove it; answered once it is gone.
    Remove,
    /// Answered with `Exited` once the container has ended.
    Wait,
    /// Freeze the container's processes.
    Pause,
    /// Thaw them.
    Resume,
    /// The container's processes (guest pids).
    Processes,
    /// The container cgroup's counters in the guest.
    Stats,
    /// New resource limits.
    Update(Box<oci_spec::runtime::LinuxResources>),
    /// Create a pod's later container in this (the pod sandbox's) VM from the plan in the
    /// state directory `dir`; stdio descriptors follow as for `Attach`. Answered `Created`; the
    /// connection then serves `Signal`/`Resize` for the container's process and gets `Oom`
    /// (with `events`) and `Exited` as an attach connection does.
    Member {
        /// The member's state directory (its `plan.json`).
        dir: std::path::PathBuf,
        /// Attachment.
        stdio: StdioSpec,
    },
    /// `request` for the pod's later container `container` instead of the VM's own: `Start`,
    /// `Signal`, `Exec`, `Pause`, `Resume`, `Processes`, `Stats`, `Update`, `Remove`.
    For {
        /// The member's id (its plan's).
        container: String,
        /// What to do.
        request: Box<Request>,
    },
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok,
    /// A pod's later container was created; its init waits for `Start`.
    Created {
        /// Its guest pid.
        pid: i32,
    },
    /// The process started.
    Started {
        /// Its guest pid.
        pid: i32,
    },
    /// The process (or the container) ended with this shell-style code.
    Exited {
        /// 0..=255.
        code: i32,
    },
    /// The answer to `Stats`.
    Stats(Box<moat_protocol::CgroupStats>),
    /// The answer to `Processes`.
    Processes {
        /// Guest pids.
        pids: Vec<i32>,
    },
    /// On an attach connection with `events`: the OOM killer killed a process of the
    /// container (its count so far).
    Oom {
        /// The cgroup's `oom_kill` count.
        count: u64,
    },
    /// The request failed.
    Error {
        /// One line.
        message: String,
        /// The exit code the CLI should use (125, or 126/127 for an exec that could not run).
        code: i32,
    },
}

/// Sends one message.
pub fn send<T: Serialize>(stream: &UnixStream, msg: &T) -> Result<(), ControlError> {
    let mut w = stream;
    write_frame(&mut w, FrameKind::Control, 0, &encode(msg))?;
    Ok(())
}

/// Reads one message; `Ok(None)` when the peer closed the connection.
pub fn recv<T: for<'de> Deserialize<'de>>(stream: &UnixStream) -> Result<Option<T>, ControlError> {
    let mut r = stream;
    match read_frame(&mut r) {
        Ok(frame) if frame.kind == FrameKind::Control => Ok(Some(decode(&frame.payload)?)),
        Ok(_) => Err(FrameError::UnknownKind(0).into()),
        Err(FrameError::Closed) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Most descriptors one message carries.
const MAX_FDS: usize = 3;

/// Sends `fds` on one byte.
pub fn send_fds(
    stream: &UnixStream,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), ControlError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut buffer = SendAncillaryBuffer::new(&mut space);
    if !buffer.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(ControlError::Fds(io::Error::other("too many descriptors")));
    }
    sendmsg(
        stream,
        &[IoSlice::new(b"F")],
        &mut buffer,
        SendFlags::empty(),
    )
    .map_err(|e| ControlError::Fds(e.into()))?;
    Ok(())
}

/// Receives the descriptors [`send_fds`] sent (close-on-exec).
pub fn recv_fds(stream: &UnixStream) -> Result<Vec<OwnedFd>, ControlError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut buffer = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let got = recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut byte)],
        &mut buffer,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| ControlError::Fds(e.into()))?;
    if got.bytes != 1 {
        return Err(ControlError::Fds(io::ErrorKind::UnexpectedEof.into()));
    }
    let mut fds = Vec::new();
    for msg in buffer.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn requests_and_descriptors_cross() {
        let (a, b) = UnixStream::pair().unwrap();
        let spec = StdioSpec {
            stdin: false,
            tty: false,
            tied: true,
            events: false,
        };
        send(&a, &Request::Attach(spec)).unwrap();
        let (mut r, w) = UnixStream::pair().unwrap();
        send_fds(&a, &[w.as_fd()]).unwrap();
        drop(w);
        assert_eq!(recv::<Request>(&b).unwrap(), Some(Request::Attach(spec)));
        let fds = recv_fds(&b).unwrap();
        assert_eq!(fds.len(), 1);
        let mut file = std::fs::File::from(fds.into_iter().next().unwrap());
        file.write_all(b"via fd").unwrap();
        drop(file);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "via fd");
        drop(a);
        assert_eq!(recv::<Reply>(&b).unwrap(), None);
    }
}
