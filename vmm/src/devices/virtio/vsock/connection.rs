//! One vsock stream connection between a guest port and a host Unix socket, with credit-based
//! flow control in both directions.
//!
//! Guest -> host: the guest may have at most [`CONN_BUF_SIZE`] bytes in flight (our `buf_alloc`
//! minus what it has seen of our `fwd_cnt`). Bytes the host socket does not take at once wait in a
//! per-connection buffer bounded by the same size; a guest that sends past its credit is reset.
//! Host -> guest: the device reads from the socket only as much as the guest's credit
//! (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`) and the receive descriptor allow, so nothing is
//! buffered in the VMM on that side.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::*;

/// Our receive buffer per connection (`buf_alloc` advertised to the guest).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Forwarded bytes after which an unsolicited credit update is sent.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// Identifies a connection: (host port, guest port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

/// Connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
    /// An RST is queued; the connection goes away once it is sent.
    Killed,
}

/// Errors of one connection; any of them resets it.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than its credit allows.
    #[error("guest exceeded its credit on port {0}")]
    CreditExceeded(u32),
    /// The guest sent data after announcing it would not.
    #[error("guest sent data after shutdown")]
    DataAfterShutdown,
    /// The guest sent an operation the connection's state does not allow.
    #[error("unexpected operation {0}")]
    Protocol(u16),
    /// The packet's payload could not be read from guest memory.
    #[error("failed to read the packet payload")]
    Payload(#[source] io::Error),
    /// The host socket failed.
    #[error("host socket i/o failed")]
    Io(#[source] io::Error),
}

const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_RST: u8 = 4;
const P_SHUTDOWN: u8 = 8;
const P_CREDIT_UPDATE: u8 = 16;
const P_CREDIT_REQUEST: u8 = 32;

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host socket (non-blocking).
    pub stream: UnixStream,
    /// Ports.
    pub key: ConnKey,
    /// State.
    pub state: State,
    /// In the muxer's receive-work queue.
    pub queued: bool,
    /// Registered with epoll.
    pub registered: bool,
    /// The epoll interest currently registered.
    pub interest: EventSet,
    /// When a pending REQUEST or close gives up.
    pub deadline: Option<Instant>,
    /// The RST has been handed to the guest: remove the connection.
    pub closed: bool,
    pending: u8,
    // Guest -> host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    peer_shut: u32,
    wrote_shutdown: bool,
    // Host -> guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    rx_ready: bool,
    local_eof: bool,
    hup: bool,
    credit_requested: bool,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, state: State, pending: u8) -> Self {
        Self {
            stream,
            key,
            state,
            queued: false,
            registered: false,
            interest: EventSet::empty(),
            deadline: None,
            closed: false,
            pending,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_shut: 0,
            wrote_shutdown: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_ready: false,
            local_eof: false,
            hup: false,
            credit_requested: false,
        }
    }

    /// A connection the guest asked for, answered with RESPONSE.
    pub fn peer_init(stream: UnixStream, key: ConnKey, hdr: &Header) -> Self {
        let mut c = Self::new(stream, key, State::Established, P_RESPONSE);
        c.update_peer_credit(hdr);
        c
    }

    /// A connection a host client asked for: REQUEST to the guest, answer due by `deadline`.
    pub fn local_init(stream: UnixStream, key: ConnKey, deadline: Instant) -> Self {
        let mut c = Self::new(stream, key, State::LocalInit, P_REQUEST);
        c.deadline = Some(deadline);
        c
    }

    /// Records the guest's receive-buffer state carried by every packet.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can receive now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Queues an RST; the connection stops all other work.
    pub fn kill(&mut self) {
        self.state = State::Killed;
        self.pending = P_RST;
        self.deadline = None;
    }

    /// The guest answered our REQUEST: tell the host client which port it got.
    pub fn establish(&mut self) -> Result<(), ConnError> {
        self.state = State::Established;
        self.deadline = None;
        let line = format!("OK {}\n", self.key.local_port);
        self.stream
            .write_all(line.as_bytes())
            .map_err(ConnError::Io)
    }

    /// The guest asked for our credit.
    pub fn request_credit_update(&mut self) {
        self.pending |= P_CREDIT_UPDATE;
    }

    /// Data from the guest: written to the socket at once if possible, the rest buffered.
    pub fn recv_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            return Err(ConnError::DataAfterShutdown);
        }
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            return Err(ConnError::CreditExceeded(self.key.local_port));
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = write_nonblocking(&mut self.stream, data)?;
            self.advance_fwd(written);
        }
        self.tx_buf.extend(&data[written..]);
        Ok(())
    }

    /// Writes buffered guest data to the socket until it would block.
    pub fn flush_tx(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_nonblocking(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.advance_fwd(n);
        }
        if self.tx_buf.is_empty() && self.peer_shut & SHUTDOWN_SEND != 0 && !self.wrote_shutdown {
            self.wrote_shutdown = true;
            // The host peer may already be gone; then there is nothing to tell it.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn advance_fwd(&mut self, n: usize) {
        // n <= CONN_BUF_SIZE, so the cast is lossless; the counter wraps by protocol.
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// The guest shut down one or both directions.
    pub fn peer_shutdown(&mut self, flags: u32) -> Result<(), ConnError> {
        self.peer_shut |= flags & SHUTDOWN_BOTH;
        self.flush_tx()
    }

    /// Whether the guest closed both directions and everything it sent has been delivered.
    pub fn fully_closed(&self) -> bool {
        self.peer_shut == SHUTDOWN_BOTH && self.tx_buf.is_empty()
    }

    /// Whether the guest closed both directions but data still waits for the host socket.
    pub fn closing(&self) -> bool {
        self.peer_shut == SHUTDOWN_BOTH && !self.tx_buf.is_empty()
    }

    /// The socket reported readability.
    pub fn set_readable(&mut self) {
        self.rx_ready = true;
    }

    /// The socket hung up: read what is left, then EOF.
    pub fn set_hup(&mut self) {
        self.hup = true;
        self.rx_ready = true;
    }

    fn wants_read(&self) -> bool {
        self.state == State::Established && !self.local_eof && self.peer_shut & SHUTDOWN_RCV == 0
    }

    /// The epoll interest this connection needs now.
    pub fn desired_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == State::Killed {
            return set;
        }
        if self.wants_read() && !self.rx_ready {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Whether [`Connection::fill_rx`] has something to give the guest.
    pub fn has_rx_work(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        let data = self.wants_read() && self.rx_ready;
        data && (self.peer_credit() > 0 || !self.credit_requested)
    }

    fn header(&self, cid: u64, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn emit(&mut self, w: &mut dyn Write, hdr: Header, payload: &[u8]) -> Option<usize> {
        self.last_fwd_cnt_sent = hdr.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        // The descriptor was checked to hold header and payload; a failing guest-memory write
        // loses only this packet.
        if w.write_all(&hdr.encode())
            .and_then(|_| w.write_all(payload))
            .is_err()
        {
            tracing::warn!("vsock: failed to write a packet into guest memory");
        }
        Some(HDR_SIZE + payload.len())
    }

    /// Writes the next packet for the guest into `w`, which holds `cap >= HDR_SIZE` bytes.
    /// Returns the bytes written, or `None` when there was nothing to send.
    pub fn fill_rx(
        &mut self,
        w: &mut dyn Write,
        cap: usize,
        cid: u64,
        scratch: &mut [u8],
    ) -> Option<usize> {
        if self.pending & P_RST != 0 {
            self.pending = 0;
            self.closed = true;
            return self.emit(w, self.header(cid, OP_RST), &[]);
        }
        for (bit, op) in [(P_REQUEST, OP_REQUEST), (P_RESPONSE, OP_RESPONSE)] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                return self.emit(w, self.header(cid, op), &[]);
            }
        }
        if self.wants_read() && self.rx_ready {
            if let Some(n) = self.fill_data(w, cap, cid, scratch) {
                return Some(n);
            }
        }
        self.fill_control(w, cid)
    }

    fn fill_data(
        &mut self,
        w: &mut dyn Write,
        cap: usize,
        cid: u64,
        scratch: &mut [u8],
    ) -> Option<usize> {
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending |= P_CREDIT_REQUEST;
            }
            return None;
        }
        let max = credit
            .min(cap - HDR_SIZE)
            .min(MAX_PKT_PAYLOAD)
            .min(scratch.len());
        match self.stream.read(&mut scratch[..max]) {
            Ok(0) => {
                self.local_eof = true;
                self.pending |= P_SHUTDOWN;
                None
            }
            Ok(n) => {
                let mut hdr = self.header(cid, OP_RW);
                // n <= MAX_PKT_PAYLOAD.
                hdr.len = n as u32;
                self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                self.emit(w, hdr, &scratch[..n])
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.rx_ready = false;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => {
                tracing::debug!("vsock: host socket read failed: {e}");
                self.kill();
                self.pending = 0;
                self.closed = true;
                self.emit(w, self.header(cid, OP_RST), &[])
            }
        }
    }

    fn fill_control(&mut self, w: &mut dyn Write, cid: u64) -> Option<usize> {
        if self.pending & P_SHUTDOWN != 0 {
            self.pending &= !P_SHUTDOWN;
            let mut hdr = self.header(cid, OP_SHUTDOWN);
            hdr.flags = if self.hup {
                SHUTDOWN_BOTH
            } else {
                SHUTDOWN_SEND
            };
            return self.emit(w, hdr, &[]);
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return self.emit(w, self.header(cid, OP_CREDIT_UPDATE), &[]);
        }
        if self.pending & P_CREDIT_REQUEST != 0 {
            self.pending &= !P_CREDIT_REQUEST;
            return self.emit(w, self.header(cid, OP_CREDIT_REQUEST), &[]);
        }
        None
    }
}

