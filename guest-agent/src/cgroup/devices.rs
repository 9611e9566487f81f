//! The device allowlist of `linux.resources.devices` compiled to an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` (cgroup v2 has no devices.allow file).
//!
//! Semantics are those of the cgroup v1 device controller the OCI rules were written for:
//! everything is denied at first, then each rule in order grants (allow) or takes away (deny)
//! its access bits on the devices it matches, so for every access bit the last matching rule
//! wins. The program keeps the granted bits of the device asked about in a register while it
//! walks the rules in order, and allows the access if every requested bit is granted. This is
//! exact even when rules overlap partially (`allow c 1:3 r` then `allow c 1:3 w` grants `rw`;
//! `allow c *:* rwm` then `deny c 1:3 w` still grants `r` on 1:3), which a first-match-returns
//! program over whole rules is not.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

/// `bpf_cgroup_dev_ctx.access_type`'s low 16 bits: the device type.
pub const DEV_BLOCK: u32 = 1;
/// Character device.
pub const DEV_CHAR: u32 = 2;
/// The high 16 bits: the access asked for.
pub const ACC_MKNOD: u32 = 1;
/// Read.
pub const ACC_READ: u32 = 2;
/// Write.
pub const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction, `struct bpf_insn` of the kernel's UAPI.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register in the low nibble, source register in the high one.
    pub regs: u8,
    /// Signed offset (jumps: instructions to skip; loads: bytes).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
pub(crate) const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub(crate) const ALU64_MOV_K: u8 = 0xb7;
pub(crate) const ALU64_AND_K: u8 = 0x57;
pub(crate) const ALU64_AND_X: u8 = 0x5f;
pub(crate) const ALU64_OR_K: u8 = 0x47;
pub(crate) const ALU64_XOR_K: u8 = 0xa7;
pub(crate) const ALU64_RSH_K: u8 = 0x77;
pub(crate) const JMP_JNE_K: u8 = 0x55;
pub(crate) const JMP_JEQ_K: u8 = 0x15;
pub(crate) const JMP_EXIT: u8 = 0x95;

// Registers: r1 = ctx on entry, r0 = verdict.
const R0: u8 = 0;
const R1: u8 = 1;
/// The context field a test looks at, loaded afresh for every test (see [`rule_insns`]).
const R_FIELD: u8 = 2;
/// Access bits granted so far to this device.
const R_GRANTED: u8 = 6;

// Offsets in `struct bpf_cgroup_dev_ctx`.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// One rule in the program's terms (`None` = any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Grant (true) or take away (false).
    pub allow: bool,
    /// DEV_BLOCK / DEV_CHAR.
    pub dev_type: Option<u32>,
    /// Major number.
    pub major: Option<u32>,
    /// Minor number.
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u32,
}

fn refuse(field: String, reason: &str) -> CgroupError {
    CgroupError::Refused {
        field,
        reason: reason.to_owned(),
    }
}

fn device_number(field: String, n: Option<i64>) -> Result<Option<u32>, CgroupError> {
    match n {
        None | Some(-1) => Ok(None),
        Some(v) if (0..=i64::from(i32::MAX)).contains(&v) => Ok(Some(v as u32)),
        Some(_) => Err(refuse(
            field,
            "must be a device number (or -1 / absent for any)",
        )),
    }
}

fn access_bits(field: String, access: Option<&str>) -> Result<u32, CgroupError> {
    let access = access.unwrap_or("rwm");
    if access.is_empty() {
        return Ok(ACC_ALL);
    }
    access.chars().try_fold(0, |bits, c| match c {
        'r' => Ok(bits | ACC_READ),
        'w' => Ok(bits | ACC_WRITE),
        'm' => Ok(bits | ACC_MKNOD),
        _ => Err(refuse(field.clone(), "must be made of r, w and m")),
    })
}

/// Converts the OCI rules; refuses what the device controller cannot express.
pub fn rules(devices: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, CgroupError> {
    let mut out = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let f = format!("linux.resources.devices[{i}]");
        let dev_type = match d.typ().unwrap_or_default() {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::P => {
                return Err(refuse(
                    format!("{f}.type"),
                    "FIFOs are not device-controlled",
                ))
            }
        };
        out.push(Rule {
            allow: d.allow(),
            dev_type,
            major: device_number(format!("{f}.major"), d.major())?,
            minor: device_number(format!("{f}.minor"), d.minor())?,
            access: access_bits(format!("{f}.access"), d.access().as_deref())?,
        });
    }
    Ok(out)
}

/// The instructions of one rule: its match tests (each jumping past the rule on a mismatch),
/// then the update of the granted bits.
///
/// Each test loads its context field again instead of keeping it in a register from the
/// start: a register that a passed test proved equal to a constant would make later tests of
/// it decided in advance, which makes the verifier track that constant precisely and explore
/// each rule once per earlier match (quadratic in the rules; 1000 rules then exceed its budget
/// of a million instructions). Loaded afresh, the fields are dead where the rules join, and
/// the verifier prunes every path but one.
fn rule_insns(rule: &Rule) -> Vec<Insn> {
    let mut out = Vec::new();
    let mut jumps = Vec::new();
    let field = |offset| insn(LDX_MEM_W, R_FIELD, R1, offset, 0);
    if let Some(dev_type) = rule.dev_type {
        out.push(field(CTX_ACCESS_TYPE));
        out.push(insn(ALU64_AND_K, R_FIELD, 0, 0, 0xffff));
        jumps.push(out.len());
        out.push(insn(JMP_JNE_K, R_FIELD, 0, 0, dev_type as i32));
    }
    for (offset, value) in [(CTX_MAJOR, rule.major), (CTX_MINOR, rule.minor)] {
        if let Some(value) = value {
            out.push(field(offset));
            jumps.push(out.len());
            out.push(insn(JMP_JNE_K, R_FIELD, 0, 0, value as i32));
        }
    }
    out.push(if rule.allow {
        insn(ALU64_OR_K, R_GRANTED, 0, 0, rule.access as i32)
    } else {
        // Sign-extended: clears the rule's bits, keeps every other bit.
        insn(ALU64_AND_K, R_GRANTED, 0, 0, !(rule.access as i32))
    });
    for at in jumps {
        out[at].off = (out.len() - at - 1) as i16; // to the next rule
    }
    out
}

/// The whole program: walk the rules, then compare the access asked for with the granted.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![insn(ALU64_MOV_K, R_GRANTED, 0, 0, 0)];
    for rule in rules {
        p.extend(rule_insns(rule));
    }
    p.extend([
        // Allowed iff (requested & !granted) == 0.
        insn(LDX_MEM_W, R_FIELD, R1, CTX_ACCESS_TYPE, 0),
        insn(ALU64_RSH_K, R_FIELD, 0, 0, 16),
        insn(ALU64_XOR_K, R_GRANTED, 0, 0, -1),
        insn(ALU64_AND_X, R_FIELD, R_GRANTED, 0, 0),
        insn(ALU64_MOV_K, R0, 0, 0, 0),
        insn(JMP_JEQ_K, R_FIELD, 0, 1, 0),
        insn(JMP_EXIT, 0, 0, 0, 0),
        insn(ALU64_MOV_K, R0, 0, 0, 1),
        insn(JMP_EXIT, 0, 0, 0, 0),
    ]);
    p
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
