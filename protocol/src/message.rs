//! Control messages, carried JSON-encoded in [`FrameKind::Control`](crate::FrameKind) frames.
//!
//! Conversation (agent connects, see the crate docs; docs/agent-protocol.md):
//! 1. agent -> host: [`AgentMessage::Ready`].
//! 2. host -> agent: [`HostMessage::Create`] (or [`HostMessage::Shutdown`] on a version
//!    mismatch); agent -> host: [`AgentMessage::Created`] (the container exists, its process
//!    waits) or [`AgentMessage::Error`].
//! 3. host -> agent: [`HostMessage::Start`]; agent -> host: [`AgentMessage::Started`] for
//!    [`crate::MAIN_PROCESS`].
//! 4. While the container runs, any number of [`HostMessage::Exec`]s (each answered by
//!    `Started` or `Error` for its process id), stdio data frames of every process interleaved
//!    under flow control ([`crate::WINDOW`]: [`HostMessage::Credit`],
//!    [`AgentMessage::StdinCredit`]), [`HostMessage::StdinEof`], [`HostMessage::Signal`],
//!    [`HostMessage::Resize`], and the container requests [`HostMessage::Pause`],
//!    [`HostMessage::Resume`], [`HostMessage::ListProcesses`], [`HostMessage::Stats`],
//!    [`HostMessage::Update`], answered in order by [`AgentMessage::Done`],
//!    [`AgentMessage::Processes`], [`AgentMessage::Stats`] or an `Error` with no process.
//! 5. agent -> host: [`AgentMessage::Exited`] for each process, after its last stdout/stderr
//!    frame; the main process's comes last (its end kills every other process of the
//!    container).
//! 6. host -> agent: [`HostMessage::Shutdown`]; the agent syncs and powers the VM off.
//!
//! Several containers (a pod's): while the first runs, more `Create`s with new ids and process
//! ids of at least [`crate::FIRST_EXEC`], each started, exec'd into and asked about by its id;
//! a later container ends alone, and [`HostMessage::Remove`] forgets it once it has.

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
    /// The device's size in 512-byte sectors, for a disk the host swapped into a disk slot
    /// after boot (docs/vmm-control.md): the agent waits until the guest sees it, and drops the
    /// device's cached blocks, before it mounts it. `None`: a disk attached at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sectors: Option<u64>,
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
    /// As [`RootfsSpec::sectors`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sectors: Option<u64>,
    /// The container gets a writable copy of the volume's files (v8): the disk is mounted
    /// read-only aside, its top-level regular files are copied into a tmpfs of the container's
    /// at `mountpoint`, and the disk is unmounted again. For a pod's later container, whose
    /// disks are read-only slots, its file binds (CRI's `/etc/hosts`, ...).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

/// The most bytes a [`VolumeSpec::copy`] volume's files take (its tmpfs's size in the guest).
pub const COPY_VOLUME_MAX: u64 = 16 << 20;

/// Where the agent mounts volumes in the guest (outside any container's root).
pub const VOLUMES_DIR: &str = "/run/moat-volumes";

/// The VM's one shared memory directory, a tmpfs the agent mounts at boot (64 MiB, mode 1777)
/// under [`VOLUMES_DIR`]: a container's `/dev/shm` bind (CRI's sandbox shm directory) is a
/// bind of it, so a pod's containers share it as they share its IPC namespace (v8).
pub const SHM_DIR: &str = "/run/moat-volumes/shm";

/// The VM's emptyDir volumes, a tmpfs the agent mounts at boot under [`VOLUMES_DIR`]: a bind
/// source `EMPTY_DIRS/<name>` is made (mode 0777, as the kubelet makes an emptyDir) before the
/// container is, so a pod's containers that name it share it (v8).
pub const EMPTY_DIRS: &str = "/run/moat-volumes/empty-dir";

