//! The user's terminal: raw mode for `-t` runs (restored on drop) and its window size.

use std::io::{self, IsTerminal};
use std::os::fd::{AsFd, OwnedFd};

use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};

/// Size used when no terminal tells us one.
pub const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// Raw mode on our stdin; dropping it restores the saved settings.
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal; `Ok(None)` when it is not one.
    pub fn enter() -> io::Result<Option<Self>> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let fd = stdin.as_fd().try_clone_to_owned()?;
        let saved = tcgetattr(&fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&fd, OptionalActions::Now, &raw)?;
        Ok(Some(Self { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(&self.fd, OptionalActions::Now, &self.saved) {
            tracing::warn!(error = %e, "cannot restore the terminal settings");
        }
    }
}

/// The window size (rows, columns) of the first of stdin, stdout, stderr that is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    let sizes = [
        tcgetwinsize(io::stdin().as_fd()),
        tcgetwinsize(io::stdout().as_fd()),
        tcgetwinsize(io::stderr().as_fd()),
    ];
    sizes
        .into_iter()
        .flatten()
        .find(|ws| ws.ws_row > 0 && ws.ws_col > 0)
        .map(|ws| (ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_terminal_is_not_an_error() {
        // Under `cargo test` stdin is usually not a terminal; either way this must not fail.
        let raw = RawMode::enter();
        assert!(raw.is_ok());
        if let Some((rows, cols)) = window_size() {
            assert!(rows > 0 && cols > 0);
        }
    }
}
