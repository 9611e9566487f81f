//! Signal names and numbers as docker and runc take them: `9`, `KILL`, `SIGKILL`, `sigkill`.

/// Linux x86_64 signal names, by number - 1.
const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Parses a signal; `None` if it is none.
pub fn parse(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(i) = NAMES.iter().position(|n| *n == name) {
        return Some(i as i32 + 1);
    }
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().ok()?
        };
        Some(base + off)
    };
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        rt(34, rest.strip_prefix('+').unwrap_or(rest))?
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        rt(64, rest)?
    } else {
        return None;
    };
    (34..=64).contains(&n).then_some(n)
}

/// A clap value parser for a signal.
pub fn parse_arg(text: &str) -> Result<i32, String> {
    parse(text).ok_or_else(|| format!("invalid signal: {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_refusals() {
        assert_eq!(parse("9"), Some(9));
        assert_eq!(parse("KILL"), Some(9));
        assert_eq!(parse("SIGTERM"), Some(15));
        assert_eq!(parse("sigusr1"), Some(10));
        assert_eq!(parse("WINCH"), Some(28));
        assert_eq!(parse("RTMIN+2"), Some(36));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("65"), None);
        assert_eq!(parse("BOGUS"), None);
    }
}
