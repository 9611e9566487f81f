//! The host side of `moat-vmm`'s control socket (docs/vmm-control.md): swapping the backing
//! file of one of the VM's disk slots while the guest runs.
//!
//! The VMM is jailed and cannot open host files: the file is opened here and its descriptor
//! travels with the request (`SCM_RIGHTS`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// How long the VMM may take to answer (it serves the socket between device events).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply read: the VMM may be the guest's by now, and its replies are not trusted.
const MAX_REPLY: u64 = 4096;

/// Errors from a control call.
#[derive(Debug, thiserror::Error)]
pub enum VmmControlError {
    /// The socket could not be reached.
    #[error("cannot connect to the VMM's control socket {}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending the request or reading the reply failed.
    #[error("the VMM's control socket failed")]
    Io(#[source] io::Error),
    /// The reply is not one this runtime knows.
    #[error("the VMM sent an unexpected reply: {0}")]
    Reply(String),
    /// The file is open for writing: the VMM would hold a writable descriptor of it.
    #[error("a disk slot takes a file opened read-only (the VMM must not be able to write it)")]
    Writable,
    /// The VMM refused the request.
    #[error("the VMM refused to swap disk slot {slot}: {reason}")]
    Refused {
        /// The slot.
        slot: usize,
        /// The VMM's reason.
        reason: String,
    },
}

/// Puts `file` behind disk slot `slot` (`None`: empties it) and returns the slot's capacity in
/// 512-byte sectors. The guest sees a capacity change; it must not use the slot's old disk.
/// `file` must be open read-only (a slot is a read-only disk, and the VMM is not trusted with
/// write access); its descriptor is shared with the VMM, file position included.
pub fn swap_disk(socket: &Path, slot: usize, file: Option<&File>) -> Result<u64, VmmControlError> {
    if let Some(f) = file {
        let flags = rustix::fs::fcntl_getfl(f).map_err(|e| VmmControlError::Io(e.into()))?;
        if flags & rustix::fs::OFlags::RWMODE != rustix::fs::OFlags::RDONLY {
            return Err(VmmControlError::Writable);
        }
    }
    let stream = UnixStream::connect(socket).map_err(|source| VmmControlError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(VmmControlError::Io)?;
    let request = format!("{{\"swap_disk\":{{\"slot\":{slot}}}}}\n");
    let fds = file.map(|f| [f.as_fd()]);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if let Some(fds) = &fds {
        ancillary.push(SendAncillaryMessage::ScmRights(fds));
    }
    let iov = [IoSlice::new(request.as_bytes())];
    let sent = sendmsg(&stream, &iov, &mut ancillary, SendFlags::NOSIGNAL)
        .map_err(|e| VmmControlError::Io(e.into()))?;
    if sent != request.len() {
        return Err(VmmControlError::Io(io::ErrorKind::WriteZero.into()));
    }
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REPLY))
        .read_line(&mut line)
        .map_err(VmmControlError::Io)?;
    parse_reply(slot, line.trim_end())
}

fn parse_reply(slot: usize, line: &str) -> Result<u64, VmmControlError> {
    let unexpected = || VmmControlError::Reply(crate::console::sanitize(line));
    let value: serde_json::Value = serde_json::from_str(line).map_err(|_| unexpected())?;
    if let Some(capacity) = value.pointer("/ok/capacity").and_then(|c| c.as_u64()) {
        return Ok(capacity);
    }
    match value.get("error").and_then(|e| e.as_str()) {
        Some(reason) => Err(VmmControlError::Refused {
            slot,
            reason: crate::console::sanitize(reason),
        }),
        None => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(0, r#"{"ok":{"capacity":2048}}"#).unwrap(), 2048);
        let err = parse_reply(2, r#"{"error":"no disk slot 2 (the VM has 2)"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the VMM refused to swap disk slot 2: no disk slot 2 (the VM has 2)"
        );
        assert!(matches!(
            parse_reply(0, "garbage"),
            Err(VmmControlError::Reply(_))
        ));
        assert!(matches!(
            parse_reply(0, r#"{"ok":{}}"#),
            Err(VmmControlError::Reply(_))
        ));
    }

    #[test]
    fn a_writable_file_is_refused_before_anything_is_sent() {
        let tmp = crate::testutil::TempDir::new("vmm-control");
        let path = tmp.path().join("disk");
        let file = File::create(&path).unwrap();
        let err = swap_disk(&tmp.path().join("none.sock"), 0, Some(&file)).unwrap_err();
        assert!(matches!(err, VmmControlError::Writable), "{err}");
    }

    #[test]
    fn no_socket_is_a_clear_error() {
        let err = swap_disk(Path::new("/nonexistent/control.sock"), 0, None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot connect to the VMM's control socket /nonexistent"));
    }
}
