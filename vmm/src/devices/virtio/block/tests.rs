//! Block device tests against guest memory built here, a driver-side mock queue and temp files.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::{GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

const MEM_SIZE: usize = 0x100_0000;
/// Where tests put request headers, data and status bytes.
const HDR: u64 = 0x10_0000;
pub(super) const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const SECTORS: u64 = 64;

/// A chain as (address, length, device-writable) descriptors.
type Chain<'a> = &'a [(u64, u32, bool)];

pub(super) fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

pub(super) fn disk_file(sectors: u64) -> TempFile {
    let tmp = TempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i / SECTOR_SIZE) as u8)
        .collect();
    tmp.as_file().write_all(&data).unwrap();
    tmp
}

/// A driver: guest memory, a mock queue in it, and the device under test, activated.
pub(super) struct Driver<'a> {
    mem: &'a GuestMemory,
    queue: MockSplitQueue<'a, GuestMemory>,
    next_desc: u16,
    pub(super) block: Block,
    pub(super) interrupt: Arc<Interrupt>,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemory, path: &std::path::Path, read_only: bool) -> Self {
        Self::with_block(mem, Block::new(path, read_only).unwrap())
    }

    /// Activates `block` on a fresh mock queue.
    pub(super) fn with_block(mem: &'a GuestMemory, mut block: Block) -> Self {
        let queue = MockSplitQueue::new(mem, QUEUE_SIZE);
        let interrupt = Arc::new(Interrupt::new().unwrap());
        let q: Queue = queue.create_queue().unwrap();
        block
            .activate(mem.clone(), interrupt.clone(), vec![q])
            .unwrap();
        Self {
            mem,
            queue,
            next_desc: 0,
            block,
            interrupt,
        }
    }

    /// Adds one chain of (address, length, device-writable) descriptors.
    fn submit(&mut self, descs: &[(u64, u32, bool)]) {
        let start = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let last = i + 1 == descs.len();
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { start + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.queue.add_desc_chains(&raw, start).unwrap();
        self.next_desc += descs.len() as u16;
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind.to_le(), GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// The used-ring entry `index`: (head, length).
    fn used(&self, index: usize) -> (u32, u32) {
        let elem = self.queue.used().ring().ref_at(index).unwrap().load();
        (elem.id(), elem.len())
    }

    fn used_count(&self) -> u16 {
        self.queue.used().idx().load()
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A standard 3-descriptor request: header, data, status. Returns (status, used length).
    pub(super) fn request(
        &mut self,
        kind: u32,
        sector: u64,
        len: u32,
        data_writable: bool,
    ) -> (u8, u32) {
        self.header(kind, sector);
        self.submit(&[
            (HDR, 16, false),
            (DATA, len, data_writable),
            (STATUS, 1, true),
        ]);
        self.block.process_queue();
        let n = self.used_count();
        (self.status(), self.used(usize::from(n) - 1).1)
    }
}

#[test]
fn new_checks_the_file() {
    let tmp = TempFile::new().unwrap();
    tmp.as_file().write_all(&[0u8; 700]).unwrap();
    assert!(matches!(
        Block::new(tmp.as_path(), false),
        Err(BlockError::NotSectorMultiple { size: 700, .. })
    ));
    let missing = std::path::Path::new("/nonexistent/moat-disk");
    assert!(matches!(
        Block::new(missing, true),
        Err(BlockError::Open { .. })
    ));
}

#[test]
fn features_and_config() {
    let tmp = disk_file(SECTORS);
    let rw = Block::new(tmp.as_path(), false).unwrap();
    let ro = Block::new(tmp.as_path(), true).unwrap();
    let bit = |f: u32| 1u64 << f;
    assert_eq!(rw.device_type(), 2);
    assert_eq!(rw.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(rw.queue_events().len(), 1);
    for dev in [&rw, &ro] {
        assert_ne!(dev.avail_features() & bit(VIRTIO_F_VERSION_1), 0);
        assert_ne!(dev.avail_features() & bit(VIRTIO_BLK_F_SEG_MAX), 0);
    }
    assert_ne!(rw.avail_features() & bit(VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(rw.avail_features() & bit(VIRTIO_BLK_F_RO), 0);
    assert_ne!(ro.avail_features() & bit(VIRTIO_BLK_F_RO), 0);
    assert_eq!(ro.avail_features() & bit(VIRTIO_BLK_F_FLUSH), 0);
    let mut cap = [0u8; 8];
    rw.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut seg_max = [0u8; 4];
    rw.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
    // Past the end: left as the transport filled it (zeroes), no panic.
    let mut far = [0u8; 4];
    rw.read_config(u64::MAX, &mut far);
    rw.read_config(21, &mut far);
    assert_eq!(far, [2, 0, 0, 0]);
}

#[test]
fn write_then_read_back() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    assert_eq!(
        drv.request(VIRTIO_BLK_T_OUT, 3, 1024, false),
        (VIRTIO_BLK_S_OK as u8, 1)
    );
    let mut file = tmp.as_file();
    let mut on_disk = vec![0u8; 1024];
    file.seek(SeekFrom::Start(3 * SECTOR_SIZE)).unwrap();
    file.read_exact(&mut on_disk).unwrap();
    assert_eq!(on_disk, payload);

    mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, 3, 1024, true),
        (VIRTIO_BLK_S_OK as u8, 1025)
    );
    let mut back = vec![0u8; 1024];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, payload);
    assert_ne!(drv.interrupt.status() & VIRTIO_MMIO_INT_VRING, 0);
    assert_eq!(drv.interrupt.eventfd().read().unwrap(), 2);

    let stats = drv.block.counters().snapshot();
    assert_eq!(
        stats,
        BlockStats {
            requests: 2,
            read_bytes: 1024,
            write_bytes: 1024,
            interrupts: 2,
            ..stats
        }
    );
    assert_eq!((stats.errors, stats.dropped), (0, 0));
}

#[test]
fn any_descriptor_layout() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    drv.header(VIRTIO_BLK_T_IN, 5);
    // Header split in two, data in three uneven pieces, the last one also holding the status.
    drv.submit(&[
        (HDR, 10, false),
        (HDR + 10, 6, false),
        (DATA, 100, true),
        (DATA + 0x1000, 12, true),
        (DATA + 0x2000, 401, true),
    ]);
    drv.block.process_queue();
    assert_eq!(drv.used(0), (0, 513));
    let mut buf = [0u8; 100];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf.iter().all(|&b| b == 5));
    let mut tail = [0u8; 401];
    mem.read_slice(&mut tail, GuestAddress(DATA + 0x2000))
        .unwrap();
    assert!(tail[..400].iter().all(|&b| b == 5));
    assert_eq!(tail[400], VIRTIO_BLK_S_OK as u8);
}

