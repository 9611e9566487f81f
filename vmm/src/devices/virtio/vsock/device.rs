//! The virtio state of the vsock device: features, configuration space, queues, and moving
//! packets between the queues and the [`Muxer`].

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::packet::*;
use super::VsockError;
use crate::devices::virtio::{
    GuestMemory, Interrupt, VirtioDevice, VirtioError, VIRTIO_MMIO_INT_VRING,
};

/// Virtio device id of vsock.
pub const VSOCK_DEVICE_TYPE: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device -> driver).
pub const RXQ: usize = 0;
/// Index of the transmit queue (driver -> device).
pub const TXQ: usize = 1;
/// Index of the event queue.
pub const EVQ: usize = 2;
const NUM_QUEUES: usize = 3;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Bound on queue passes per event, so one event cannot keep the loop forever.
const MAX_PUMP_ROUNDS: usize = 64;

/// Counters of guest packets the device refused, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Transmit chains too short for a header, or unreadable.
    pub tx_malformed: u64,
    /// Packets with a wrong source or destination CID, dropped.
    pub tx_bad_cid: u64,
    /// Packets whose length field exceeds the chain or the payload limit.
    pub tx_bad_len: u64,
    /// Receive chains too small or unwritable for a header.
    pub rx_malformed: u64,
}

pub(super) struct Active {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
}

