//! The boot GDT, IDT and identity-mapping page tables for the 64-bit Linux boot protocol.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::layout::{GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::devices::virtio::GuestMemory;

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// Guest memory does not cover the fixed low addresses.
    #[error("cannot write the boot {what} into guest memory")]
    Write {
        /// The structure that did not fit.
        what: &'static str,
        /// The memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// GDT index of the 64-bit code segment.
pub const CODE_INDEX: u16 = 1;
/// GDT index of the data segment.
pub const DATA_INDEX: u16 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u16 = 3;

/// The boot GDT: null, 64-bit code, data, TSS (flags, base, limit per entry).
pub const BOOT_GDT: [(u16, u32, u32); 4] = [
    (0, 0, 0),
    (0xa09b, 0, 0xfffff),
    (0xc093, 0, 0xfffff),
    (0x808b, 0, 0xfffff),
];

/// Encodes one GDT descriptor from its flags (access byte in bits 0-7, flags in 12-15),
/// base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The KVM segment register matching GDT entry `index`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let granularity = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages; KVM wants the byte limit.
    let limit = if granularity == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The encoded boot GDT.
pub fn boot_gdt() -> [u64; 4] {
    BOOT_GDT.map(|(flags, base, limit)| gdt_entry(flags, base, limit))
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    val: T,
    addr: u64,
    what: &'static str,
) -> Result<(), GdtError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| GdtError::Write { what, source })
}

/// Writes the boot GDT and an empty IDT.
pub fn write_gdt_idt(mem: &GuestMemory) -> Result<(), GdtError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        write(mem, *entry, GDT_ADDR + 8 * i as u64, "gdt")?;
    }
    write(mem, 0u64, IDT_ADDR, "idt")
}

/// Writes page tables identity-mapping the first GiB with 2 MiB pages.
pub fn write_page_tables(mem: &GuestMemory) -> Result<(), GdtError> {
    // Present | writable on the upper levels; | page size on the directory entries.
    write(mem, PDPT_ADDR | 0x03, PML4_ADDR, "pml4")?;
    write(mem, PD_ADDR | 0x03, PDPT_ADDR, "pdpt")?;
    for i in 0..512u64 {
        write(mem, (i << 21) | 0x83, PD_ADDR + i * 8, "page directory")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn encodes_descriptors() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(
            gdt_entry(0x808b, 0x1234_5678, 0xfffff),
            0x128f_8b34_5678_ffff
        );
    }

    #[test]
    fn segment_of_code_descriptor() {
        let seg = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), CODE_INDEX);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.g, 1);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.s, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), TSS_INDEX);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, 0x18));
    }

    #[test]
    fn writes_tables() {
        let m = mem();
        write_gdt_idt(&m).unwrap();
        write_page_tables(&m).unwrap();
        let code: u64 = m.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let last: u64 = m.read_obj(GuestAddress(PD_ADDR + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn fails_without_memory() {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(write_gdt_idt(&m).is_err());
    }
}
