//! Reading the end of the guest console log and the VMM log for error messages.
//!
//! Both files hold bytes the guest controls: only a bounded tail is read, and control
//! characters are replaced before anything reaches the user's terminal.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the end of a log is read.
const TAIL_BYTES: u64 = 16 * 1024;

/// Longest excerpt quoted in an error message.
const MAX_LINE_CHARS: usize = 200;

/// Replaces control characters (escape sequences included) with `?` and caps the length.
pub fn sanitize(text: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .take(MAX_LINE_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.trim().chars().count() > MAX_LINE_CHARS {
        out.push_str("...");
    }
    out
}

/// The last [`TAIL_BYTES`] of a file, lossily decoded; empty if it cannot be read.
fn tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut bytes = Vec::with_capacity(TAIL_BYTES as usize);
    if file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Strips a kernel log timestamp such as `[    1.234567] `.
fn strip_timestamp(line: &str) -> &str {
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[') {
        if let Some((stamp, after)) = rest.split_once(']') {
            if stamp
                .trim()
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
            {
                return after.trim_start();
            }
        }
    }
    trimmed
}

/// The last non-empty line of a log file, sanitized; `None` if there is none.
pub fn last_line(path: &Path) -> Option<String> {
    let text = tail(path);
    let line = text
        .lines()
        .map(strip_timestamp)
        .rfind(|l| !l.trim().is_empty())?;
    Some(sanitize(line))
}

/// A one-line hint about how the guest ended, from its console log: the kernel panic line if
/// the guest kernel panicked, else its last line.
pub fn guest_hint(console_log: &Path) -> Option<String> {
    let text = tail(console_log);
    if let Some(at) = text.rfind("Kernel panic") {
        let panic = text[at..].lines().next().unwrap_or_default();
        return Some(format!("the guest kernel panicked: {}", sanitize(panic)));
    }
    let line = text
        .lines()
        .map(strip_timestamp)
        .rfind(|l| !l.trim().is_empty())?;
    Some(format!("last console line: {}", sanitize(line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn sanitizes_escapes_and_length() {
        assert_eq!(sanitize("a\x1b[31mred\x07\r"), "a?[31mred?");
        let long = "x".repeat(500);
        assert_eq!(sanitize(&long).len(), MAX_LINE_CHARS + 3);
    }

    #[test]
    fn hints_from_logs() {
        let tmp = TempDir::new("console");
        let log = tmp.path().join("console.log");
        assert_eq!(guest_hint(&log), None);
        assert_eq!(last_line(&log), None);
        std::fs::write(
            &log,
            "[    0.1] booting\n[    1.5] reboot: Restarting system\n\n",
        )
        .unwrap();
        assert_eq!(
            guest_hint(&log).unwrap(),
            "last console line: reboot: Restarting system"
        );
        let panic =
            "[    0.9] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n\
                     [    0.9] Kernel Offset: disabled\n[    0.9] Rebooting in 1 seconds..\n";
        let mut big = vec![b'z'; 100_000];
        big.push(b'\n');
        big.extend_from_slice(panic.as_bytes());
        std::fs::write(&log, big).unwrap();
        assert_eq!(
            guest_hint(&log).unwrap(),
            "the guest kernel panicked: Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
        );
        assert_eq!(last_line(&log).unwrap(), "Rebooting in 1 seconds..");
    }
}
