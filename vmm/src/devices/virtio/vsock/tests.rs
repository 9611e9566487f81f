//! Device tests: a driver written here puts packets into split queues in guest memory built by
//! the test, and real Unix sockets in a temporary directory play the host side.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::connection::CONN_BUF_SIZE;
use super::packet::*;
use super::Vsock;
use crate::devices::virtio::{GuestMemory, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

const CID: u64 = 3;
const QSIZE: u16 = 256;
/// Buffer slot per descriptor index: a header plus the largest payload.
const SLOT: u64 = 0x11000;
const RX: usize = 0;
const TX: usize = 1;

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

struct Harness {
    dir: TempDir,
    mem: GuestMemory,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    rings: Vec<Ring>,
    irq: Arc<Interrupt>,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
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
    fn new(name: &str) -> Self {
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
            queue.try_set_desc_table_address(GuestAddress(desc)).unwrap();
            queue.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
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
        Self { dir, mem, dev, em, rings, irq }
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.0.join(format!("v.sock{suffix}"))
    }

    /// Descriptors (one per chain here) not yet free for reuse: rx ones until `recv` read them.
    fn in_flight(&self, q: usize) -> u16 {
        let r = &self.rings[q];
        let used: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        r.avail_idx.wrapping_sub(if q == RX { r.used_seen } else { used })
    }

    /// Adds a chain of (length, device-writable) descriptors; returns their buffer addresses.
    fn add_chain(&mut self, q: usize, descs: &[(u32, bool)]) -> Vec<u64> {
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
            self.mem.write_obj(r.next_desc, GuestAddress(at + 14)).unwrap();
            addrs.push(addr);
        }
        let slot = r.avail + 4 + 2 * u64::from(r.avail_idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        r.avail_idx = r.avail_idx.wrapping_add(1);
        self.mem.write_obj(r.avail_idx, GuestAddress(r.avail + 2)).unwrap();
        addrs
    }

    fn kick(&self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
    }

    /// Queues one packet (header and payload in one descriptor) and kicks the tx queue.
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let len = (HDR_SIZE + payload.len()) as u32;
        let addr = self.add_chain(TX, &[(len, false)])[0];
        self.mem.write_slice(&h.encode(), GuestAddress(addr)).unwrap();
        self.mem.write_slice(payload, GuestAddress(addr + HDR_SIZE as u64)).unwrap();
        self.kick(TX);
    }

    fn provide_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            self.add_chain(RX, &[(size, true)]);
        }
        self.kick(RX);
    }

    /// Runs the event loop until it has been idle for a moment.
    fn run(&mut self) {
        for _ in 0..200 {
            if self.em.run_with_timeout(20).unwrap() == 0 {
                return;
            }
        }
    }

    /// The next packet the device put in the rx queue, if any.
    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let r = &mut self.rings[RX];
        let used: u16 = self.mem.read_obj(GuestAddress(r.used + 2)).unwrap();
        if used == r.used_seen {
            return None;
        }
        let elem = r.used + 4 + 8 * u64::from(r.used_seen % QSIZE);
        r.used_seen = r.used_seen.wrapping_add(1);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        assert!(id < u32::from(QSIZE) && len <= SLOT as u32, "used elem {id} {len} at {}", r.used_seen);
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(r.bufs + u64::from(id) * SLOT)).unwrap();
        if buf.len() < HDR_SIZE {
            return Some((Header::default(), buf));
        }
        let h = Header::decode(buf[..HDR_SIZE].try_into().unwrap());
        Some((h, buf[HDR_SIZE..].to_vec()))
    }

    /// Runs the loop until a packet arrives (or panics after 5 s).
    fn expect_pkt(&mut self) -> (Header, Vec<u8>) {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = self.recv() {
                return p;
            }
            assert!(Instant::now() < end, "no packet from the device");
            self.em.run_with_timeout(20).unwrap();
        }
    }

    fn counters(&self) -> super::VsockCounters {
        self.dev.lock().unwrap().counters()
    }

    /// Guest port `gport` connects to host port `port`, served by `listener`.
    fn guest_connect(&mut self, listener: &UnixListener, gport: u32, port: u32) -> UnixStream {
        self.provide_rx(8, SLOT as u32);
        self.send(hdr(OP_REQUEST, gport, port), &[]);
        self.run();
        let (h, _) = self.expect_pkt();
        assert_eq!((h.op, h.src_port, h.dst_port, h.dst_cid), (OP_RESPONSE, port, gport, CID));
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

#[test]
fn guest_connect_data_both_ways_and_close() {
    let mut h = Harness::new("basic");
    let listener = UnixListener::bind(h.path("_1024")).unwrap();
    let mut host = h.guest_connect(&listener, 5000, 1024);
    assert_ne!(h.irq.status() & VIRTIO_MMIO_INT_VRING, 0);
    h.send(hdr(OP_RW, 5000, 1024), b"hello");
    h.run();
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    host.write_all(b"world").unwrap();
    h.run();
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, p.len, data.as_slice()), (OP_RW, 5, &b"world"[..]));
    assert_eq!(p.fwd_cnt, 5);
    // The guest closes: the host sees EOF, the guest gets RST.
    let mut sd = hdr(OP_SHUTDOWN, 5000, 1024);
    sd.flags = SHUTDOWN_BOTH;
    h.send(sd, &[]);
    h.run();
    let (p, _) = h.expect_pkt();
    assert_eq!(p.op, OP_RST);
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(h.dev.lock().unwrap().muxer.connection_count(), 0);
}

