//! The KVM VM: memory slots, the in-kernel irqchip (PIC, IOAPIC, local APICs) and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::devices::virtio::GuestMemory;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl on the VM failed.
    #[error("kvm cannot {what}")]
    Kvm {
        /// What was attempted.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(VmError::OpenKvm)
}

/// Creates a bare VM (no irqchip) with `mem` as its RAM.
pub fn create_bare_vm(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create a vm"))?;
    register_memory(&vm, mem)?;
    Ok(vm)
}

/// Creates the VM: memory slots, TSS and identity-map pages, in-kernel irqchip and PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, VmError> {
    let vm = create_bare_vm(kvm, mem)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("set the identity map address"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("set the tss address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the pit"))?;
    Ok(vm)
}

fn register_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps alive
        // as long as the VM (both live until the process exits); slots do not overlap because
        // guest regions do not.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("add a memory slot"))?;
    }
    Ok(())
}

/// Routes `evt` to `gsi`: each write to the eventfd injects the interrupt.
pub fn register_irqfd(vm: &VmFd, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
    vm.register_irqfd(evt, gsi)
        .map_err(kvm_err("register an irqfd"))
}

/// Signals `evt` when the guest writes the 32-bit `datamatch` to MMIO address `addr`, without
/// an exit to user space.
pub fn register_mmio_ioevent(
    vm: &VmFd,
    evt: &EventFd,
    addr: u64,
    datamatch: u32,
) -> Result<(), VmError> {
    vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
        .map_err(kvm_err("register an ioeventfd"))
}
