//! Parsers for the values of `moat run`'s docker-style flags. Each takes one command-line value
//! and returns the typed value or a [`ParseError`] whose message is one line for the user.

use std::path::PathBuf;

use oci_spec::runtime::{Capability, PosixRlimit, PosixRlimitBuilder, PosixRlimitType};

/// Major number of the guest's virtio-blk disks (`/dev/vda` = minor 0, `/dev/vdb` = 16, ...).
pub const VIRTIO_BLK_MAJOR: i64 = 254;

/// Minors per virtio-blk disk (the partitions of a disk follow its own minor).
pub const VIRTIO_BLK_MINORS: i64 = 16;

/// The smallest memory limit and reservation docker accepts (its `linuxMinMemory`).
pub const MIN_MEMORY: u64 = 6 << 20;

/// Errors in one flag value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A size is not a number with an optional unit.
    #[error("invalid size {0:?}: expected a number with an optional unit b, k, m or g (e.g. 64m)")]
    Size(String),
    /// A CPU count is not a decimal.
    #[error("invalid cpu count {0:?}: expected a number such as 0.5 or 2")]
    Cpus(String),
    /// `-m` below [`MIN_MEMORY`] (docker's words).
    #[error("Minimum memory limit allowed is 6MB")]
    MemoryMinimum,
    /// `--memory-reservation` below [`MIN_MEMORY`] (docker's words).
    #[error("Minimum memory reservation allowed is 6MB")]
    ReservationMinimum,
    /// A number is not an integer in range.
    #[error("invalid {what} {text:?}: expected {expected}")]
    Number {
        /// The flag's value, named.
        what: &'static str,
        /// The text given.
        text: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A `--ulimit` value.
    #[error(
        "invalid ulimit {0:?}: expected NAME=SOFT[:HARD] with NAME such as nofile, nproc, core"
    )]
    Ulimit(String),
    /// A device throttle value.
    #[error("invalid device rate {0:?}: expected /dev/vdX:RATE (the image is /dev/vda, volumes /dev/vdb...)")]
    Throttle(String),
    /// A `-v` value that is not `SRC:DST[:MODE]`.
    #[error("invalid volume specification {0:?}: expected SRC:DST[:ro|rw]")]
    Volume(String),
    /// A `-v` destination that is not a clean absolute path.
    #[error("invalid volume destination {0:?}: it must be an absolute path")]
    VolumeDestination(String),
    /// A `-v` mode other than `ro` or `rw` (docker's words).
    #[error("invalid mode: {0}")]
    VolumeMode(String),
    /// A `--tmpfs` value.
    #[error("invalid tmpfs {0:?}: expected an absolute DST[:OPTIONS]")]
    Tmpfs(String),
    /// A `--sysctl` value.
    #[error("invalid sysctl {0:?}: expected NAME=VALUE")]
    Sysctl(String),
    /// A `--device` value.
    #[error("invalid device {0:?}: expected HOST[:CONTAINER[:rwm]] with paths under /dev")]
    Device(String),
    /// A capability name.
    #[error("unknown capability {0:?}")]
    Capability(String),
    /// A `--security-opt` value.
    #[error("invalid security option {0:?}: expected seccomp=FILE, seccomp=unconfined or no-new-privileges[=true|false]")]
    SecurityOpt(String),
    /// A `--userns` value.
    #[error("invalid user namespace mode {0:?}: expected host or remap")]
    Userns(String),
    /// A `--cpuset-cpus` value.
    #[error("invalid cpu set {0:?}: expected a list such as 0-2,4")]
    Cpuset(String),
}

/// Parses a docker-style size (`1024`, `512k`, `64m`, `1g`, `1.5g`, `256MiB`) into bytes.
pub fn parse_size(text: &str) -> Result<u64, ParseError> {
    let bad = || ParseError::Size(text.to_owned());
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let shift = match unit.trim_start() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(bad()),
    };
    let (whole, frac) = decimal(number).ok_or_else(bad)?;
    let unit = 1u64.checked_shl(shift).ok_or_else(bad)?;
    let bytes = whole.checked_mul(unit).ok_or_else(bad)?;
    let (frac_value, frac_digits) = frac;
    let frac_bytes = (u128::from(frac_value) << shift) / 10u128.pow(frac_digits);
    bytes.checked_add(frac_bytes as u64).ok_or_else(bad)
}

