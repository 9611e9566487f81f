//! An Intel MultiProcessor Specification 1.4 table, so a kernel without ACPI finds every vCPU,
//! the IOAPIC and the ISA interrupt routing. It lives in the last KiB of base memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::layout::{EBDA_START, IOAPIC_ADDR, LAPIC_ADDR, MAX_GSI, MAX_VCPUS};
use crate::devices::virtio::GuestMemory;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The vCPU count is outside 1..=32.
    #[error("{0} vcpus do not fit the mp table (1 to 32)")]
    Cpus(u8),
    /// Guest memory does not cover the table's place.
    #[error("cannot write the mp table into guest memory")]
    Write(#[source] GuestMemoryError),
}

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// Family 6, model 15-ish signature and FPU/APIC feature flags reported per processor.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

fn processor_entry(apic_id: u8) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[1] = apic_id;
    e[2] = APIC_VERSION;
    e[3] = CPU_ENABLED | if apic_id == 0 { CPU_BSP } else { 0 };
    e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    e
}

fn bus_entry() -> [u8; 8] {
    [1, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']
}

fn ioapic_entry(id: u8) -> [u8; 8] {
    let mut e = [2, id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    e[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    e
}

fn io_interrupt_entry(ioapic_id: u8, irq: u8) -> [u8; 8] {
    // Flags 0: polarity and trigger conform to the ISA bus (active high, edge).
    [3, INT_TYPE_INT, 0, 0, ISA_BUS_ID, irq, ioapic_id, irq]
}

fn local_interrupt_entry(kind: u8, dest_apic: u8, lint: u8) -> [u8; 8] {
    [4, kind, 0, 0, ISA_BUS_ID, 0, dest_apic, lint]
}

/// The table's bytes for `cpus` vCPUs, to be placed at guest address `base`.
pub fn build(cpus: u8, base: u32) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MptableError::Cpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for id in 0..cpus {
        entries.extend_from_slice(&processor_entry(id));
    }
    entries.extend_from_slice(&bus_entry());
    entries.extend_from_slice(&ioapic_entry(ioapic_id));
    for irq in 0..=MAX_GSI as u8 {
        entries.extend_from_slice(&io_interrupt_entry(ioapic_id, irq));
    }
    entries.extend_from_slice(&local_interrupt_entry(INT_TYPE_EXTINT, 0, 0));
    entries.extend_from_slice(&local_interrupt_entry(INT_TYPE_NMI, 0xff, 1));
    let entry_count = cpus as u16 + 2 + (MAX_GSI as u16 + 1) + 2;

    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header[6] = SPEC_REV;
    header[8..16].copy_from_slice(b"MOAT    ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&entry_count.to_le_bytes());
    header[36..40].copy_from_slice(&LAPIC_ADDR.to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = [0u8; FLOATING_LEN];
    floating[0..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&(base + FLOATING_LEN as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte paragraphs
    floating[9] = SPEC_REV;
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus, EBDA_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_sizes() {
        for cpus in [1u8, 2, 32] {
            let t = build(cpus, 0x9fc00).unwrap();
            assert_eq!(sum(&t[..16]), 0);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9fc10);
            let len = u16::from_le_bytes(t[20..22].try_into().unwrap()) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(sum(&t[16..]), 0);
            assert!(
                t.len() <= 1024,
                "mp table must fit the last KiB of base memory"
            );
            let count = u16::from_le_bytes(t[50..52].try_into().unwrap());
            assert_eq!(count as usize, cpus as usize + 2 + 24 + 2);
        }
    }

    #[test]
    fn processors() {
        let t = build(2, 0x9fc00).unwrap();
        let p0 = &t[60..80];
        let p1 = &t[80..100];
        assert_eq!((p0[0], p0[1], p0[3]), (0, 0, 3));
        assert_eq!((p1[0], p1[1], p1[3]), (0, 1, 1));
        // The IOAPIC follows the bus entry and carries id = cpus.
        assert_eq!(&t[108..112], &[2, 2, IOAPIC_VERSION, 1]);
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(build(0, 0).is_err());
        assert!(build(33, 0).is_err());
    }

    #[test]
    fn writes_to_memory() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 4).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START + 16))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
    }
}
