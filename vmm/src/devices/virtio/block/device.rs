//! The virtio-blk device: its virtio state and the request queue processing.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::request::{status_of, Chain, Disk};
use super::{
    BlockCounters, BlockError, SwapError, MAX_DESCRIPTORS, MAX_SEGMENT_LEN, QUEUE_SIZE,
    REQUESTS_PER_EVENT, SECTOR_SIZE,
};
use crate::devices::virtio::mmio::WarnLimiter;
use crate::devices::virtio::{
    GuestMemory, Interrupt, VirtioDevice, VirtioError, VIRTIO_MMIO_INT_CONFIG,
    VIRTIO_MMIO_INT_VRING,
};

/// Bytes of `struct virtio_blk_config` exposed: capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_LEN: usize = 24;

/// The queues and memory the driver handed over on activation.
struct Active {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queue: Queue,
}

/// The backing file and the per-request state.
struct Backend {
    file: Arc<File>,
    read_only: bool,
    capacity: u64,
    serial: Vec<u8>,
    chain: Chain,
    counters: Arc<BlockCounters>,
    warn: WarnLimiter,
}

/// A virtio-blk device backed by a host file.
pub struct Block {
    backend: Backend,
    config: [u8; CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    queue_evts: [EventFd; 1],
    active: Option<Active>,
    /// Most requests served per queue event.
    pub(super) budget: usize,
    /// A disk slot's empty file (`Some` only for [`Block::slot`]s): what an eject puts back.
    empty: Option<Arc<File>>,
    /// Configuration changes made by swaps ([`VirtioDevice::config_generation`]).
    generation: u32,
}

impl Block {
    /// A device serving `path`, opened read-only or read-write. Its size must be a multiple of
    /// 512 bytes.
    pub fn new(path: &Path, read_only: bool) -> Result<Block, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let size_err = |source| BlockError::Size {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        // Seeking to the end also gives the size of a block device, where metadata says 0.
        let size = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::NotSectorMultiple {
                path: path.to_owned(),
                size,
            });
        }
        let meta = file.metadata().map_err(size_err)?;
        let capacity = size / SECTOR_SIZE;
        let mut serial = format!("moat{:x}.{:x}", meta.dev(), meta.ino()).into_bytes();
        serial.truncate(VIRTIO_BLK_ID_BYTES as usize);
        Self::with_file(file, read_only, capacity, serial)
    }

    /// A read-only disk slot: empty (0 sectors) until a backing file is swapped in
    /// ([`Block::swap`]). `empty` is an empty file (a memfd) the slot falls back to on eject.
    pub fn slot(index: usize, empty: File) -> Result<Block, BlockError> {
        let mut serial = format!("moat-slot{index}").into_bytes();
        serial.truncate(VIRTIO_BLK_ID_BYTES as usize);
        let mut block = Self::with_file(empty, true, 0, serial)?;
        block.empty = Some(block.backend.file.clone());
        Ok(block)
    }

    fn with_file(
        file: File,
        read_only: bool,
        capacity: u64,
        serial: Vec<u8>,
    ) -> Result<Block, BlockError> {
        let queue_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_SIZE_MAX);
        avail_features |= 1u64
            << if read_only {
                VIRTIO_BLK_F_RO
            } else {
                VIRTIO_BLK_F_FLUSH
            };
        Ok(Block {
            backend: Backend {
                file: Arc::new(file),
                read_only,
                capacity,
                serial,
                chain: Chain::default(),
                counters: Arc::default(),
                warn: WarnLimiter::default(),
            },
            config: config_space(capacity),
            avail_features,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            queue_evts: [queue_evt],
            active: None,
            budget: REQUESTS_PER_EVENT,
            empty: None,
            generation: 0,
        })
    }

    /// Whether this is a disk slot, whose backing file can be swapped.
    pub fn is_slot(&self) -> bool {
        self.empty.is_some()
    }

    /// Puts `file` behind this slot (`None`: the slot's empty file, an eject) and tells the
    /// driver that the capacity changed (a configuration change interrupt). Requests already
    /// served went to the old file; the guest must stop using the disk before a swap (the agent
    /// unmounts it and drops its cached blocks). Returns the new capacity in sectors.
    pub fn swap(&mut self, file: Option<File>) -> Result<u64, SwapError> {
        let Some(empty) = &self.empty else {
            return Err(SwapError::NotASlot);
        };
        let file = match file {
            Some(mut file) => {
                let size = file.seek(SeekFrom::End(0)).map_err(SwapError::Size)?;
                if !size.is_multiple_of(SECTOR_SIZE) {
                    return Err(SwapError::NotSectorMultiple(size));
                }
                (Arc::new(file), size / SECTOR_SIZE)
            }
            None => (empty.clone(), 0),
        };
        (self.backend.file, self.backend.capacity) = file;
        self.config = config_space(self.backend.capacity);
        self.generation = self.generation.wrapping_add(1);
        if let Some(active) = &self.active {
            if let Err(err) = active.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG) {
                warn!(error = %err, "virtio-blk: cannot signal the capacity change");
            }
        }
        Ok(self.backend.capacity)
    }

    /// Another descriptor of the backing file, for syncing it when the VM ends.
    pub fn sync_handle(&self, path: &Path) -> Result<File, BlockError> {
        self.backend
            .file
            .try_clone()
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })
    }

    /// Size of the disk in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.backend.capacity
    }

    /// Whether the disk refuses writes.
    pub fn read_only(&self) -> bool {
        self.backend.read_only
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The device's counters, shared: read them from any thread.
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.backend.counters.clone()
    }

    /// Serves the requests in the queue and signals the guest. Does nothing before activation.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            queue,
        } = active;
        let mut handled = 0usize;
        loop {
            if let Err(err) = queue.disable_notification(&*mem) {
                warn!(error = %err, "virtio-blk: cannot disable queue notifications");
                break;
            }
            let served = self.backend.serve(queue, mem, self.budget - handled);
            handled += served;
            if handled >= self.budget {
                // Let other event sources run; the self-kick brings us back.
                if let Err(err) = self.queue_evts[0].write(1) {
                    warn!(error = %err, "virtio-blk: cannot re-kick the queue");
                }
                break;
            }
            match queue.enable_notification(&*mem) {
                // Requests arrived while notifications were off: the driver saw them off and
                // did not kick, so serve them now, even after a pass that found nothing (a
                // stale kick). An index more than a queue ahead stalls until a reset instead.
                Ok(true) if avail_ahead(queue, mem) == Some(false) => {}
                Ok(_) => break,
                Err(err) => {
                    warn!(error = %err, "virtio-blk: cannot enable queue notifications");
                    break;
                }
            }
        }
        debug!(handled, "virtio-blk: served the queue");
        if handled == 0 {
            return;
        }
        // On error, signal: a spurious interrupt is harmless, a lost one hangs the guest.
        if queue.needs_notification(&*mem).unwrap_or(true) {
            BlockCounters::add(&self.backend.counters.interrupts, 1);
            if let Err(err) = interrupt.trigger(VIRTIO_MMIO_INT_VRING) {
                warn!(error = %err, "virtio-blk: cannot signal the guest");
            }
        }
    }

    /// The raw fd of the queue eventfd.
    pub(super) fn queue_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.queue_evts[0].as_raw_fd()
    }

    /// The queue eventfd was signalled: consume it and serve the queue.
    pub(super) fn on_queue_event(&mut self) {
        // EAGAIN only means a previous pass already consumed the count.
        let _ = self.queue_evts[0].read();
        if self.active.is_none() {
            debug!("virtio-blk: queue event before activation");
            return;
        }
        self.process_queue();
    }
}

