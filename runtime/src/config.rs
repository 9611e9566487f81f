//! Validation of what a user asks `moat run` for: sizes, vCPUs, names, environment, user.
//!
//! Each parser takes the text of one command-line value and returns the typed value or a
//! [`ConfigError`] whose message is one line for the user. The CLI uses them as clap value
//! parsers; [`RunConfig`] then holds the validated request.

use std::path::PathBuf;

/// Memory a VM gets when the user does not ask: 256 MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// The smallest VM: a request below this is raised to it (the guest kernel and agent need it).
pub const MIN_MEMORY_MIB: u32 = 64;

/// Most vCPUs a VM may have.
pub const MAX_CPUS: u8 = 32;

/// `PATH` given to the container unless the user sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest container name.
pub const MAX_NAME_LEN: usize = 64;

/// Longest hostname (Linux `HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;

/// Errors in user-supplied run settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A memory size is not a number with an optional unit.
    #[error("invalid memory size {0:?}: expected a number with an optional unit b, k, m or g (e.g. 256m)")]
    BadSize(String),
    /// A memory size of zero.
    #[error("must be greater than zero")]
    ZeroMemory,
    /// `--vm-memory` above the host's RAM.
    #[error("--vm-memory of {requested_mib} MiB exceeds the host's {host_mib} MiB of RAM")]
    VmMemoryAboveHost {
        /// What was asked, in MiB.
        requested_mib: u64,
        /// What the host has, in MiB.
        host_mib: u64,
    },
    /// A memory limit whose VM would be larger than the host's RAM.
    #[error("{limit} of {limit_mib} MiB needs a VM of {vm_mib} MiB, more than the host's {host_mib} MiB of RAM (see --vm-memory)")]
    LimitAboveHost {
        /// The flag (or a bundle's field).
        limit: &'static str,
        /// The limit, in MiB.
        limit_mib: u64,
        /// The VM it needs, in MiB.
        vm_mib: u64,
        /// What the host has, in MiB.
        host_mib: u64,
    },
    /// The default VM is larger than the host's RAM.
    #[error(
        "the default VM of {vm_mib} MiB exceeds the host's {host_mib} MiB of RAM (see --vm-memory)"
    )]
    DefaultAboveHost {
        /// The VM's default size, in MiB.
        vm_mib: u64,
        /// What the host has, in MiB.
        host_mib: u64,
    },
    /// The vCPU count is not an integer in range.
    #[error("expected an integer from 1 to {MAX_CPUS}")]
    BadCpus(String),
    /// The container's CPU limits need more vCPUs than a VM can have.
    #[error("{limit} needs {needed} vCPUs, and a VM has at most {MAX_CPUS} (see --vm-cpus)")]
    TooManyCpus {
        /// The flag (or a bundle's field).
        limit: &'static str,
        /// The vCPUs it needs.
        needed: u64,
    },
    /// `--cpuset-cpus` names a CPU the VM does not have.
    #[error("{limit} names cpu {highest} but the VM has {cpus} vCPUs (see --vm-cpus)")]
    CpusetBeyondVm {
        /// The flag (or a bundle's field).
        limit: &'static str,
        /// The highest CPU named.
        highest: u64,
        /// The VM's vCPUs.
        cpus: u8,
    },
    /// The memory limit does not fit in the VM.
    #[error("{limit} of {limit_mib} MiB does not fit in a VM of {vm_mib} MiB (see --vm-memory)")]
    LimitAboveVm {
        /// The flag (or a bundle's field).
        limit: &'static str,
        /// The container's limit.
        limit_mib: u64,
        /// The VM's memory.
        vm_mib: u32,
    },
    /// More volumes than guest disk names.
    #[error("too many volumes (-v/--volume): at most {0}")]
    TooManyVolumes(usize),
    /// A flag value moat-spec refused.
    #[error(transparent)]
    Value(#[from] moat_spec::ParseError),
    /// Resource flags that do not go together.
    #[error(transparent)]
    Limits(#[from] moat_spec::LimitsError),
    /// A volume or device path.
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    /// An OCI bundle cannot be run.
    #[error("--bundle {}", dir.display())]
    Bundle {
        /// The bundle directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: moat_spec::BundleError,
    },
    /// The spec is refused.
    #[error(transparent)]
    Spec(#[from] moat_spec::SpecError),
    /// The spec a flag made is refused.
    #[error("{flag}")]
    FlagSpec {
        /// The flag.
        flag: &'static str,
        /// The refused field.
        #[source]
        source: moat_spec::SpecError,
    },
    /// The seccomp choice cannot be applied.
    #[error("{0}")]
    Seccomp(String),
    /// The container name has characters or a length outside what is allowed.
    #[error("invalid container name {0:?}: use 1 to {MAX_NAME_LEN} characters [a-zA-Z0-9_.-], starting with a letter or digit")]
    BadName(String),
    /// The hostname is not a valid host name.
    #[error("invalid hostname {0:?}: use 1 to {MAX_HOSTNAME_LEN} characters [a-zA-Z0-9.-], starting with a letter or digit")]
    BadHostname(String),
    /// An environment entry is not `KEY=VALUE` or `KEY`.
    #[error("invalid environment variable {0:?}: expected KEY=VALUE or KEY")]
    BadEnv(String),
    /// The user is not `UID[:GID]`.
    #[error("invalid user {0:?}: expected a numeric UID[:GID]")]
    BadUser(String),
    /// The working directory is not an absolute path.
    #[error("invalid working directory {0:?}: it must be an absolute path")]
    BadWorkdir(String),
    /// An argument of the command contains a NUL byte.
    #[error("the command contains a NUL byte")]
    NulInCommand,
}

/// Parses a docker-style size (`1024`, `512k`, `256m`, `1g`, `1.5g`, `256MiB`) into bytes.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    moat_spec::parse::parse_size(text).map_err(|_| ConfigError::BadSize(text.to_owned()))
}

/// `--vm-memory`: a size, more than zero.
pub fn parse_vm_memory(text: &str) -> Result<u64, ConfigError> {
    match parse_size(text)? {
        0 => Err(ConfigError::ZeroMemory),
        bytes => Ok(bytes),
    }
}

/// Turns a requested memory size into the VM's size in MiB: rounded up to whole MiB and raised
/// to [`MIN_MEMORY_MIB`]; `Err` with the request in MiB when it is larger than `host_bytes`.
pub fn memory_mib(requested_bytes: u64, host_bytes: u64) -> Result<u32, u64> {
    let requested_mib = requested_bytes.div_ceil(1 << 20);
    if requested_mib > host_bytes >> 20 {
        return Err(requested_mib);
    }
    let mib = requested_mib.max(u64::from(MIN_MEMORY_MIB));
    u32::try_from(mib).map_err(|_| requested_mib)
}

/// Parses a vCPU count (`--vm-cpus`): an integer from 1 to [`MAX_CPUS`].
pub fn parse_vm_cpus(text: &str) -> Result<u8, ConfigError> {
    match text.trim().parse::<u8>() {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => Ok(n),
        _ => Err(ConfigError::BadCpus(text.to_owned())),
    }
}

/// Validates a container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}`.
pub fn parse_name(text: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(ConfigError::BadName(text.to_owned()))
    }
}

