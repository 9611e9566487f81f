//! Virtio devices and the virtio-mmio transport.
//!
//! Shape shared by every device (one folder per device, same files in each):
//! - `device.rs`: the device's virtio state, implementing [`VirtioDevice`];
//! - `event_handler.rs`: `event_manager::MutEventSubscriber` for the device; the device
//!   registers its queue eventfds (from [`VirtioDevice::queue_events`]) and its own backend fds in
//!   `init()`, and ignores queue events until it is activated.
//!
//! The transport ([`mmio::MmioTransport`]) owns the queue configuration the driver writes and
//! hands the ready queues to the device on `DRIVER_OK` through [`VirtioDevice::activate`]. Queue
//! notifications do not pass through the transport: the VMM registers each queue eventfd as a
//! KVM ioeventfd on the transport's `QUEUE_NOTIFY` register (datamatch = queue index), so the
//! vCPU thread never runs device code; the event-loop thread does.

pub mod block;
pub mod mmio;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Bit in the interrupt status register: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// Bit in the interrupt status register: the configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Size of one virtio-mmio device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Errors common to virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// Signalling the guest failed.
    #[error("failed to signal the interrupt eventfd")]
    Interrupt(#[source] std::io::Error),
    /// The driver activated the device with a queue set the device cannot use.
    #[error("activation with {got} queues, the device needs {want}")]
    QueueCount {
        /// Queues the device needs.
        want: usize,
        /// Queues the driver set up.
        got: usize,
    },
    /// Device-specific activation failure.
    #[error("device activation failed: {0}")]
    Activate(String),
}

/// The interrupt line of one virtio-mmio device: an eventfd the VMM registers with KVM as an
/// irqfd for the device's GSI, plus the interrupt status register the driver reads and acks.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// A new, unsignalled interrupt line.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to register as KVM irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Sets `bits` in the status register and injects the interrupt.
    pub fn trigger(&self, bits: u32) -> Result<(), VirtioError> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1).map_err(VirtioError::Interrupt)
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, signalled (through a KVM ioeventfd) when the driver notifies it.
    fn queue_events(&self) -> &[EventFd];
    /// Feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;
    /// The driver accepted these features.
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Changes of the configuration space the device made on its own (a disk swapped in), added
    /// to the transport's `ConfigGeneration` so that the driver sees each one.
    fn config_generation(&self) -> u32 {
        0
    }
    /// The driver set `DRIVER_OK`: from now on the device processes its queues.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: std::sync::Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), VirtioError>;
    /// Whether [`VirtioDevice::activate`] has succeeded.
    fn is_activated(&self) -> bool;
    /// The driver reset the device. Returns false if the device cannot be reset (then the
    /// transport sets `DEVICE_NEEDS_RESET`).
    fn reset(&mut self) -> bool {
        false
    }
}
