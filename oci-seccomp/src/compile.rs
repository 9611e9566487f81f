//! Compiles a checked seccomp section into classic BPF over `struct seccomp_data`
//! (`nr` at 0, `arch` at 4, `instruction_pointer` at 8, `args[i]` at 16 + 8 i).
//!
//! Layout:
//! 1. `arch != AUDIT_ARCH_X86_64` → `SECCOMP_RET_KILL_PROCESS`.
//! 2. `nr >= __X32_SYSCALL_BIT` (x32 ABI) → the default action.
//! 3. A binary search over the syscall numbers that have rules: inner nodes are
//!    `jge pivot; ja right`, leaves test up to four numbers with `jeq`; a syscall whose only rule
//!    is unconditional answers right there, others `ja` to their body. Every conditional jump
//!    skips at most one instruction; long distances are `ja`, whose offset has 32 bits.
//! 4. The bodies: rules in order, each rule's conditions ANDed, then the default action.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompOperator};

use crate::bpf::{Asm, Label, SockFilter, Target, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K};
use crate::validate::{lower, CompileError, Cond, Filter, Rule, RET_KILL_PROCESS};

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
pub const BPF_MAXINSNS: usize = 4096;
/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `__X32_SYSCALL_BIT`: x32 syscalls have this bit set in `nr`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;
/// Leaves of the search tree test up to this many numbers one after the other.
const LEAF: usize = 4;

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER, flags, &sock_fprog)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The instructions (`sock_fprog.filter`; `len` is `filter.len()`).
    pub filter: Vec<SockFilter>,
    /// `SECCOMP_FILTER_FLAG_*` for the `seccomp` call.
    pub flags: u32,
}

/// Validates `s`, then compiles it for x86_64.
pub fn compile(s: &LinuxSeccomp) -> Result<Program, CompileError> {
    let filter = lower(s)?;
    let mut asm = Asm::default();
    prologue(&mut asm, filter.default_ret);
    let bodies = search_tree(&mut asm, &filter);
    for (label, rules) in bodies {
        asm.bind(label);
        body(&mut asm, rules, filter.default_ret);
    }
    let len = asm.len();
    if len > BPF_MAXINSNS {
        return Err(CompileError::TooLong {
            len,
            max: BPF_MAXINSNS,
        });
    }
    let filter_insns = asm.finish().map_err(CompileError::Assemble)?;
    Ok(Program {
        filter: filter_insns,
        flags: filter.flags,
    })
}

fn prologue(asm: &mut Asm, default_ret: u32) {
    asm.load(OFF_ARCH);
    asm.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, Target::Skip(1), Target::Next);
    asm.ret(RET_KILL_PROCESS);
    asm.load(OFF_NR);
    asm.jump(JMP_JGE_K, X32_SYSCALL_BIT, Target::Next, Target::Skip(1));
    asm.ret(default_ret);
}

/// A syscall number and its rules.
type Entry<'f> = (u32, &'f [Rule]);

/// Emits the search over `filter`'s syscall numbers (the accumulator holds `nr`); returns the
/// bodies still to emit.
fn search_tree<'f>(asm: &mut Asm, filter: &'f Filter) -> Vec<(Label, &'f [Rule])> {
    let entries: Vec<Entry<'f>> = filter
        .syscalls
        .iter()
        .map(|(nr, rules)| (*nr, rules.as_slice()))
        .collect();
    let mut bodies = Vec::new();
    // Explicit stack instead of recursion: (slice of entries, label to bind first).
    let mut pending: Vec<(&[Entry<'f>], Option<Label>)> = vec![(&entries, None)];
    while let Some((slice, start)) = pending.pop() {
        if let Some(label) = start {
            asm.bind(label);
        }
        if slice.len() <= LEAF {
            leaf(asm, slice, filter.default_ret, &mut bodies);
            continue;
        }
        let (left, right) = slice.split_at(slice.len() / 2);
        let right_label = asm.label();
        asm.jump(JMP_JGE_K, right[0].0, Target::Next, Target::Skip(1));
        asm.ja(right_label);
        // Left falls through: emit it next, the right half after it.
        pending.push((right, Some(right_label)));
        pending.push((left, None));
    }
    bodies
}

fn leaf<'f>(
    asm: &mut Asm,
    slice: &[Entry<'f>],
    default_ret: u32,
    bodies: &mut Vec<(Label, &'f [Rule])>,
) {
    for &(nr, rules) in slice {
        asm.jump(JMP_JEQ_K, nr, Target::Next, Target::Skip(1));
        match rules {
            [only] if only.conds.is_empty() => asm.ret(only.ret),
            _ => {
                let label = asm.label();
                asm.ja(label);
                bodies.push((label, rules));
            }
        }
    }
    asm.ret(default_ret);
}

fn body(asm: &mut Asm, rules: &[Rule], default_ret: u32) {
    for rule in rules {
        if rule.conds.is_empty() {
            // Unconditional: later rules of this syscall can never answer.
            asm.ret(rule.ret);
            return;
        }
        let next = asm.label();
        for cond in &rule.conds {
            condition(asm, cond, next);
        }
        asm.ret(rule.ret);
        asm.bind(next);
    }
    asm.ret(default_ret);
}

/// Emits a 64-bit comparison of one argument; falls through when it holds, jumps to `fail`
/// when it does not.
fn condition(asm: &mut Asm, c: &Cond, fail: Label) {
    let lo_off = OFF_ARGS + 8 * c.index;
    let hi_off = lo_off + 4;
    let (hi, lo) = halves(c.value);
    let pass = asm.label();
    let (next, fail, pass_to) = (Target::Next, Target::To(fail), Target::To(pass));
    asm.load(hi_off);
    match c.op {
        LinuxSeccompOperator::ScmpCmpEq => {
            asm.jump(JMP_JEQ_K, hi, next, fail);
            asm.load(lo_off);
            asm.jump(JMP_JEQ_K, lo, next, fail);
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            asm.jump(JMP_JEQ_K, hi, next, pass_to);
            asm.load(lo_off);
            asm.jump(JMP_JEQ_K, lo, fail, next);
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (want_hi, want_lo) = halves(c.value_two);
            asm.and(hi);
            asm.jump(JMP_JEQ_K, want_hi, next, fail);
            asm.load(lo_off);
            asm.and(lo);
            asm.jump(JMP_JEQ_K, want_lo, next, fail);
        }
        // Greater: decided by the high halves unless they are equal, then by the low halves.
        LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe => {
            asm.jump(JMP_JGT_K, hi, pass_to, next);
            asm.jump(JMP_JEQ_K, hi, next, fail);
            asm.load(lo_off);
            let code = if c.op == LinuxSeccompOperator::ScmpCmpGt {
                JMP_JGT_K
            } else {
                JMP_JGE_K
            };
            asm.jump(code, lo, next, fail);
        }
        // Less (or equal) is "not greater or equal" (or "not greater").
        LinuxSeccompOperator::ScmpCmpLt | LinuxSeccompOperator::ScmpCmpLe => {
            asm.jump(JMP_JGT_K, hi, fail, next);
            asm.jump(JMP_JEQ_K, hi, next, pass_to);
            asm.load(lo_off);
            let code = if c.op == LinuxSeccompOperator::ScmpCmpLt {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            asm.jump(code, lo, fail, next);
        }
    }
    asm.bind(pass);
}

/// `(high, low)` 32-bit halves of `v`.
fn halves(v: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = v.to_le_bytes();
    (
        u32::from_le_bytes([e, f, g, h]),
        u32::from_le_bytes([a, b, c, d]),
    )
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
