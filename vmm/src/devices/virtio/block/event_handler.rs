//! The block device on the event loop: its queue eventfd.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::warn;

use super::Block;

/// `data` of the queue eventfd's registration.
const QUEUE_EVENT: u32 = 0;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let known = events.data() == QUEUE_EVENT && events.fd() == self.queue_fd();
        if !known {
            warn!(
                fd = events.fd(),
                data = events.data(),
                "virtio-blk: unexpected event"
            );
            return;
        }
        if events.event_set().contains(EventSet::IN) {
            self.on_queue_event();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let events = Events::with_data_raw(self.queue_fd(), QUEUE_EVENT, EventSet::IN);
        if let Err(err) = ops.add(events) {
            warn!(error = ?err, "virtio-blk: cannot register the queue eventfd");
        }
    }
}
