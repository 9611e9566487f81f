//! Checks an OCI `linux.seccomp` section and lowers it into a [`Filter`]: syscall numbers,
//! return values and argument conditions, everything the compiler needs and nothing it must
//! check again.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use thiserror::Error;

use crate::bpf::AsmError;
use crate::syscalls::{is_foreign_syscall, syscall_number};
use crate::{SECCOMP_FILTER_FLAG_LOG, SECCOMP_FILTER_FLAG_SPEC_ALLOW, SECCOMP_FILTER_FLAG_TSYNC};

/// `EPERM`, the answer of `SCMP_ACT_ERRNO` without any `errnoRet`.
const EPERM: u32 = 1;
/// The largest errno the kernel passes through (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;
/// `SECCOMP_RET_DATA`: the bits of a return value that carry data.
const RET_DATA: u32 = 0xffff;
/// Syscalls have at most six arguments.
const MAX_ARGS: usize = 6;

pub(crate) const RET_KILL_THREAD: u32 = 0x0000_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Errors of validation and compilation; each names the offending field of the OCI spec.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    /// A name that is no Linux syscall on any architecture.
    #[error("{field}: unknown syscall \"{name}\"")]
    UnknownSyscall { field: String, name: String },
    /// A rule without any name.
    #[error("{field}: no syscall names")]
    NoNames { field: String },
    /// `SCMP_ACT_NOTIFY` needs a seccomp agent on a unix socket; moat has none.
    #[error("{field}: SCMP_ACT_NOTIFY is not supported (moat has no seccomp notify agent)")]
    Notify { field: String },
    /// `listenerPath`/`listenerMetadata` only serve `SCMP_ACT_NOTIFY`.
    #[error("{field}: not supported (moat has no seccomp notify agent)")]
    Listener { field: String },
    /// A filter flag other than LOG, SPEC_ALLOW and TSYNC.
    #[error("{field}: filter flag {flag} is not supported")]
    Flag { field: String, flag: String },
    /// The architectures list leaves out x86_64, the only one moat's guests run.
    #[error("{field}: does not include SCMP_ARCH_X86_64 (or SCMP_ARCH_NATIVE)")]
    NoX86_64 { field: String },
    /// `errnoRet` on an action that returns no data.
    #[error("{field}: errnoRet only goes with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}")]
    ErrnoRetUnused { field: String, action: String },
    /// `errnoRet` out of range (0..=4095 for ERRNO, 0..=65535 for TRACE).
    #[error("{field}: {value} is out of range")]
    ErrnoRange { field: String, value: u32 },
    /// An argument index past the sixth argument.
    #[error("{field}: argument index {index} is out of range (0..=5)")]
    ArgIndex { field: String, index: usize },
    /// `valueTwo` on an operator other than `SCMP_CMP_MASKED_EQ`.
    #[error("{field}: valueTwo only goes with SCMP_CMP_MASKED_EQ")]
    ValueTwo { field: String },
    /// The compiled program is larger than the kernel accepts.
    #[error("the compiled filter has {len} instructions, more than the kernel's {max}")]
    TooLong { len: usize, max: usize },
    /// The assembler refused the program (a compiler bug).
    #[error("assembling the filter")]
    Assemble(#[source] AsmError),
}

/// A checked argument condition: `op(arg[index], value[, value_two])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cond {
    pub(crate) index: u32,
    pub(crate) op: LinuxSeccompOperator,
    pub(crate) value: u64,
    pub(crate) value_two: u64,
}

/// One rule of a syscall: all `conds` hold → return `ret`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) conds: Vec<Cond>,
    pub(crate) ret: u32,
}

/// A checked seccomp section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    /// The answer for any syscall without a matching rule (and for x32 syscalls).
    pub(crate) default_ret: u32,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub(crate) flags: u32,
    /// Rules per syscall number, in the spec's order (the first match answers).
    pub(crate) syscalls: BTreeMap<u32, Vec<Rule>>,
}

/// Checks an OCI seccomp section; errors name the field, e.g.
/// `linux.seccomp.syscalls[3].names[1]: unknown syscall "fooo"`.
pub fn validate(s: &LinuxSeccomp) -> Result<(), CompileError> {
    lower(s).map(|_| ())
}

