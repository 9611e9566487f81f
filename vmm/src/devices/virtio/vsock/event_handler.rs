//! Epoll glue: [`Vsock`] as an `event_manager::MutEventSubscriber`.
//!
//! Watched: the three queue eventfds, an activation eventfd, the listening socket, a timer for
//! connection deadlines, and every connection socket (added and removed as connections come and
//! go). After every event the device moves packets both ways and signals the guest at most once.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{Vsock, EVQ, RXQ, TXQ};
use super::muxer::FdOp;
use crate::devices::virtio::VirtioDevice;

const DATA_RXQ: u32 = RXQ as u32;
const DATA_TXQ: u32 = TXQ as u32;
const DATA_EVQ: u32 = EVQ as u32;
const DATA_ACTIVATE: u32 = 3;
const DATA_LISTENER: u32 = 4;
const DATA_TIMER: u32 = 5;
const DATA_CONN: u32 = 6;
/// How often deadlines are checked while any is pending.
const TIMER_PERIOD: Duration = Duration::from_millis(250);

impl Vsock {
    fn apply_fd_ops(&mut self, ops: &mut EventOps) {
        for op in self.muxer.take_fd_ops() {
            let res = match &op {
                FdOp::Add(fd, set) => ops.add(Events::with_data_raw(*fd, DATA_CONN, *set)),
                FdOp::Modify(fd, set) => ops.modify(Events::with_data_raw(*fd, DATA_CONN, *set)),
                FdOp::Remove(fd, _) => ops.remove(Events::empty_raw(*fd)),
            };
            if let Err(e) = res {
                tracing::error!("vsock: epoll update {op:?} failed: {e:?}");
            }
            // A removed stream is dropped (closed) here, after epoll forgot it.
        }
    }

    fn update_timer(&mut self) {
        let want = self.muxer.next_deadline().is_some();
        if want == self.timer_armed {
            return;
        }
        let res = if want {
            self.timer.reset(TIMER_PERIOD, Some(TIMER_PERIOD))
        } else {
            self.timer.clear()
        };
        match res {
            Ok(()) => self.timer_armed = want,
            Err(e) => tracing::error!("vsock: timer update failed: {e}"),
        }
    }

    fn drain_eventfd(&self, data: u32) {
        let evt = match data {
            DATA_ACTIVATE => &self.activate_evt,
            _ => &self.queue_events()[data as usize],
        };
        // A failed read only means the counter was already zero.
        let _ = evt.read();
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            d @ (DATA_RXQ | DATA_TXQ | DATA_EVQ | DATA_ACTIVATE) => self.drain_eventfd(d),
            DATA_LISTENER => self.muxer.accept_clients(),
            DATA_TIMER => {
                // Reading the expiration count re-arms the level; its value does not matter.
                let _ = self.timer.wait();
                self.muxer.expire(Instant::now());
            }
            DATA_CONN if self.muxer.owns_fd(events.fd()) => {
                self.muxer.handle_fd_event(events.fd(), set)
            }
            d => tracing::warn!("vsock: unexpected event data {d} on fd {}", events.fd()),
        }
        self.pump();
        self.apply_fd_ops(ops);
        self.update_timer();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd, data| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                tracing::error!("vsock: failed to watch fd {fd}: {e:?}");
            }
        };
        for (i, evt) in self.queue_events().iter().enumerate() {
            // i < 3.
            add(evt.as_raw_fd(), i as u32);
        }
        add(self.activate_evt.as_raw_fd(), DATA_ACTIVATE);
        add(self.muxer.listener().as_raw_fd(), DATA_LISTENER);
        add(self.timer.as_raw_fd(), DATA_TIMER);
        self.apply_fd_ops(ops);
        self.update_timer();
    }
}
