//! Loading a Linux guest: the ELF `vmlinux` (64-bit boot protocol), the initramfs placed high
//! in low RAM, the command line, the zero page, the MP table and the boot page tables.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use linux_loader::loader::{elf::Elf, Error as LoaderError, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::x86_64::bootparams::{self, BootParamsError, InitrdRange};
use crate::arch::x86_64::gdt::{self, GdtError};
use crate::arch::x86_64::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, HIMEM_START, MMIO_WINDOW};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::devices::virtio::GuestMemory;

/// The base kernel command line (docs/architecture.md).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet 8250.nr_uarts=1";

const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file does not exist.
    #[error("{what} {path}: not found")]
    NotFound {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: String,
    },
    /// A file could not be opened or read.
    #[error("{what} {path}")]
    Io {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not an ELF file.
    #[error("kernel {0}: not an ELF vmlinux (a bzImage or other format is not supported)")]
    NotElf(String),
    /// The kernel ELF is truncated, malformed, or does not fit in guest memory.
    #[error("kernel {path}: invalid or truncated ELF image, or too big for guest memory")]
    BadElf {
        /// The path given.
        path: String,
        /// The loader's error.
        #[source]
        source: LoaderError,
    },
    /// The initramfs does not fit between the kernel and the end of low RAM.
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory ({room} bytes free above the kernel)")]
    InitrdTooBig {
        /// The path given.
        path: String,
        /// Its size.
        size: u64,
        /// Room available.
        room: u64,
    },
    /// The command line is invalid or longer than the kernel accepts.
    #[error("invalid kernel command line: {0}")]
    Cmdline(CmdlineError),
    /// Writing the command line into guest memory failed.
    #[error("cannot write the kernel command line")]
    CmdlineLoad(#[source] LoaderError),
    /// Writing the zero page failed.
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    /// Writing the GDT or page tables failed.
    #[error(transparent)]
    Gdt(#[from] GdtError),
    /// Writing the MP table failed.
    #[error(transparent)]
    Mptable(#[from] MptableError),
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => BootError::NotFound {
            what,
            path: path.display().to_string(),
        },
        _ => BootError::Io {
            what,
            path: path.display().to_string(),
            source,
        },
    })
}

/// The kernel command line: the base, one `virtio_mmio.device=` entry per device (its window
/// base address and GSI), then `extra`.
pub fn kernel_cmdline(devices: &[(u64, u32)], extra: Option<&str>) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(BootError::Cmdline)?;
    for &(base, gsi) in devices {
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW, GuestAddress(base), gsi, None)
            .map_err(BootError::Cmdline)?;
    }
    if let Some(extra) = extra.filter(|e| !e.trim().is_empty()) {
        cmdline
            .insert_str(extra.trim())
            .map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Loads the ELF kernel; returns its entry point and the end of its image.
fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<(u64, u64), BootError> {
    let mut file = open("kernel", path)?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Err(BootError::NotElf(path.display().to_string()));
    }
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::BadElf {
                path: path.display().to_string(),
                source,
            }
        })?;
    Ok((result.kernel_load.0, result.kernel_end))
}

/// Where an initramfs of `size` bytes goes: page-aligned, as high as possible below `low_end`,
/// above `kernel_end`.
pub fn initrd_addr(size: u64, kernel_end: u64, low_end: u64) -> Option<u64> {
    let floor = kernel_end.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    let addr = low_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= floor).then_some(addr)
}

fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
) -> Result<InitrdRange, BootError> {
    let mut file = open("initramfs", path)?;
    let io_err = |source| BootError::Io {
        what: "initramfs",
        path: path.display().to_string(),
        source,
    };
    let size = file.metadata().map_err(io_err)?.len();
    let addr = initrd_addr(size, kernel_end, low_end).ok_or_else(|| BootError::InitrdTooBig {
        path: path.display().to_string(),
        size,
        room: low_end.saturating_sub(kernel_end),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| io_err(std::io::Error::other(e)))?;
    Ok(InitrdRange { addr, size })
}

/// What [`load_linux`] needs.
pub struct LinuxBoot<'a> {
    /// The ELF vmlinux.
    pub kernel: &'a Path,
    /// The initramfs (newc cpio, possibly compressed).
    pub initramfs: &'a Path,
    /// The full command line.
    pub cmdline: &'a Cmdline,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Number of vCPUs.
    pub cpus: u8,
}

/// Loads everything the kernel needs into `mem`; returns the kernel's entry point.
pub fn load_linux(mem: &GuestMemory, boot: &LinuxBoot<'_>) -> Result<u64, BootError> {
    let (entry, kernel_end) = load_kernel(mem, boot.kernel)?;
    let low_end = bootparams::low_ram_end(boot.mem_size);
    let initrd = load_initrd(mem, boot.initramfs, kernel_end, low_end)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), boot.cmdline)
        .map_err(BootError::CmdlineLoad)?;
    let cmdline_len = boot
        .cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    let params = bootparams::build(boot.mem_size, cmdline_len + 1, Some(initrd))?;
    bootparams::write(mem, &params)?;
    mptable::setup_mptable(mem, boot.cpus)?;
    gdt::write_gdt_idt(mem)?;
    gdt::write_page_tables(mem)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_has_devices_and_extra() {
        let c = kernel_cmdline(&[(0xd000_0000, 5), (0xd000_1000, 6)], Some(" init=/x ")).unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(
            s,
            format!(
                "{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6 init=/x"
            )
        );
        assert!(kernel_cmdline(&[], Some(&"x".repeat(3000))).is_err());
    }

    #[test]
    fn initrd_goes_high() {
        assert_eq!(
            initrd_addr(0x1800, 0x200_0000, 0x1000_0000),
            Some(0x1000_0000 - 0x2000)
        );
        assert_eq!(
            initrd_addr(0x1000, 0x200_0001, 0x200_2000),
            Some(0x200_1000)
        );
        assert_eq!(initrd_addr(0x2000, 0x200_0001, 0x200_2000), None);
        assert_eq!(initrd_addr(u64::MAX, 0, 0x1000), None);
    }

    fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("moat-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn load(kernel: &Path, initramfs: &Path) -> Result<u64, BootError> {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let cmdline = kernel_cmdline(&[], None).unwrap();
        let boot = LinuxBoot {
            kernel,
            initramfs,
            cmdline: &cmdline,
            mem_size: 64 << 20,
            cpus: 1,
        };
        load_linux(&mem, &boot)
    }

    #[test]
    fn clear_errors() {
        let missing = Path::new("/nonexistent/vmlinux");
        let e = load(missing, missing).unwrap_err();
        assert_eq!(e.to_string(), "kernel /nonexistent/vmlinux: not found");
        let garbage = tmp("garbage", b"MZ not an elf");
        assert!(matches!(load(&garbage, missing), Err(BootError::NotElf(_))));
        let mut truncated = b"\x7fELF\x02\x01\x01".to_vec();
        truncated.resize(20, 0);
        let truncated = tmp("truncated", &truncated);
        assert!(matches!(
            load(&truncated, missing),
            Err(BootError::BadElf { .. })
        ));
        std::fs::remove_file(garbage).unwrap();
        std::fs::remove_file(truncated).unwrap();
    }
}
