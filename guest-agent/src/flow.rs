//! Flow control of the streams that share the connection ([`WINDOW`]): each output stream of a
//! process has a [`Window`] of bytes the agent may still send before the host credits them,
//! and each process's stdin a [`StdinWindow`] of bytes the host has sent and the agent not yet
//! written (or dropped). A stream out of credit stops only itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use moat_protocol::WINDOW;

/// A peer that broke the flow control.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    /// The host credited more than was in flight.
    #[error("a credit of {bytes} bytes is more than the {in_flight} bytes in flight")]
    OverCredit {
        /// Bytes credited.
        bytes: u32,
        /// Bytes that were in flight.
        in_flight: u32,
    },
    /// The host sent more stdin than the window allows.
    #[error("{bytes} bytes of stdin exceed the window of {WINDOW} bytes ({in_flight} in flight)")]
    OverWindow {
        /// Bytes in the frame.
        bytes: usize,
        /// Bytes that were in flight.
        in_flight: u32,
    },
}

#[derive(Debug)]
struct State {
    /// Bytes the agent may send before the next credit.
    available: u32,
    /// The stream's reader gave up on the host: what is left is dropped, not sent.
    closed: bool,
}

/// The send window of one output stream.
#[derive(Debug)]
pub struct Window {
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                available: WINDOW,
                closed: false,
            }),
            changed: Condvar::new(),
        }
    }
}

/// What [`Window::wait`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Send at most this many bytes.
    Send(usize),
    /// The window is closed: read and drop.
    Drop,
}

impl Window {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until some credit is left (or the window is closed); at most `max` bytes.
    pub fn wait(&self, max: usize) -> Grant {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Grant::Drop;
            }
            if state.available > 0 {
                return Grant::Send(max.min(state.available as usize));
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Takes `bytes` (at most what [`Window::wait`] granted) out of the window, before they are
    /// sent (so that a credit for them can never come first).
    pub fn spend(&self, bytes: usize) {
        let mut state = self.lock();
        state.available = state.available.saturating_sub(bytes as u32);
    }

    /// The host delivered `bytes`.
    pub fn credit(&self, bytes: u32) -> Result<(), FlowError> {
        let mut state = self.lock();
        let in_flight = WINDOW - state.available;
        if bytes > in_flight {
            return Err(FlowError::OverCredit { bytes, in_flight });
        }
        state.available += bytes;
        self.changed.notify_all();
        Ok(())
    }

    /// Stops waiting for credit for good: the rest of the stream is dropped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Bytes that may be sent now.
    #[cfg(test)]
    pub fn available(&self) -> u32 {
        self.lock().available
    }
}

/// The stdin bytes of one process in flight: sent by the host, not yet written or dropped.
#[derive(Debug, Default)]
pub struct StdinWindow {
    in_flight: AtomicU32,
}

impl StdinWindow {
    /// Admits a frame of `bytes`, or refuses it when the host went over the window.
    pub fn admit(&self, bytes: usize) -> Result<(), FlowError> {
        let refused = |in_flight| FlowError::OverWindow { bytes, in_flight };
        let add = u32::try_from(bytes).map_err(|_| refused(self.in_flight()))?;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(add).filter(|n| *n <= WINDOW)
            })
            .map(drop)
            .map_err(refused)
    }

    /// `bytes` were written or dropped.
    pub fn release(&self, bytes: usize) {
        let sub = u32::try_from(bytes).unwrap_or(u32::MAX);
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.saturating_sub(sub))
            });
    }

    /// Bytes in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn credit_accounting() {
        let w = Window::default();
        assert_eq!(w.wait(10), Grant::Send(10));
        assert_eq!(w.wait(usize::MAX), Grant::Send(WINDOW as usize));
        w.spend(WINDOW as usize - 5);
        assert_eq!(w.wait(100), Grant::Send(5));
        assert_eq!(
            w.credit(WINDOW),
            Err(FlowError::OverCredit {
                bytes: WINDOW,
                in_flight: WINDOW - 5
            })
        );
        w.credit(WINDOW - 5).unwrap();
        assert_eq!(w.available(), WINDOW);
        assert!(w.credit(1).is_err());
    }

    #[test]
    fn a_stream_out_of_credit_waits_and_resumes() {
        let w = Arc::new(Window::default());
        w.spend(WINDOW as usize);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || tx.send(w.wait(64)).unwrap())
        };
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        w.credit(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Grant::Send(3)));
        waiter.join().unwrap();
        // Closed: no more waiting, the rest is dropped.
        w.spend(3);
        w.close();
        assert_eq!(w.wait(64), Grant::Drop);
    }

    #[test]
    fn stdin_window() {
        let w = StdinWindow::default();
        w.admit(WINDOW as usize - 1).unwrap();
        w.admit(1).unwrap();
        assert_eq!(
            w.admit(1),
            Err(FlowError::OverWindow {
                bytes: 1,
                in_flight: WINDOW
            })
        );
        w.release(10);
        assert_eq!(w.in_flight(), WINDOW - 10);
        w.admit(10).unwrap();
        assert!(w.admit(usize::MAX).is_err());
    }
}
