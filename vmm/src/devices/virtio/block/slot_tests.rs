//! Disk slots: empty at boot, a backing file swapped in and out while the driver runs.

use std::fs::File;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};

use super::tests::{disk_file, memory, Driver, DATA};
use super::*;
use crate::devices::virtio::{VirtioDevice, VIRTIO_MMIO_INT_CONFIG};

/// An empty file standing for the memfd the VMM gives a slot.
fn empty() -> File {
    vmm_sys_util::tempfile::TempFile::new().unwrap().into_file()
}

fn capacity(block: &Block) -> u64 {
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    u64::from_le_bytes(cap)
}

#[test]
fn a_slot_starts_empty_and_read_only() {
    let slot = Block::slot(0, empty()).unwrap();
    assert!(slot.is_slot() && slot.read_only());
    assert_eq!((slot.capacity(), capacity(&slot)), (0, 0));
    assert_ne!(slot.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(slot.config_generation(), 0);
}

#[test]
fn boot_disks_cannot_be_swapped() {
    let tmp = disk_file(8);
    let mut disk = Block::new(tmp.as_path(), true).unwrap();
    assert!(!disk.is_slot());
    assert!(matches!(disk.swap(None), Err(SwapError::NotASlot)));
}

#[test]
fn swap_in_read_eject() {
    let mem = memory();
    let mut drv = Driver::with_block(&mem, Block::slot(3, empty()).unwrap());
    // Empty: every read is beyond the capacity.
    let (status, _) = drv.request(VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    let _ = drv.interrupt.eventfd().read();

    let tmp = disk_file(16);
    let file = File::open(tmp.as_path()).unwrap();
    assert_eq!(drv.block.swap(Some(file)).unwrap(), 16);
    assert_eq!(capacity(&drv.block), 16);
    assert_eq!(drv.block.config_generation(), 1);
    assert_ne!(drv.interrupt.status() & VIRTIO_MMIO_INT_CONFIG, 0);
    assert_eq!(drv.interrupt.eventfd().read().unwrap(), 1);

    // disk_file's sector N is filled with byte N.
    let (status, _) = drv.request(VIRTIO_BLK_T_IN, 5, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    let mut sector = [0u8; 512];
    mem.read_slice(&mut sector, GuestAddress(DATA)).unwrap();
    assert!(sector.iter().all(|&b| b == 5));
    // Still read-only.
    let (status, _) = drv.request(VIRTIO_BLK_T_OUT, 5, 512, false);
    assert_ne!(status, VIRTIO_BLK_S_OK as u8);

    assert_eq!(drv.block.swap(None).unwrap(), 0);
    assert_eq!(capacity(&drv.block), 0);
    assert_eq!(drv.block.config_generation(), 2);
    let (status, _) = drv.request(VIRTIO_BLK_T_IN, 5, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn a_file_that_is_not_whole_sectors_is_refused_and_nothing_changes() {
    let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    std::io::Write::write_all(&mut tmp.as_file(), &[1u8; 700]).unwrap();
    let mut slot = Block::slot(0, empty()).unwrap();
    let err = slot.swap(Some(File::open(tmp.as_path()).unwrap()));
    assert!(matches!(err, Err(SwapError::NotSectorMultiple(700))));
    assert_eq!((capacity(&slot), slot.config_generation()), (0, 0));
}

#[test]
fn a_swap_before_activation_only_changes_the_config() {
    let tmp = disk_file(4);
    let mut slot = Block::slot(0, empty()).unwrap();
    assert_eq!(
        slot.swap(Some(File::open(tmp.as_path()).unwrap())).unwrap(),
        4
    );
    assert_eq!(capacity(&slot), 4);
}