/// A decimal `W[.F]` as (W, (F's first 9 digits, their count)); `None` if malformed.
fn decimal(number: &str) -> Option<(u64, (u64, u32))> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) {
        return None;
    }
    if number.contains('.') && frac.is_empty() {
        return None;
    }
    let frac = &frac[..frac.len().min(9)];
    let frac_value = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    Some((whole.parse().ok()?, (frac_value, frac.len() as u32)))
}

/// `-m/--memory`: a size of at least [`MIN_MEMORY`].
pub fn parse_memory(text: &str) -> Result<u64, ParseError> {
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY {
        return Err(ParseError::MemoryMinimum);
    }
    Ok(bytes)
}

/// `--memory-reservation`: a size of at least [`MIN_MEMORY`].
pub fn parse_memory_reservation(text: &str) -> Result<u64, ParseError> {
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY {
        return Err(ParseError::ReservationMinimum);
    }
    Ok(bytes)
}

/// `--memory-swap`: a size, or `-1` for unlimited swap (`0`, as in docker, is no value).
pub fn parse_swap(text: &str) -> Result<i64, ParseError> {
    if text.trim() == "-1" {
        return Ok(-1);
    }
    let bytes = parse_size(text)?;
    i64::try_from(bytes).map_err(|_| ParseError::Size(text.to_owned()))
}

/// `--cpus 1.5`: CPUs in billionths (docker's NanoCPUs), signed as docker's; the caller checks
/// the range (docker: 0.01 to the host's CPUs).
pub fn parse_cpus(text: &str) -> Result<i64, ParseError> {
    let bad = || ParseError::Cpus(text.to_owned());
    let trimmed = text.trim();
    let (sign, number) = match trimmed.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, trimmed),
    };
    let (whole, (frac, digits)) = decimal(number).ok_or_else(bad)?;
    let nanos = whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac * 10u64.pow(9 - digits)))
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(bad)?;
    Ok(sign * nanos)
}

/// An integer flag value within `range`.
fn number<T: std::str::FromStr + PartialOrd>(
    text: &str,
    what: &'static str,
    expected: &'static str,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ParseError> {
    match text.trim().parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ParseError::Number {
            what,
            text: text.to_owned(),
            expected,
        }),
    }
}

/// `--cpu-shares`: 2 to 262144 (the kernel's range).
pub fn parse_cpu_shares(text: &str) -> Result<u64, ParseError> {
    number(
        text,
        "cpu shares",
        "an integer from 2 to 262144",
        2..=262_144,
    )
}

/// `--cpu-quota`: microseconds per period, at least 1000 (`-1`: unlimited).
pub fn parse_cpu_quota(text: &str) -> Result<i64, ParseError> {
    let quota = number(
        text,
        "cpu quota",
        "microseconds, at least 1000 (or -1)",
        -1..=i64::MAX,
    )?;
    if (0..1000).contains(&quota) {
        return Err(ParseError::Number {
            what: "cpu quota",
            text: text.to_owned(),
            expected: "microseconds, at least 1000 (or -1)",
        });
    }
    Ok(quota)
}

/// `--cpu-period`: 1000 to 1000000 microseconds.
pub fn parse_cpu_period(text: &str) -> Result<u64, ParseError> {
    number(
        text,
        "cpu period",
        "microseconds from 1000 to 1000000",
        1000..=1_000_000,
    )
}

/// `--pids-limit`: a positive count, or `-1` (or 0, as docker) for unlimited, given as `-1`.
pub fn parse_pids_limit(text: &str) -> Result<i64, ParseError> {
    let n = number(
        text,
        "pids limit",
        "a positive integer, or -1 for unlimited",
        -1..=i64::MAX,
    )?;
    Ok(if n <= 0 { -1 } else { n })
}

/// `--blkio-weight`: 10 to 1000.
pub fn parse_blkio_weight(text: &str) -> Result<u16, ParseError> {
    number(
        text,
        "blkio weight",
        "an integer from 10 to 1000",
        10..=1000,
    )
}

/// A CPU list such as `0-2,4` as its ranges (first, last); `None` if malformed.
pub fn cpu_ranges(text: &str) -> Option<Vec<(u32, u32)>> {
    let num = |s: &str| -> Option<u32> {
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| s.parse().ok()).flatten()
    };
    text.split(',')
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (num(lo)?, num(hi)?);
            (lo <= hi).then_some((lo, hi))
        })
        .collect()
}

