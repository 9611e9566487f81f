//! moat-runtime: the host library shared by the `moat` CLI and the containerd shim.
//!
//! [`run::run`] runs one container in its own microVM: it finds the assets ([`assets`]),
//! probes KVM and starts `moat-vmm` jailed ([`vmm`], docs/jailer.md) with a fresh state
//! directory ([`state`]), waits for the guest agent ([`boot`]), runs the process and relays its
//! stdio, signals and terminal ([`session`], [`signals`], [`terminal`]), and tears everything
//! down whatever happens.
//!
//! No unsafe code: the VMM's clone into its jail's namespaces is `moat_jail::spawn`.
#![forbid(unsafe_code)]

pub mod assets;
pub mod boot;
pub mod config;
pub mod console;
pub mod disks;
pub mod host;
pub mod layers;
pub mod locks;
pub mod run;
pub mod sandbox;
pub mod session;
pub mod signals;
pub mod state;
pub mod terminal;
pub mod threads;
pub mod vmm;
pub mod vmm_control;
pub mod volumes;

#[cfg(test)]
mod testutil;

pub use run::{run, RunError, RuntimeOptions};

/// An error and its causes on one line: `error: cause: cause`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