#[test]
fn flush_and_get_id() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    drv.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
    drv.block.process_queue();
    assert_eq!((drv.status(), drv.used(0).1), (VIRTIO_BLK_S_OK as u8, 1));
    assert_eq!(drv.block.counters().snapshot().flushes, 1);

    let (status, len) = drv.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    assert_eq!((status, len), (VIRTIO_BLK_S_OK as u8, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert!(id.starts_with(b"moat"), "{id:?}");
}

#[test]
fn read_only_refuses_writes() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), true);
    mem.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        drv.request(VIRTIO_BLK_T_OUT, 1, 512, false),
        (VIRTIO_BLK_S_IOERR as u8, 1)
    );
    let mut sector = [0u8; 512];
    let mut file = tmp.as_file();
    file.seek(SeekFrom::Start(SECTOR_SIZE)).unwrap();
    file.read_exact(&mut sector).unwrap();
    assert!(sector.iter().all(|&b| b == 1));
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, 1, 512, true).0,
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(drv.block.counters().snapshot().errors, 1);
}

#[test]
fn bad_ranges_and_types() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, SECTORS - 1, 1024, true).0,
        ioerr
    );
    assert_eq!(drv.request(VIRTIO_BLK_T_IN, SECTORS, 512, true).0, ioerr);
    assert_eq!(drv.request(VIRTIO_BLK_T_OUT, u64::MAX, 512, false).0, ioerr);
    assert_eq!(drv.request(VIRTIO_BLK_T_IN, 0, 100, true).0, ioerr);
    // Reading exactly the last sector is fine.
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, SECTORS - 1, 512, true).0,
        VIRTIO_BLK_S_OK as u8
    );
    let unsupp = VIRTIO_BLK_S_UNSUPP as u8;
    assert_eq!(drv.request(VIRTIO_BLK_T_DISCARD, 0, 16, false).0, unsupp);
    assert_eq!(drv.request(0xdead_beef, 0, 16, false).0, unsupp);
    // Data in the wrong direction.
    assert_eq!(drv.request(VIRTIO_BLK_T_IN, 0, 512, false).0, ioerr);
    assert_eq!(drv.request(VIRTIO_BLK_T_OUT, 0, 512, true).0, ioerr);
    assert_eq!(drv.request(VIRTIO_BLK_T_GET_ID, 0, 20, false).0, ioerr);
    assert_eq!(drv.block.counters().snapshot().errors, 9);
}

