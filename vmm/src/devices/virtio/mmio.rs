//! The virtio-mmio transport (virtio 1.x, MMIO register layout version 2).
//!
//! The transport owns what the driver configures through the register window (feature
//! negotiation, the status state machine, the queues' addresses and sizes) and hands the ready
//! queues to the device on `DRIVER_OK`. Every register access comes from the guest: accesses of
//! the wrong width, to unknown offsets or out of order are ignored (warn log, rate-limited).

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{GuestMemory, Interrupt, VirtioDevice, MMIO_WINDOW_SIZE, VIRTIO_MMIO_INT_CONFIG};
use crate::devices::BusDevice;

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver.
const VENDOR_ID: u32 = 0;
/// Start of the device-specific configuration space.
const CONFIG_START: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

/// Errors from building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The interrupt eventfd could not be created.
    #[error("failed to create the interrupt eventfd")]
    Interrupt(#[source] std::io::Error),
    /// The device asked for a queue size virtio does not allow.
    #[error("queue {index} has an invalid maximum size {size}")]
    QueueSize {
        /// Index of the queue.
        index: usize,
        /// The refused size.
        size: u16,
        /// Why virtio-queue refused it.
        #[source]
        source: virtio_queue::Error,
    },
}

/// Counts events from the guest worth a warning and says which ones to log: the first 10, then
/// only every power of two, so a hostile guest cannot flood the log.
#[derive(Debug, Default)]
pub struct WarnLimiter {
    count: u64,
}

impl WarnLimiter {
    /// Records one event; true when it should be logged.
    pub fn allow(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count <= 10 || self.count.is_power_of_two()
    }

