//! Architecture-specific set-up of the guest: memory layout, boot structures, vCPU state.

pub mod x86_64;
