//! One virtio-blk request: parsing a guest descriptor chain and doing its I/O on the backing
//! file.
//!
//! A request is a device-readable byte stream (16-byte header, then the data of a write)
//! followed by a device-writable byte stream (the data of a read, then one status byte). The
//! streams may be split into descriptors any way the driver likes; everything about them comes
//! from the guest and is checked: descriptor count and lengths, direction order, guest addresses,
//! sector ranges against the capacity.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::{MAX_DESCRIPTORS, MAX_SEGMENT_LEN, SECTOR_SIZE};
use crate::devices::virtio::GuestMemory;

/// Size of the request header: type (u32), reserved (u32), sector (u64), little endian.
const HEADER_LEN: u64 = 16;

/// Why a request failed. Mapped to the status byte the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain has more descriptors than the device accepts.
    #[error("descriptor chain longer than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// A descriptor is longer than the advertised maximum segment size.
    #[error("descriptor of {0} bytes is longer than the maximum segment size")]
    DescriptorTooLong(u32),
    /// A descriptor points outside guest memory.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// There is no device-writable byte for the status.
    #[error("no device-writable byte for the status")]
    NoStatus,
    /// Fewer than 16 device-readable bytes for the header.
    #[error("request header is only {0} bytes")]
    ShortHeader(u64),
    /// Data bytes in the wrong direction for the request type.
    #[error("data in the wrong direction for request type {0}")]
    WrongDirection(u32),
    /// The data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// The sectors are past the end of the disk.
    #[error("sectors {sector}+{len} bytes are beyond the capacity of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Data length in bytes.
        len: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A request type this device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Reading or writing guest memory failed.
    #[error("guest memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The backing file failed.
    #[error("i/o on the backing file failed")]
    Io(#[source] io::Error),
}

impl RequestError {
    /// The status byte the guest gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A contiguous guest buffer, already checked to lie in guest memory.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// The descriptors of one chain, split by direction. Kept across requests to reuse its
/// allocations.
#[derive(Debug, Default)]
pub struct Chain {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: u64,
    writable_len: u64,
    seen_writable: bool,
    /// The last device-writable byte, when the descriptor holding it is valid.
    status: Option<GuestAddress>,
    /// The first problem found while collecting, reported once the status byte is known.
    fault: Option<RequestError>,
}

/// What the disk looks like to a request.
pub struct Disk<'a> {
    /// The backing file.
    pub file: &'a File,
    /// Size in sectors.
    pub capacity: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// The serial number returned by GET_ID (at most 20 bytes are used).
    pub serial: &'a [u8],
}

/// What a successful request did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// Bytes read from the disk into guest memory.
    pub read: u64,
    /// Bytes written from guest memory to the disk.
    pub written: u64,
    /// Bytes the device wrote into the chain before the status byte.
    pub to_guest: u64,
    /// The file's data was flushed to stable storage.
    pub flushed: bool,
}

impl Chain {
    /// Collects `descriptors`. Fails only when the chain is too long to be looked at; other
    /// problems are kept and reported by [`Chain::execute`].
    pub fn collect(
        &mut self,
        mem: &GuestMemory,
        descriptors: impl Iterator<Item = Descriptor>,
    ) -> Result<(), RequestError> {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.seen_writable = false;
        self.status = None;
        self.fault = None;
        for (count, desc) in descriptors.enumerate() {
            if count >= MAX_DESCRIPTORS {
                return Err(RequestError::TooManyDescriptors);
            }
            if let Err(err) = self.push(mem, &desc) {
                self.fault.get_or_insert(err);
            }
        }
        Ok(())
    }