/// Checks `s` and lowers it for the compiler.
pub(crate) fn lower(s: &LinuxSeccomp) -> Result<Filter, CompileError> {
    const FIELD: &str = "linux.seccomp";
    if s.listener_path().is_some() {
        return Err(CompileError::Listener {
            field: format!("{FIELD}.listenerPath"),
        });
    }
    if s.listener_metadata().is_some() {
        return Err(CompileError::Listener {
            field: format!("{FIELD}.listenerMetadata"),
        });
    }
    check_arches(s.architectures().as_deref())?;
    let default_ret = action_ret(
        s.default_action(),
        s.default_errno_ret(),
        None,
        &format!("{FIELD}.defaultAction"),
    )?;
    let flags = flags(s.flags().as_deref())?;
    let mut syscalls: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("{FIELD}.syscalls[{i}]");
        let lowered = lower_rule(rule, &field)?;
        for nr in numbers(rule.names(), &field)? {
            syscalls
                .entry(nr)
                .or_default()
                .extend(lowered.iter().cloned());
        }
    }
    Ok(Filter {
        default_ret,
        flags,
        syscalls,
    })
}

fn check_arches(arches: Option<&[Arch]>) -> Result<(), CompileError> {
    match arches {
        Some(list)
            if !list.is_empty()
                && !list
                    .iter()
                    .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative)) =>
        {
            Err(CompileError::NoX86_64 {
                field: "linux.seccomp.architectures".into(),
            })
        }
        _ => Ok(()),
    }
}

fn flags(flags: Option<&[LinuxSeccompFilterFlag]>) -> Result<u32, CompileError> {
    let mut bits = 0;
    for (i, flag) in flags.unwrap_or_default().iter().enumerate() {
        bits |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(CompileError::Flag {
                    field: format!("linux.seccomp.flags[{i}]"),
                    flag: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV".into(),
                })
            }
        };
    }
    Ok(bits)
}

/// The x86_64 numbers of `names`, skipping names that only other architectures have.
fn numbers(names: &[String], field: &str) -> Result<Vec<u32>, CompileError> {
    if names.is_empty() {
        return Err(CompileError::NoNames {
            field: format!("{field}.names"),
        });
    }
    let mut out = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match syscall_number(name) {
            Some(nr) => out.push(nr),
            None if is_foreign_syscall(name) => {}
            None => {
                return Err(CompileError::UnknownSyscall {
                    field: format!("{field}.names[{j}]"),
                    name: name.clone(),
                })
            }
        }
    }
    Ok(out)
}

/// One OCI rule as compiler rules: conditions on distinct arguments are ANDed into one rule;
/// when an argument repeats, each condition becomes a rule of its own (ORed), as runc does.
pub(crate) fn lower_rule(rule: &LinuxSyscall, field: &str) -> Result<Vec<Rule>, CompileError> {
    // A rule's ERRNO without errnoRet is EPERM (the runtime spec), not defaultErrnoRet.
    let ret = action_ret(
        rule.action(),
        rule.errno_ret(),
        None,
        &format!("{field}.action"),
    )?;
    let args = rule.args().as_deref().unwrap_or_default();
    let mut conds = Vec::with_capacity(args.len());
    for (k, arg) in args.iter().enumerate() {
        conds.push(cond(arg, &format!("{field}.args[{k}]"))?);
    }
    let repeated = conds
        .iter()
        .enumerate()
        .any(|(k, c)| conds[..k].iter().any(|d| d.index == c.index));
    if repeated {
        return Ok(conds
            .into_iter()
            .map(|c| Rule {
                conds: vec![c],
                ret,
            })
            .collect());
    }
    Ok(vec![Rule { conds, ret }])
}

fn cond(arg: &LinuxSeccompArg, field: &str) -> Result<Cond, CompileError> {
    let index = arg.index();
    if index >= MAX_ARGS {
        return Err(CompileError::ArgIndex {
            field: format!("{field}.index"),
            index,
        });
    }
    let masked = arg.op() == LinuxSeccompOperator::ScmpCmpMaskedEq;
    let value_two = arg.value_two().unwrap_or(0);
    if !masked && value_two != 0 {
        return Err(CompileError::ValueTwo {
            field: format!("{field}.valueTwo"),
        });
    }
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    Ok(Cond {
        index,
        op: arg.op(),
        value: arg.value(),
        value_two,
    })
}

