//! The Linux zero page (`boot_params`): e820 map, command line and initramfs location.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::layout::{
    CMDLINE_ADDR, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_ADDR,
};
use crate::devices::virtio::GuestMemory;

/// Errors writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// Guest memory does not cover the zero page.
    #[error("cannot write the zero page into guest memory")]
    Write(#[source] GuestMemoryError),
    /// The guest has less memory than the boot layout needs.
    #[error("{0} bytes of guest memory are too few to boot")]
    TooSmall(u64),
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Where the initramfs sits in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitrdRange {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The guest RAM regions for `mem_size` bytes of memory: from 0 up to the MMIO gap, and the
/// rest from 4 GiB.
pub fn memory_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        regions.push((
            GuestAddress(MMIO_GAP_END),
            (mem_size - MMIO_GAP_START) as usize,
        ));
    }
    regions
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The e820 map for `mem_size` bytes of RAM: base memory, the EBDA (reserved, it holds the MP
/// table), RAM from 1 MiB up to the MMIO gap, and RAM above 4 GiB.
pub fn e820_map(mem_size: u64) -> Result<Vec<(u64, u64, u32)>, BootParamsError> {
    let low_end = low_ram_end(mem_size);
    if low_end <= HIMEM_START {
        return Err(BootParamsError::TooSmall(mem_size));
    }
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820_RAM));
    }
    Ok(map)
}

/// The zero page for a kernel with `mem_size` bytes of RAM, a command line of `cmdline_size`
/// bytes (NUL included) at [`CMDLINE_ADDR`] and an optional initramfs.
pub fn build(
    mem_size: u64,
    cmdline_size: usize,
    initrd: Option<InitrdRange>,
) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_size)?;
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`].
pub fn write(mem: &GuestMemory, params: &boot_params) -> Result<(), BootParamsError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn regions_split_at_gap() {
        assert_eq!(
            memory_regions(256 * MIB),
            vec![(GuestAddress(0), (256 * MIB) as usize)]
        );
        let r = memory_regions(4096 * MIB);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(
            r[1],
            (
                GuestAddress(1 << 32),
                (4096 * MIB - MMIO_GAP_START) as usize
            )
        );
    }

    #[test]
    fn e820_respects_gap() {
        let m = e820_map(4096 * MIB).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[2], (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM));
        assert_eq!(m[3], (1 << 32, 4096 * MIB - MMIO_GAP_START, E820_RAM));
        assert_eq!(e820_map(128 * MIB).unwrap().len(), 3);
        assert!(e820_map(MIB).is_err());
    }

    #[test]
    fn zero_page_fields() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), (2 * MIB) as usize)]).unwrap();
        let p = build(
            128 * MIB,
            100,
            Some(InitrdRange {
                addr: 0x700_0000,
                size: 0x1000,
            }),
        )
        .unwrap();
        write(&mem, &p).unwrap();
        let flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x1fe)).unwrap();
        assert_eq!(flag, BOOT_FLAG);
        let magic: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x202)).unwrap();
        assert_eq!(magic, HDR_MAGIC);
        let ramdisk: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x218)).unwrap();
        assert_eq!(ramdisk, 0x700_0000);
        let cmdline: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x228)).unwrap();
        assert_eq!(cmdline, CMDLINE_ADDR as u32);
        let entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x1e8)).unwrap();
        assert_eq!(entries, 3);
        let e2_addr: u64 = mem
            .read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x2d0 + 40))
            .unwrap();
        assert_eq!(e2_addr, HIMEM_START);
    }
}
