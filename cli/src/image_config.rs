//! Reading a stored image's config for display, and docker's "N days ago".

use anyhow::Result;
use moat_images::manifest::CONFIG_LIMIT;
use moat_images::store::{ImageRecord, Store};
use serde::Deserialize;

/// The parts of an image config `moat images` and `moat image inspect` show.
#[derive(Debug, Default, Deserialize)]
pub struct StoredConfig {
    /// When the image was made (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// e.g. amd64.
    #[serde(default)]
    pub architecture: Option<String>,
    /// e.g. linux.
    #[serde(default)]
    pub os: Option<String>,
    /// The run config, as the image has it.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The layers' diff IDs.
    #[serde(default)]
    pub rootfs: StoredRootfs,
}

/// `rootfs` of a config.
#[derive(Debug, Default, Deserialize)]
pub struct StoredRootfs {
    /// Digests of the uncompressed layers.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// Reads and parses the config blob of a record.
pub fn read_config(store: &Store, record: &ImageRecord) -> Result<StoredConfig> {
    let bytes = store.read_blob(&record.config, "config", CONFIG_LIMIT)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS...` (UTC; a zone offset is ignored).
pub fn parse_time(text: &str) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    Some(days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?)
}

/// docker's "N units ago".
pub fn ago(seconds: i64) -> String {
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    match seconds {
        s if s < 60 => "Less than a minute ago".to_owned(),
        s if s < 3600 => plural(s / 60, "minute"),
        s if s < 86_400 => plural(s / 3600, "hour"),
        s if s < 86_400 * 14 => plural(s / 86_400, "day"),
        s if s < 86_400 * 60 => plural(s / (86_400 * 7), "week"),
        s if s < 86_400 * 365 * 2 => plural(s / (86_400 * 30), "month"),
        s => plural(s / (86_400 * 365), "year"),
    }
}

/// "N units ago" of a config's `created`.
pub fn created_ago(created: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    parse_time(created).map_or_else(|| "N/A".to_owned(), |t| ago(now - t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_as_docker_shows_them() {
        assert_eq!(parse_time("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_time("2024-03-01T12:00:00.123Z"), Some(1_709_294_400));
        assert_eq!(parse_time("garbage"), None);
        assert_eq!(ago(30), "Less than a minute ago");
        assert_eq!(ago(7200), "2 hours ago");
        assert_eq!(ago(86_400 * 3), "3 days ago");
        assert_eq!(ago(86_400 * 400 * 3), "3 years ago");
    }
}
