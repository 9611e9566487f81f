//! Signals sent to `moat run`, turned into [`Event::Signal`]s for the main loop.

use std::io;
use std::sync::mpsc::SyncSender;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
use signal_hook::iterator::{Handle, Signals};

use crate::session::Event;

/// The signals `moat run` forwards to the container (`SIGWINCH` becomes a resize).
pub const FORWARDED: [i32; 5] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH];

/// Catches [`FORWARDED`] while it lives; dropping it stops the catching thread.
#[derive(Debug)]
pub struct SignalForwarder {
    handle: Handle,
}

impl SignalForwarder {
    /// Installs the handlers and starts a thread that sends each caught signal to `tx`.
    pub fn start(tx: SyncSender<Event>) -> io::Result<Self> {
        let mut signals = Signals::new(FORWARDED)?;
        let handle = signals.handle();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signo in signals.forever() {
                    if tx.send(Event::Signal(signo)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { handle })
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.handle.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_caught_signal_becomes_an_event() {
        let (tx, rx) = sync_channel(4);
        let forwarder = SignalForwarder::start(tx).unwrap();
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::WINCH)
            .unwrap();
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::Signal(signo) => assert_eq!(signo, SIGWINCH),
            other => panic!("unexpected {other:?}"),
        }
        drop(forwarder);
    }
}