/// `--cpuset-cpus 0-2,4`: the text and the highest CPU it names.
pub fn parse_cpuset(text: &str) -> Result<(String, u32), ParseError> {
    let ranges = cpu_ranges(text).ok_or_else(|| ParseError::Cpuset(text.to_owned()))?;
    let highest = ranges.iter().map(|(_, hi)| *hi).max().unwrap_or(0);
    Ok((text.to_owned(), highest))
}

/// `--ulimit nofile=1024[:2048]` (`-1` or `unlimited`: no limit).
pub fn parse_ulimit(text: &str) -> Result<PosixRlimit, ParseError> {
    let bad = || ParseError::Ulimit(text.to_owned());
    let (name, values) = text.split_once('=').ok_or_else(bad)?;
    let (soft, hard) = values.split_once(':').unwrap_or((values, values));
    let value = |s: &str| match s {
        "-1" | "unlimited" => Ok(u64::MAX),
        _ if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().map_err(|_| bad()),
        _ => Err(bad()),
    };
    let (soft, hard) = (value(soft)?, value(hard)?);
    if soft > hard || !name.bytes().all(|b| b.is_ascii_alphabetic()) || name.is_empty() {
        return Err(bad());
    }
    let json = serde_json::Value::String(format!("RLIMIT_{}", name.to_ascii_uppercase()));
    let typ: PosixRlimitType = serde_json::from_value(json).map_err(|_| bad())?;
    Ok(PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()
        .expect("every field is set"))
}

/// A throttle on one guest disk: its major:minor and a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Major number of the guest disk.
    pub major: i64,
    /// Minor number of the guest disk.
    pub minor: i64,
    /// Bytes or operations per second, more than zero.
    pub rate: u64,
}

/// major:minor of a guest disk path (`/dev/vda` = the image, `/dev/vdb`.. = volumes).
pub fn guest_disk_numbers(path: &str) -> Option<(i64, i64)> {
    let letter = path.strip_prefix("/dev/vd")?;
    match letter.as_bytes() {
        [c @ b'a'..=b'z'] => Some((VIRTIO_BLK_MAJOR, i64::from(c - b'a') * VIRTIO_BLK_MINORS)),
        _ => None,
    }
}

fn parse_throttle(text: &str, rate: impl Fn(&str) -> Option<u64>) -> Result<Throttle, ParseError> {
    let bad = || ParseError::Throttle(text.to_owned());
    let (path, value) = text.rsplit_once(':').ok_or_else(bad)?;
    let (major, minor) = guest_disk_numbers(path).ok_or_else(bad)?;
    let rate = rate(value).filter(|r| *r > 0).ok_or_else(bad)?;
    Ok(Throttle { major, minor, rate })
}

/// `--device-read-bps /dev/vda:1mb`.
pub fn parse_throttle_bps(text: &str) -> Result<Throttle, ParseError> {
    parse_throttle(text, |v| parse_size(v).ok())
}

/// `--device-read-iops /dev/vda:1000`.
pub fn parse_throttle_iops(text: &str) -> Result<Throttle, ParseError> {
    parse_throttle(text, |v| v.parse().ok())
}

/// Whether `path` is absolute, without `.`/`..` components or NUL bytes.
pub fn clean_absolute(path: &str) -> bool {
    path.starts_with('/') && !path.contains('\0') && !path.split('/').any(|c| c == ".." || c == ".")
}

/// One `-v SRC:DST[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    /// Host path: a directory or an ext4 image file.
    pub source: PathBuf,
    /// Where it appears in the container.
    pub destination: String,
    /// `:ro`.
    pub readonly: bool,
}

/// Parses `-v SRC:DST[:ro|rw]`.
pub fn parse_volume(text: &str) -> Result<VolumeArg, ParseError> {
    let bad = || ParseError::Volume(text.to_owned());
    let parts: Vec<&str> = text.split(':').collect();
    let (source, destination, readonly) = match parts[..] {
        [s, d] => (s, d, false),
        [s, d, "ro"] => (s, d, true),
        [s, d, "rw"] => (s, d, false),
        [_, _, mode] => return Err(ParseError::VolumeMode(mode.to_owned())),
        _ => return Err(bad()),
    };
    if source.is_empty() || source.contains('\0') {
        return Err(bad());
    }
    if !clean_absolute(destination) {
        return Err(ParseError::VolumeDestination(destination.to_owned()));
    }
    Ok(VolumeArg {
        source: source.into(),
        destination: destination.to_owned(),
        readonly,
    })
}

