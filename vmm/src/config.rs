//! The VM configuration `moat-vmm run` is given, and its validation.

use std::path::PathBuf;
use std::str::FromStr;

use crate::arch::x86_64::layout::{MAX_GSI, MAX_VCPUS, VIRTIO_FIRST_GSI};
use crate::seccomp::ThreadKind;

/// Default bound of the console log.
pub const DEFAULT_CONSOLE_LOG_MAX: u64 = 1 << 20;
/// Default guest CID of the vsock device.
pub const DEFAULT_VSOCK_CID: u64 = 3;
/// Most virtio devices the GSI range allows.
pub const MAX_VIRTIO_DEVICES: usize = (MAX_GSI - VIRTIO_FIRST_GSI + 1) as usize;

/// Errors in the configuration (bad arguments: exit status 2).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// vCPU count outside 1..=32.
    #[error("--cpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Cpus(u64),
    /// Zero memory.
    #[error("--memory-mib must be at least 1")]
    MemoryZero,
    /// Too many virtio devices.
    #[error("at most {MAX_VIRTIO_DEVICES} virtio devices (disks + disk slots + vsock), got {0}")]
    TooManyDevices(usize),
    /// A reserved or invalid guest CID.
    #[error("--vsock-cid must be at least 3 and below 2^32 - 1, got {0}")]
    Cid(u64),
    /// A malformed `--disk` value.
    #[error("--disk {0}: expected PATH or PATH,ro")]
    Disk(String),
    /// Disk slots without the control socket that fills them.
    #[error("--disk-slots needs --control-uds (the slots are filled through it)")]
    SlotsWithoutControl,
}

/// One `--disk PATH[,ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The backing file.
    pub path: PathBuf,
    /// Read-only for the guest.
    pub read_only: bool,
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(',') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            Some(_) => return Err(ConfigError::Disk(s.to_string())),
            None => (s, false),
        };
        if path.is_empty() {
            return Err(ConfigError::Disk(s.to_string()));
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// The vsock device: guest CID and the host-side Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID.
    pub cid: u64,
    /// The Unix socket the VMM listens on for host-initiated connections; guest-initiated
    /// connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Everything `moat-vmm run` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// ELF vmlinux.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Number of vCPUs (1..=32).
    pub cpus: u64,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// virtio-blk devices, in order (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Read-only virtio-blk devices after `disks`, empty until the control socket swaps a
    /// backing file in (docs/vmm-control.md).
    pub disk_slots: usize,
    /// The control socket (a Unix socket the VMM listens on).
    pub control_uds: Option<PathBuf>,
    /// The virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// Where the serial console goes.
    pub console_log: PathBuf,
    /// Bytes kept in the console log; the rest is dropped.
    pub console_log_max: u64,
    /// Appended to the kernel command line.
    pub cmdline_extra: Option<String>,
    /// Where to write the exit counters as JSON when the VM ends.
    pub stats: Option<PathBuf>,
    /// Run every thread under its seccomp filter (off only with `--no-seccomp`).
    pub seccomp: bool,
    /// Test hook (`--test-violate-seccomp`, cargo feature `test-hooks`): this thread kind
    /// issues a syscall outside its filter once every filter is loaded.
    pub violate_seccomp_in: Option<ThreadKind>,
}

impl VmConfig {
    /// Checks the values that do not depend on the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || self.cpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if self.memory_mib == 0 {
            return Err(ConfigError::MemoryZero);
        }
        if self.disk_slots > 0 && self.control_uds.is_none() {
            return Err(ConfigError::SlotsWithoutControl);
        }
        let devices = self.disks.len()
            + self.disk_slots.min(MAX_VIRTIO_DEVICES + 1)
            + usize::from(self.vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid >= u64::from(u32::MAX) {
                return Err(ConfigError::Cid(v.cid));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "k".into(),
            initramfs: "i".into(),
            cpus: 1,
            memory_mib: 128,
            disks: vec![],
            disk_slots: 0,
            control_uds: None,
            vsock: Some(VsockConfig {
                cid: 3,
                uds_path: "v".into(),
            }),
            console_log: "c".into(),
            console_log_max: DEFAULT_CONSOLE_LOG_MAX,
            cmdline_extra: None,
            stats: None,
            seccomp: true,
            violate_seccomp_in: None,
        }
    }

    #[test]
    fn disk_syntax() {
        let d: DiskConfig = "/a/b.ext4,ro".parse().unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/a/b.ext4".into(),
                read_only: true
            }
        );
        let d: DiskConfig = "/a/b.ext4".parse().unwrap();
        assert!(!d.read_only);
        assert!("/a,xx".parse::<DiskConfig>().is_err());
        assert!(",ro".parse::<DiskConfig>().is_err());
    }

    #[test]
    fn validation() {
        assert_eq!(config().validate(), Ok(()));
        let mut c = config();
        c.cpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Cpus(0)));
        c.cpus = 33;
        assert_eq!(c.validate(), Err(ConfigError::Cpus(33)));
        let mut c = config();
        c.memory_mib = 0;
        assert_eq!(c.validate(), Err(ConfigError::MemoryZero));
        let mut c = config();
        c.disks = vec![
            DiskConfig {
                path: "d".into(),
                read_only: true
            };
            MAX_VIRTIO_DEVICES
        ];
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooManyDevices(MAX_VIRTIO_DEVICES + 1))
        );
        let mut c = config();
        c.disk_slots = MAX_VIRTIO_DEVICES - 1;
        assert_eq!(c.validate(), Err(ConfigError::SlotsWithoutControl));
        c.control_uds = Some("control.sock".into());
        assert_eq!(c.validate(), Ok(()));
        c.disk_slots = usize::MAX;
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooManyDevices(MAX_VIRTIO_DEVICES + 2))
        );
        let mut c = config();
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds_path: "v".into(),
        });
        assert_eq!(c.validate(), Err(ConfigError::Cid(2)));
    }
}
