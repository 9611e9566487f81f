//! The json-file driver's `--log-opt` options: `max-size` and `max-file`, parsed as docker
//! parses them.

/// An error in the `--log-opt` options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("unknown log opt '{0}' for json-file log driver")]
    Unknown(String),
    #[error("log opt '{0}' of the json-file log driver is not supported by moat")]
    Unsupported(String),
    #[error("log opt '{0}' given more than once")]
    Repeated(String),
    #[error("invalid max-size '{0}': a positive number of bytes with an optional unit k, m, g, t or p (1k = 1000) is expected")]
    MaxSize(String),
    #[error("max-size must be a positive number")]
    MaxSizeZero,
    #[error("invalid max-file '{0}': an integer of at least 1 is expected")]
    MaxFile(String),
    #[error("max-file cannot be less than 1")]
    MaxFileZero,
    #[error("max-file={0} needs max-size: without it the log is one file that is never rotated")]
    MaxFileWithoutMaxSize(u32),
}

/// Docker's json-file options that moat does not implement: refused rather than ignored.
const UNSUPPORTED: [&str; 6] = [
    "compress",
    "labels",
    "labels-regex",
    "env",
    "env-regex",
    "tag",
];

/// How big the log may grow: a container's log is its current file plus at most
/// `max_file - 1` rotated ones, each at most `max_size` bytes (a single record bigger than
/// `max_size` is still written whole, into a file of its own).
///
/// The [`Default`] is **`max-size=10m`, `max-file=3`** (at most about 30 MB per container):
/// unlike docker, whose json-file log grows without bound unless told otherwise, moat keeps logs
/// bounded by default. The default applies only when no option is given at all; once one is,
/// the others take docker's defaults (no `max-size`, `max-file=1`), so `--log-opt max-file=1`
/// alone asks for docker's unbounded log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Rotate before the current file would grow past this many bytes; `None`: never rotate.
    pub max_size: Option<u64>,
    /// How many files are kept, the current one included (at least 1; 1: the single file is
    /// restarted empty when it is full).
    pub max_file: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            max_size: Some(10_000_000),
            max_file: 3,
        }
    }
}

