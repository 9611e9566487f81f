//! Seccomp for moat's containers: Docker's default profile, Docker's profile format, the OCI
//! `linux.seccomp` section, and a compiler from that section to a classic BPF program for
//! x86_64.
//!
//! The host validates a container's seccomp section before it boots a VM
//! ([`DockerProfile::to_oci`], [`validate`]); the guest agent validates it again and compiles it
//! ([`compile`]), then installs the [`Program`] with `seccomp(SECCOMP_SET_MODE_FILTER)` right
//! before `execve`. See `docs/container-seccomp.md`.
#![forbid(unsafe_code)]

mod bpf;
mod compile;
mod profile;
mod syscalls;
mod validate;

pub use bpf::{AsmError, SockFilter};
pub use compile::{compile, Program, BPF_MAXINSNS};
pub use profile::{DockerProfile, ProfileError};
pub use syscalls::syscall_number;
pub use validate::{validate, CompileError};

/// `SECCOMP_FILTER_FLAG_TSYNC`: apply the filter to every thread of the process.
pub const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
/// `SECCOMP_FILTER_FLAG_LOG`: log every action but `SECCOMP_RET_ALLOW`.
pub const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: do not force the speculative store bypass mitigation.
pub const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u32 = 4;
