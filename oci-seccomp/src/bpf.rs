//! A small classic-BPF assembler with labels: conditional jumps carry 8-bit offsets, `ja`
//! carries a 32-bit one; [`Asm::finish`] resolves labels and refuses any offset that does not fit.

use thiserror::Error;

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    /// Opcode (`BPF_LD | BPF_W | BPF_ABS`, `BPF_JMP | BPF_JEQ | BPF_K`, ...).
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// The constant operand.
    pub k: u32,
}

/// `BPF_LD | BPF_W | BPF_ABS`: load the 32-bit word at offset `k` of `seccomp_data`.
pub(crate) const LD_W_ABS: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`.
pub(crate) const ALU_AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JA`.
pub(crate) const JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub(crate) const JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGT | BPF_K`.
pub(crate) const JMP_JGT_K: u16 = 0x25;
/// `BPF_JMP | BPF_JGE | BPF_K`.
pub(crate) const JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
pub(crate) const RET_K: u16 = 0x06;

/// Errors of the assembler.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AsmError {
    /// A jump names a label that was never placed.
    #[error("instruction {at} jumps to a label that was never placed")]
    UnboundLabel {
        /// Index of the jump.
        at: usize,
    },
    /// A jump goes backwards or further than its offset field holds.
    #[error("instruction {at} jumps {distance} instructions, out of range")]
    OutOfRange {
        /// Index of the jump.
        at: usize,
        /// Wanted offset (negative: backwards).
        distance: i64,
    },
}

/// A place in the program, bound with [`Asm::bind`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Label(usize);

/// Where a conditional branch goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// The next instruction.
    Next,
    /// Skip that many instructions.
    Skip(u8),
    /// A label further on.
    To(Label),
}

#[derive(Debug)]
enum Item {
    Plain(SockFilter),
    Cond {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Ja(Label),
}

/// The program under construction.
#[derive(Debug, Default)]
pub(crate) struct Asm {
    items: Vec<Item>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    /// A fresh, unplaced label.
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `label` at the next instruction.
    pub(crate) fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.items.len());
    }

    /// Instructions so far.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn load(&mut self, offset: u32) {
        self.plain(LD_W_ABS, offset);
    }

    pub(crate) fn and(&mut self, k: u32) {
        self.plain(ALU_AND_K, k);
    }

    pub(crate) fn ret(&mut self, k: u32) {
        self.plain(RET_K, k);
    }

    /// A conditional jump (`JMP_JEQ_K`, `JMP_JGT_K`, `JMP_JGE_K`).
    pub(crate) fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.items.push(Item::Cond { code, k, jt, jf });
    }

    /// An unconditional jump, with a 32-bit offset.
    pub(crate) fn ja(&mut self, to: Label) {
        self.items.push(Item::Ja(to));
    }

    fn plain(&mut self, code: u16, k: u32) {
        self.items.push(Item::Plain(SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        }));
    }

    /// Resolves the labels.
    pub(crate) fn finish(self) -> Result<Vec<SockFilter>, AsmError> {
        let offset = |at: usize, label: Label| -> Result<u32, AsmError> {
            let to = self.labels[label.0].ok_or(AsmError::UnboundLabel { at })?;
            let distance =
                i64::try_from(to).unwrap_or(i64::MAX) - i64::try_from(at + 1).unwrap_or(0);
            u32::try_from(distance).map_err(|_| AsmError::OutOfRange { at, distance })
        };
        let short = |at: usize, target: Target| -> Result<u8, AsmError> {
            let distance = match target {
                Target::Next => return Ok(0),
                Target::Skip(n) => return Ok(n),
                Target::To(label) => offset(at, label)?,
            };
            u8::try_from(distance).map_err(|_| AsmError::OutOfRange {
                at,
                distance: distance.into(),
            })
        };
        let mut out = Vec::with_capacity(self.items.len());
        for (at, item) in self.items.iter().enumerate() {
            out.push(match *item {
                Item::Plain(insn) => insn,
                Item::Cond { code, k, jt, jf } => SockFilter {
                    code,
                    jt: short(at, jt)?,
                    jf: short(at, jf)?,
                    k,
                },
                Item::Ja(label) => SockFilter {
                    code: JMP_JA,
                    jt: 0,
                    jf: 0,
                    k: offset(at, label)?,
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_forward() {
        let mut asm = Asm::default();
        let end = asm.label();
        asm.jump(JMP_JEQ_K, 7, Target::To(end), Target::Next);
        asm.ja(end);
        asm.ret(0);
        asm.bind(end);
        asm.ret(1);
        let prog = asm.finish().unwrap();
        assert_eq!((prog[0].jt, prog[0].jf), (2, 0));
        assert_eq!(prog[1].k, 1);
    }

    #[test]
    fn far_conditional_jump_is_refused() {
        let mut asm = Asm::default();
        let end = asm.label();
        asm.jump(JMP_JEQ_K, 7, Target::To(end), Target::Next);
        for _ in 0..256 {
            asm.ret(0);
        }
        asm.bind(end);
        asm.ret(1);
        assert_eq!(
            asm.finish(),
            Err(AsmError::OutOfRange {
                at: 0,
                distance: 256
            })
        );
    }

    #[test]
    fn backward_and_unbound_jumps_are_refused() {
        let mut asm = Asm::default();
        let back = asm.label();
        asm.bind(back);
        asm.ret(0);
        asm.ja(back);
        assert_eq!(
            asm.finish(),
            Err(AsmError::OutOfRange {
                at: 1,
                distance: -2
            })
        );
        let mut asm = Asm::default();
        let never = asm.label();
        asm.ja(never);
        assert_eq!(asm.finish(), Err(AsmError::UnboundLabel { at: 0 }));
    }
}