#[test]
fn host_close_sends_shutdown() {
    let mut h = Harness::new("hostclose");
    let listener = UnixListener::bind(h.path("_7")).unwrap();
    let host = h.guest_connect(&listener, 4000, 7);
    drop(host);
    h.run();
    let (p, _) = h.expect_pkt();
    assert_eq!((p.op, p.flags & SHUTDOWN_SEND), (OP_SHUTDOWN, SHUTDOWN_SEND));
    // Data to a closed host socket resets the connection.
    h.send(hdr(OP_RW, 4000, 7), b"late");
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RST);
}

#[test]
fn refused_connect_gets_rst() {
    let mut h = Harness::new("refused");
    h.provide_rx(4, 4096);
    h.send(hdr(OP_REQUEST, 5000, 77), &[]);
    h.run();
    let (p, _) = h.expect_pkt();
    assert_eq!((p.op, p.src_port, p.dst_port, p.src_cid), (OP_RST, 77, 5000, HOST_CID));
    // Packets for unknown connections are reset too; an RST for one is ignored.
    h.send(hdr(OP_RW, 5000, 77), b"x");
    h.send(hdr(OP_RST, 5000, 77), &[]);
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert!(h.recv().is_none());
}

#[test]
fn host_initiated_connect() {
    let mut h = Harness::new("hostinit");
    h.provide_rx(8, 4096);
    let mut client = UnixStream::connect(h.path("")).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.write_all(b"CONNECT 52\nearly").unwrap();
    h.run();
    let (req, _) = h.expect_pkt();
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 52, CID));
    assert!(req.src_port >= 1 << 30);
    h.send(hdr(OP_RESPONSE, 52, req.src_port), &[]);
    h.run();
    let mut line = [0u8; 64];
    let n = client.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {}\n", req.src_port).as_bytes());
    // Bytes written right after the CONNECT line reach the guest.
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, data.as_slice()), (OP_RW, &b"early"[..]));
    h.send(hdr(OP_RW, 52, req.src_port), b"pong");
    h.run();
    let mut b = [0u8; 4];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
}

#[test]
fn host_connect_refused_or_malformed() {
    let mut h = Harness::new("hostbad");
    h.provide_rx(8, 4096);
    let mut bad = UnixStream::connect(h.path("")).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"HELLO 1\n").unwrap();
    let mut refused = UnixStream::connect(h.path("")).unwrap();
    refused.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    refused.write_all(b"CONNECT 9\n").unwrap();
    h.run();
    let mut b = [0u8; 8];
    assert_eq!(bad.read(&mut b).unwrap(), 0);
    let (req, _) = h.expect_pkt();
    assert_eq!(req.op, OP_REQUEST);
    h.send(hdr(OP_RST, 9, req.src_port), &[]);
    h.run();
    assert_eq!(refused.read(&mut b).unwrap(), 0);
    // A client that never answers is timed out.
    let mut slow = UnixStream::connect(h.path("")).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        h.em.run_with_timeout(100).unwrap();
    }
    assert_eq!(slow.read(&mut b).unwrap(), 0);
}