/// The filter's return value for `action`; `errno` is the rule's `errnoRet`, `fallback` the
/// section's `defaultErrnoRet` (for rules; `None` for the default action itself).
fn action_ret(
    action: LinuxSeccompAction,
    errno: Option<u32>,
    fallback: Option<u32>,
    field: &str,
) -> Result<u32, CompileError> {
    let errno_field = || {
        field
            .replace(".action", ".errnoRet")
            .replace(".defaultAction", ".defaultErrnoRet")
    };
    let ret = match action {
        LinuxSeccompAction::ScmpActErrno => {
            let value = errno.or(fallback).unwrap_or(EPERM);
            if value > MAX_ERRNO {
                return Err(CompileError::ErrnoRange {
                    field: errno_field(),
                    value,
                });
            }
            return Ok(RET_ERRNO | value);
        }
        LinuxSeccompAction::ScmpActTrace => {
            let value = errno.unwrap_or(0);
            if value > RET_DATA {
                return Err(CompileError::ErrnoRange {
                    field: errno_field(),
                    value,
                });
            }
            return Ok(RET_TRACE | value);
        }
        LinuxSeccompAction::ScmpActNotify => {
            return Err(CompileError::Notify {
                field: field.into(),
            })
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
    };
    match errno {
        Some(_) => Err(CompileError::ErrnoRetUnused {
            field: errno_field(),
            action: action.to_string(),
        }),
        None => Ok(ret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    fn err(json: &str) -> String {
        validate(&spec(json)).unwrap_err().to_string()
    }

    #[test]
    fn unknown_name_is_named_by_field() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["read"],"action":"SCMP_ACT_ALLOW"},{"names":["read"],"action":"SCMP_ACT_ALLOW"},
            {"names":["read"],"action":"SCMP_ACT_ALLOW"},{"names":["write","fooo"],"action":"SCMP_ACT_LOG"}]}"#;
        assert_eq!(
            err(json),
            r#"linux.seccomp.syscalls[3].names[1]: unknown syscall "fooo""#
        );
    }

    #[test]
    fn foreign_names_are_skipped() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["socketcall","read"],"action":"SCMP_ACT_KILL"}]}"#;
        let filter = lower(&spec(json)).unwrap();
        assert_eq!(filter.syscalls.keys().copied().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn refusals_name_their_field() {
        let cases = [
            (
                r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
                "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/x"}"#,
                "linux.seccomp.listenerPath: not",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
                "linux.seccomp.flags[1]",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64"]}"#,
                "linux.seccomp.architectures",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","defaultErrnoRet":5}"#,
                "linux.seccomp.defaultErrnoRet: errnoRet only",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":5000}"#,
                "linux.seccomp.defaultErrnoRet: 5000",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_KILL"}]}"#,
                "linux.seccomp.syscalls[0].names: no",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_KILL","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "linux.seccomp.syscalls[0].args[0].index",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_KILL","args":[{"index":0,"value":1,"valueTwo":2,"op":"SCMP_CMP_EQ"}]}]}"#,
                "linux.seccomp.syscalls[0].args[0].valueTwo",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","errnoRet":3}]}"#,
                "linux.seccomp.syscalls[0].errnoRet",
            ),
        ];
        for (json, want) in cases {
            let got = err(json);
            assert!(got.starts_with(want), "{json}: {got}");
        }
    }

    #[test]
    fn returns_and_flags() {
        let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"flags":["SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO"},{"names":["write"],"action":"SCMP_ACT_ERRNO","errnoRet":42},
            {"names":["open"],"action":"SCMP_ACT_TRACE","errnoRet":7},{"names":["close"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#;
        let f = lower(&spec(json)).unwrap();
        assert_eq!(f.default_ret, RET_ERRNO | 38);
        assert_eq!(
            f.flags,
            SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
        let ret = |nr: u32| f.syscalls[&nr][0].ret;
        assert_eq!(
            (ret(0), ret(1), ret(2), ret(3)),
            (
                // A rule without errnoRet answers EPERM; defaultErrnoRet is the default's.
                RET_ERRNO | 1,
                RET_ERRNO | 42,
                RET_TRACE | 7,
                RET_KILL_PROCESS
            )
        );
    }

    #[test]
    fn repeated_argument_splits_into_alternatives() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_KILL","args":[
            {"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
            {"names":["write"],"action":"SCMP_ACT_KILL","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":1,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#;
        let f = lower(&spec(json)).unwrap();
        assert_eq!(f.syscalls[&0].len(), 2);
        assert_eq!(f.syscalls[&1].len(), 1);
        assert_eq!(f.syscalls[&1][0].conds.len(), 2);
    }
}