/// Whether the driver's available index is more than a queue ahead of the device; `None` if
/// it cannot be read.
fn avail_ahead(queue: &Queue, mem: &GuestMemory) -> Option<bool> {
    let avail = queue.avail_idx(mem, Ordering::Acquire).ok()?;
    Some(avail.0.wrapping_sub(queue.next_avail()) > queue.size())
}

impl Backend {
    /// Serves up to `budget` available requests; returns how many were taken from the queue.
    fn serve(&mut self, queue: &mut Queue, mem: &GuestMemory, budget: usize) -> usize {
        let mut served = 0;
        while served < budget {
            let Some(chain) = self.next_chain(queue, mem) else {
                break;
            };
            served += 1;
            let head = chain.head_index();
            if head >= queue.size() {
                // Not a descriptor of this queue: nothing to serve, nothing to give back.
                self.drop_chain("head index out of range");
                continue;
            }
            let len = self.handle(mem, chain);
            if let Err(err) = queue.add_used(mem, head, len) {
                warn!(error = %err, "virtio-blk: cannot add to the used ring");
                break;
            }
        }
        served
    }

    /// The next available chain, unless the driver's available index is more than a queue
    /// ahead of the device (a broken or hostile driver: the queue then stalls until reset).
    fn next_chain<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m GuestMemory,
    ) -> Option<DescriptorChain<&'m GuestMemory>> {
        if avail_ahead(queue, mem)? {
            self.drop_chain("available index ahead of the queue");
            return None;
        }
        queue.pop_descriptor_chain(mem)
    }

    fn drop_chain(&mut self, why: &str) {
        BlockCounters::add(&self.counters.dropped, 1);
        if self.warn.allow() {
            warn!(count = self.warn.count(), "virtio-blk: {why}");
        }
    }

    /// Serves one request; returns the number of bytes written into the chain (0 when the chain
    /// is returned without a status).
    fn handle(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let counters = self.counters.clone();
        BlockCounters::add(&counters.requests, 1);
        let status_addr = match self.chain.collect(mem, chain) {
            Ok(()) => self.chain.status_addr(),
            Err(err) => {
                self.log(&err);
                None
            }
        };
        let Some(status_addr) = status_addr else {
            self.drop_chain("chain without a usable status byte");
            return 0;
        };
        let disk = Disk {
            file: &self.file,
            capacity: self.capacity,
            read_only: self.read_only,
            serial: &self.serial,
        };
        let result = self.chain.execute(mem, &disk);
        match &result {
            Ok(done) => {
                BlockCounters::add(&counters.read_bytes, done.read);
                BlockCounters::add(&counters.write_bytes, done.written);
            }
            Err(err) => {
                BlockCounters::add(&counters.errors, 1);
                self.log(err);
            }
        }
        if mem.write_obj(status_of(&result), status_addr).is_err() {
            BlockCounters::add(&counters.dropped, 1);
            return 0;
        }
        if result.as_ref().is_ok_and(|d| d.flushed) {
            BlockCounters::add(&counters.flushes, 1);
        }
        let to_guest = result.map_or(0, |done| done.to_guest);
        // At most MAX_DESCRIPTORS * MAX_SEGMENT_LEN + 1, which fits in a u32.
        u32::try_from(to_guest + 1).unwrap_or(u32::MAX)
    }

    fn log(&mut self, err: &super::RequestError) {
        if self.warn.allow() {
            warn!(error = %err, count = self.warn.count(), "virtio-blk: request failed");
        }
    }
}

fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[0..8].copy_from_slice(&capacity.to_le_bytes());
    config[8..12].copy_from_slice(&MAX_SEGMENT_LEN.to_le_bytes());
    // Header and status take one descriptor each.
    let seg_max = (MAX_DESCRIPTORS - 2) as u32;
    config[12..16].copy_from_slice(&seg_max.to_le_bytes());
    config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
    config
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No writable fields (CONFIG_WCE is not offered).
        debug!(offset, len = data.len(), "virtio-blk: ignored config write");
    }

    fn config_generation(&self) -> u32 {
        self.generation
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(queues) else {
            return Err(VirtioError::QueueCount { want: 1, got });
        };
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        true
    }
}