#[test]
fn credit_flow_host_to_guest() {
    let mut h = Harness::new("credit");
    let listener = UnixListener::bind(h.path("_80")).unwrap();
    h.provide_rx(8, SLOT as u32);
    let mut req = hdr(OP_REQUEST, 6000, 80);
    req.buf_alloc = 1000;
    h.send(req, &[]);
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[9u8; 5000]).unwrap();
    h.run();
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, data.len()), (OP_RW, 1000));
    assert_eq!(h.expect_pkt().0.op, OP_CREDIT_REQUEST);
    assert!(h.recv().is_none());
    let mut upd = hdr(OP_CREDIT_UPDATE, 6000, 80);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 1000;
    h.send(upd, &[]);
    h.run();
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, data.len()), (OP_RW, 1000));
    // The guest asks for our credit.
    let mut creq = hdr(OP_CREDIT_REQUEST, 6000, 80);
    creq.buf_alloc = 1000;
    creq.fwd_cnt = 1000;
    h.send(creq, &[]);
    h.run();
    let mut ops = vec![];
    while let Some((p, _)) = h.recv() {
        ops.push(p.op);
        assert_eq!(p.buf_alloc, CONN_BUF_SIZE);
    }
    assert!(ops.contains(&OP_CREDIT_UPDATE), "{ops:?}");
}

#[test]
fn malformed_packets() {
    let mut h = Harness::new("malformed");
    let listener = UnixListener::bind(h.path("_90")).unwrap();
    let _host = h.guest_connect(&listener, 7000, 90);
    // A chain shorter than a header.
    h.add_chain(TX, &[(10, false)]);
    // A chain with only a device-writable descriptor.
    h.add_chain(TX, &[(100, true)]);
    // Wrong CIDs: dropped without an answer.
    let mut w = hdr(OP_RW, 7000, 90);
    w.src_cid = 99;
    h.send(w, b"x");
    let mut w = hdr(OP_RW, 7000, 90);
    w.dst_cid = 5;
    h.send(w, b"x");
    h.run();
    assert!(h.recv().is_none());
    let c = h.counters();
    assert_eq!((c.tx_malformed, c.tx_bad_cid), (2, 2));
    // A length beyond the chain resets the connection.
    let addr = h.add_chain(TX, &[(HDR_SIZE as u32 + 4, false)])[0];
    let mut big = hdr(OP_RW, 7000, 90);
    big.len = 1000;
    h.mem.write_slice(&big.encode(), GuestAddress(addr)).unwrap();
    h.kick(TX);
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert_eq!(h.counters().tx_bad_len, 1);
    // Unknown op and non-stream type on fresh connections: RST.
    let _host2 = h.guest_connect(&listener, 7001, 90);
    h.send(hdr(42, 7001, 90), &[]);
    let mut dgram = hdr(OP_REQUEST, 7002, 90);
    dgram.type_ = 2;
    h.send(dgram, &[]);
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    // Over 64 KiB: RST even when the chain is that long.
    let addrs = h.add_chain(TX, &[(HDR_SIZE as u32, false), (0x10000, false), (0x100, false)]);
    let mut huge = hdr(OP_RW, 7003, 90);
    huge.len = 0x10001;
    h.mem.write_slice(&huge.encode(), GuestAddress(addrs[0])).unwrap();
    h.kick(TX);
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert_eq!(h.counters().tx_bad_len, 2);
}

#[test]
fn malformed_rx_chains() {
    let mut h = Harness::new("rxbad");
    // Too small for a header, then read-only: both returned unused, then a good one.
    h.add_chain(RX, &[(8, true)]);
    h.add_chain(RX, &[(100, false)]);
    h.provide_rx(1, 4096);
    h.send(hdr(OP_REQUEST, 1, 2), &[]);
    h.run();
    assert_eq!(h.expect_pkt(), (Header::default(), vec![]));
    assert_eq!(h.expect_pkt(), (Header::default(), vec![]));
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert_eq!(h.counters().rx_malformed, 2);
}

#[test]
fn split_header_and_payload_descriptors() {
    let mut h = Harness::new("split");
    let listener = UnixListener::bind(h.path("_91")).unwrap();
    let mut host = h.guest_connect(&listener, 7100, 91);
    let addrs = h.add_chain(TX, &[(HDR_SIZE as u32, false), (3, false), (3, false)]);
    let mut w = hdr(OP_RW, 7100, 91);
    w.len = 6;
    h.mem.write_slice(&w.encode(), GuestAddress(addrs[0])).unwrap();
    h.mem.write_slice(b"abc", GuestAddress(addrs[1])).unwrap();
    h.mem.write_slice(b"def", GuestAddress(addrs[2])).unwrap();
    h.kick(TX);
    h.run();
    let mut b = [0u8; 6];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abcdef");
}

