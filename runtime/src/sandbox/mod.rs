//! Long-running containers (docs/lifecycle.md): every container's VM has a supervisor process
//! on the host ([`supervisor`]) that owns the VMM, the agent connection ([`mux`], protocol v4)
//! and the container's log ([`output`]), keeps its state in its state directory ([`record`])
//! and answers clients over a control socket there ([`control`], [`server`]). The CLI's verbs
//! are clients ([`client`]); [`store`] finds, lists and cleans up containers.

pub mod client;
pub mod control;
pub mod lock;
mod member;
pub mod mux;
mod output;
pub mod record;
pub mod remove;
mod server;
mod stdin;
pub mod store;
pub mod supervisor;

pub use supervisor::supervise;
