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

/// `PATH` given to the container unless the image or the user sets one.
pub const DEFAULT_PATH: &str = moat_images::config::DEFAULT_PATH;

/// Highest uid or gid `-u` takes (`u32::MAX` would mean "unchanged" to setresuid).
pub const MAX_ID: u32 = i32::MAX as u32;

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
    /// The user is not `USER[:GROUP]`.
    #[error("invalid user {0:?}: expected USER[:GROUP], each a name or an id up to {MAX_ID}")]
    BadUser(String),
    /// The image's config gives no command, nor does the run.
    #[error(transparent)]
    Image(#[from] moat_images::config::ConfigError),
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

/// `-u`: the user as given, resolved in the guest against the image's `/etc/passwd` and
/// `/etc/group` (docker's rules), and its numeric parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// The text, sent unresolved to the agent.
    pub text: String,
    /// The user part, if it is an id.
    pub uid: Option<u32>,
    /// The group part, if given as an id.
    pub gid: Option<u32>,
}

/// Parses `-u USER[:GROUP]`: `user`, `user:group`, `uid`, `uid:gid`, `user:gid`, `uid:group`.
/// At most one `:`, no empty part, no NUL or newline, no name starting with `-`; a part of
/// digits only is an id up to [`MAX_ID`].
pub fn parse_user(text: &str) -> Result<User, ConfigError> {
    let bad = || ConfigError::BadUser(text.to_owned());
    if text.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(bad());
    }
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let part = |s: &str| -> Result<Option<u32>, ConfigError> {
        if s.is_empty() || s.contains(':') || s.starts_with('-') {
            return Err(bad());
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        match s.parse::<u32>() {
            Ok(id) if id <= MAX_ID => Ok(Some(id)),
            _ => Err(bad()),
        }
    };
    Ok(User {
        text: text.to_owned(),
        uid: part(user)?,
        gid: group.map(part).transpose()?.flatten(),
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

/// Builds the container's environment with docker's rules ([`moat_images::config::merge_env`]):
/// `PATH`, `HOSTNAME` and with a terminal `TERM=xterm` first, then the image's entries, then
/// the user's, later entries replacing earlier ones with the same key (order of first
/// appearance is kept). A bare `KEY` takes the host's value, and removes the key where the
/// host has none (docker's `-e KEY`). `HOME` is left to the agent, which sets it from the
/// user's passwd entry.
pub fn build_env(
    user_env: &[EnvArg],
    image_env: &[String],
    hostname: &str,
    terminal: bool,
    host_var: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let user: Vec<String> = user_env
        .iter()
        .map(|arg| match arg {
            EnvArg::Set(key, value) => format!("{key}={value}"),
            EnvArg::Inherit(key) => match host_var(key) {
                Some(value) if !value.contains('\0') => format!("{key}={value}"),
                _ => key.clone(),
            },
        })
        .collect();
    let defaults = moat_images::config::EnvDefaults { hostname, terminal };
    moat_images::config::merge_env(image_env, defaults, &user)
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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssetOverrides {
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--initramfs`.
    pub initramfs: Option<PathBuf>,
}

/// Where the container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rootfs {
    /// A built-in image, by name.
    Image(String),
    /// A bundle's root directory, packed into an ext4 image when the VM starts.
    Directory(PathBuf),
}

/// A validated `moat run` request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// The VM's host cgroup relative to the hierarchy's root (an OCI bundle's
    /// `linux.cgroupsPath`, systemd's `slice:prefix:name` expanded); `None`: `moat/<id>`.
    #[serde(default)]
    pub cgroup_path: Option<String>,
    /// An OCI bundle's hooks: the OCI verbs run them on the host (`moat run` refuses them).
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// Empty disk slots the VM boots with, for a pod's later containers (a CRI sandbox's VM,
    /// docs/vmm-control.md); 0: none, and no control socket.
    #[serde(default)]
    pub disk_slots: u8,
    /// A pod's later container: the namespaces of its pod sandbox it joins, as the host names
    /// them (`/proc/<sandbox task pid>/ns/<kind>`, CRI's paths); its VM's supervisor maps them
    /// to the sandbox container's in the guest.
    #[serde(default)]
    pub joins: Vec<oci_spec::runtime::LinuxNamespace>,
}

impl RunConfig {
    /// Where the VM (jail `id`) has its host cgroup.
    pub fn cgroup(
        &self,
        id: &moat_jail::JailId,
    ) -> Result<moat_jail::cgroup::CgroupPath, moat_jail::cgroup::CgroupError> {
        use moat_jail::cgroup::CgroupPath;
        match &self.cgroup_path {
            Some(path) => CgroupPath::parse(path),
            None => Ok(CgroupPath::of_jail(id)),
        }
    }
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
            EnvArg::Inherit("IMG".into()),
        ];
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_owned());
        let env = build_env(&user, &[], "box", true, host);
        assert_eq!(
            env,
            [
                "PATH=/x",
                "HOSTNAME=box",
                "TERM=xterm",
                "FOO=1",
                "FROM_HOST=h"
            ]
        );
        let env = build_env(&[], &[], "box", false, |_| None);
        assert_eq!(env, [format!("PATH={DEFAULT_PATH}"), "HOSTNAME=box".into()]);
        // The image's entries come before the user's, which replace them; a bare KEY unset on
        // the host removes the image's.
        let image = ["IMG=1".to_owned(), "FOO=0".into(), "KEEP=k".into()];
        let env = build_env(&user, &image, "box", false, host);
        assert_eq!(
            env,
            ["PATH=/x", "HOSTNAME=box", "FOO=1", "KEEP=k", "FROM_HOST=h"]
        );
    }

    #[test]
    fn users() {
        let user = |text: &str, uid, gid| User {
            text: text.into(),
            uid,
            gid,
        };
        let cases = [
            ("0", user("0", Some(0), None)),
            ("1000:100", user("1000:100", Some(1000), Some(100))),
            ("user", user("user", None, None)),
            ("user:users", user("user:users", None, None)),
            ("user:100", user("user:100", None, Some(100))),
            ("1000:users", user("1000:users", Some(1000), None)),
            ("2147483647", user("2147483647", Some(MAX_ID), None)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_user(text).unwrap(), want, "{text:?}");
        }
        for bad in [
            "",
            "1000:",
            ":1",
            "1:2:3",
            "-1",
            "a:-b",
            "4294967296",
            "2147483648",
            "a\0b",
            "a\nb",
        ] {
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
