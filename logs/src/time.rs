//! RFC 3339 UTC timestamps computed from `SystemTime` (Howard Hinnant's days-from-civil
//! algorithms), in the two layouts docker uses: Go's `RFC3339Nano` (trailing zeros of the
//! fraction dropped) in the log files, and `RFC3339NanoFixed` (always nine digits) in front of
//! the lines `docker logs -t` prints.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECS_PER_DAY: i64 = 86_400;

/// A UTC date and time split into its fields.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    secs_of_day: u32,
    nanos: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn civil(time: SystemTime) -> Civil {
    // Times before 1970 do not occur in logs; they print as the epoch.
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    Civil {
        year,
        month,
        day,
        secs_of_day: secs.rem_euclid(SECS_PER_DAY) as u32,
        nanos: since.subsec_nanos(),
    }
}

fn date_and_clock(c: &Civil) -> String {
    let s = c.secs_of_day;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        c.year,
        c.month,
        c.day,
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `2026-12-02T17:04:05.1234Z`: Go's `time.RFC3339Nano` in UTC, as the json-file driver writes
/// a record's `time` (the fraction without trailing zeros, no fraction at all when zero).
pub fn format_rfc3339_nano(time: SystemTime) -> String {
    let c = civil(time);
    let mut text = date_and_clock(&c);
    if c.nanos != 0 {
        let fraction = format!("{:09}", c.nanos);
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// `2026-12-02T17:04:05.123400000Z`: docker's `RFC3339NanoFixed`, always nine digits, as
/// `docker logs -t` prints it.
pub fn format_rfc3339_fixed(time: SystemTime) -> String {
    let c = civil(time);
    format!("{}.{:09}Z", date_and_clock(&c), c.nanos)
}

fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Nanoseconds of a fraction's digits (1 to 9 of them).
fn fraction_nanos(digits: &str) -> Option<u32> {
    if digits.len() > 9 {
        return None;
    }
    let value = number(digits)?;
    Some(value * 10u32.pow(9 - digits.len() as u32))
}

/// The offset east of UTC in seconds of `Z` or `+HH:MM` / `-HH:MM`.
fn offset_secs(zone: &str) -> Option<i64> {
    if zone.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let (hours, minutes) = (number(hours)?, number(minutes)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * i64::from(hours * 3600 + minutes * 60))
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS` (UTC, not yet offset).
fn local_secs(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if b[10] != b'T' && b[10] != b't' {
        return None;
    }
    let year = number(&text[0..4])?;
    let (month, day) = (number(&text[5..7])?, number(&text[8..10])?);
    let (hour, minute, second) = (
        number(&text[11..13])?,
        number(&text[14..16])?,
        number(&text[17..19])?,
    );
    let valid = (1..=12).contains(&month) && (1..=31).contains(&day);
    if !valid || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    Some(days * SECS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second))
}

/// Parses an RFC 3339 timestamp (`2026-12-02T17:04:05.123456789Z`, any offset, 0 to 9 fraction
/// digits). Times before 1970 are refused.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let clock = text.get(..19)?;
    let rest = &text[19..];
    let (nanos, zone) = match rest.strip_prefix('.') {
        Some(frac) => {
            let end = frac
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(frac.len());
            (fraction_nanos(&frac[..end])?, &frac[end..])
        }
        None => (0, rest),
    };
    let secs = local_secs(clock)? - offset_secs(zone)?;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_like_go() {
        // 2026-12-02T17:04:05Z is 1796231045 seconds after the epoch.
        let t = at(1_796_231_045, 123_456_789);
        assert_eq!(format_rfc3339_nano(t), "2026-12-02T17:04:05.123456789Z");
        assert_eq!(format_rfc3339_fixed(t), "2026-12-02T17:04:05.123456789Z");
        let t = at(1_796_231_045, 120_000_000);
        assert_eq!(format_rfc3339_nano(t), "2026-12-02T17:04:05.12Z");
        assert_eq!(format_rfc3339_fixed(t), "2026-12-02T17:04:05.120000000Z");
        assert_eq!(
            format_rfc3339_nano(at(1_796_231_045, 0)),
            "2026-12-02T17:04:05Z"
        );
        assert_eq!(format_rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339_nano(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            format_rfc3339_nano(at(4_107_542_399, 0)),
            "2100-02-28T23:59:59Z"
        );
    }

    #[test]
    fn parse_round_trips() {
        for secs in [
            0,
            951_782_400,
            1_796_231_045,
            4_107_542_399,
            253_402_300_799,
        ] {
            for nanos in [0, 1, 120_000_000, 999_999_999] {
                let t = at(secs, nanos);
                assert_eq!(parse_rfc3339(&format_rfc3339_nano(t)), Some(t));
                assert_eq!(parse_rfc3339(&format_rfc3339_fixed(t)), Some(t));
            }
        }
    }

    #[test]
    fn parse_offsets_and_errors() {
        let t = at(1_796_231_045, 500_000_000);
        assert_eq!(parse_rfc3339("2026-12-02T18:04:05.5+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-12-02t16:34:05.5-00:30"), Some(t));
        for bad in [
            "",
            "2026-12-02",
            "2026-12-02T17:04:05",
            "2026-13-02T17:04:05Z",
            "2026-12-02T24:04:05Z",
            "2026-12-02T17:04:05.Z",
            "2026-12-02T17:04:05.1234567891Z",
            "2026-12-02T17:04:05+0100",
            "1969-12-31T23:59:59Z",
            "2026-12-02 17:04:05Z",
            "+026-12-02T17:04:05Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
