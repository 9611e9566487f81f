//! x86_64: memory layout, boot structures (GDT, page tables, zero page, MP table), CPUID and
//! initial vCPU registers.

pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
