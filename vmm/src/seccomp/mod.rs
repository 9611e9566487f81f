//! moat-vmm's seccomp filters: one per thread kind, written as data in
//! `vmm/seccomp/x86_64.json` (embedded in the binary), built and loaded through libseccomp.
//!
//! Each thread loads its own filter (no TSYNC) once it has done everything it needs before the
//! guest runs; the default action kills the whole process. See docs/seccomp.md.

mod names;
mod policy;
pub mod startup;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpFilterContext, ScmpSyscall};

pub use policy::{ArgCondition, CompareOp, Entry, Number, PolicyFile};

/// The filter file for this architecture, as the binary carries it.
pub const EMBEDDED_POLICY: &str = include_str!("../../seccomp/x86_64.json");

/// The syscall the test hook issues: in no filter, harmless when it is allowed.
pub const VIOLATION_SYSCALL: &str = "sysinfo";

/// Errors parsing the filter file or loading a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The file is not valid JSON of the expected shape.
    #[error("invalid seccomp filter file")]
    Parse(#[source] serde_json::Error),
    /// A thread kind has no filter.
    #[error("the seccomp filter file has no filter for the {0} thread")]
    MissingFilter(ThreadKind),
    /// A filter is given for a thread kind moat-vmm does not have.
    #[error("the seccomp filter file names an unknown thread kind {0:?}")]
    UnknownKind(String),
    /// A filter includes a group that does not exist.
    #[error("the {kind} filter includes an unknown group {group:?}")]
    UnknownGroup {
        /// The thread kind.
        kind: ThreadKind,
        /// The group name.
        group: String,
    },
    /// An entry has no explanation.
    #[error("seccomp entry {0:?} has no `why`")]
    NoReason(String),
    /// libseccomp does not know a syscall name.
    #[error("unknown syscall {0:?}")]
    UnknownSyscall(String),
    /// An ioctl request name has no number.
    #[error("unknown ioctl request {0:?}")]
    UnknownIoctl(String),
    /// A constant name has no value.
    #[error("unknown constant {name:?} in the rule for {syscall}")]
    UnknownConstant {
        /// The syscall of the rule.
        syscall: String,
        /// The constant.
        name: String,
    },
    /// An argument condition is malformed.
    #[error("bad argument condition in the rule for {syscall}: {what}")]
    BadCondition {
        /// The syscall of the rule.
        syscall: String,
        /// What is wrong.
        what: &'static str,
    },
    /// libseccomp refused to build or load a filter.
    #[error("cannot {what} the seccomp filter of the {kind} thread")]
    Libseccomp {
        /// The thread kind.
        kind: ThreadKind,
        /// build or load.
        what: &'static str,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
}

/// The kinds of threads moat-vmm runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread once it has started the others: waits for the VM to end, flushes the
    /// console log, writes the stats, exits.
    Main,
    /// The `event-loop` thread: epoll over the virtio devices' eventfds, the vsock sockets.
    EventLoop,
    /// A vCPU thread: `KVM_RUN` and the port-I/O and MMIO handlers of the devices.
    Vcpu,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::EventLoop, ThreadKind::Vcpu];

    /// The name used in the filter file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ThreadKind {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SeccompError::UnknownKind(s.to_owned()))
    }
}

/// One resolved rule: allow `syscall` when every condition holds (none: always).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    syscall: ScmpSyscall,
    conditions: Vec<ScmpArgCompare>,
}

/// The filters of every thread kind, with every name resolved to a number.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: BTreeMap<ThreadKind, Vec<Rule>>,
}

impl Policy {
    /// The filters moat-vmm carries.
    pub fn embedded() -> Result<Self, SeccompError> {
        Self::parse(EMBEDDED_POLICY)
    }

    /// Parses and resolves a filter file.
    pub fn parse(text: &str) -> Result<Self, SeccompError> {
        let file: PolicyFile = serde_json::from_str(text).map_err(SeccompError::Parse)?;
        // Every group entry must be valid, included or not.
        for entry in file.groups.values().flatten() {
            resolve_entry(entry)?;
        }
        let mut rules = BTreeMap::new();
        for (name, filter) in &file.filters {
            let kind: ThreadKind = name.parse()?;
            let entries = file.entries_of(kind, filter)?;
            let resolved = entries
                .into_iter()
                .map(resolve_entry)
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(kind, resolved.into_iter().flatten().collect());
        }
        if let Some(kind) = ThreadKind::ALL.into_iter().find(|k| !rules.contains_key(k)) {
            return Err(SeccompError::MissingFilter(kind));
        }
        Ok(Self { rules })
    }

