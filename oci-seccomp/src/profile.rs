//! Docker's seccomp profile format and its resolution into the OCI `linux.seccomp` section.
//!
//! The format is OCI's plus Docker's conditions on rules (`includes`/`excludes` on capabilities,
//! architectures and kernel version), `archMap`, the legacy `name` field and `comment`s. A plain
//! OCI section is a valid profile.

use std::path::PathBuf;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::syscalls::{is_foreign_syscall, syscall_number};
use crate::validate::{lower_rule, validate, CompileError};

/// Docker's default profile (moby's `profiles/seccomp/default.json`, written for moat).
const DOCKER_DEFAULT: &str = include_str!("../profiles/docker-default.json");
/// The guest kernel's version, against which `minKernel` conditions resolve.
const GUEST_KERNEL: (u32, u32) = (6, 12);
/// Names by which rules' `arches` conditions mean x86_64 (Go's and the kernel's).
const OUR_ARCHES: &[&str] = &["amd64", "x86_64"];
/// Architecture names a rule's `arches` condition may use.
const KNOWN_ARCHES: &[&str] = &[
    "amd64",
    "x86_64",
    "386",
    "x86",
    "x32",
    "arm",
    "arm64",
    "aarch64",
    "mips",
    "mipsle",
    "mipsel",
    "mips64",
    "mips64le",
    "mipsel64",
    "mips64n32",
    "mipsel64n32",
    "mips64len32",
    "ppc",
    "ppc64",
    "ppc64le",
    "s390",
    "s390x",
    "riscv64",
    "loong64",
    "loongarch64",
    "parisc",
    "parisc64",
    "m68k",
    "sh",
    "sheb",
];
/// Capability names (`capability.h`, Linux 6.12).
const KNOWN_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Errors of reading a Docker profile and resolving it; each names the offending field.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// Not JSON, a missing field, an unknown field or a wrong type (the cause says which).
    #[error("invalid seccomp profile at line {line} column {column}")]
    Json {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A string field whose value is not one of the known names.
    #[error("{field}: unknown {what} \"{value}\"")]
    Unknown {
        field: String,
        what: &'static str,
        value: String,
    },
    /// A rule with neither `names` nor `name`.
    #[error("{field}: neither names nor name")]
    NoNames { field: String },
    /// `minKernel` is not `MAJOR.MINOR[.PATCH]`.
    #[error("{field}: \"{value}\" is not a kernel version")]
    KernelVersion { field: String, value: String },
    /// `archMap` has no entry for x86_64.
    #[error("archMap: no entry for SCMP_ARCH_X86_64")]
    NoX86_64ArchMap,
    /// A rule, or the resolved section, does not validate (the cause names the field).
    #[error(transparent)]
    Invalid(CompileError),
}