/// A virtio-vsock device whose host side is a Unix socket (hybrid vsock).
pub struct Vsock {
    cid: u64,
    acked_features: u64,
    queue_evts: Vec<EventFd>,
    pub(super) activate_evt: EventFd,
    pub(super) timer: TimerFd,
    pub(super) timer_armed: bool,
    pub(super) muxer: Muxer,
    active: Option<Active>,
    counters: VsockCounters,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Vsock {
    /// A vsock device for guest CID `guest_cid`, listening on `uds_path` for host clients.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if guest_cid <= HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        let queue_evts = vec![evt()?, evt()?, evt()?];
        Ok(Vsock {
            cid: guest_cid,
            acked_features: 0,
            queue_evts,
            activate_evt: evt()?,
            timer: nonblocking_timer()?,
            timer_armed: false,
            muxer: Muxer::new(guest_cid, uds_path)?,
            active: None,
            counters: VsockCounters::default(),
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Counters of refused guest packets.
    pub fn counters(&self) -> VsockCounters {
        self.counters
    }

    /// Moves packets both ways until neither queue makes progress, then signals the guest once
    /// if a used ring changed.
    pub(super) fn pump(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (mut rx_used, mut tx_used) = (false, false);
        for _ in 0..MAX_PUMP_ROUNDS {
            let rx = process_rx(active, &mut self.muxer, &mut self.counters);
            let tx = process_tx(active, &mut self.muxer, self.cid, &mut self.counters);
            rx_used |= rx;
            tx_used |= tx;
            if !rx && !tx {
                break;
            }
        }
        let mut notify = false;
        for (used, q) in [(rx_used, RXQ), (tx_used, TXQ)] {
            // Without EVENT_IDX this only honours the driver's NO_INTERRUPT flag; on error,
            // interrupting is the safe choice.
            notify |= used
                && active.queues[q]
                    .needs_notification(&active.mem)
                    .unwrap_or(true);
        }
        tracing::trace!(rx_used, tx_used, notify, "vsock: queues processed");
        if notify {
            if let Err(e) = active.interrupt.trigger(VIRTIO_MMIO_INT_VRING) {
                tracing::error!("vsock: {e}");
            }
        }
    }
}

/// A timerfd whose read never blocks: an expiry seen by epoll may be cancelled by a disarm
/// before the event is handled.
fn nonblocking_timer() -> Result<TimerFd, VsockError> {
    let timer = TimerFd::new().map_err(VsockError::Timer)?;
    // SAFETY: fcntl on a descriptor the timer owns and keeps open; no memory is passed.
    let rc = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(VsockError::Timer(vmm_sys_util::errno::Error::last()));
    }
    Ok(timer)
}

/// Fills receive chains with packets from the muxer. Returns whether a chain was used.
fn process_rx(a: &mut Active, muxer: &mut Muxer, counters: &mut VsockCounters) -> bool {
    let mut used = false;
    while muxer.has_rx_work() {
        let queue = &mut a.queues[RXQ];
        let Some(chain) = queue.pop_descriptor_chain(&a.mem) else {
            break;
        };
        let head = chain.head_index();
        let len = match Writer::<()>::new(&a.mem, chain) {
            Ok(mut w) if w.available_bytes() >= HDR_SIZE => {
                let cap = w.available_bytes();
                match muxer.fill_rx(&mut w, cap) {
                    Some(n) => n,
                    None => {
                        // Nothing to send after all: give the chain back.
                        queue.go_to_previous_position();
                        break;
                    }
                }
            }
            _ => {
                counters.rx_malformed += 1;
                0
            }
        };
        tracing::trace!(head, len, "vsock: rx chain used");
        // len <= cap, which fits u32 by the descriptor format.
        if let Err(e) = queue.add_used(&a.mem, head, len as u32) {
            tracing::error!("vsock: rx add_used: {e}");
        }
        used = true;
    }
    used
}

/// Hands guest packets to the muxer. Returns whether a chain was used.
fn process_tx(a: &mut Active, muxer: &mut Muxer, cid: u64, counters: &mut VsockCounters) -> bool {
    let mut used = false;
    while !muxer.rx_backlog_full() {
        let queue = &mut a.queues[TXQ];
        let Some(chain) = queue.pop_descriptor_chain(&a.mem) else {
            break;
        };
        let head = chain.head_index();
        match Reader::<()>::new(&a.mem, chain) {
            Ok(mut r) => handle_tx_packet(&mut r, muxer, cid, counters),
            Err(_) => counters.tx_malformed += 1,
        }
        if let Err(e) = queue.add_used(&a.mem, head, 0) {
            tracing::error!("vsock: tx add_used: {e}");
        }
        used = true;
    }
    used
}

fn handle_tx_packet(r: &mut Reader<'_>, muxer: &mut Muxer, cid: u64, c: &mut VsockCounters) {
    let mut raw = [0u8; HDR_SIZE];
    if r.available_bytes() < HDR_SIZE || r.read_exact(&mut raw).is_err() {
        c.tx_malformed += 1;
        return;
    }
    let hdr = Header::decode(&raw);
    tracing::trace!(?hdr, "vsock: tx packet");
    if hdr.src_cid != cid || hdr.dst_cid != HOST_CID {
        c.tx_bad_cid += 1;
        return;
    }
    let len = hdr.len as usize;
    if len > MAX_PKT_PAYLOAD || len > r.available_bytes() {
        c.tx_bad_len += 1;
        muxer.reset(&hdr);
        return;
    }
    muxer.recv_pkt(&hdr, r);
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The configuration space is the guest CID, a u64 LE; reads past it return zeros.
        let config = self.cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            "vsock: guest wrote {} bytes of read-only config at {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), VirtioError> {
        if queues.len() != NUM_QUEUES {
            return Err(VirtioError::QueueCount {
                want: NUM_QUEUES,
                got: queues.len(),
            });
        }
        if self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            tracing::warn!("vsock: driver did not accept VIRTIO_F_VERSION_1");
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        // Wake the event loop: packets may already wait on both sides.
        self.activate_evt
            .write(1)
            .map_err(|e| VirtioError::Activate(e.to_string()))
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.muxer.reset_all();
        // Wake the event loop so that it closes the dropped connections' sockets.
        if let Err(e) = self.activate_evt.write(1) {
            tracing::error!("vsock: failed to wake the event loop on reset: {e}");
        }
        true
    }
}
