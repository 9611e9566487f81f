//! The two bpf(2) commands the device filter needs: load a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program and attach it to a cgroup. Raw syscalls with the UAPI's attribute layouts.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::devices::Insn;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Only GPL-compatible programs may call GPL-only helpers; this one calls no helper at all.
const LICENSE: &std::ffi::CStr = c"Apache-2.0";
const LOG_SIZE: usize = 64 * 1024;
const LOG_TAIL: usize = 2048;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (fields up to `expected_attach_type`; the
/// kernel takes the size given and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// A load failure: the errno and the verifier's log.
#[derive(Debug)]
pub struct LoadError {
    /// The errno.
    pub source: io::Error,
    /// The verifier's log (empty unless the verifier refused the program).
    pub log: String,
}

/// Loads the device program; returns its fd. On a failure the load is repeated with the
/// verifier's log on, for the error (with the log on from the start, a long verification
/// could fail only because the log buffer filled up); the error keeps the first errno.
pub fn load_device_program(insns: &[Insn]) -> Result<OwnedFd, LoadError> {
    let first = match load(insns, false) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    match load(insns, true) {
        Ok(fd) => Ok(fd),
        Err(with_log) => Err(LoadError {
            source: first.source,
            log: log_tail(&with_log.log),
        }),
    }
}

/// The end of a verifier log (where it says why), at most [`LOG_TAIL`] bytes.
fn log_tail(log: &str) -> String {
    let mut start = log.len().saturating_sub(LOG_TAIL);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    log[start..].to_owned()
}

fn load(insns: &[Insn], with_log: bool) -> Result<OwnedFd, LoadError> {
    let mut log = vec![0u8; if with_log { LOG_SIZE } else { 1 }];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: u32::from(with_log),
        log_size: if with_log { LOG_SIZE as u32 } else { 0 },
        log_buf: if with_log { log.as_mut_ptr() as u64 } else { 0 },
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..10].copy_from_slice(b"moat_devcg");
    // SAFETY: attr is a valid BPF_PROG_LOAD attribute of the size passed; the instruction
    // array, the license string and the log buffer it points to live until the call returns,
    // and the kernel writes at most log_size bytes into the log buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let source = io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]).into_owned();
        return Err(LoadError { source, log });
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attaches the program to the cgroup (replacing a program attached there before).
pub fn attach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: attr is a valid BPF_PROG_ATTACH attribute of the size passed; both fds are
    // borrowed, so they stay open during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
