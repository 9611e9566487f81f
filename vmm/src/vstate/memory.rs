//! Guest memory: anonymous, private, `MAP_NORESERVE` mappings (an idle guest costs only the
//! pages it touches), split around the MMIO gap.

use vm_memory::mmap::FromRangesError;

use crate::arch::x86_64::bootparams::memory_regions;
use crate::devices::virtio::GuestMemory;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is zero.
    #[error("guest memory size must not be zero")]
    Zero,
    /// The size exceeds the host's RAM.
    #[error("guest memory of {want_mib} MiB exceeds the host's {host_mib} MiB of RAM")]
    TooLarge {
        /// Requested size.
        want_mib: u64,
        /// Host RAM.
        host_mib: u64,
    },
    /// Reading the host's RAM size failed.
    #[error("cannot read the host's memory size")]
    HostSize(#[source] std::io::Error),
    /// `mmap` failed.
    #[error("cannot map guest memory")]
    Map(#[source] FromRangesError),
}

/// Total RAM of the host in MiB.
pub fn host_ram_mib() -> Result<u64, MemoryError> {
    let info = std::fs::read_to_string("/proc/meminfo").map_err(MemoryError::HostSize)?;
    parse_mem_total_mib(&info).ok_or_else(|| {
        MemoryError::HostSize(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no MemTotal line in /proc/meminfo",
        ))
    })
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Checks a memory size against the host.
pub fn check_size(mem_mib: u64, host_mib: u64) -> Result<(), MemoryError> {
    if mem_mib == 0 {
        return Err(MemoryError::Zero);
    }
    if mem_mib > host_mib {
        return Err(MemoryError::TooLarge {
            want_mib: mem_mib,
            host_mib,
        });
    }
    Ok(())
}

/// Maps `mem_mib` MiB of guest memory (lazily: nothing is touched here).
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemory, MemoryError> {
    check_size(mem_mib, host_ram_mib()?)?;
    GuestMemory::from_ranges(&memory_regions(mem_mib << 20)).map_err(MemoryError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn parses_meminfo() {
        let s = "MemTotal:       24576000 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_mem_total_mib(s), Some(24000));
        assert_eq!(parse_mem_total_mib("nothing"), None);
    }

    #[test]
    fn size_limits() {
        assert!(matches!(check_size(0, 100), Err(MemoryError::Zero)));
        assert!(matches!(
            check_size(101, 100),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(check_size(100, 100).is_ok());
    }

    #[test]
    fn lazy_mapping() {
        let m = create_guest_memory(64).unwrap();
        assert_eq!(m.num_regions(), 1);
        let region = m.iter().next().unwrap();
        assert_eq!(region.len(), 64 << 20);
    }
}
