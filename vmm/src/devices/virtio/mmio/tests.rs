//! Transport tests: register accesses, the status state machine and activation, against a real
//! block device on a temp file.

use std::io::Write;

use vm_memory::GuestAddress;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::block::Block;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;

struct Fixture {
    _disk: TempFile,
    mem: GuestMemory,
    block: Arc<Mutex<Block>>,
    t: MmioTransport,
}

fn fixture() -> Fixture {
    let disk = TempFile::new().unwrap();
    disk.as_file().write_all(&[0u8; 8 * 512]).unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let block = Arc::new(Mutex::new(Block::new(disk.as_path(), false).unwrap()));
    let t = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    Fixture {
        _disk: disk,
        mem,
        block,
        t,
    }
}

fn rd(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut data = [0xffu8; 4];
    t.read(u64::from(offset), &mut data);
    u32::from_le_bytes(data)
}

fn wr(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

fn device_features(t: &mut MmioTransport) -> u64 {
    wr(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let low = rd(t, reg::VIRTIO_MMIO_DEVICE_FEATURES);
    wr(t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let high = rd(t, reg::VIRTIO_MMIO_DEVICE_FEATURES);
    u64::from(low) | (u64::from(high) << 32)
}

fn write_driver_features(t: &mut MmioTransport, features: u64) {
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, reg::VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
}

/// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK.
fn negotiate(t: &mut MmioTransport, features: u64) {
    wr(t, reg::VIRTIO_MMIO_STATUS, ACK);
    wr(t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    write_driver_features(t, features);
    wr(t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
}

/// Queue 0 with 16 entries at 0x1000 / 0x2000 / 0x3000.
fn setup_queue(t: &mut MmioTransport, used: u64) {
    wr(t, reg::VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
    wr(t, reg::VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
    wr(t, reg::VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    wr(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
    wr(t, reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
    wr(t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
    wr(t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identity_registers() {
    let Fixture { mut t, .. } = fixture();
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 2);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_VENDOR_ID), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    let features = device_features(&mut t);
    assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
    wr(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_FEATURES), 0);
}

#[test]
fn bad_accesses_are_ignored() {
    let Fixture { mut t, .. } = fixture();
    let mut two = [0xffu8; 2];
    t.read(0, &mut two);
    assert_eq!(two, [0, 0]);
    let mut eight = [0xffu8; 8];
    t.read(0, &mut eight);
    assert_eq!(eight, [0; 8]);
    assert_eq!(rd(&mut t, 0x2), 0);
    assert_eq!(rd(&mut t, 0xf0), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    t.write(reg::VIRTIO_MMIO_STATUS.into(), &[1]);
    t.write(reg::VIRTIO_MMIO_STATUS.into(), &[1, 0, 0, 0, 0, 0, 0, 0]);
    wr(&mut t, 0x8, 5);
    wr(&mut t, 0xffc, 5);
    t.write(u64::MAX, &[1, 2, 3, 4]);
    t.read(u64::MAX - 3, &mut [0u8; 4]);
    t.read(0x100, &mut [0u8; 3]);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_DEVICE_ID), 2);
    assert_eq!(t.bad_access.count(), 11);
}

#[test]
fn config_space_any_width() {
    let Fixture { mut t, .. } = fixture();
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    assert_eq!(rd(&mut t, 0x100), 8);
    assert_eq!(rd(&mut t, 0x104), 0);
    let mut byte = [0xffu8];
    t.read(0x100, &mut byte);
    assert_eq!(byte, [8]);
    assert_eq!(rd(&mut t, 0xffc), 0);
    wr(&mut t, 0x100, 0xdead);
    assert_eq!(rd(&mut t, 0x100), 8);
}

#[test]
fn status_follows_the_sequence() {
    let Fixture { mut t, block, .. } = fixture();
    // Skipping steps is refused.
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, DRIVER);
    assert_eq!(t.status(), 0);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | FEATURES_OK);
    assert_eq!(t.status(), ACK);
    // Features cannot be written before DRIVER.
    write_driver_features(&mut t, 1 << VIRTIO_F_VERSION_1);
    assert_eq!(t.driver_features, 0);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER);
    // Unknown bits, clearing bits: refused.
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | 0x10);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, DRIVER);
    assert_eq!(t.status(), ACK | DRIVER);
    // Features the device does not offer, or no VERSION_1: FEATURES_OK stays clear.
    write_driver_features(&mut t, (1 << VIRTIO_F_VERSION_1) | (1 << 40));
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(t.status(), ACK | DRIVER);
    write_driver_features(&mut t, 0);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(t.status(), ACK | DRIVER);
    let features = device_features(&mut t);
    write_driver_features(&mut t, features);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(t.status(), ACK | DRIVER | FEATURES_OK);
    assert_eq!(block.lock().unwrap().acked_features(), features);
    // Features are frozen now.
    write_driver_features(&mut t, 1 << VIRTIO_F_VERSION_1);
    assert_eq!(t.driver_features, features);
    // FAILED is accepted at any point.
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | VIRTIO_CONFIG_S_FAILED,
    );
    assert_ne!(t.status() & VIRTIO_CONFIG_S_FAILED, 0);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(!block.lock().unwrap().is_activated());
}

#[test]
fn activation_and_reset() {
    let Fixture { mut t, block, .. } = fixture();
    let features = device_features(&mut t);
    // Queue registers are refused before FEATURES_OK.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    negotiate(&mut t, features);
    // Invalid sizes and misaligned rings are refused.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 100);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 512);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_USED_LOW, 0x3001);
    assert_eq!(t.queues[0].size(), 256);
    assert_eq!(t.queues[0].used_ring(), 0);
    setup_queue(&mut t, 0x3000);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(t.queues[0].size(), 16);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(t.status(), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(block.lock().unwrap().is_activated());
    // Frozen after DRIVER_OK.
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 32);
    assert_eq!(t.queues[0].size(), 16);

    let interrupt = t.interrupt();
    interrupt.trigger(VIRTIO_MMIO_INT_CONFIG | 1).unwrap();
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 3);
    wr(&mut t, reg::VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 2);

    wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(t.status(), 0);
    assert!(!block.lock().unwrap().is_activated());
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(t.driver_features, 0);
    // And the device can be brought up again.
    negotiate(&mut t, features);
    setup_queue(&mut t, 0x3000);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(block.lock().unwrap().is_activated());
}

#[test]
fn invalid_queue_needs_reset() {
    let Fixture { mut t, block, .. } = fixture();
    let features = device_features(&mut t);
    negotiate(&mut t, features);
    // The used ring lies outside guest memory.
    setup_queue(&mut t, 0x1_0000_0000);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(!block.lock().unwrap().is_activated());
    assert_eq!(
        rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    // A queue never made ready fails the same way.
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    negotiate(&mut t, features);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // Only a reset clears it.
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, ACK);
    assert_ne!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    wr(&mut t, reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(t.status(), 0);
}

#[test]
fn event_idx_reaches_the_queue() {
    let Fixture { mut t, block, .. } = fixture();
    let features = device_features(&mut t);
    assert_ne!(features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    negotiate(&mut t, features);
    setup_queue(&mut t, 0x3000);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert!(block.lock().unwrap().is_activated());
    assert!(
        !t.queues[0].event_idx_enabled(),
        "the transport's copy is unchanged"
    );
}

#[test]
fn request_through_the_transport() {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use vm_memory::Bytes;

    let Fixture {
        mut t, block, mem, ..
    } = fixture();
    let mock = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let features = device_features(&mut t);
    negotiate(&mut t, features);
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_NUM, 16);
    for (low, addr) in [
        (reg::VIRTIO_MMIO_QUEUE_DESC_LOW, mock.desc_table_addr()),
        (reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW, mock.avail_addr()),
        (reg::VIRTIO_MMIO_QUEUE_USED_LOW, mock.used_addr()),
    ] {
        wr(&mut t, low, addr.0 as u32);
        wr(&mut t, low + 4, (addr.0 >> 32) as u32);
    }
    wr(&mut t, reg::VIRTIO_MMIO_QUEUE_READY, 1);
    wr(
        &mut t,
        reg::VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
    assert_eq!(t.status(), ACK | DRIVER | FEATURES_OK | DRIVER_OK);

    // GET_ID: header at 0x8000, 20-byte buffer at 0x9000, status at 0xa000.
    mem.write_obj(8u32.to_le(), GuestAddress(0x8000)).unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    let chain = [
        Descriptor::new(0x8000, 16, next, 1),
        Descriptor::new(0x9000, 20, next | write, 2),
        Descriptor::new(0xa000, 1, write, 0),
    ];
    mock.add_desc_chains(&chain.map(RawDescriptor::from), 0)
        .unwrap();
    block.lock().unwrap().process_queue();
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0xa000)).unwrap(), 0);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x9000))
            .unwrap()
            .to_le_bytes(),
        *b"moat"
    );
    assert_eq!(rd(&mut t, reg::VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
}

#[test]
fn warn_limiter_thins_out() {
    let mut limiter = WarnLimiter::default();
    let logged = (0..1000).filter(|_| limiter.allow()).count();
    assert_eq!(limiter.count(), 1000);
    // 1..=10, then 16, 32, 64, 128, 256, 512.
    assert_eq!(logged, 16);
}
