//! Guest memory: anonymous, private, `MAP_NORESERVE` mappings (an idle guest costs only the
//! pages it touches), split around the MMIO gap.
//!
//! Each region is mapped 2 MiB-aligned and marked `MADV_HUGEPAGE`: KVM can map guest memory with
//! 2 MiB (nested) page-table entries only where the guest-physical and the host-virtual address
//! agree modulo 2 MiB and the host backs the range with a huge page. An unaligned mapping costs
//! one nested-paging exit per 4 KiB page the guest touches (measured in docs/PERFORMANCE.md).

use std::io;

use vm_memory::mmap::{FromRangesError, MmapRegion};
use vm_memory::{GuestAddress, GuestRegionMmap};

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
    /// Reserving the aligned address range failed.
    #[error("cannot reserve {size} bytes of guest memory")]
    Reserve {
        /// Size of the region.
        size: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Alignment of guest memory in the VMM's address space: the x86_64 huge-page size.
const HUGE_PAGE: usize = 2 << 20;
const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `size` bytes of anonymous memory at a 2 MiB-aligned address and asks for huge pages.
/// The mapping is never unmapped: guest memory lives as long as the VMM process.
fn map_aligned(size: usize) -> Result<*mut u8, MemoryError> {
    let reserve_err = |source| MemoryError::Reserve { size, source };
    let len = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| reserve_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks; no existing memory is
    // affected, and the result is checked below.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT, FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(reserve_err(io::Error::last_os_error()));
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = len - head - size;
    // SAFETY: the head `[start, aligned)` and the tail `[aligned + size, start + len)` lie inside
    // the mapping created above, and nothing refers to them; `[aligned, aligned + size)` stays
    // mapped. madvise only changes how that range is backed.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
        // Best effort: a host without transparent huge pages still runs the guest.
        libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

fn aligned_region(addr: GuestAddress, size: usize) -> Result<GuestRegionMmap<()>, MemoryError> {
    let ptr = map_aligned(size)?;
    // SAFETY: `[ptr, ptr + size)` is the anonymous mapping `map_aligned` just created with
    // exactly PROT and FLAGS; it is never unmapped, so it outlives the region.
    let mapping = unsafe { MmapRegion::build_raw(ptr, size, PROT, FLAGS) }
        .map_err(|e| MemoryError::Map(FromRangesError::MmapRegion(e)))?;
    GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Map(FromRangesError::InvalidGuestRegion))
}

/// Total RAM of the host in MiB (`sysinfo(2)`: a jailed VMM has no /proc).
pub fn host_ram_mib() -> Result<u64, MemoryError> {
    let info = rustix::system::sysinfo();
    let total = info.totalram * u64::from(info.mem_unit.max(1));
    if total == 0 {
        return Err(MemoryError::HostSize(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "sysinfo reports no RAM",
        )));
    }
    Ok(total >> 20)
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
    let regions = memory_regions(mem_mib << 20)
        .into_iter()
        .map(|(addr, size)| aligned_region(addr, size))
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Map(FromRangesError::Collection(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn host_ram_matches_meminfo() {
        let info = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = info.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(host_ram_mib().unwrap(), kib / 1024);
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

    #[test]
    fn regions_are_huge_page_aligned_and_usable() {
        use vm_memory::Bytes;
        // Past the MMIO gap: two regions, both 2 MiB-aligned in our address space.
        let m = create_guest_memory(3500).unwrap();
        assert_eq!(m.num_regions(), 2);
        for region in m.iter() {
            assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
            let last = region.start_addr().unchecked_add(region.len() - 8);
            m.write_obj(0xfeed_u64, last).unwrap();
            assert_eq!(m.read_obj::<u64>(last).unwrap(), 0xfeed);
        }
    }
}
