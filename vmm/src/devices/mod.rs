//! Emulated devices: legacy port-I/O devices and virtio devices on the MMIO transport.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