#[test]
fn malformed_chains() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    let outside = MEM_SIZE as u64 + 0x1000;
    let cases: [(Chain<'_>, Option<u8>); 10] = [
        // Header too short.
        (&[(HDR, 8, false), (STATUS, 1, true)], Some(ioerr)),
        // Readable after writable.
        (
            &[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA, 512, false),
                (STATUS, 1, true),
            ],
            Some(ioerr),
        ),
        // A huge descriptor.
        (
            &[
                (HDR, 16, false),
                (DATA, 0x8000_0000, true),
                (STATUS, 1, true),
            ],
            Some(ioerr),
        ),
        // A chain over 4 GiB ends where it overflows: no status.
        (
            &[(HDR, 16, false), (DATA, u32::MAX, true), (STATUS, 1, true)],
            None,
        ),
        // Data outside guest memory, and data wrapping around the address space.
        (
            &[(HDR, 16, false), (outside, 512, true), (STATUS, 1, true)],
            Some(ioerr),
        ),
        (
            &[
                (HDR, 16, false),
                (u64::MAX - 10, 512, true),
                (STATUS, 1, true),
            ],
            Some(ioerr),
        ),
        // Header outside guest memory.
        (&[(outside, 16, false), (STATUS, 1, true)], Some(ioerr)),
        // No device-writable byte at all: returned without status.
        (&[(HDR, 16, false), (DATA, 512, false)], None),
        // Status outside guest memory: returned without status.
        (
            &[(HDR, 16, false), (DATA, 512, true), (outside, 1, true)],
            None,
        ),
        // Only zero-length descriptors.
        (&[(HDR, 0, false), (STATUS, 0, true)], None),
    ];
    for (i, (descs, want)) in cases.iter().enumerate() {
        drv.header(VIRTIO_BLK_T_IN, 0);
        drv.submit(descs);
        drv.block.process_queue();
        assert_eq!(drv.used_count() as usize, i + 1, "case {i}");
        let (head, len) = drv.used(i);
        assert_eq!(
            head,
            u32::from(drv.next_desc) - descs.len() as u32,
            "case {i}"
        );
        match want {
            Some(status) => assert_eq!((drv.status(), len), (*status, 1), "case {i}"),
            None => assert_eq!((drv.status(), len), (0xff, 0), "case {i}"),
        }
    }
    let stats = drv.block.counters().snapshot();
    assert_eq!((stats.errors, stats.dropped, stats.requests), (6, 4, 10));
}

#[test]
fn descriptor_loop_is_bounded() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    drv.header(VIRTIO_BLK_T_IN, 0);
    // Two descriptors pointing at each other.
    let a = SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1);
    let b = SplitDescriptor::new(
        STATUS,
        1,
        (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
        0,
    );
    drv.queue
        .desc_table()
        .store(0, RawDescriptor::from(a))
        .unwrap();
    drv.queue
        .desc_table()
        .store(1, RawDescriptor::from(b))
        .unwrap();
    drv.queue.avail().ring().ref_at(0).unwrap().store(0);
    drv.queue.avail().idx().store(1);
    drv.block.process_queue();
    assert_eq!(drv.used_count(), 1);
    assert_eq!(drv.used(0), (0, 1));
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
}

#[test]
fn bogus_avail_index_and_inactive_device() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    // An avail index far ahead of the device: nothing is served, nothing hangs.
    drv.queue.avail().idx().store(1000);
    drv.block.process_queue();
    assert_eq!(drv.used_count(), 0);
    assert_eq!(drv.interrupt.status(), 0);

    assert_eq!(drv.block.counters().snapshot().dropped, 1);
    // A head index outside the descriptor table is skipped; the next request is served.
    drv.queue.avail().idx().store(0);
    drv.queue.avail().ring().ref_at(0).unwrap().store(300);
    drv.queue.avail().idx().store(1);
    drv.block.process_queue();
    assert_eq!(drv.used_count(), 0);
    assert_eq!(drv.block.counters().snapshot().dropped, 2);
    drv.next_desc = 1;
    assert_eq!(
        drv.request(VIRTIO_BLK_T_IN, 0, 512, true).0,
        VIRTIO_BLK_S_OK as u8
    );

    assert!(drv.block.reset());
    assert!(!drv.block.is_activated());
    drv.block.queue_events()[0].write(1).unwrap();
    drv.block.on_queue_event();
    // Only the one valid request before the reset was served.
    assert_eq!(drv.block.counters().snapshot().requests, 1);
}

#[test]
fn activation_needs_one_queue() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut block = Block::new(tmp.as_path(), false).unwrap();
    let interrupt = Arc::new(Interrupt::new().unwrap());
    assert!(block
        .activate(mem.clone(), interrupt.clone(), vec![])
        .is_err());
    let two = vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()];
    assert!(block.activate(mem, interrupt, two).is_err());
    assert!(!block.is_activated());
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    let mut q: Queue = drv.queue.create_queue().unwrap();
    q.set_event_idx(true);
    drv.block
        .activate(mem.clone(), drv.interrupt.clone(), vec![q])
        .unwrap();
    // used_event (after the avail ring) = 5: interrupt only once the 6th request is used.
    let used_event = drv.queue.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
    mem.write_obj(5u16, GuestAddress(used_event)).unwrap();
    for _ in 0..5 {
        drv.request(VIRTIO_BLK_T_IN, 0, 512, true);
    }
    assert_eq!(drv.block.counters().snapshot().interrupts, 0);
    drv.request(VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(drv.block.counters().snapshot().interrupts, 1);
    // The device asked to be notified at the next avail index.
    let avail_event = drv.queue.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(avail_event)).unwrap(), 6);
}

