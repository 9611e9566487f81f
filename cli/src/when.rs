//! Docker's human durations ("5 seconds", "About a minute") and RFC 3339 times.

/// `secs` as docker's `ps` shows a duration.
pub fn human(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{m} minutes"),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{h} hours"),
        172_800..=1_209_599 => format!("{d} days"),
        1_209_600..=5_183_999 => format!("{} weeks", d / 7),
        _ => format!("{} months", d / 30),
    }
}

/// `secs` since the epoch as RFC 3339 UTC (`2026-12-02T17:04:05Z`).
pub fn rfc3339(secs: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    moat_logs::time::format_rfc3339_nano(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(human(0), "Less than a second");
        assert_eq!(human(5), "5 seconds");
        assert_eq!(human(90), "About a minute");
        assert_eq!(human(600), "10 minutes");
        assert_eq!(human(3 * 3600), "3 hours");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_231_045), "2026-12-02T17:04:05Z");
    }
}