/// One `--tmpfs DST[:OPTIONS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsArg {
    /// Mount point in the container.
    pub destination: String,
    /// Mount options (comma-separated on the command line).
    pub options: Vec<String>,
}

/// Parses `--tmpfs /run:size=64m,mode=1777`.
pub fn parse_tmpfs(text: &str) -> Result<TmpfsArg, ParseError> {
    let bad = || ParseError::Tmpfs(text.to_owned());
    let (destination, options) = text.split_once(':').unwrap_or((text, ""));
    if !clean_absolute(destination) || destination == "/" {
        return Err(bad());
    }
    let options: Vec<String> = options
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    if options.iter().any(|o| o.contains(':')) {
        return Err(bad());
    }
    Ok(TmpfsArg {
        destination: destination.to_owned(),
        options,
    })
}

/// Parses `--sysctl NAME=VALUE`.
pub fn parse_sysctl(text: &str) -> Result<(String, String), ParseError> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(['/', '\0']) && !v.contains('\0') => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(ParseError::Sysctl(text.to_owned())),
    }
}

/// One `--device HOST[:CONTAINER[:rwm]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceArg {
    /// Device node on the host (its type and numbers are the guest's too).
    pub host: PathBuf,
    /// Path in the container.
    pub container: String,
    /// Cgroup access: a non-empty subset of `rwm`.
    pub access: String,
}

/// Parses `--device /dev/fuse[:/dev/fuse[:rwm]]`.
pub fn parse_device(text: &str) -> Result<DeviceArg, ParseError> {
    let bad = || ParseError::Device(text.to_owned());
    let parts: Vec<&str> = text.split(':').collect();
    let is_access = |s: &str| !s.is_empty() && s.chars().all(|c| "rwm".contains(c));
    let (host, container, access) = match parts[..] {
        [h] => (h, h, "rwm"),
        [h, a] if is_access(a) => (h, h, a),
        [h, c] => (h, c, "rwm"),
        [h, c, a] if is_access(a) => (h, c, a),
        _ => return Err(bad()),
    };
    let under_dev = |p: &str| clean_absolute(p) && p.starts_with("/dev/");
    if !under_dev(host) || !under_dev(container) {
        return Err(bad());
    }
    Ok(DeviceArg {
        host: host.into(),
        container: container.to_owned(),
        access: access.to_owned(),
    })
}

/// A `--cap-add`/`--cap-drop` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapName {
    /// `ALL`.
    All,
    /// One capability.
    One(Capability),
}

/// Parses a capability name, with or without `CAP_`, in any case, or `ALL`.
pub fn parse_capability(text: &str) -> Result<CapName, ParseError> {
    if text.eq_ignore_ascii_case("all") {
        return Ok(CapName::All);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    let valid_chars = name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    if name.is_empty() || name.starts_with("CAP_") || !valid_chars {
        return Err(ParseError::Capability(text.to_owned()));
    }
    serde_json::from_value(serde_json::Value::String(format!("CAP_{name}")))
        .map(CapName::One)
        .map_err(|_| ParseError::Capability(text.to_owned()))
}

/// A `--security-opt` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `seccomp=FILE` (a docker seccomp profile).
    SeccompProfile(PathBuf),
    /// `seccomp=unconfined`.
    SeccompUnconfined,
    /// `no-new-privileges[=true|false]`.
    NoNewPrivileges(bool),
}

/// Parses `--security-opt` (`=` or docker's older `:` separator).
pub fn parse_security_opt(text: &str) -> Result<SecurityOpt, ParseError> {
    let bad = || ParseError::SecurityOpt(text.to_owned());
    let (key, value) = match text.split_once(['=', ':']) {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    match (key, value) {
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::SeccompUnconfined),
        ("seccomp", Some(file)) if !file.is_empty() => Ok(SecurityOpt::SeccompProfile(file.into())),
        ("no-new-privileges", None | Some("true")) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some("false")) => Ok(SecurityOpt::NoNewPrivileges(false)),
        _ => Err(bad()),
    }
}

/// Parses `--userns MODE`: `remap` (a user namespace) → true, `host` (none) → false.
pub fn parse_userns(text: &str) -> Result<bool, ParseError> {
    match text {
        "remap" => Ok(true),
        "host" => Ok(false),
        _ => Err(ParseError::Userns(text.to_owned())),
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