/// Validates a hostname: `[a-zA-Z0-9][a-zA-Z0-9.-]*`, at most [`MAX_HOSTNAME_LEN`] bytes.
pub fn parse_hostname(text: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_HOSTNAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b".-".contains(&b));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(ConfigError::BadHostname(text.to_owned()))
    }
}

/// One `-e` entry: `KEY=VALUE` sets a value; a bare `KEY` copies the host's value if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvArg {
    /// `KEY=VALUE`.
    Set(String, String),
    /// `KEY`: take it from the host's environment, skip it if unset there.
    Inherit(String),
}

/// Parses one `-e` value.
pub fn parse_env(text: &str) -> Result<EnvArg, ConfigError> {
    let bad = || ConfigError::BadEnv(text.to_owned());
    if text.contains('\0') {
        return Err(bad());
    }
    match text.split_once('=') {
        Some(("", _)) => Err(bad()),
        Some((key, value)) => Ok(EnvArg::Set(key.to_owned(), value.to_owned())),
        None if text.is_empty() => Err(bad()),
        None => Ok(EnvArg::Inherit(text.to_owned())),
    }
}

/// A numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id: the one given, else 0 (the image's `/etc/passwd` is not consulted).
    pub gid: u32,
}

/// Parses `-u UID[:GID]`.
pub fn parse_user(text: &str) -> Result<User, ConfigError> {
    let bad = || ConfigError::BadUser(text.to_owned());
    let (uid, gid) = text.split_once(':').unwrap_or((text, "0"));
    let number = |s: &str| -> Result<u32, ConfigError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    Ok(User {
        uid: number(uid)?,
        gid: number(gid)?,
    })
}