/// A seccomp profile in Docker's JSON format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerProfile {
    default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arch_map: Option<Vec<ArchMapEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    flags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listener_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listener_metadata: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    syscalls: Option<Vec<Syscall>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchMapEntry {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Syscall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Vec<Arg>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    includes: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    excludes: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Arg {
    index: usize,
    value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_two: Option<u64>,
    op: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caps: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arches: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_kernel: Option<String>,
}

impl DockerProfile {
    /// Docker's default profile, embedded data.
    pub fn docker_default() -> Self {
        // The embedded profile is checked by the unit tests; it cannot fail at run time.
        Self::from_json(DOCKER_DEFAULT).expect("the embedded Docker default profile is valid")
    }

    /// Parses and checks a profile (Docker's format or a plain OCI `linux.seccomp` object).
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let profile: Self = serde_json::from_str(text).map_err(|source| ProfileError::Json {
            line: source.line(),
            column: source.column(),
            source,
        })?;
        profile.check()?;
        Ok(profile)
    }

    /// Resolves Docker's conditions (includes/excludes: caps, arches; minKernel against 6.12)
    /// for a container whose capability set (bounding set names like "CAP_SYS_ADMIN") is `caps`,
    /// on x86_64, into the OCI form.
    pub fn to_oci(&self, caps: &[String]) -> Result<LinuxSeccomp, ProfileError> {
        let mut out = LinuxSeccomp::default();
        out.set_default_action(parse(&self.default_action, "defaultAction", "action")?);
        out.set_default_errno_ret(self.default_errno_ret);
        out.set_architectures(self.architectures()?);
        out.set_flags(self.flags()?);
        out.set_listener_path(self.listener_path.as_ref().map(PathBuf::from));
        out.set_listener_metadata(self.listener_metadata.clone());
        let mut rules = Vec::new();
        for (i, rule) in self.syscalls.iter().flatten().enumerate() {
            if applies(rule, caps) {
                rules.extend(oci_rule(rule, &format!("syscalls[{i}]"))?);
            }
        }
        out.set_syscalls(self.syscalls.as_ref().map(|_| rules));
        validate(&out).map_err(ProfileError::Invalid)?;
        Ok(out)
    }

    /// Checks every name in the profile, whatever the conditions.
    fn check(&self) -> Result<(), ProfileError> {
        parse::<LinuxSeccompAction>(&self.default_action, "defaultAction", "action")?;
        self.flags()?;
        for (i, arch) in self.architectures.iter().flatten().enumerate() {
            parse::<Arch>(arch, &format!("architectures[{i}]"), "architecture")?;
        }
        for (i, entry) in self.arch_map.iter().flatten().enumerate() {
            parse::<Arch>(
                &entry.architecture,
                &format!("archMap[{i}].architecture"),
                "architecture",
            )?;
            for (j, sub) in entry.sub_architectures.iter().flatten().enumerate() {
                parse::<Arch>(
                    sub,
                    &format!("archMap[{i}].subArchitectures[{j}]"),
                    "architecture",
                )?;
            }
        }
        for (i, rule) in self.syscalls.iter().flatten().enumerate() {
            let field = format!("syscalls[{i}]");
            // Checks the action, errnoRet and args here, so that errors carry the profile's index.
            if let Some(oci) = oci_rule(rule, &field)? {
                lower_rule(&oci, &field).map_err(ProfileError::Invalid)?;
            }
            check_condition(rule.includes.as_ref(), &format!("{field}.includes"))?;
            check_condition(rule.excludes.as_ref(), &format!("{field}.excludes"))?;
        }
        Ok(())
    }

    /// `architectures`, or the x86_64 entry of `archMap` with its sub-architectures.
    fn architectures(&self) -> Result<Option<Vec<Arch>>, ProfileError> {
        let Some(map) = &self.arch_map else {
            return self
                .architectures
                .as_ref()
                .map(|list| parse_all(list, "architectures", "architecture"))
                .transpose();
        };
        for (i, entry) in map.iter().enumerate() {
            let field = format!("archMap[{i}]");
            let arch: Arch = parse(
                &entry.architecture,
                &format!("{field}.architecture"),
                "architecture",
            )?;
            if arch == Arch::ScmpArchX86_64 {
                let subs = parse_all(
                    entry.sub_architectures.as_deref().unwrap_or_default(),
                    &format!("{field}.subArchitectures"),
                    "architecture",
                )?;
                return Ok(Some([arch].into_iter().chain(subs).collect()));
            }
        }
        Err(ProfileError::NoX86_64ArchMap)
    }

    fn flags(&self) -> Result<Option<Vec<LinuxSeccompFilterFlag>>, ProfileError> {
        self.flags
            .as_ref()
            .map(|list| parse_all(list, "flags", "flag"))
            .transpose()
    }
}

/// The OCI rule for a Docker rule, keeping only x86_64 names (`None` if none is left).
fn oci_rule(rule: &Syscall, field: &str) -> Result<Option<LinuxSyscall>, ProfileError> {
    let mut names = Vec::new();
    let listed = rule
        .names
        .iter()
        .flatten()
        .map(|n| (n, "names"))
        .chain(rule.name.iter().map(|n| (n, "name")));
    let mut any = false;
    for (j, (name, key)) in listed.enumerate() {
        any = true;
        if syscall_number(name).is_some() {
            names.push(name.clone());
        } else if !is_foreign_syscall(name) {
            let field = if key == "name" {
                format!("{field}.name")
            } else {
                format!("{field}.names[{j}]")
            };
            return Err(ProfileError::Unknown {
                field,
                what: "syscall",
                value: name.clone(),
            });
        }
    }
    if !any {
        return Err(ProfileError::NoNames {
            field: field.into(),
        });
    }
    let mut args = Vec::new();
    for (k, arg) in rule.args.iter().flatten().enumerate() {
        let op: LinuxSeccompOperator =
            parse(&arg.op, &format!("{field}.args[{k}].op"), "operator")?;
        let mut builder = LinuxSeccompArgBuilder::default()
            .index(arg.index)
            .value(arg.value)
            .op(op);
        if let Some(two) = arg.value_two {
            builder = builder.value_two(two);
        }
        // Every field is set, so the builder has nothing to refuse.
        args.push(
            builder
                .build()
                .expect("all fields of LinuxSeccompArg are set"),
        );
    }
    let mut out = LinuxSyscall::default();
    out.set_action(parse(&rule.action, &format!("{field}.action"), "action")?);
    out.set_errno_ret(rule.errno_ret);
    out.set_args(rule.args.as_ref().map(|_| args));
    out.set_names(names);
    Ok((!out.names().is_empty()).then_some(out))
}