    fn push(&mut self, mem: &GuestMemory, desc: &Descriptor) -> Result<(), RequestError> {
        let (addr, len) = (desc.addr(), desc.len());
        if desc.is_write_only() {
            self.seen_writable = true;
            self.writable_len += u64::from(len);
        } else if self.seen_writable {
            return Err(RequestError::ReadableAfterWritable);
        } else {
            self.readable_len += u64::from(len);
        }
        if len == 0 {
            return Ok(());
        }
        if desc.is_write_only() {
            // Until this descriptor is found valid, the status byte has no usable address.
            self.status = None;
        }
        if len > MAX_SEGMENT_LEN {
            return Err(RequestError::DescriptorTooLong(len));
        }
        if !GuestMemoryBackend::check_range(mem, addr, len as usize) {
            return Err(RequestError::BadAddress { addr: addr.0, len });
        }
        let segment = Segment {
            addr,
            len: u64::from(len),
        };
        if desc.is_write_only() {
            self.status = addr.checked_add(u64::from(len) - 1);
            self.writable.push(segment);
        } else {
            self.readable.push(segment);
        }
        Ok(())
    }

    /// The guest address of the status byte: the last device-writable byte, when the
    /// descriptor holding it is valid.
    pub fn status_addr(&self) -> Option<GuestAddress> {
        self.status
    }

    /// Runs the request against `disk`.
    pub fn execute(&mut self, mem: &GuestMemory, disk: &Disk<'_>) -> Result<Done, RequestError> {
        if let Some(err) = self.fault.take() {
            return Err(err);
        }
        if self.writable_len == 0 {
            return Err(RequestError::NoStatus);
        }
        if self.readable_len < HEADER_LEN {
            return Err(RequestError::ShortHeader(self.readable_len));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        walk(&self.readable, 0, HEADER_LEN, |addr, off, len| {
            let dst = &mut header[off as usize..(off + len) as usize];
            mem.read_slice(dst, addr).map_err(RequestError::Memory)
        })?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);
        // Data the driver sends follows the header; data it receives precedes the status byte.
        let out_len = self.readable_len - HEADER_LEN;
        let in_len = self.writable_len - 1;
        match kind {
            VIRTIO_BLK_T_IN if out_len != 0 => Err(RequestError::WrongDirection(kind)),
            VIRTIO_BLK_T_IN => self.read(mem, disk, sector, in_len),
            VIRTIO_BLK_T_OUT if in_len != 0 => Err(RequestError::WrongDirection(kind)),
            VIRTIO_BLK_T_OUT if disk.read_only => Err(RequestError::ReadOnly),
            VIRTIO_BLK_T_OUT => self.write(mem, disk, sector, out_len),
            VIRTIO_BLK_T_FLUSH => {
                disk.file.sync_data().map_err(RequestError::Io)?;
                Ok(Done {
                    flushed: true,
                    ..Done::default()
                })
            }
            VIRTIO_BLK_T_GET_ID if out_len != 0 => Err(RequestError::WrongDirection(kind)),
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, disk, in_len),
            _ => Err(RequestError::Unsupported(kind)),
        }
    }

    fn read(
        &self,
        mem: &GuestMemory,
        disk: &Disk<'_>,
        sector: u64,
        len: u64,
    ) -> Result<Done, RequestError> {
        let start = file_offset(disk.capacity, sector, len)?;
        walk(&self.writable, 0, len, |addr, off, len| {
            for_each_slice(mem, addr, len, off, |slice, pos| {
                pread_exact(disk.file, slice, start + pos)
            })
        })?;
        Ok(Done {
            read: len,
            to_guest: len,
            ..Done::default()
        })
    }

    fn write(
        &self,
        mem: &GuestMemory,
        disk: &Disk<'_>,
        sector: u64,
        len: u64,
    ) -> Result<Done, RequestError> {
        let start = file_offset(disk.capacity, sector, len)?;
        walk(&self.readable, HEADER_LEN, len, |addr, off, len| {
            for_each_slice(mem, addr, len, off, |slice, pos| {
                pwrite_all(disk.file, slice, start + pos)
            })
        })?;
        Ok(Done {
            written: len,
            ..Done::default()
        })
    }

    fn get_id(&self, mem: &GuestMemory, disk: &Disk<'_>, room: u64) -> Result<Done, RequestError> {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = disk.serial.len().min(id.len());
        id[..n].copy_from_slice(&disk.serial[..n]);
        let len = room.min(id.len() as u64);
        walk(&self.writable, 0, len, |addr, off, len| {
            let src = &id[off as usize..(off + len) as usize];
            mem.write_slice(src, addr).map_err(RequestError::Memory)
        })?;
        Ok(Done {
            to_guest: len,
            ..Done::default()
        })
    }
}