impl LogOptions {
    /// Parses `--log-opt key=value` pairs as docker's json-file driver does: `max-size` with
    /// docker's `units.FromHumanSize` (decimal units: `10m` = 10,000,000 bytes; `10`, `10k`,
    /// `10kb`, `10 MB`, `1.5m`, `10mib` all accepted, the `i` changing nothing) and `max-file`
    /// (an integer, at least 1, more than 1 only with `max-size`). No pair at all gives
    /// [`LogOptions::default`].
    pub fn parse<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Self, OptionsError> {
        if pairs.is_empty() {
            return Ok(Self::default());
        }
        let mut max_size = None;
        let mut max_file = None;
        for (key, value) in pairs {
            let (key, value) = (key.as_ref(), value.as_ref());
            match key {
                "max-size" => set_once(&mut max_size, key, parse_max_size(value)?)?,
                "max-file" => set_once(&mut max_file, key, parse_max_file(value)?)?,
                _ if UNSUPPORTED.contains(&key) => {
                    return Err(OptionsError::Unsupported(key.to_owned()))
                }
                _ => return Err(OptionsError::Unknown(key.to_owned())),
            }
        }
        let max_file = max_file.unwrap_or(1);
        if max_file > 1 && max_size.is_none() {
            return Err(OptionsError::MaxFileWithoutMaxSize(max_file));
        }
        Ok(LogOptions { max_size, max_file })
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), OptionsError> {
    if slot.replace(value).is_some() {
        return Err(OptionsError::Repeated(key.to_owned()));
    }
    Ok(())
}

/// `^(\d+(\.\d+)?) ?([kmgtp])?i?b?$`, case-insensitive, in bytes with decimal multipliers, the
/// fraction truncated: go-units' `FromHumanSize`.
fn parse_max_size(text: &str) -> Result<u64, OptionsError> {
    let invalid = || OptionsError::MaxSize(text.to_owned());
    let lower = text.to_ascii_lowercase();
    let end = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(end);
    let multiplier = unit_multiplier(unit).ok_or_else(invalid)?;
    let valid_number = match number.split_once('.') {
        Some((whole, frac)) => !whole.is_empty() && !frac.is_empty() && !frac.contains('.'),
        None => !number.is_empty(),
    };
    if !valid_number {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(invalid());
    }
    match bytes as u64 {
        0 => Err(OptionsError::MaxSizeZero),
        n => Ok(n),
    }
}

/// The multiplier of ` ?([kmgtp])?i?b?` (already lower-case).
fn unit_multiplier(unit: &str) -> Option<u64> {
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    Some(1000u64.pow(power))
}

fn parse_max_file(text: &str) -> Result<u32, OptionsError> {
    let value: i64 = text
        .parse()
        .map_err(|_| OptionsError::MaxFile(text.to_owned()))?;
    if value < 1 {
        return Err(OptionsError::MaxFileZero);
    }
    u32::try_from(value).map_err(|_| OptionsError::MaxFile(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<LogOptions, OptionsError> {
        LogOptions::parse(pairs)
    }

    fn opts(max_size: Option<u64>, max_file: u32) -> LogOptions {
        LogOptions { max_size, max_file }
    }

    #[test]
    fn default_is_bounded() {
        assert_eq!(parse(&[]), Ok(opts(Some(10_000_000), 3)));
        assert_eq!(LogOptions::default(), opts(Some(10_000_000), 3));
    }

    #[test]
    fn sizes_use_docker_decimal_units() {
        for (text, bytes) in [
            ("1", 1),
            ("10k", 10_000),
            ("10K", 10_000),
            ("10kb", 10_000),
            ("10KiB", 10_000),
            ("10m", 10_000_000),
            ("10 MB", 10_000_000),
            ("1.5m", 1_500_000),
            ("2g", 2_000_000_000),
            ("1t", 1_000_000_000_000),
            ("3b", 3),
        ] {
            assert_eq!(parse_max_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "", "m", "-1", "10x", "10mm", "1.", ".5m", "1.2.3m", "10  m", " 10m", "1e3",
        ] {
            assert_eq!(
                parse_max_size(bad),
                Err(OptionsError::MaxSize(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(parse_max_size("0"), Err(OptionsError::MaxSizeZero));
        assert_eq!(parse_max_size("0.1"), Err(OptionsError::MaxSizeZero));
    }

    #[test]
    fn given_options_take_docker_defaults() {
        assert_eq!(parse(&[("max-size", "1m")]), Ok(opts(Some(1_000_000), 1)));
        assert_eq!(parse(&[("max-file", "1")]), Ok(opts(None, 1)));
        let both = parse(&[("max-file", "5"), ("max-size", "2k")]);
        assert_eq!(both, Ok(opts(Some(2000), 5)));
        let owned = vec![("max-size".to_string(), "3k".to_string())];
        assert_eq!(LogOptions::parse(&owned), Ok(opts(Some(3000), 1)));
    }

    #[test]
    fn errors_name_the_option() {
        let err = parse(&[("max-file", "3")]).unwrap_err();
        assert_eq!(err, OptionsError::MaxFileWithoutMaxSize(3));
        assert!(err.to_string().contains("max-file=3 needs max-size"));
        let err = parse(&[("x", "1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown log opt 'x' for json-file log driver"
        );
        let err = parse(&[("compress", "true")]).unwrap_err();
        assert_eq!(err, OptionsError::Unsupported("compress".into()));
        let err = parse(&[("max-size", "1m"), ("max-size", "2m")]).unwrap_err();
        assert_eq!(err, OptionsError::Repeated("max-size".into()));
        assert_eq!(parse(&[("max-file", "0")]), Err(OptionsError::MaxFileZero));
        assert_eq!(parse(&[("max-file", "-2")]), Err(OptionsError::MaxFileZero));
        let err = parse(&[("max-file", "two")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid max-file 'two': an integer of at least 1 is expected"
        );
        let err = parse(&[("max-size", "ten")]).unwrap_err();
        assert!(err.to_string().starts_with("invalid max-size 'ten'"));
    }
}
