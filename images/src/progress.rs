//! What a pull or a load tells its user: a line per layer, redrawn in place on a terminal.

use std::io::Write;
use std::time::Duration;

/// Receives progress events.
pub trait Progress {
    /// Bytes of a layer arrived (`done` so far of `total`).
    fn layer_bytes(&mut self, _digest: &str, _done: u64, _total: u64) {}
    /// A layer is in the store (`existed`: it was there before).
    fn layer_done(&mut self, _digest: &str, _size: u64, _existed: bool) {}
    /// The layers are being flattened into the image's filesystem.
    fn converting(&mut self, _chain_id: &str) {}
    /// The filesystem is ready.
    fn converted(&mut self, _chain_id: &str, _took: Duration) {}
}

/// Tells nothing.
pub struct Quiet;

impl Progress for Quiet {}

/// Prints to a writer (stdout): on a terminal one line per layer redrawn as bytes arrive,
/// otherwise one line per layer once it is done.
pub struct Lines<W: Write> {
    out: W,
    terminal: bool,
    drawn: bool,
}

impl<W: Write> Lines<W> {
    /// A printer; `terminal` redraws in place.
    pub fn new(out: W, terminal: bool) -> Self {
        Lines {
            out,
            terminal,
            drawn: false,
        }
    }

    fn line(&mut self, text: &str) {
        let prefix = if self.drawn { "\r\x1b[K" } else { "" };
        let _ = writeln!(self.out, "{prefix}{text}");
        self.drawn = false;
        let _ = self.out.flush();
    }
}

/// The 12 hex digits docker shows for a digest.
pub fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

/// A size as docker prints it (decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
            + UNITS[unit]
    }
}

impl<W: Write> Progress for Lines<W> {
    fn layer_bytes(&mut self, digest: &str, done: u64, total: u64) {
        if !self.terminal {
            return;
        }
        let _ = write!(
            self.out,
            "\r\x1b[K{}: downloading {} / {}",
            short(digest),
            human_size(done),
            human_size(total)
        );
        let _ = self.out.flush();
        self.drawn = true;
    }

    fn layer_done(&mut self, digest: &str, size: u64, existed: bool) {
        let what = if existed {
            "already exists"
        } else {
            "pull complete"
        };
        self.line(&format!("{}: {what} ({})", short(digest), human_size(size)));
    }

    fn converting(&mut self, chain_id: &str) {
        if self.terminal {
            let _ = write!(self.out, "{}: flattening the layers", short(chain_id));
            let _ = self.out.flush();
            self.drawn = true;
        }
    }

    fn converted(&mut self, chain_id: &str, took: Duration) {
        self.line(&format!(
            "{}: filesystem ready in {:.1}s",
            short(chain_id),
            took.as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_lines_as_docker_prints_them() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(4_200_000_000), "4.2GB");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        let mut lines = Lines::new(Vec::new(), false);
        lines.layer_bytes("sha256:aa", 1, 2);
        lines.layer_done("sha256:aa", 1000, false);
        lines.layer_done("sha256:bb", 10, true);
        let text = String::from_utf8(lines.out).unwrap();
        assert_eq!(text, "aa: pull complete (1kB)\nbb: already exists (10B)\n");
    }
}
