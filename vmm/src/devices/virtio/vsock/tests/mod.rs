//! Device tests: a driver written here puts packets into split queues in guest memory built by
//! the test, and real Unix sockets in a temporary directory play the host side.

mod protocol;
mod transfer;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::Vsock;
use crate::devices::virtio::{GuestMemory, Interrupt, VirtioDevice};

pub(super) const CID: u64 = 3;
pub(super) const QSIZE: u16 = 256;
/// Buffer slot per descriptor index: a header plus the largest payload.
pub(super) const SLOT: u64 = 0x11000;
pub(super) const RX: usize = 0;
pub(super) const TX: usize = 1;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moat-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The driver's view of one split queue.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    avail_idx: u16,
    used_seen: u16,
    next_desc: u16,
}

pub(super) struct Harness {
    dir: TempDir,
    pub(super) mem: GuestMemory,
    pub(super) dev: Arc<Mutex<Vsock>>,
    pub(super) em: EventManager<Arc<Mutex<Vsock>>>,
    rings: Vec<Ring>,
    pub(super) irq: Arc<Interrupt>,
}

pub(super) fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..Default::default()
    }
}

impl Harness {
    pub(super) fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let mut dev = Vsock::new(CID, &dir.0.join("v.sock")).unwrap();
        let mut rings = Vec::new();
        let mut queues = Vec::new();
        for q in 0..3u64 {
            // Own layout: `MockSplitQueue` places the used ring inside the avail ring for queues
            // longer than 128 (its ring end counts elements, not bytes).
            let (desc, avail, used) = (q * 0x10000, q * 0x10000 + 0x1000, q * 0x10000 + 0x2000);
            let mut queue = Queue::new(QSIZE).unwrap();
            queue.set_size(QSIZE);
            queue
                .try_set_desc_table_address(GuestAddress(desc))
                .unwrap();
            queue
                .try_set_avail_ring_address(GuestAddress(avail))
                .unwrap();
            queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
            queue.set_ready(true);
            queues.push(queue);
            rings.push(Ring {
                desc,
                avail,
                used,
                bufs: 0x10_0000 + q * u64::from(QSIZE) * SLOT,
                avail_idx: 0,
                used_seen: 0,
                next_desc: 0,
            });
        }
        assert_eq!(dev.device_type(), 19);
        assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
        dev.ack_features(dev.avail_features());
        let irq = Arc::new(Interrupt::new().unwrap());
        dev.activate(mem.clone(), irq.clone(), queues).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self {
            dir,
            mem,
            dev,
            em,
            rings,
            irq,
        }
    }

    pub(super) fn path(&self, suffix: &str) -> PathBuf {
        self.dir.0.join(format!("v.sock{suffix}"))
    }

    /// Descriptors (one per chain here) not yet free for reuse: rx ones until `recv` read them.
    pub(super) fn in_flight(&self, q: usize) -> u16 {
        let r = &self.rings[q];
        let used: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        r.avail_idx
            .wrapping_sub(if q == RX { r.used_seen } else { used })
    }

    /// Adds a chain of (length, device-writable) descriptors; returns their buffer addresses.
    pub(super) fn add_chain(&mut self, q: usize, descs: &[(u32, bool)]) -> Vec<u64> {
        assert!(self.in_flight(q) as usize + descs.len() <= QSIZE as usize);
        let r = &mut self.rings[q];
        let head = r.next_desc;
        let mut addrs = Vec::new();
        for (i, (len, write)) in descs.iter().enumerate() {
            let idx = r.next_desc;
            r.next_desc = (idx + 1) % QSIZE;
            let addr = r.bufs + u64::from(idx) * SLOT;
            let last = i + 1 == descs.len();
            let flags = u16::from(!last) | if *write { 2 } else { 0 };
            let at = r.desc + 16 * u64::from(idx);
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(*len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj(r.next_desc, GuestAddress(at + 14))
                .unwrap();
            addrs.push(addr);
        }
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(r.avail_idx, GuestAddress(r.avail + 2))
            .unwrap();
        addrs
    }

    pub(super) fn kick(&self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
    }

    /// Queues one packet (header and payload in one descriptor) and kicks the tx queue.
    pub(super) fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let len = (HDR_SIZE + payload.len()) as u32;
        let addr = self.add_chain(TX, &[(len, false)])[0];
        self.mem
            .write_slice(&h.encode(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + HDR_SIZE as u64))
            .unwrap();
        self.kick(TX);
    }

    pub(super) fn provide_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            self.add_chain(RX, &[(size, true)]);
        }
        self.kick(RX);
    }

    /// Runs the event loop until it has been idle for a moment.
    pub(super) fn run(&mut self) {
        for _ in 0..200 {
            if self.em.run_with_timeout(20).unwrap() == 0 {
                return;
            }
        }
    }

    /// The next packet the device put in the rx queue, if any.
    pub(super) fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let r = &mut self.rings[RX];
        let used: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        if used == r.used_seen {
            return None;
        }
        let elem = r.used + 4 + 8 * u64::from(r.used_seen % QSIZE);
        r.used_seen = r.used_seen.wrapping_add(1);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        assert!(
            id < u32::from(QSIZE) && len <= SLOT as u32,
            "used elem {id} {len} at {}",
            r.used_seen
        );
        let mut buf = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut buf, GuestAddress(r.bufs + u64::from(id) * SLOT))
            .unwrap();
        if buf.len() < HDR_SIZE {
            return Some((Header::default(), buf));
        }
        let h = Header::decode(buf[..HDR_SIZE].try_into().unwrap());
        Some((h, buf[HDR_SIZE..].to_vec()))
    }

    /// Runs the loop until a packet arrives (or panics after 5 s).
    pub(super) fn expect_pkt(&mut self) -> (Header, Vec<u8>) {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = self.recv() {
                return p;
            }
            assert!(Instant::now() < end, "no packet from the device");
            self.em.run_with_timeout(20).unwrap();
        }
    }

    pub(super) fn counters(&self) -> super::VsockCounters {
        self.dev.lock().unwrap().counters()
    }

    /// Guest port `gport` connects to host port `port`, served by `listener`.
    pub(super) fn guest_connect(
        &mut self,
        listener: &UnixListener,
        gport: u32,
        port: u32,
    ) -> UnixStream {
        self.provide_rx(8, SLOT as u32);
        self.send(hdr(OP_REQUEST, gport, port), &[]);
        self.run();
        let (h, _) = self.expect_pkt();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RESPONSE, port, gport, CID)
        );
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}
