//! The CPUID a vCPU sees: KVM's supported set, with the hypervisor bit and a topology of one
//! socket with one core (one thread) per vCPU, APIC id = vCPU index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

/// Errors setting a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot read the cpuid kvm supports")]
    Supported(#[source] kvm_ioctls::Error),
    /// `KVM_SET_CPUID2` failed.
    #[error("cannot set the vcpu cpuid")]
    Set(#[source] kvm_ioctls::Error),
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed for an APIC id among `cpus` vCPUs.
fn id_bits(cpus: u8) -> u32 {
    let n = u32::from(cpus.max(1));
    32 - (n - 1).leading_zeros()
}

fn patch_features(e: &mut kvm_cpuid_entry2, apic_id: u8, cpus: u8) {
    e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(apic_id) << 24) | (u32::from(cpus) << 16);
    e.ecx |= ECX_HYPERVISOR;
    if cpus > 1 {
        e.edx |= EDX_HTT;
    } else {
        e.edx &= !EDX_HTT;
    }
}

fn patch_cache(e: &mut kvm_cpuid_entry2, cpus: u8) {
    if e.eax & 0x1f == 0 {
        return; // no more caches
    }
    let level = (e.eax >> 5) & 0x7;
    let sharing = if level >= 3 { u32::from(cpus) - 1 } else { 0 };
    e.eax = (e.eax & 0x3fff) | ((u32::from(cpus) - 1) << 26) | (sharing << 14);
}

fn patch_topology(e: &mut kvm_cpuid_entry2, apic_id: u8, cpus: u8) {
    e.edx = u32::from(apic_id);
    match e.index {
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = LEVEL_SMT << 8;
        }
        1 => {
            e.eax = id_bits(cpus);
            e.ebx = u32::from(cpus);
            e.ecx = (LEVEL_CORE << 8) | 1;
        }
        i => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = i;
        }
    }
}

/// Rewrites KVM's supported CPUID for vCPU `apic_id` of `cpus`.
pub fn patch_cpuid(entries: &mut [kvm_cpuid_entry2], apic_id: u8, cpus: u8) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => patch_features(e, apic_id, cpus),
            LEAF_CACHE => patch_cache(e, cpus),
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => patch_topology(e, apic_id, cpus),
            LEAF_AMD_SIZES => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(cpus) << 12) | (u32::from(cpus) - 1);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = u32::from(apic_id);
                e.ebx = u32::from(apic_id);
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// KVM's supported CPUID, read once and patched per vCPU by [`setup_vcpu_cpuid`].
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// Sets the CPUID of `vcpu` (APIC id `apic_id` of `cpus`).
pub fn setup_vcpu_cpuid(
    vcpu: &VcpuFd,
    supported: &CpuId,
    apic_id: u8,
    cpus: u8,
) -> Result<(), CpuidError> {
    let mut cpuid = supported.clone();
    patch_cpuid(cpuid.as_mut_slice(), apic_id, cpus);
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn bits_for_ids() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(32), 5);
    }

    #[test]
    fn features_and_topology() {
        let mut e = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        e[0].ebx = 0x0000_0800;
        patch_cpuid(&mut e, 3, 4);
        assert_eq!(e[0].ebx, 0x0304_0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].ecx, e[1].edx), (1, 0x100, 3));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (2, 4, 0x201, 3));
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2));
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut e = vec![entry(1, 0), entry(0x8000_0008, 0)];
        e[0].edx = EDX_HTT;
        patch_cpuid(&mut e, 0, 1);
        assert_eq!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].ecx & 0xf0ff, 0);
    }

    #[test]
    fn cache_cores() {
        let mut e = vec![entry(4, 0), entry(4, 3), entry(4, 4)];
        e[0].eax = 0x21; // level 1 data cache
        e[1].eax = 0x63; // level 3 unified
        patch_cpuid(&mut e, 0, 8);
        assert_eq!(e[0].eax >> 26, 7);
        assert_eq!((e[1].eax >> 14) & 0xfff, 7);
        assert_eq!(e[2].eax, 0);
    }
}