#[test]
fn served_from_the_event_loop() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let drv = Driver::new(&mem, tmp.as_path(), false);
    let Driver {
        queue,
        block,
        interrupt,
        ..
    } = drv;
    let block = Arc::new(Mutex::new(block));
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(block.clone());
    mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(HDR))
        .unwrap();
    mem.write_obj(7u64.to_le(), GuestAddress(HDR + 8)).unwrap();
    let descs = [
        (HDR, 16, 0),
        (DATA, 512, VRING_DESC_F_WRITE),
        (STATUS, 1, VRING_DESC_F_WRITE),
    ];
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let flags = if i < 2 {
                flags | VRING_DESC_F_NEXT
            } else {
                flags
            };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, i as u16 + 1))
        })
        .collect();
    queue.add_desc_chains(&raw, 0).unwrap();
    block.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(queue.used().idx().load(), 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), 7);
    assert_eq!(interrupt.eventfd().read().unwrap(), 1);
}

#[test]
fn busy_queue_yields_and_rekicks() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    drv.block.budget = 4;
    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    // The same chain made available ten times.
    drv.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
    for idx in 1..10u16 {
        drv.queue
            .avail()
            .ring()
            .ref_at(usize::from(idx))
            .unwrap()
            .store(0);
        drv.queue.avail().idx().store(idx + 1);
    }
    let evt = &drv.block.queue_events()[0];
    assert!(evt.read().is_err(), "no kick pending yet");
    drv.block.process_queue();
    assert_eq!(drv.block.counters().snapshot().requests, 4);
    assert_eq!(drv.block.queue_events()[0].read().unwrap(), 1);
    drv.block.process_queue();
    assert_eq!(drv.block.queue_events()[0].read().unwrap(), 1);
    drv.block.process_queue();
    assert_eq!(drv.block.counters().snapshot().requests, 10);
    assert!(
        drv.block.queue_events()[0].read().is_err(),
        "no kick once drained"
    );
    assert_eq!(drv.used_count(), 10);
}

/// xorshift64: deterministic pseudo-random numbers for the chaos test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn random_garbage_never_panics() {
    let mem = memory();
    let tmp = disk_file(SECTORS);
    let mut drv = Driver::new(&mem, tmp.as_path(), false);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let addrs = [
        HDR,
        DATA,
        STATUS,
        0,
        MEM_SIZE as u64 - 1,
        MEM_SIZE as u64,
        u64::MAX - 3,
    ];
    let lens = [
        0,
        1,
        15,
        16,
        17,
        511,
        512,
        4096,
        MAX_SEGMENT_LEN + 1,
        u32::MAX,
    ];
    for round in 0..2000u32 {
        // A random header in the usual place.
        let wild = rng.next();
        let kind = rng.pick(&[0u32, 1, 4, 8, 11, 13, wild as u32]);
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        let sector = rng.pick(&[0, 1, SECTORS - 1, SECTORS, u64::MAX, wild]);
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        // Random descriptors with random flags and links.
        for i in 0..8u16 {
            let flags = (rng.next() % 8) as u16;
            let wild = rng.next() as u16;
            let next = rng.pick(&[i + 1, 0, 255, 300, wild]);
            let desc = SplitDescriptor::new(rng.pick(&addrs), rng.pick(&lens), flags, next);
            let index = (u64::from(round) * 8 + u64::from(i)) % u64::from(QUEUE_SIZE);
            drv.queue
                .desc_table()
                .store(index as u16, RawDescriptor::from(desc))
                .unwrap();
        }
        let idx = drv.queue.avail().idx().load();
        let head = rng.pick(&[(round * 8 % 256) as u16, wild as u16]);
        drv.queue
            .avail()
            .ring()
            .ref_at(usize::from(idx % QUEUE_SIZE))
            .unwrap()
            .store(head);
        // Mostly one new entry, sometimes a wild index.
        let step = rng.pick(&[1u16, 1, 1, 0, 2, 400]);
        drv.queue.avail().idx().store(idx.wrapping_add(step));
        drv.block.process_queue();
        if step == 400 {
            // The device refused the jump: put the index back where the device is.
            drv.queue.avail().idx().store(idx);
        }
    }
    let stats = drv.block.counters().snapshot();
    assert!(stats.requests > 500, "{stats:?}");
    assert!(stats.errors > 0 && stats.dropped > 0, "{stats:?}");
}