/// Everything the agent needs to create a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Container id: unique in the VM, the name every later request about it uses.
    pub id: String,
    /// The host's id for the container's process: [`crate::MAIN_PROCESS`] for the VM's first
    /// container, an unused id of at least [`crate::FIRST_EXEC`] for a later one (a pod's).
    pub process: u32,
    /// The root filesystem's device (the spec's `root.path` is not used in the guest).
    pub rootfs: RootfsSpec,
    /// Volumes to mount in the guest first.
    pub volumes: Vec<VolumeSpec>,
    /// The OCI runtime spec (`config.json`) of the container: process, mounts, namespaces,
    /// resources, capabilities, seccomp and the rest, applied by the agent.
    pub spec: oci_spec::runtime::Spec,
}

/// A process to run in a running container (`moat exec`, OCI `exec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The container.
    pub container: String,
    /// The host's id for the process: at least [`crate::FIRST_EXEC`], unique in this VM.
    pub process: u32,
    /// What to run: args, env, cwd, user, capabilities, no_new_privs, rlimits, terminal and
    /// console size. The container's seccomp profile, namespaces and cgroup apply as they do to
    /// the container's own process.
    pub spec: oci_spec::runtime::Process,
    /// A user by name (`USER[:GROUP]`, as `org.moat.user`), resolved in the container's
    /// `/etc/passwd` and `/etc/group`; `None`: `spec.user` as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// An output stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Its stdout (or its terminal).
    Stdout,
    /// Its stderr.
    Stderr,
}

