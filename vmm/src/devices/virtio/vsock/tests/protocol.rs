//! Connection setup, teardown, credit and malformed input.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::vsock::connection::CONN_BUF_SIZE;
use crate::devices::virtio::vsock::packet::*;
use crate::devices::virtio::VIRTIO_MMIO_INT_VRING;

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
    assert_eq!(
        (p.op, p.flags & SHUTDOWN_SEND),
        (OP_SHUTDOWN, SHUTDOWN_SEND)
    );
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
    assert_eq!(
        (p.op, p.src_port, p.dst_port, p.src_cid),
        (OP_RST, 77, 5000, HOST_CID)
    );
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
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
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
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
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
    h.mem
        .write_slice(&big.encode(), GuestAddress(addr))
        .unwrap();
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
    let addrs = h.add_chain(
        TX,
        &[(HDR_SIZE as u32, false), (0x10000, false), (0x100, false)],
    );
    let mut huge = hdr(OP_RW, 7003, 90);
    huge.len = 0x10001;
    h.mem
        .write_slice(&huge.encode(), GuestAddress(addrs[0]))
        .unwrap();
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
    h.mem
        .write_slice(&w.encode(), GuestAddress(addrs[0]))
        .unwrap();
    h.mem.write_slice(b"abc", GuestAddress(addrs[1])).unwrap();
    h.mem.write_slice(b"def", GuestAddress(addrs[2])).unwrap();
    h.kick(TX);
    h.run();
    let mut b = [0u8; 6];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abcdef");
}

#[test]
fn connection_limit() {
    let mut h = Harness::new("limit");
    let _listener = UnixListener::bind(h.path("_5")).unwrap();
    let max = crate::devices::virtio::vsock::muxer::MAX_CONNECTIONS as u32;
    h.provide_rx(max as usize + 8, 4096);
    for port in 0..=max {
        h.send(hdr(OP_REQUEST, 100 + port, 5), &[]);
        h.run();
    }
    let ops: Vec<u16> = (0..=max).map(|_| h.expect_pkt().0.op).collect();
    assert!(ops[..max as usize].iter().all(|op| *op == OP_RESPONSE));
    assert_eq!(ops[max as usize], OP_RST);
    assert_eq!(h.dev.lock().unwrap().muxer.connection_count(), max as usize);
    // A REQUEST on an existing connection resets it.
    h.send(hdr(OP_REQUEST, 100, 5), &[]);
    h.run();
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert_eq!(
        h.dev.lock().unwrap().muxer.connection_count(),
        max as usize - 1
    );
}

#[test]
fn reset_closes_connections() {
    let mut h = Harness::new("reset");
    let listener = UnixListener::bind(h.path("_3")).unwrap();
    let mut host = h.guest_connect(&listener, 3000, 3);
    assert!(h.dev.lock().unwrap().reset());
    assert!(!h.dev.lock().unwrap().is_activated());
    h.run();
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(h.dev.lock().unwrap().muxer.connection_count(), 0);
}
