//! Control messages, carried JSON-encoded in [`FrameKind::Control`](crate::FrameKind) frames.
//!
//! Conversation (agent connects, see the crate docs):
//! 1. agent -> host: [`AgentMessage::Ready`].
//! 2. host -> agent: [`HostMessage::Run`] (or [`HostMessage::Shutdown`] on a version mismatch).
//! 3. agent -> host: [`AgentMessage::Started`], or [`AgentMessage::Error`] if the process could
//!    not be started (the agent then waits for `Shutdown`).
//! 4. both ways, until the process exits: stdio data frames, [`HostMessage::StdinEof`],
//!    [`HostMessage::Signal`], [`HostMessage::Resize`].
//! 5. agent -> host: [`AgentMessage::Exited`], sent after the last stdout/stderr frame.
//! 6. host -> agent: [`HostMessage::Shutdown`]; the agent syncs and powers the VM off.

use serde::{Deserialize, Serialize};

/// Errors from encoding or decoding control messages.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The payload is not a valid message of this protocol version.
    #[error("malformed control message")]
    Malformed(#[source] serde_json::Error),
}

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Guest block device holding the image, e.g. `/dev/vda`. Always mounted read-only; unless
    /// the spec's `root.readonly` is set, writes go to an overlay upper layer ([`Self::upper`]).
    pub device: String,
    /// Filesystem type of the image, e.g. `ext4`.
    pub fstype: String,
    /// Where the overlay's upper layer lives (not used for a read-only root).
    pub upper: UpperLayer,
}

/// The backing of a container's writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpperLayer {
    /// An ext4 scratch disk, e.g. `/dev/vdc`: the VM's writable layers, one directory per
    /// container (`containers/<id>/`), mounted at `/run/moat/rw`; its size is the bound.
    Disk {
        /// Guest block device.
        device: String,
    },
    /// A tmpfs of this many MiB in guest memory (the agent's host test mode).
    Memory {
        /// Size bound in MiB.
        mib: u64,
    },
}

/// A volume: a guest block device the agent mounts at `mountpoint` in the guest before the
/// container starts, for the spec's bind mounts to take as their `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Guest block device, e.g. `/dev/vdb`.
    pub device: String,
    /// Filesystem type, e.g. `ext4`.
    pub fstype: String,
    /// Mounted read-only in the guest (whatever the bind mount says).
    pub readonly: bool,
    /// Absolute guest path under [`VOLUMES_DIR`] where the agent mounts it.
    pub mountpoint: String,
}

/// Where the agent mounts volumes in the guest (outside any container's root).
pub const VOLUMES_DIR: &str = "/run/moat-volumes";

/// Everything the agent needs to create and start the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Container id, for logs and names.
    pub id: String,
    /// The root filesystem's device (the spec's `root.path` is not used in the guest).
    pub rootfs: RootfsSpec,
    /// Volumes to mount in the guest first.
    pub volumes: Vec<VolumeSpec>,
    /// The OCI runtime spec (`config.json`) of the container: process, mounts, namespaces,
    /// resources, capabilities, seccomp and the rest, applied by the agent.
    pub spec: oci_spec::runtime::Spec,
}

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Create and start the container.
    Run(Box<RunRequest>),
    /// The host's stdin reached end of file: close the process's stdin.
    StdinEof,
    /// Deliver this signal to the container's process.
    Signal {
        /// Signal number.
        signo: i32,
    },
    /// The terminal was resized.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Kill whatever still runs, sync and power the VM off.
    Shutdown,
}

/// Why the agent could not do what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The command was not found (`moat run` exits 127).
    NotFound,
    /// The command was found but could not be executed (`moat run` exits 126).
    NotExecutable,
    /// The request was invalid (`moat run` exits 125).
    InvalidRequest,
    /// The agent failed for another reason (`moat run` exits 125).
    Internal,
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code {
        /// The exit code, 0..=255.
        code: i32,
    },
    /// It was killed by this signal.
    Signaled {
        /// Signal number.
        signo: i32,
    },
}

impl ExitStatus {
    /// The shell-style status: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Code { code } => code,
            Self::Signaled { signo } => 128 + signo,
        }
    }
}

/// Messages from the agent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The agent is up and speaks this protocol version.
    Ready {
        /// [`crate::PROTOCOL_VERSION`] of the agent.
        protocol_version: u32,
        /// The agent's own version string.
        agent_version: String,
    },
    /// The process was started with this pid (in the guest's pid namespace).
    Started {
        /// Pid of the container's process.
        pid: i32,
    },
    /// The memory limit's OOM killer killed a process of the container (sent once per kill the
    /// agent sees in the container cgroup's `memory.events`).
    Oom {
        /// The cgroup's `oom_kill` count so far.
        count: u64,
    },
    /// The process ended; no stdio frame follows.
    Exited {
        /// How it ended.
        status: ExitStatus,
    },
    /// A request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// One line for the user.
        message: String,
    },
}

/// Encodes a message as a control-frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain data types to JSON cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Decodes a control-frame payload.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, MessageError> {
    serde_json::from_slice(payload).map_err(MessageError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_message_round_trip() {
        let msg = HostMessage::Run(Box::new(RunRequest {
            id: "c1".into(),
            rootfs: RootfsSpec {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
                upper: UpperLayer::Disk {
                    device: "/dev/vdc".into(),
                },
            },
            volumes: vec![VolumeSpec {
                device: "/dev/vdb".into(),
                fstype: "ext4".into(),
                readonly: true,
                mountpoint: format!("{VOLUMES_DIR}/0"),
            }],
            spec: oci_spec::runtime::Spec::default(),
        }));
        let bytes = encode(&msg);
        assert_eq!(decode::<HostMessage>(&bytes).unwrap(), msg);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<AgentMessage>(b"{\"type\":\"nope\"}").is_err());
        assert!(decode::<AgentMessage>(&[0xff, 0x00]).is_err());
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Code { code: 7 }.shell_code(), 7);
        assert_eq!(ExitStatus::Signaled { signo: 9 }.shell_code(), 137);
    }
}
