//! virtio-vsock whose host side is a Unix socket (hybrid vsock, Firecracker's convention).
//!
//! - The guest connects to CID 2 port P: the device connects to `<uds>_P` (RST if nobody
//!   listens). moat's agent connects to port 1024; the runtime listens on `<uds>_1024`.
//! - A host client connects to `<uds>` and writes `CONNECT <port>\n`: the device opens a
//!   connection to that guest port and answers `OK <host port>\n` (or closes the client).
//!
//! Files: [`packet`] (header codec), [`connection`] (one stream and its credit accounting),
//! [`muxer`] (routing, listener, limits, timeouts), [`device`] (virtio state, queues),
//! `event_handler` (epoll), [`uds`] (non-blocking connect).
//!
//! Everything from the guest is untrusted: chains shorter than a header are dropped, lengths
//! beyond the chain or 64 KiB reset the connection, packets with wrong CIDs are dropped, unknown
//! operations reset. Per connection the VMM buffers at most `CONN_BUF_SIZE` bytes (guest data the
//! host socket has not taken yet); there are at most [`muxer::MAX_CONNECTIONS`] connections.

pub mod connection;
pub mod device;
mod event_handler;
pub mod muxer;
pub mod packet;
pub mod uds;

#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockCounters, VSOCK_DEVICE_TYPE};

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or out of range.
    #[error("invalid guest cid {0}: must be 3..2^32-1")]
    InvalidCid(u64),
    /// Creating an eventfd failed.
    #[error("failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Creating the deadline timer failed.
    #[error("failed to create the timer")]
    Timer(#[source] vmm_sys_util::errno::Error),
    /// The listening socket could not be set up.
    #[error("failed to set up the host socket")]
    Muxer(#[from] muxer::MuxerError),
}
