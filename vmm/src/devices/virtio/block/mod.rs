//! virtio-blk backed by a host file.
//!
//! One request queue; requests run synchronously on the event-loop thread with `pread`/`pwrite`
//! straight between the file and guest memory (no bounce buffer). Supported requests: IN, OUT
//! (refused on a read-only disk), FLUSH (`fdatasync`), GET_ID. Features: VERSION_1, SEG_MAX,
//! SIZE_MAX, RING_EVENT_IDX, and FLUSH (writable) or RO (read-only).

mod device;
mod event_handler;
mod request;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::Block;
pub use request::RequestError;

/// Bytes in a sector, the unit of the request header's `sector` field and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most descriptors accepted in one chain (header + data segments + status).
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Longest descriptor accepted, advertised to the driver as `size_max`. With `seg_max` data
/// segments, this bounds the bytes one request moves.
pub const MAX_SEGMENT_LEN: u32 = 1 << 20;
/// Most requests handled per queue event before yielding to other event sources.
pub const REQUESTS_PER_EVENT: usize = 4 * QUEUE_SIZE as usize;

/// Errors from creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file could not be opened.
    #[error("cannot open disk {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The size of the backing file could not be read.
    #[error("cannot get the size of disk {path}")]
    Size {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backing file is not a whole number of sectors.
    #[error("disk {path} is {size} bytes, not a multiple of 512")]
    NotSectorMultiple {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The queue eventfd could not be created.
    #[error("cannot create the queue eventfd")]
    EventFd(#[source] std::io::Error),
}

/// Why a disk slot's backing file could not be swapped ([`Block::swap`]).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The disk is a boot disk, not a slot.
    #[error("the disk is not a slot (only --disk-slots disks can be swapped)")]
    NotASlot,
    /// The new file's size could not be read.
    #[error("cannot get the size of the new backing file")]
    Size(#[source] std::io::Error),
    /// The new file is not a whole number of sectors.
    #[error("the new backing file is {0} bytes, not a multiple of 512")]
    NotSectorMultiple(u64),
}

/// What a block device has done, readable from any thread.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Descriptor chains taken from the queue.
    pub requests: AtomicU64,
    /// Bytes read from the disk into the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written from the guest to the disk.
    pub write_bytes: AtomicU64,
    /// FLUSH requests served.
    pub flushes: AtomicU64,
    /// Requests answered with an error status (IOERR or UNSUPP).
    pub errors: AtomicU64,
    /// Malformed chains given back without a status, and queue entries that could not be served
    /// at all (head index out of range, available index more than a queue ahead).
    pub dropped: AtomicU64,
    /// Interrupts sent to the guest.
    pub interrupts: AtomicU64,
}

/// A copy of [`BlockCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// See [`BlockCounters::requests`].
    pub requests: u64,
    /// See [`BlockCounters::read_bytes`].
    pub read_bytes: u64,
    /// See [`BlockCounters::write_bytes`].
    pub write_bytes: u64,
    /// See [`BlockCounters::flushes`].
    pub flushes: u64,
    /// See [`BlockCounters::errors`].
    pub errors: u64,
    /// See [`BlockCounters::dropped`].
    pub dropped: u64,
    /// See [`BlockCounters::interrupts`].
    pub interrupts: u64,
}

impl BlockCounters {
    /// The current values.
    pub fn snapshot(&self) -> BlockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockStats {
            requests: get(&self.requests),
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            flushes: get(&self.flushes),
            errors: get(&self.errors),
            dropped: get(&self.dropped),
            interrupts: get(&self.interrupts),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod slot_tests;
#[cfg(test)]
mod tests;
