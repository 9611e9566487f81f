//! moat-vmm: a minimal KVM virtual machine monitor built on rust-vmm crates.
//!
//! One event-loop thread serves the devices' backends; one thread per vCPU runs `KVM_RUN` and
//! dispatches I/O exits to the port-I/O and MMIO [`devices::Bus`]es.
//!
//! Boot sequence ([`builder::build`], then [`builder::Vm::run`]): validate the
//! [`config::VmConfig`]; open KVM, map guest memory lazily, create the VM with its in-kernel
//! irqchip and PIT ([`vstate`]); attach the serial console and i8042 on the port-I/O bus and each
//! virtio device on the MMIO bus (irqfd + ioeventfds); load the ELF kernel, initramfs, command
//! line, zero page, MP table and boot page tables ([`boot`], [`arch`]); create and set up the
//! vCPUs; start the event loop and one thread per vCPU, each of which loads its own
//! [`seccomp`] filter, as the main thread does after them, before any vCPU runs guest code;
//! wait for the first exit.

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod control;
pub mod devices;
pub mod jailer;
pub mod probe;
pub mod seccomp;
pub mod stats;
pub mod vstate;

/// An error and its causes on one line.
pub fn error_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// Stack size of the VMM's own threads (event loop, vCPUs). Smaller than Rust's 2 MiB default on
/// purpose: a 2 MiB stack that happens to be 2 MiB-aligned is backed by one transparent huge
/// page on its first touch (measured in the nested test host: 2 MiB of RSS for one thread);
/// these threads need a few dozen KiB.
pub const THREAD_STACK_SIZE: usize = 256 * 1024;
