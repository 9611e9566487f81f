//! The guest-physical memory layout (see docs/architecture.md).

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT, loaded so that a stray exception before the kernel installs its own faults
/// cleanly (triple fault) instead of using garbage.
pub const IDT_ADDR: u64 = 0x520;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Level-4 page table of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory of the boot identity map (2 MiB pages, 1 GiB mapped).
pub const PD_ADDR: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Capacity of the kernel command line, NUL included (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: the last KiB of base memory holds the MP table.
pub const EBDA_START: u64 = 0x9fc00;
/// Where high memory begins; the kernel is loaded above this.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (exclusive); RAM continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// GSI of the first virtio-mmio device.
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// Last GSI the in-kernel IOAPIC serves.
pub const MAX_GSI: u32 = 23;
/// Three pages KVM needs for the TSS on Intel (inside the MMIO gap, never RAM).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page KVM needs for the real-mode identity map on Intel.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Maximum number of vCPUs.
pub const MAX_VCPUS: u8 = 32;
/// I/O port of the 8250 UART.
pub const SERIAL_PORT: u16 = 0x3f8;
/// IRQ of the 8250 UART.
pub const SERIAL_IRQ: u32 = 4;
/// First I/O port of the i8042 controller (data; the command port is base + 4).
pub const I8042_PORT: u16 = 0x60;