/// Writes what the socket takes without blocking; `Ok(0)` when it would block.
fn write_nonblocking(stream: &mut UnixStream, data: &[u8]) -> Result<usize, ConnError> {
    loop {
        return match stream.write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(ConnError::Io(e)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let key = ConnKey {
            local_port: 1024,
            peer_port: 5000,
        };
        let hdr = Header {
            buf_alloc: 100,
            fwd_cnt: 0,
            ..Default::default()
        };
        (Connection::peer_init(a, key, &hdr), b)
    }

    fn next(c: &mut Connection, scratch: &mut [u8]) -> Option<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let n = c.fill_rx(&mut out, 4096, 3, scratch)?;
        assert_eq!(n, out.len());
        let hdr = Header::decode(out[..HDR_SIZE].try_into().unwrap());
        Some((hdr, out[HDR_SIZE..].to_vec()))
    }

    #[test]
    fn response_then_data_within_credit() {
        let (mut c, mut host) = pair();
        let mut scratch = vec![0u8; MAX_PKT_PAYLOAD];
        let (h, _) = next(&mut c, &mut scratch).unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RESPONSE, 1024, 5000, 3)
        );
        assert!(next(&mut c, &mut scratch).is_none());
        host.write_all(&[7u8; 300]).unwrap();
        c.set_readable();
        let (h, p) = next(&mut c, &mut scratch).unwrap();
        assert_eq!((h.op, h.len, p.len()), (OP_RW, 100, 100));
        // Out of credit: one CREDIT_REQUEST, then silence until the guest frees space.
        let (h, _) = next(&mut c, &mut scratch).unwrap();
        assert_eq!(h.op, OP_CREDIT_REQUEST);
        assert!(!c.has_rx_work());
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: 100,
            ..Default::default()
        });
        assert!(c.has_rx_work());
        let (h, p) = next(&mut c, &mut scratch).unwrap();
        assert_eq!((h.op, p.len()), (OP_RW, 100));
    }

    #[test]
    fn guest_data_is_bounded_and_credited() {
        let (mut c, mut host) = pair();
        host.set_nonblocking(true).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0usize;
        let err = loop {
            match c.recv_data(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(e) => break e,
            }
            assert!(sent < 64 * 1024 * 1024);
        };
        assert!(matches!(err, ConnError::CreditExceeded(1024)));
        assert!(c.tx_buf.len() <= CONN_BUF_SIZE as usize);
        assert!(c.pending & P_CREDIT_UPDATE != 0);
        // Drain the host side; the buffer flushes and fwd_cnt covers everything sent.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < sent {
            match host.read(&mut buf) {
                Ok(n) => got += n,
                Err(_) => c.flush_tx().unwrap(),
            }
        }
        assert_eq!(c.fwd_cnt as usize, sent);
        assert_eq!(c.desired_interest(), EventSet::IN);
    }

    #[test]
    fn eof_and_shutdown() {
        let (mut c, host) = pair();
        let mut scratch = vec![0u8; 1024];
        next(&mut c, &mut scratch).unwrap();
        drop(host);
        c.set_hup();
        let (h, _) = next(&mut c, &mut scratch).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
        assert!(!c.has_rx_work());
        c.peer_shutdown(SHUTDOWN_BOTH).unwrap();
        assert!(c.fully_closed());
        assert!(c.recv_data(b"x").is_err());
    }
}
