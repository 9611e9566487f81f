//! moat-spec: the OCI runtime spec of a container.
//!
//! [`RunOptions`] (what `moat run`'s docker-style flags asked for, parsed by [`parse`]) becomes a
//! spec with docker's defaults ([`RunOptions::to_spec`]); [`validate`] refuses specs moat cannot
//! or must not run, naming the field; [`load_bundle`] reads an OCI bundle's config.json.
#![forbid(unsafe_code)]

pub mod build;
pub mod bundle;
pub mod caps;
pub mod host_parts;
pub mod parse;
pub mod resources;
pub mod validate;

pub use build::{
    device_rule, standard_device_rules, BindMount, Device, RunOptions, GUEST_DEVICES_ALL,
    GUEST_DEVICES_ANNOTATION, USER_ANNOTATION,
};
pub use bundle::{load_bundle, Bundle, BundleError};
pub use host_parts::{HostBind, HostParts};
pub use parse::{guest_disk_numbers, ParseError};
pub use resources::{CpuLimit, Limits, LimitsError};
pub use validate::{validate, SpecError};
