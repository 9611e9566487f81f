//! What the host has, and the `moat run` values checked against it as docker checks them: its
//! online CPUs (`--cpus`, `--cpuset-cpus`) and its RAM (the VM's memory).
//!
//! The parsers are clap value parsers: clap puts the flag's name before their messages.

use moat_spec::parse::{cpu_ranges, ParseError};

/// Where Linux lists the online CPUs (`0-3,6`).
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// The smallest `--cpus`, in billionths of a CPU: docker's 0.01.
pub const MIN_NANO_CPUS: i64 = 10_000_000;

/// Values the host cannot give.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// `--cpus` outside 0.01 to the host's CPU count (docker's words).
    #[error("Range of CPUs is from 0.01 to {count}.00, as there are only {count} CPUs available")]
    CpusRange {
        /// The host's online CPUs.
        count: u32,
    },
    /// `--cpuset-cpus` names a CPU the host does not have online (docker's words).
    #[error("Requested CPUs are not available - requested {requested}, available: {available}")]
    CpusetUnavailable {
        /// The list given.
        requested: String,
        /// The host's online CPUs.
        available: String,
    },
    /// The value does not parse.
    #[error(transparent)]
    Value(#[from] ParseError),
}

/// The host's online CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCpus {
    /// As Linux lists them, e.g. `0-3,6`.
    pub list: String,
    ranges: Vec<(u32, u32)>,
}

impl HostCpus {
    /// The CPUs of a list such as `0-3,6`; `None` if it is not one.
    pub fn from_list(list: &str) -> Option<Self> {
        let list = list.trim();
        Some(Self {
            ranges: cpu_ranges(list)?,
            list: list.to_owned(),
        })
    }

    /// The host's online CPUs (from sysfs; else as many as this process may use, from 0).
    pub fn online() -> Self {
        let text = std::fs::read_to_string(ONLINE_CPUS).unwrap_or_default();
        Self::from_list(&text).unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            let last = u32::try_from(n).unwrap_or(u32::MAX).saturating_sub(1);
            Self::from_list(&format!("0-{last}")).expect("a valid list")
        })
    }

    /// How many CPUs.
    pub fn count(&self) -> u32 {
        self.ranges.iter().map(|(lo, hi)| hi - lo + 1).sum()
    }

    /// `--cpus`: nano CPUs from 0.01 to [`HostCpus::count`].
    pub fn check_cpus(&self, text: &str) -> Result<u64, HostError> {
        let nanos = moat_spec::parse::parse_cpus(text)?;
        let most = i64::from(self.count()).saturating_mul(1_000_000_000);
        if !(MIN_NANO_CPUS..=most).contains(&nanos) {
            return Err(HostError::CpusRange {
                count: self.count(),
            });
        }
        Ok(nanos as u64)
    }

    /// `--cpuset-cpus`: a list of online CPUs; the text and the highest CPU.
    pub fn check_cpuset(&self, text: &str) -> Result<(String, u32), HostError> {
        let parsed = moat_spec::parse::parse_cpuset(text)?;
        let ranges = cpu_ranges(text).unwrap_or_default();
        let online = |&(lo, hi): &(u32, u32)| self.ranges.iter().any(|&(a, b)| a <= lo && hi <= b);
        if !ranges.iter().all(online) {
            return Err(HostError::CpusetUnavailable {
                requested: text.to_owned(),
                available: self.list.clone(),
            });
        }
        Ok(parsed)
    }
}

/// Parses `--cpus` against the host's online CPUs.
pub fn parse_cpus(text: &str) -> Result<u64, HostError> {
    HostCpus::online().check_cpus(text)
}

/// Parses `--cpuset-cpus` against the host's online CPUs.
pub fn parse_cpuset(text: &str) -> Result<(String, u32), HostError> {
    HostCpus::online().check_cpuset(text)
}

/// Total RAM of the host in bytes.
pub fn memory_bytes() -> u64 {
    let info = rustix::system::sysinfo();
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        let cpus = HostCpus::from_list("0-3,6\n").unwrap();
        assert_eq!((cpus.list.as_str(), cpus.count()), ("0-3,6", 5));
        assert!(HostCpus::from_list("").is_none());
        assert!(HostCpus::from_list("0-x").is_none());
        let online = HostCpus::online();
        assert!(online.count() >= 1, "{online:?}");
        assert!(memory_bytes() > 0);
    }

    #[test]
    fn cpus_within_the_host() {
        let two = HostCpus::from_list("0-1").unwrap();
        assert_eq!(two.check_cpus("0.01"), Ok(10_000_000));
        assert_eq!(two.check_cpus("1.5"), Ok(1_500_000_000));
        assert_eq!(two.check_cpus("2"), Ok(2_000_000_000));
        for out in ["2.001", "32", "-1", "-0.5", "0", "0.009"] {
            let err = two.check_cpus(out).unwrap_err();
            assert_eq!(err, HostError::CpusRange { count: 2 }, "{out}");
            assert_eq!(
                err.to_string(),
                "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
            );
        }
        assert!(matches!(two.check_cpus("x"), Err(HostError::Value(_))));
        assert!(matches!(two.check_cpus("-"), Err(HostError::Value(_))));
    }

    #[test]
    fn cpusets_within_the_host() {
        let host = HostCpus::from_list("0-3,6").unwrap();
        assert_eq!(host.check_cpuset("1-2,6"), Ok(("1-2,6".into(), 6)));
        assert_eq!(host.check_cpuset("0-3"), Ok(("0-3".into(), 3)));
        for missing in ["4", "3-4", "0,5", "6-7", "0-6"] {
            let err = host.check_cpuset(missing).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("Requested CPUs are not available - requested {missing}, available: 0-3,6")
            );
        }
        assert!(matches!(host.check_cpuset("2-1"), Err(HostError::Value(_))));
    }
}