/// Messages from the host to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// Create a container; its process waits for [`HostMessage::Start`].
    Create(Box<RunRequest>),
    /// Start a created container's process.
    Start {
        /// The container.
        container: String,
    },
    /// Start another process in a running container.
    Exec(Box<ExecRequest>),
    /// The host's stdin for this process reached end of file: close the process's stdin.
    StdinEof {
        /// The process.
        process: u32,
    },
    /// Deliver this signal to a process.
    Signal {
        /// The process.
        process: u32,
        /// Signal number.
        signo: i32,
        /// To every process of the process's container instead (runc's `kill --all`).
        #[serde(default)]
        all: bool,
    },
    /// The process's terminal was resized.
    Resize {
        /// The process.
        process: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// The host delivered this many bytes of a process's output stream: the agent may send that
    /// many more ([`crate::WINDOW`]).
    Credit {
        /// The process.
        process: u32,
        /// Which stream.
        stream: OutputStream,
        /// Bytes delivered.
        bytes: u32,
    },
    /// Freeze every process of a container (cgroup freezer).
    Pause {
        /// The container.
        container: String,
    },
    /// Thaw them.
    Resume {
        /// The container.
        container: String,
    },
    /// List a container's processes (guest pids).
    ListProcesses {
        /// The container.
        container: String,
    },
    /// A container cgroup's counters.
    Stats {
        /// The container.
        container: String,
    },
    /// Apply these resource limits to a container's cgroup (OCI `update`).
    Update {
        /// The container.
        container: String,
        /// The limits.
        resources: Box<oci_spec::runtime::LinuxResources>,
    },
    /// Remove a container whose process has exited (a later container of the VM: the first
    /// one ends with the VM): unmount its root and volumes and forget it, so that its disks
    /// may be swapped. Answered by [`AgentMessage::Done`].
    Remove {
        /// The container.
        container: String,
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

fn main_process() -> u32 {
    crate::MAIN_PROCESS
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
    /// The container exists; its process waits for `Start`.
    Created {
        /// The container's process ([`RunRequest::process`]).
        #[serde(default = "main_process")]
        process: u32,
        /// Guest pid of the container's process (the container's init).
        pid: i32,
    },
    /// A process was started.
    Started {
        /// The process.
        process: u32,
        /// Its pid in the guest's pid namespace.
        pid: i32,
    },
    /// The agent wrote this many bytes of stdin into the process: the host may send that many
    /// more ([`crate::WINDOW`]).
    StdinCredit {
        /// The process.
        process: u32,
        /// Bytes written (or dropped because the process's stdin closed).
        bytes: u32,
    },
    /// The memory limit's OOM killer killed a process of a container (sent once per kill the
    /// agent sees in the container cgroup's `memory.events`).
    Oom {
        /// The container.
        container: String,
        /// The cgroup's `oom_kill` count so far.
        count: u64,
    },
    /// The process ended; no stdio frame of it follows.
    Exited {
        /// The process.
        process: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// `Pause`, `Resume`, `Update` or `Remove` succeeded.
    Done,
    /// The answer to `Stats`.
    Stats(Box<CgroupStats>),
    /// The answer to `ListProcesses`.
    Processes {
        /// Guest pids, ascending.
        pids: Vec<i32>,
    },
    /// A request failed.
    Error {
        /// The process the failed request was about (`Create`/`Start`: [`crate::MAIN_PROCESS`];
        /// `Exec`: its id), or `None` for a container request (`Pause`...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<u32>,
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
        let msg = HostMessage::Create(Box::new(RunRequest {
            id: "c1".into(),
            process: 1,
            rootfs: RootfsSpec {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
                upper: UpperLayer::Disk {
                    device: "/dev/vdc".into(),
                },
                sectors: Some(2048),
            },
            volumes: vec![VolumeSpec {
                device: "/dev/vdb".into(),
                fstype: "ext4".into(),
                readonly: true,
                mountpoint: format!("{VOLUMES_DIR}/0"),
                sectors: None,
                copy: true,
            }],
            spec: oci_spec::runtime::Spec::default(),
        }));
        let bytes = encode(&msg);
        assert_eq!(decode::<HostMessage>(&bytes).unwrap(), msg);
    }

    #[test]
    fn exec_and_flow_control_round_trip() {
        let msgs = [
            HostMessage::Exec(Box::new(ExecRequest {
                container: "c1".into(),
                process: 2,
                spec: oci_spec::runtime::Process::default(),
                user: Some("nobody".into()),
            })),
            HostMessage::Credit {
                process: 2,
                stream: OutputStream::Stderr,
                bytes: 10,
            },
            HostMessage::Signal {
                process: 1,
                signo: 15,
                all: true,
            },
            HostMessage::Start {
                container: "c2".into(),
            },
            HostMessage::Update {
                container: "c2".into(),
                resources: Box::default(),
            },
            HostMessage::Remove {
                container: "c2".into(),
            },
        ];
        for msg in msgs {
            assert_eq!(decode::<HostMessage>(&encode(&msg)).unwrap(), msg);
        }
        let err = AgentMessage::Error {
            process: None,
            kind: ErrorKind::Internal,
            message: "x".into(),
        };
        assert_eq!(decode::<AgentMessage>(&encode(&err)).unwrap(), err);
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

/// A container cgroup's counters (`Stats`), as cgroup v2's files give them: each `key value`
/// file as a map of its keys, so that the host picks what it reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// `cpu.stat` (`usage_usec`, `user_usec`, `system_usec`, `nr_periods`...).
    pub cpu: std::collections::BTreeMap<String, u64>,
    /// `memory.current`.
    pub memory_current: u64,
    /// `memory.max` (`None`: no limit).
    pub memory_max: Option<u64>,
    /// `memory.swap.current`.
    pub swap_current: u64,
    /// `memory.swap.max` (`None`: no limit, or no swap accounting).
    pub swap_max: Option<u64>,
    /// `memory.stat` (`anon`, `file`, `inactive_file`, `pgfault`...).
    pub memory: std::collections::BTreeMap<String, u64>,
    /// `memory.events` (`low`, `high`, `max`, `oom`, `oom_kill`).
    pub memory_events: std::collections::BTreeMap<String, u64>,
    /// `pids.current`.
    pub pids_current: u64,
    /// `pids.max` (`None`: no limit).
    pub pids_max: Option<u64>,
    /// `io.stat`, by device (`MAJ:MIN`): `rbytes`, `wbytes`, `rios`, `wios`...
    pub io: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}