    /// Whether the filter of `kind` allows `syscall` under some condition.
    pub fn mentions(&self, kind: ThreadKind, syscall: &str) -> bool {
        let Ok(number) = ScmpSyscall::from_name(syscall) else {
            return false;
        };
        self.rules[&kind].iter().any(|r| r.syscall == number)
    }

    /// Builds the libseccomp filter of `kind`: allow the listed calls, kill the process on any
    /// other.
    pub fn build(&self, kind: ThreadKind) -> Result<ScmpFilterContext, SeccompError> {
        let err = |source| SeccompError::Libseccomp {
            kind,
            what: "build",
            source,
        };
        let mut filter = ScmpFilterContext::new(ScmpAction::KillProcess).map_err(err)?;
        for rule in &self.rules[&kind] {
            if rule.conditions.is_empty() {
                filter.add_rule(ScmpAction::Allow, rule.syscall)
            } else {
                filter.add_rule_conditional(ScmpAction::Allow, rule.syscall, &rule.conditions)
            }
            .map_err(err)?;
        }
        Ok(filter)
    }

    /// Builds the filter of `kind` and loads it on the calling thread (and the threads it
    /// starts later). libseccomp sets `no_new_privs` as it loads (its default filter
    /// attribute), as the kernel requires without CAP_SYS_ADMIN.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let filter = self.build(kind)?;
        filter.load().map_err(|source| SeccompError::Libseccomp {
            kind,
            what: "load",
            source,
        })?;
        tracing::debug!(%kind, "seccomp filter loaded");
        Ok(())
    }
}

/// An entry as rules: one per ioctl request (libseccomp ORs rules of the same syscall), else one.
fn resolve_entry(entry: &Entry) -> Result<Vec<Rule>, SeccompError> {
    if entry.why.trim().is_empty() {
        return Err(SeccompError::NoReason(entry.syscall.clone()));
    }
    let syscall = ScmpSyscall::from_name(&entry.syscall)
        .map_err(|_| SeccompError::UnknownSyscall(entry.syscall.clone()))?;
    let base = entry
        .args
        .iter()
        .map(|c| c.resolve(&entry.syscall))
        .collect::<Result<Vec<_>, _>>()?;
    if entry.ioctls.is_empty() {
        return Ok(vec![Rule {
            syscall,
            conditions: base,
        }]);
    }
    entry
        .ioctls
        .iter()
        .map(|name| {
            let number =
                names::ioctl(name).ok_or_else(|| SeccompError::UnknownIoctl(name.clone()))?;
            // The kernel takes the request as an unsigned int: compare the low 32 bits.
            let request = ScmpArgCompare::new(
                1,
                libseccomp::ScmpCompareOp::MaskedEqual(u64::from(u32::MAX)),
                number,
            );
            let mut conditions = base.clone();
            conditions.push(request);
            Ok(Rule {
                syscall,
                conditions,
            })
        })
        .collect()
}

/// Makes the process fit its filters; call first in `main`, before any other thread exists.
///
/// glibc gives each thread its own malloc arena, and the first time it shrinks such an arena's
/// heap it reads `/proc/sys/vm/overcommit_memory` (an `openat` no filter allows; seen when 64 MiB
/// went through vsock). With one arena, shared by all threads, that code never runs. The VMM's
/// threads allocate little once the guest runs, so sharing costs nothing measurable.
pub fn prepare_process() {
    // SAFETY: mallopt only changes glibc's allocator settings; it is called before any other
    // thread exists, and its result (0 on failure) only means the setting did not change.
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if ok == 0 {
        tracing::warn!("cannot limit malloc to one arena");
    }
}

/// Test hook: issues [`VIOLATION_SYSCALL`], which no filter allows, so the process is killed
/// with SIGSYS when the filters are on.
pub fn violate() {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::uninit();
    // SAFETY: sysinfo(2) only writes a `struct sysinfo` into the buffer it is given, which is
    // valid and large enough; the result is not read.
    let rc = unsafe { libc::sysinfo(info.as_mut_ptr()) };
    tracing::warn!(rc, "test hook: issued sysinfo(2) and was not killed");
}

#[cfg(test)]
mod tests;