    /// Events recorded so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A virtio device's register window on the MMIO bus.
pub struct MmioTransport {
    mem: GuestMemory,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    device_type: u32,
    device_features: u64,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    bad_access: WarnLimiter,
}

fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    // A poisoned lock means a thread panicked holding it; the VMM aborts on panic anyway, and the
    // device state is still memory-safe to use.
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn set_half(value: u64, high: bool, half: u32) -> u64 {
    if high {
        (value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (value & !0xffff_ffff) | u64::from(half)
    }
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem`.
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<Self, MmioError> {
        let interrupt = Arc::new(Interrupt::new().map_err(MmioError::Interrupt)?);
        let (device_type, device_features, queues) = {
            let dev = lock(&device);
            let queues = dev
                .queue_max_sizes()
                .iter()
                .enumerate()
                .map(|(index, &size)| {
                    Queue::new(size).map_err(|source| MmioError::QueueSize {
                        index,
                        size,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (dev.device_type(), dev.avail_features(), queues)
        };
        Ok(Self {
            mem,
            device,
            interrupt,
            device_type,
            device_features,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            bad_access: WarnLimiter::default(),
        })
    }

    /// The device's interrupt line: register its eventfd as a KVM irqfd for the device's GSI.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn bad_access(&mut self, what: &str, offset: u64, len: usize) {
        if self.bad_access.allow() {
            warn!(
                device_type = self.device_type,
                offset,
                len,
                count = self.bad_access.count(),
                "virtio-mmio: ignored {what}"
            );
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queues may be configured only between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(&self) -> bool {
        let wanted = VIRTIO_CONFIG_S_FEATURES_OK;
        let blocking = VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED;
        self.status & (wanted | blocking | VIRTIO_CONFIG_S_NEEDS_RESET) == wanted
    }

    fn register_read(&mut self, offset: u32) -> Option<u32> {
        let queue = self.queues.get(self.queue_sel as usize);
        let value = match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            reg::VIRTIO_MMIO_VERSION => MMIO_VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device_type,
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            reg::VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: every length and base reads as all ones.
            reg::VIRTIO_MMIO_SHM_LEN_LOW..=reg::VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self
                .config_generation
                .wrapping_add(lock(&self.device).config_generation()),
            _ => return None,
        };
        Some(value)
    }

    fn register_write(&mut self, offset: u32, value: u32) -> bool {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => return self.write_driver_features(value),
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            // Notifications reach the device through a KVM ioeventfd on this register.
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {}
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            reg::VIRTIO_MMIO_STATUS => self.write_status(value),
            reg::VIRTIO_MMIO_SHM_SEL => self.shm_sel = value,
            reg::VIRTIO_MMIO_QUEUE_NUM
            | reg::VIRTIO_MMIO_QUEUE_READY
            | reg::VIRTIO_MMIO_QUEUE_DESC_LOW..=reg::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                return self.write_queue(offset, value)
            }
            _ => return false,
        }
        true
    }

    fn write_driver_features(&mut self, value: u32) -> bool {
        let negotiating = VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        if self.status & negotiating != VIRTIO_CONFIG_S_DRIVER {
            return false;
        }
        match self.driver_features_sel {
            0 => self.driver_features = set_half(self.driver_features, false, value),
            1 => self.driver_features = set_half(self.driver_features, true, value),
            // Feature bits past 63 are not defined; the driver writes zeroes there.
            _ => return value == 0,
        }
        true
    }

    fn write_queue(&mut self, offset: u32, value: u32) -> bool {
        if !self.queue_config_allowed() {
            return false;
        }
        let Some(queue) = self.selected_queue() else {
            return false;
        };
        let high = offset & 4 != 0;
        let result = match offset {
            reg::VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|size| queue.try_set_size(size)),
            reg::VIRTIO_MMIO_QUEUE_READY => {
                queue.set_ready(value == 1);
                Ok(())
            }
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                let addr = set_half(queue.desc_table(), high, value);
                queue.try_set_desc_table_address(GuestAddress(addr))
            }
            reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                let addr = set_half(queue.avail_ring(), high, value);
                queue.try_set_avail_ring_address(GuestAddress(addr))
            }
            reg::VIRTIO_MMIO_QUEUE_USED_LOW | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let addr = set_half(queue.used_ring(), high, value);
                queue.try_set_used_ring_address(GuestAddress(addr))
            }
            _ => return false,
        };
        result.is_ok()
    }

    /// The driver writes the status register: 0 resets, otherwise it may only add the next bit
    /// of the sequence ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK (or FAILED at any time).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let known = VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_DRIVER_OK
            | VIRTIO_CONFIG_S_FAILED
            | VIRTIO_CONFIG_S_NEEDS_RESET;
        let value = value | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        let added = value & !self.status;
        if value & !known != 0 || self.status & !value != 0 {
            self.bad_access("status write", u64::from(reg::VIRTIO_MMIO_STATUS), 4);
            return;
        }
        for bit in [
            VIRTIO_CONFIG_S_FAILED,
            VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_DRIVER,
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK,
        ] {
            if added & bit != 0 && !self.add_status_bit(bit) {
                self.bad_access("status transition", u64::from(reg::VIRTIO_MMIO_STATUS), 4);
                return;
            }
        }
    }

    fn add_status_bit(&mut self, bit: u32) -> bool {
        if bit == VIRTIO_CONFIG_S_FAILED {
            self.status |= bit;
            return true;
        }
        // Each step needs exactly the previous ones, and nothing failed.
        let ack = VIRTIO_CONFIG_S_ACKNOWLEDGE;
        let driver = ack | VIRTIO_CONFIG_S_DRIVER;
        let features_ok = driver | VIRTIO_CONFIG_S_FEATURES_OK;
        let expected = match bit {
            VIRTIO_CONFIG_S_ACKNOWLEDGE => 0,
            VIRTIO_CONFIG_S_DRIVER => ack,
            VIRTIO_CONFIG_S_FEATURES_OK => driver,
            _ => features_ok,
        };
        if self.status != expected {
            return false;
        }
        match bit {
            VIRTIO_CONFIG_S_FEATURES_OK if !self.features_acceptable() => return false,
            VIRTIO_CONFIG_S_FEATURES_OK => lock(&self.device).ack_features(self.driver_features),
            VIRTIO_CONFIG_S_DRIVER_OK => return self.driver_ok(),
            _ => {}
        }
        self.status |= bit;
        debug!(
            device_type = self.device_type,
            status = self.status,
            "virtio-mmio: status"
        );
        true
    }

    fn features_acceptable(&self) -> bool {
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        self.driver_features & !self.device_features == 0 && self.driver_features & version_1 != 0
    }

    /// DRIVER_OK: validate the queues and activate the device, or ask for a reset.
    fn driver_ok(&mut self) -> bool {
        self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        if let Some(index) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            warn!(
                device_type = self.device_type,
                index, "virtio-mmio: invalid queue at activation"
            );
            self.needs_reset();
            return true;
        }
        let queues = self.queues.iter().map(|q| {
            let state = virtio_queue::QueueState {
                event_idx_enabled: event_idx,
                ..q.state()
            };
            Queue::try_from(state)
        });
        let queues = match queues.collect::<Result<Vec<_>, _>>() {
            Ok(queues) => queues,
            Err(err) => {
                warn!(device_type = self.device_type, error = %err, "virtio-mmio: bad queue");
                self.needs_reset();
                return true;
            }
        };
        let result = lock(&self.device).activate(self.mem.clone(), self.interrupt.clone(), queues);
        match result {
            Ok(()) => debug!(
                device_type = self.device_type,
                event_idx, "virtio-mmio: activated"
            ),
            Err(err) => {
                warn!(device_type = self.device_type, error = %err, "virtio-mmio: activation failed");
                self.needs_reset();
            }
        }
        true
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if let Err(err) = self.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG) {
            warn!(error = %err, "virtio-mmio: cannot signal the config change");
        }
    }

    /// Writing 0 to the status register: back to the state after power-on.
    fn reset(&mut self) {
        let reset_ok = {
            let mut dev = lock(&self.device);
            !dev.is_activated() || dev.reset()
        };
        self.queues.iter_mut().for_each(Queue::reset);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt.ack(u32::MAX);
        self.status = if reset_ok {
            0
        } else {
            VIRTIO_CONFIG_S_NEEDS_RESET
        };
        if !reset_ok {
            warn!(
                device_type = self.device_type,
                "virtio-mmio: device cannot be reset"
            );
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_START {
            if matches!(data.len(), 1 | 2 | 4 | 8) && offset < MMIO_WINDOW_SIZE {
                lock(&self.device).read_config(offset - CONFIG_START, data);
            } else {
                self.bad_access("config read", offset, data.len());
            }
            return;
        }
        let value = u32::try_from(offset).ok().filter(|_| data.len() == 4);
        match value.and_then(|off| self.register_read(off)) {
            Some(value) => data.copy_from_slice(&value.to_le_bytes()),
            None => self.bad_access("register read", offset, data.len()),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_START {
            if matches!(data.len(), 1 | 2 | 4 | 8) && offset < MMIO_WINDOW_SIZE {
                lock(&self.device).write_config(offset - CONFIG_START, data);
            } else {
                self.bad_access("config write", offset, data.len());
            }
            return;
        }
        let accepted = match (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            (Ok(off), Ok(bytes)) => self.register_write(off, u32::from_le_bytes(bytes)),
            _ => false,
        };
        if !accepted {
            self.bad_access("register write", offset, data.len());
        }
    }
}

#[cfg(test)]
mod tests;
