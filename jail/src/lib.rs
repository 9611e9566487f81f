//! moat-jail: the jail every `moat-vmm` runs in, shared by the VMM (which enters it) and the
//! runtime (which starts the VMM into fresh namespaces and cleans up after it).
//!
//! - [`id`]: jail ids (`[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, never `..`).
//! - [`layout`]: the paths: base `/run/moat`, state dir `<base>/<id>`, jail root `<id>/root`.
//! - [`dir`]: the jail root's placeholders (refusing symlinks, hard links, existing files).
//! - [`cgroup`]: the per-VM cgroup with cpu, memory and pids limits, on cgroup v1 and v2.
//! - [`mounts`]: private mounts, bind mounts over the placeholders, `pivot_root`.
//! - [`privs`]: fds, rlimits, uid/gid, capabilities, `no_new_privs`.
//! - [`spawn`]: the runtime's `clone` of the VMM into new namespaces.
//! - [`uids`]: per-VM unprivileged uid/gid slots held by a lock file.
//!
//! docs/jailer.md describes the whole sequence.

pub mod cgroup;
pub mod dir;
pub mod id;
pub mod layout;
pub mod mounts;
pub mod privs;
pub mod spawn;
pub mod uids;

pub use id::{IdError, JailId};
pub use layout::Layout;

/// A temporary directory for tests (of this crate and of the runtime).
#[doc(hidden)]
pub mod testutil;