/// The status byte for a request outcome.
pub fn status_of(result: &Result<Done, RequestError>) -> u8 {
    match result {
        Ok(_) => VIRTIO_BLK_S_OK as u8,
        Err(err) => err.status(),
    }
}

/// Checks `len` bytes from `sector` against the disk and returns the byte offset.
fn file_offset(capacity: u64, sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(len));
    }
    let end = sector.checked_add(len / SECTOR_SIZE);
    match end {
        Some(end) if end <= capacity => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange {
            sector,
            len,
            capacity,
        }),
    }
}

/// Calls `f(addr, offset, len)` for the pieces of `segments` covering the byte range
/// `[skip, skip + len)` of their concatenation; `offset` counts from `skip`.
fn walk(
    segments: &[Segment],
    skip: u64,
    len: u64,
    mut f: impl FnMut(GuestAddress, u64, u64) -> Result<(), RequestError>,
) -> Result<(), RequestError> {
    let (mut pos, mut done) = (0u64, 0u64);
    for seg in segments {
        if done == len {
            break;
        }
        let seg_end = pos + seg.len;
        if seg_end > skip {
            let inner = skip.saturating_sub(pos);
            let n = (seg.len - inner).min(len - done);
            // `inner` < seg.len and the segment was checked to be in guest memory.
            f(seg.addr.unchecked_add(inner), done, n)?;
            done += n;
        }
        pos = seg_end;
    }
    Ok(())
}

/// Calls `f(slice, pos)` for each host mapping of the guest range `[addr, addr + len)`, where
/// `pos` is the slice's offset from the request's start (`base` + bytes before it).
fn for_each_slice(
    mem: &GuestMemory,
    addr: GuestAddress,
    len: u64,
    base: u64,
    mut f: impl FnMut(&VolatileSlice<'_, ()>, u64) -> io::Result<()>,
) -> Result<(), RequestError> {
    let mut pos = base;
    for slice in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
        let slice = slice.map_err(RequestError::Memory)?;
        f(&slice, pos).map_err(RequestError::Io)?;
        pos += slice.len() as u64;
    }
    Ok(())
}

/// Fills `slice` from the file at `offset`.
fn pread_exact<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < slice.len() {
        let guard = slice.ptr_guard_mut();
        let off = libc::off64_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `guard` keeps the slice's mapping alive; `done < slice.len()`, so the
        // `slice.len() - done` bytes from `as_ptr() + done` lie inside the mapped guest memory the
        // slice describes. The kernel writes through the raw pointer; no Rust reference to guest
        // memory exists while it does.
        let n = unsafe {
            libc::pread64(
                file.as_raw_fd(),
                guard.as_ptr().add(done).cast(),
                slice.len() - done,
                off,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            n => {
                slice.bitmap().mark_dirty(done, n as usize);
                done += n as usize;
            }
        }
    }
    Ok(())
}

/// Writes all of `slice` to the file at `offset`.
fn pwrite_all<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < slice.len() {
        let guard = slice.ptr_guard();
        let off = libc::off64_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `guard` keeps the slice's mapping alive; `done < slice.len()`, so the
        // `slice.len() - done` bytes from `as_ptr() + done` lie inside the mapped guest memory the
        // slice describes. The kernel only reads them.
        let n = unsafe {
            libc::pwrite64(
                file.as_raw_fd(),
                guard.as_ptr().add(done).cast(),
                slice.len() - done,
                off,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n if n < 0 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            n => done += n as usize,
        }
    }
    Ok(())
}
