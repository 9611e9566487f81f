//! The host <-> guest-agent protocol of moat.
//!
//! One vsock stream carries everything between the runtime on the host and `moat-agent` (PID 1
//! in the guest). The agent opens it: it connects to the host (CID 2) on [`AGENT_VSOCK_PORT`] as
//! soon as it is ready, which the host sees as a connection on the Unix socket
//! `<vsock uds>_<port>` (Firecracker's hybrid-vsock convention).
//!
//! The stream is a sequence of frames ([`frame`]): a 9-byte header (payload length as `u32`
//! little-endian, a kind byte, the process id as `u32` little-endian) and a payload of at most [`MAX_PAYLOAD`] bytes. Control frames
//! carry one JSON-encoded [`message::HostMessage`] or [`message::AgentMessage`]; data frames carry
//! raw stdio bytes of one process. The streams of every process share the connection under flow
//! control: a side has at most [`WINDOW`] bytes of one stream in flight until the other side
//! credits them, so a process whose reader is slow never stalls another. Both sides treat the other's bytes as untrusted: sizes are bounded before any
//! allocation, unknown kinds and malformed JSON are errors, never panics.
#![forbid(unsafe_code)]

pub mod frame;
pub mod message;

pub use frame::{read_frame, write_frame, Frame, FrameError, FrameKind, HEADER_LEN, MAX_PAYLOAD};
pub use message::{decode, encode};
pub use message::{
    AgentMessage, CgroupStats, ErrorKind, ExecRequest, ExitStatus, HostMessage, MessageError,
    OutputStream, RootfsSpec, RunRequest, UpperLayer, VolumeSpec, COPY_VOLUME_MAX, EMPTY_DIRS,
    SHM_DIR, VOLUMES_DIR,
};

/// Version of the protocol spoken by this build; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 8;

/// The process id of the container's own process (its `process` in the spec).
pub const MAIN_PROCESS: u32 = 1;

/// The smallest process id an exec may have.
pub const FIRST_EXEC: u32 = 2;

/// Bytes of one stream (a process's stdin, stdout or stderr) that may be in flight before the
/// receiving side credits them.
pub const WINDOW: u32 = 1 << 20;

/// The vsock port the agent connects to on the host (CID 2).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The vsock context id of the host.
pub const HOST_CID: u32 = 2;