fn pattern(offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((offset + i) % 251) as u8;
    }
}

#[test]
fn large_transfer_host_to_guest() {
    const TOTAL: usize = 64 << 20;
    let mut h = Harness::new("bigrx");
    let listener = UnixListener::bind(h.path("_100")).unwrap();
    let host = h.guest_connect(&listener, 8000, 100);
    let writer = std::thread::spawn(move || {
        let mut host = host;
        let mut buf = vec![0u8; 1 << 20];
        for off in (0..TOTAL).step_by(buf.len()) {
            pattern(off, &mut buf);
            host.write_all(&buf).unwrap();
        }
    });
    let (mut got, mut announced) = (0usize, 0usize);
    let mut expect = vec![0u8; SLOT as usize];
    let start = Instant::now();
    let mut eof = false;
    while !eof {
        assert!(start.elapsed() < Duration::from_secs(120), "stalled at {got}");
        let free = QSIZE - h.in_flight(RX);
        if free > 0 {
            h.provide_rx(free as usize, SLOT as u32);
        }
        h.em.run_with_timeout(10).unwrap();
        while let Some((p, data)) = h.recv() {
            match p.op {
                OP_RW => {
                    pattern(got, &mut expect[..data.len()]);
                    assert!(data == expect[..data.len()], "corrupt at {got}");
                    got += data.len();
                }
                OP_SHUTDOWN => eof = true,
                op => assert_eq!(op, OP_CREDIT_REQUEST),
            }
        }
        if got - announced >= 64 * 1024 || eof {
            let mut u = hdr(OP_CREDIT_UPDATE, 8000, 100);
            u.fwd_cnt = got as u32;
            h.send(u, &[]);
            announced = got;
        }
    }
    writer.join().unwrap();
    assert_eq!(got, TOTAL);
}

#[test]
fn large_transfer_guest_to_host() {
    const TOTAL: usize = 64 << 20;
    const CHUNK: usize = 60 * 1024;
    let mut h = Harness::new("bigtx");
    let listener = UnixListener::bind(h.path("_101")).unwrap();
    let host = h.guest_connect(&listener, 8100, 101);
    let reader = std::thread::spawn(move || {
        let mut host = host;
        let (mut buf, mut expect) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut got = 0usize;
        loop {
            let n = host.read(&mut buf).unwrap();
            if n == 0 {
                return got;
            }
            pattern(got, &mut expect[..n]);
            assert!(buf[..n] == expect[..n], "corrupt at {got}");
            got += n;
        }
    });
    let (mut sent, mut peer_fwd, mut peer_alloc) = (0usize, 0u32, CONN_BUF_SIZE);
    let mut data = vec![0u8; CHUNK];
    let start = Instant::now();
    while sent < TOTAL {
        assert!(start.elapsed() < Duration::from_secs(120), "stalled at {sent}");
        let credit = peer_alloc as usize - (sent as u32).wrapping_sub(peer_fwd) as usize;
        let n = credit.min(CHUNK).min(TOTAL - sent);
        if n > 0 && h.in_flight(TX) < QSIZE - 1 {
            pattern(sent, &mut data[..n]);
            h.send(hdr(OP_RW, 8100, 101), &data[..n]);
            sent += n;
        }
        let free = QSIZE - h.in_flight(RX);
        if free > 0 {
            h.provide_rx(free as usize, 4096);
        }
        h.em.run_with_timeout(if n > 0 { 0 } else { 10 }).unwrap();
        while let Some((p, _)) = h.recv() {
            assert_ne!(p.op, OP_RST, "reset after {sent}");
            peer_fwd = p.fwd_cnt;
            peer_alloc = p.buf_alloc;
        }
    }
    let mut sd = hdr(OP_SHUTDOWN, 8100, 101);
    sd.flags = SHUTDOWN_BOTH;
    h.send(sd, &[]);
    let end = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && Instant::now() < end {
        h.em.run_with_timeout(10).unwrap();
    }
    assert_eq!(reader.join().unwrap(), TOTAL);
}