/// Validates `-w DIR`: an absolute path without NUL bytes.
pub fn parse_workdir(text: &str) -> Result<String, ConfigError> {
    if text.starts_with('/') && !text.contains('\0') {
        Ok(text.to_owned())
    } else {
        Err(ConfigError::BadWorkdir(text.to_owned()))
    }
}

/// Builds the container's environment: defaults first, then the user's entries, later entries
/// replacing earlier ones with the same key (order of first appearance is kept).
pub fn build_env(
    user_env: &[EnvArg],
    hostname: &str,
    uid: u32,
    terminal: bool,
    host_var: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let home = if uid == 0 { "/root" } else { "/" };
    let mut entries: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname.into()),
        ("HOME".into(), home.into()),
    ];
    if terminal {
        entries.push(("TERM".into(), "xterm".into()));
    }
    for arg in user_env {
        let (key, value) = match arg {
            EnvArg::Set(key, value) => (key.clone(), value.clone()),
            EnvArg::Inherit(key) => match host_var(key) {
                Some(value) if !value.contains('\0') => (key.clone(), value),
                _ => continue,
            },
        };
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => entries.push((key, value)),
        }
    }
    entries
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// A fresh random container id: 12 lower-case hex digits.
pub fn random_id() -> String {
    let mut bytes = [0u8; 6];
    if rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).is_err() {
        // No getrandom: the clock and pid are unique enough for a name that is also checked
        // against existing state directories.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        bytes.copy_from_slice(&mixed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the VM's assets come from when the user overrides them on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssetOverrides {
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--initramfs`.
    pub initramfs: Option<PathBuf>,
}

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A built-in image, by name.
    Image(String),
    /// A bundle's root directory, packed into an ext4 image when the VM starts.
    Directory(PathBuf),
}

/// A validated `moat run` request.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Container id: also the state directory's name.
    pub id: String,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// The OCI runtime spec the agent applies (its root.path is not used: the rootfs is a disk).
    pub spec: oci_spec::runtime::Spec,
    /// Volumes, attached as `/dev/vdb`, `/dev/vdc`... in this order.
    pub volumes: Vec<crate::volumes::Volume>,
    /// Size of the writable layer's disk in bytes (`--storage-opt size=`).
    pub storage_bytes: u64,
    /// vCPUs of the VM.
    pub cpus: u8,
    /// VM memory in MiB.
    pub memory_mib: u32,
    /// Forward our stdin.
    pub interactive: bool,
    /// Run on a pseudo-terminal.
    pub tty: bool,
    /// Kernel / initramfs overrides.
    pub assets: AssetOverrides,
}

/// Checks that no argument of the command has a NUL byte (it could not be passed to `execve`).
pub fn check_args(args: &[String]) -> Result<(), ConfigError> {
    if args.iter().any(|a| a.contains('\0')) {
        return Err(ConfigError::NulInCommand);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1024b").unwrap(), 1024);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("256mb").unwrap(), 256 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "",
            "m",
            "-1m",
            "1x",
            "1.m",
            ".5m",
            "1..5m",
            "1 m b",
            "1mbb",
            "abc",
            "99999999999999999999g",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn memory_limits() {
        let host = 24u64 << 30;
        assert_eq!(memory_mib(256 << 20, host), Ok(256));
        assert_eq!(memory_mib(1, host), Ok(MIN_MEMORY_MIB));
        assert_eq!(memory_mib((100 << 20) + 1, host), Ok(101));
        assert_eq!(memory_mib(1 << 40, host), Err(1 << 20));
        assert!(memory_mib(host, host).is_ok());
        assert_eq!(parse_vm_memory("1g").unwrap(), 1 << 30);
        assert!(matches!(parse_vm_memory("0"), Err(ConfigError::ZeroMemory)));
        assert!(matches!(parse_vm_memory("x"), Err(ConfigError::BadSize(_))));
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_vm_cpus("1").unwrap(), 1);
        assert_eq!(parse_vm_cpus("32").unwrap(), 32);
        for bad in ["0", "33", "99", "-1", "1.5", "", "two", "256"] {
            let err = parse_vm_cpus(bad).expect_err(bad);
            assert_eq!(err.to_string(), "expected an integer from 1 to 32");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "x_y.z", "0abc", &"a".repeat(64)] {
            assert!(parse_name(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "é",
            &"a".repeat(65),
            "../x",
        ] {
            assert!(parse_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostnames() {
        assert!(parse_hostname("web.example-1").is_ok());
        for bad in ["", "-x", "a_b", "a b", &"h".repeat(65)] {
            assert!(parse_hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env_entries() {
        assert_eq!(
            parse_env("A=1").unwrap(),
            EnvArg::Set("A".into(), "1".into())
        );
        assert_eq!(
            parse_env("A=").unwrap(),
            EnvArg::Set("A".into(), String::new())
        );
        assert_eq!(
            parse_env("A=b=c").unwrap(),
            EnvArg::Set("A".into(), "b=c".into())
        );
        assert_eq!(parse_env("A").unwrap(), EnvArg::Inherit("A".into()));
        for bad in ["", "=x", "A\0=1"] {
            assert!(parse_env(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let user = [
            EnvArg::Set("FOO".into(), "1".into()),
            EnvArg::Set("PATH".into(), "/x".into()),
            EnvArg::Inherit("FROM_HOST".into()),
            EnvArg::Inherit("MISSING".into()),
        ];
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_owned());
        let env = build_env(&user, "box", 0, true, host);
        assert_eq!(
            env,
            [
                "PATH=/x",
                "HOSTNAME=box",
                "HOME=/root",
                "TERM=xterm",
                "FOO=1",
                "FROM_HOST=h"
            ]
        );
        let env = build_env(&[], "box", 1000, false, |_| None);
        assert_eq!(
            env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "HOME=/".into()
            ]
        );
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("0").unwrap(), User { uid: 0, gid: 0 });
        assert_eq!(
            parse_user("1000:100").unwrap(),
            User {
                uid: 1000,
                gid: 100
            }
        );
        for bad in ["", "root", "1000:", ":1", "1:2:3", "-1", "4294967296"] {
            assert!(parse_user(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn workdirs_and_args() {
        assert!(parse_workdir("/tmp").is_ok());
        assert!(parse_workdir("tmp").is_err());
        assert!(parse_workdir("").is_err());
        assert!(check_args(&["a".into()]).is_ok());
        assert!(check_args(&["a\0b".into()]).is_err());
    }

    #[test]
    fn random_ids_are_valid_names() {
        let a = random_id();
        assert_eq!(a.len(), 12);
        assert!(parse_name(&a).is_ok());
        assert_ne!(a, random_id());
    }
}
