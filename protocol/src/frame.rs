//! Framing: a 9-byte header (`u32` LE payload length, `u8` kind, `u32` LE process id) followed
//! by the payload. The process id says which process a data frame's bytes belong to (the
//! container's main process is [`crate::MAIN_PROCESS`], execs have ids the host chose); control
//! frames carry 0 there and name their process in the message.

use std::io::{self, Read, Write};

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 9;

/// Largest payload a frame may carry. A peer announcing more is rejected before any allocation.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Errors from reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("frame i/o failed")]
    Io(#[source] io::Error),
    /// The peer closed the stream cleanly between two frames.
    #[error("peer closed the stream")]
    Closed,
    /// The peer announced a payload over [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// One JSON-encoded control message.
    Control = 1,
    /// Bytes for the process's stdin (host to agent).
    Stdin = 2,
    /// Bytes the process wrote to stdout, or to its terminal (agent to host).
    Stdout = 3,
    /// Bytes the process wrote to stderr (agent to host).
    Stderr = 4,
}

impl TryFrom<u8> for FrameKind {
    type Error = FrameError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Self::Control),
            2 => Ok(Self::Stdin),
            3 => Ok(Self::Stdout),
            4 => Ok(Self::Stderr),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// One frame as read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The process a data frame belongs to (0 in control frames).
    pub process: u32,
    /// The payload, at most [`MAX_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// Writes one frame. Payloads over [`MAX_PAYLOAD`] are refused; split data before calling.
pub fn write_frame<W: Write>(
    w: &mut W,
    kind: FrameKind,
    process: u32,
    payload: &[u8],
) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    let mut header = [0u8; HEADER_LEN];
    // The length fits in u32: it is at most MAX_PAYLOAD.
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4] = kind as u8;
    header[5..].copy_from_slice(&process.to_le_bytes());
    w.write_all(&header).map_err(FrameError::Io)?;
    w.write_all(payload).map_err(FrameError::Io)?;
    Ok(())
}

/// Reads one frame. Returns [`FrameError::Closed`] on a clean end of stream before a header.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Frame, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_header(r, &mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let kind = FrameKind::try_from(header[4])?;
    let process = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(FrameError::Io)?;
    Ok(Frame {
        kind,
        process,
        payload,
    })
}

fn read_header<R: Read>(r: &mut R, header: &mut [u8; HEADER_LEN]) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < HEADER_LEN {
        match r.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Stdout, 7, b"hello").unwrap();
        write_frame(&mut buf, FrameKind::Control, 0, b"{}").unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f.kind, FrameKind::Stdout);
        assert_eq!(f.process, 7);
        assert_eq!(f.payload, b"hello");
        let f = read_frame(&mut r).unwrap();
        assert_eq!(f.kind, FrameKind::Control);
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_header_is_rejected_before_allocation() {
        let mut bytes = (u32::MAX).to_le_bytes().to_vec();
        bytes.push(FrameKind::Stdout as u8);
        bytes.extend([0; 4]);
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(FrameError::TooLarge(n)) if n == u32::MAX as usize
        ));
    }

    #[test]
    fn oversized_payload_is_refused_on_write() {
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), FrameKind::Stdin, 1, &big),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn unknown_kind_and_truncation_are_errors() {
        let bytes = [1, 0, 0, 0, 0x7f, 0, 0, 0, 0, b'x'];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(FrameError::UnknownKind(0x7f))
        ));
        let bytes = [4, 0, 0, 0, 3, 1, 0, 0, 0, b'x'];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(FrameError::Io(_))
        ));
        let bytes = [4, 0];
        assert!(matches!(
            read_frame(&mut &bytes[..]),
            Err(FrameError::Io(_))
        ));
    }
}
