//! moat-vmm: a minimal KVM virtual machine monitor built on rust-vmm crates.
//!
//! One event-loop thread serves the devices' backends; one thread per vCPU runs `KVM_RUN` and
//! dispatches I/O exits to the port-I/O and MMIO [`devices::Bus`]es.

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod probe;
pub mod devices;
pub mod stats;
pub mod vstate;
