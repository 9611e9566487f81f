//! Names the filter file may use for numbers: ioctl requests (`ioctls`) and argument values
//! (`value`, `mask`).
//!
//! KVM request numbers are computed with vmm-sys-util's ioctl-number macros from the same
//! (type, number, argument type) triples that kvm-ioctls uses, so a request named here is the
//! request kvm-ioctls issues (the unit tests check `KVM_RUN` against a real vCPU).

use kvm_bindings::KVMIO;
use kvm_bindings::{kvm_regs, kvm_sregs};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);

/// The number of the ioctl request `name`, or `None` if the name is unknown.
pub fn ioctl(name: &str) -> Option<u64> {
    let number = match name {
        "KVM_RUN" => KVM_RUN(),
        "KVM_GET_REGS" => KVM_GET_REGS(),
        "KVM_GET_SREGS" => KVM_GET_SREGS(),
        "FIONBIO" => libc::FIONBIO,
        _ => return None,
    };
    Some(number)
}

/// The value of the constant `name` (an argument value or mask), or `None` if it is unknown.
pub fn constant(name: &str) -> Option<u64> {
    let value = match name {
        "AF_UNIX" => libc::AF_UNIX as u64,
        "PROT_EXEC" => libc::PROT_EXEC as u64,
        "O_ACCMODE" => libc::O_ACCMODE as u64,
        "O_WRONLY" => libc::O_WRONLY as u64,
        "F_GETFD" => libc::F_GETFD as u64,
        "SEEK_END" => libc::SEEK_END as u64,
        "SIGABRT" => libc::SIGABRT as u64,
        "MADV_DONTNEED" => libc::MADV_DONTNEED as u64,
        "FUTEX_WAIT" => libc::FUTEX_WAIT as u64,
        "FUTEX_WAKE" => libc::FUTEX_WAKE as u64,
        "FUTEX_WAIT_BITSET" => libc::FUTEX_WAIT_BITSET as u64,
        // The operation bits of a futex op, without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME.
        "FUTEX_CMD_MASK" => 0x7f,
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_numbers_follow_the_uapi_headers() {
        // _IO(0xAE, 0x80) from <linux/kvm.h>, FIONBIO from <asm-generic/ioctls.h>.
        assert_eq!(ioctl("KVM_RUN"), Some(0xae80));
        assert_eq!(ioctl("FIONBIO"), Some(0x5421));
        // _IOR(0xAE, 0x81, struct kvm_regs) and _IOR(0xAE, 0x83, struct kvm_sregs).
        assert_eq!(ioctl("KVM_GET_REGS"), Some(0x8090_ae81));
        assert_eq!(ioctl("KVM_GET_SREGS"), Some(0x8138_ae83));
        assert_eq!(ioctl("KVM_NOPE"), None);
        assert_eq!(constant("AF_UNIX"), Some(1));
        assert_eq!(constant("nope"), None);
    }
}
