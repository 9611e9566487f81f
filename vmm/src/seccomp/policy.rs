//! The filter file's format (docs/seccomp.md):
//!
//! ```json
//! {
//!   "groups":  { "NAME": [ENTRY, ...] },
//!   "filters": { "main" | "event-loop" | "vcpu": { "include": ["NAME"], "allow": [ENTRY, ...] } }
//! }
//! ENTRY: { "syscall": "mmap", "why": "...",
//!          "args": [{ "arg": 2, "op": "masked_eq", "mask": "PROT_EXEC", "value": 0 }],
//!          "ioctls": ["KVM_RUN"] }
//! ```
//!
//! All conditions of an entry must hold; entries for the same syscall are alternatives; an
//! `ioctls` list allows the syscall for each request named (argument 1).

use std::collections::BTreeMap;

use libseccomp::{ScmpArgCompare, ScmpCompareOp};
use serde::Deserialize;

use super::{names, SeccompError, ThreadKind};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Free text for the reader.
    #[serde(default, rename = "//")]
    pub comment: Vec<String>,
    /// Named lists of entries that filters include.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<Entry>>,
    /// One filter per thread kind name.
    pub filters: BTreeMap<String, Filter>,
}

/// One thread kind's filter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Groups whose entries this filter also allows.
    #[serde(default)]
    pub include: Vec<String>,
    /// This filter's own entries.
    #[serde(default)]
    pub allow: Vec<Entry>,
}

/// One allowed syscall.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its name, as libseccomp knows it.
    pub syscall: String,
    /// Why moat-vmm needs it (which code path): required and non-empty.
    pub why: String,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default)]
    pub args: Vec<ArgCondition>,
    /// For `ioctl`: the request names allowed.
    #[serde(default)]
    pub ioctls: Vec<String>,
}

/// A condition on one argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCondition {
    /// The argument index, 0 to 5.
    pub arg: u32,
    /// The comparison.
    pub op: CompareOp,
    /// The value compared with (after the mask for `masked_eq`).
    pub value: Number,
    /// For `masked_eq`: the bits of the argument compared.
    #[serde(default)]
    pub mask: Option<Number>,
}

/// A comparison of an argument with a value.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    /// `arg == value`
    Eq,
    /// `arg != value`
    Ne,
    /// `arg < value`
    Lt,
    /// `arg <= value`
    Le,
    /// `arg > value`
    Gt,
    /// `arg >= value`
    Ge,
    /// `arg & mask == value`
    MaskedEq,
}

/// A number, or the name of a constant (names.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Number {
    /// A literal.
    Literal(u64),
    /// A constant's name.
    Name(String),
}

impl Number {
    fn resolve(&self, syscall: &str) -> Result<u64, SeccompError> {
        match self {
            Number::Literal(n) => Ok(*n),
            Number::Name(name) => {
                names::constant(name).ok_or_else(|| SeccompError::UnknownConstant {
                    syscall: syscall.to_owned(),
                    name: name.clone(),
                })
            }
        }
    }
}

impl ArgCondition {
    /// The libseccomp comparison.
    pub(super) fn resolve(&self, syscall: &str) -> Result<ScmpArgCompare, SeccompError> {
        let bad = |what| SeccompError::BadCondition {
            syscall: syscall.to_owned(),
            what,
        };
        if self.arg > 5 {
            return Err(bad("arg must be 0 to 5"));
        }
        let op = match (self.op, &self.mask) {
            (CompareOp::MaskedEq, Some(mask)) => ScmpCompareOp::MaskedEqual(mask.resolve(syscall)?),
            (CompareOp::MaskedEq, None) => return Err(bad("masked_eq needs a mask")),
            (_, Some(_)) => return Err(bad("only masked_eq takes a mask")),
            (CompareOp::Eq, None) => ScmpCompareOp::Equal,
            (CompareOp::Ne, None) => ScmpCompareOp::NotEqual,
            (CompareOp::Lt, None) => ScmpCompareOp::Less,
            (CompareOp::Le, None) => ScmpCompareOp::LessOrEqual,
            (CompareOp::Gt, None) => ScmpCompareOp::Greater,
            (CompareOp::Ge, None) => ScmpCompareOp::GreaterEqual,
        };
        Ok(ScmpArgCompare::new(
            self.arg,
            op,
            self.value.resolve(syscall)?,
        ))
    }
}

impl PolicyFile {
    /// The entries of `filter` (for `kind`): its included groups', then its own.
    pub(super) fn entries_of<'a>(
        &'a self,
        kind: ThreadKind,
        filter: &'a Filter,
    ) -> Result<Vec<&'a Entry>, SeccompError> {
        let mut entries = Vec::new();
        for group in &filter.include {
            let list = self
                .groups
                .get(group)
                .ok_or_else(|| SeccompError::UnknownGroup {
                    kind,
                    group: group.clone(),
                })?;
            entries.extend(list);
        }
        entries.extend(&filter.allow);
        Ok(entries)
    }
}
