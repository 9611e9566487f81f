//! 64 MiB through one connection in each direction, intact and within credit.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::vsock::connection::CONN_BUF_SIZE;
use crate::devices::virtio::vsock::packet::*;

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
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stalled at {got}"
        );
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
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stalled at {sent}"
        );
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
