//! moat's images (docs/images.md): a content-addressed store of OCI blobs under the data root,
//! a registry client, archive import, and layers applied and flattened into one read-only ext4
//! image per chain ID, which every VM that runs the image attaches as its lower layer.

pub mod auth;
pub mod config;
pub mod flatten;
mod guard;
pub mod image;
pub mod layers;
pub mod load;
pub mod lookup;
pub mod manifest;
mod names;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod store;
mod stream;
mod tree;

#[cfg(test)]
mod testutil;
