//! KVM state: the VM, guest memory and vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