fn check_condition(cond: Option<&Condition>, field: &str) -> Result<(), ProfileError> {
    let Some(cond) = cond else { return Ok(()) };
    for (k, cap) in cond.caps.iter().flatten().enumerate() {
        if !KNOWN_CAPS.contains(&cap.as_str()) {
            return Err(ProfileError::Unknown {
                field: format!("{field}.caps[{k}]"),
                what: "capability",
                value: cap.clone(),
            });
        }
    }
    for (k, arch) in cond.arches.iter().flatten().enumerate() {
        if !KNOWN_ARCHES.contains(&arch.as_str()) {
            return Err(ProfileError::Unknown {
                field: format!("{field}.arches[{k}]"),
                what: "architecture",
                value: arch.clone(),
            });
        }
    }
    if let Some(v) = &cond.min_kernel {
        kernel_version(v, &format!("{field}.minKernel"))?;
    }
    Ok(())
}

/// Whether a rule applies to a container with `caps` on x86_64 under the guest kernel.
/// `includes`: every cap present, x86_64 among the arches, kernel new enough. `excludes`: no cap
/// present, x86_64 not among the arches, kernel older than its minKernel. (Checked by `check`.)
fn applies(rule: &Syscall, caps: &[String]) -> bool {
    let has_cap = |c: &String| caps.contains(c);
    let ours = |a: &String| OUR_ARCHES.contains(&a.as_str());
    let new_enough = |v: &String| kernel_version(v, "").is_ok_and(|v| v <= GUEST_KERNEL);
    if let Some(inc) = &rule.includes {
        let arches = inc.arches.as_deref().unwrap_or_default();
        if !inc.caps.iter().flatten().all(has_cap)
            || (!arches.is_empty() && !arches.iter().any(ours))
            || inc.min_kernel.as_ref().is_some_and(|v| !new_enough(v))
        {
            return false;
        }
    }
    if let Some(exc) = &rule.excludes {
        if exc.caps.iter().flatten().any(has_cap)
            || exc.arches.iter().flatten().any(ours)
            || exc.min_kernel.as_ref().is_some_and(new_enough)
        {
            return false;
        }
    }
    true
}

/// `MAJOR.MINOR[.PATCH]` as `(major, minor)`.
fn kernel_version(v: &str, field: &str) -> Result<(u32, u32), ProfileError> {
    let bad = || ProfileError::KernelVersion {
        field: field.into(),
        value: v.into(),
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().map_err(|_| bad()));
    let major = parts.next().ok_or_else(bad)??;
    let minor = parts.next().ok_or_else(bad)??;
    match (parts.next(), parts.next()) {
        (None | Some(Ok(_)), None) => Ok((major, minor)),
        _ => Err(bad()),
    }
}

/// Parses an OCI enum from its JSON string (`SCMP_ACT_ERRNO`, `SCMP_ARCH_X86_64`, ...).
fn parse<T: DeserializeOwned>(
    value: &str,
    field: &str,
    what: &'static str,
) -> Result<T, ProfileError> {
    serde_json::from_value(serde_json::Value::String(value.into())).map_err(|_| {
        ProfileError::Unknown {
            field: field.into(),
            what,
            value: value.into(),
        }
    })
}

fn parse_all<T: DeserializeOwned>(
    list: &[String],
    field: &str,
    what: &'static str,
) -> Result<Vec<T>, ProfileError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| parse(v, &format!("{field}[{i}]"), what))
        .collect()
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
