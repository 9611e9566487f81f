//! The host side of the device: routes guest packets to connections, accepts host clients on
//! the listening socket, and picks the next packet for the guest's receive queue.
//!
//! Hybrid-vsock convention (as in Firecracker):
//! - the guest connects to CID 2 port P: the muxer connects to the Unix socket `<uds>_P` and
//!   answers RESPONSE, or RST when nobody listens there;
//! - a host client connects to `<uds>` and writes `CONNECT <port>\n`: the muxer sends REQUEST to
//!   that guest port and, on RESPONSE, writes `OK <host port>\n` back to the client; on RST or
//!   timeout it closes the client.
//!
//! The muxer never touches epoll itself: it records the needed changes as [`FdOp`]s, which the
//! event handler applies (and only then drops the removed sockets).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnError, ConnKey, Connection, State};
use super::packet::*;
use super::uds::connect_nonblocking;

/// Most connections (both directions) at a time; each may buffer up to `CONN_BUF_SIZE`.
pub const MAX_CONNECTIONS: usize = 64;
/// Most host clients that have not yet sent their `CONNECT` line.
const MAX_PENDING_CLIENTS: usize = 16;
/// Longest accepted `CONNECT` line.
const MAX_CONNECT_LINE: usize = 32;
/// RSTs for unknown connections waiting for receive buffers; past this, the device stops
/// taking guest packets until the guest provides receive buffers.
const MAX_RST_BACKLOG: usize = 256;
/// How long a host-initiated REQUEST, a `CONNECT` line or a close with undelivered data may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Errors of the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Binding the listening socket failed.
    #[error("failed to listen on {path}")]
    Bind {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A change of the epoll registration of a socket.
#[derive(Debug)]
pub enum FdOp {
    /// Start watching `fd`.
    Add(RawFd, EventSet),
    /// Change what `fd` is watched for.
    Modify(RawFd, EventSet),
    /// Stop watching `fd`, then drop the stream that owns it (if given).
    Remove(RawFd, Option<UnixStream>),
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Pending,
    Conn(ConnKey),
}

#[derive(Debug)]
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The connection multiplexer.
#[derive(Debug)]
pub struct Muxer {
    cid: u64,
    uds_base: OsString,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    pending: HashMap<RawFd, PendingClient>,
    sources: HashMap<RawFd, Source>,
    rx_queue: VecDeque<ConnKey>,
    rst_queue: VecDeque<Header>,
    fd_ops: Vec<FdOp>,
    next_local_port: u32,
    scratch: Vec<u8>,
}

impl Muxer {
    /// Listens on `uds_path` for host-initiated connections to guest `cid`.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let bind_err = |source| MuxerError::Bind {
            path: uds_path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            cid,
            uds_base: uds_path.as_os_str().to_owned(),
            listener,
            conns: HashMap::new(),
            pending: HashMap::new(),
            sources: HashMap::new(),
            rx_queue: VecDeque::new(),
            rst_queue: VecDeque::new(),
            fd_ops: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0u8; MAX_PKT_PAYLOAD],
        })
    }

    /// The listening socket, to watch for readability.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Whether `fd` is a socket of this muxer.
    pub fn owns_fd(&self, fd: RawFd) -> bool {
        self.sources.contains_key(&fd)
    }

    /// Epoll changes made since the last call.
    pub fn take_fd_ops(&mut self) -> Vec<FdOp> {
        std::mem::take(&mut self.fd_ops)
    }

    /// Whether the guest's receive queue has packets waiting.
    pub fn has_rx_work(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_queue.is_empty()
    }

    /// Whether the device must stop taking guest packets until the receive side drains.
    pub fn rx_backlog_full(&self) -> bool {
        self.rst_queue.len() >= MAX_RST_BACKLOG
    }

    fn push_rst(&mut self, hdr: &Header) {
        if hdr.op != OP_RST {
            self.rst_queue.push_back(hdr.reset_reply());
        }
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Accepts every waiting host client.
    pub fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!("vsock: accept failed: {e}");
                    }
                    return;
                }
            };
            let full =
                self.pending.len() >= MAX_PENDING_CLIENTS || self.conns.len() >= MAX_CONNECTIONS;
            if full || stream.set_nonblocking(true).is_err() {
                tracing::warn!("vsock: refusing a host client: too many connections");
                continue;
            }
            let fd = stream.as_raw_fd();
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            self.pending.insert(
                fd,
                PendingClient {
                    stream,
                    line: Vec::new(),
                    deadline,
                },
            );
            self.sources.insert(fd, Source::Pending);
            self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
        }
    }

    /// A watched socket (not the listener) reported `set`.
    pub fn handle_fd_event(&mut self, fd: RawFd, set: EventSet) {
        match self.sources.get(&fd) {
            Some(Source::Pending) => self.read_connect_line(fd),
            Some(Source::Conn(key)) => {
                let key = *key;
                self.conn_event(key, set);
            }
            None => tracing::debug!("vsock: event on unknown fd {fd}"),
        }
    }

    fn drop_pending(&mut self, fd: RawFd) {
        self.sources.remove(&fd);
        if let Some(p) = self.pending.remove(&fd) {
            self.fd_ops.push(FdOp::Remove(fd, Some(p.stream)));
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        // Byte by byte, so that data after the line stays in the socket for the guest.
        let mut b = [0u8; 1];
        let done = loop {
            match p.stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break true,
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => break false,
            }
        };
        let port = done.then(|| parse_connect(&p.line)).flatten();
        match port {
            Some(port) if self.conns.len() < MAX_CONNECTIONS => self.start_local_connect(fd, port),
            _ => {
                tracing::debug!("vsock: bad or refused CONNECT line from a host client");
                self.drop_pending(fd);
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&ConnKey {
                local_port: port,
                peer_port,
            }) {
                return port;
            }
        }
    }

    fn start_local_connect(&mut self, fd: RawFd, peer_port: u32) {
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let local_port = self.alloc_local_port(peer_port);
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let mut conn = Connection::local_init(p.stream, key, Instant::now() + CONNECT_TIMEOUT);
        conn.registered = true;
        conn.interest = EventSet::IN;
        self.sources.insert(fd, Source::Conn(key));
        self.conns.insert(key, conn);
        self.after(key);
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Epoll reports these whatever the interest: stop watching, read what is left.
            conn.set_hup();
            conn.registered = false;
            self.fd_ops
                .push(FdOp::Remove(conn.stream.as_raw_fd(), None));
        } else if set.contains(EventSet::IN) {
            conn.set_readable();
        }
        if conn.state == State::Established && set.intersects(EventSet::OUT | EventSet::HANG_UP) {
            if let Err(e) = conn.flush_tx() {
                tracing::debug!("vsock: connection {key:?}: {e}");
                conn.kill();
            }
        }
        self.after(key);
    }

    /// Handles one packet from the guest; `payload` holds at least `hdr.len` bytes.
    pub fn recv_pkt(&mut self, hdr: &Header, payload: &mut dyn Read) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            self.reset(hdr);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op == OP_REQUEST {
                self.peer_connect(key, hdr);
            } else {
                self.push_rst(hdr);
            }
            return;
        };
        conn.update_peer_credit(hdr);
        let res = match (hdr.op, conn.state) {
            (OP_RST, _) => {
                self.remove(key);
                return;
            }
            (_, State::Killed) => Ok(()),
            (OP_RESPONSE, State::LocalInit) => conn.establish(),
            (OP_RW, State::Established) => {
                let buf = &mut self.scratch[..hdr.len as usize];
                match payload.read_exact(buf) {
                    Ok(()) => conn.recv_data(buf),
                    Err(e) => Err(ConnError::Payload(e)),
                }
            }
            (OP_SHUTDOWN, State::Established) => conn.peer_shutdown(hdr.flags),
            (OP_CREDIT_UPDATE, _) => Ok(()),
            (OP_CREDIT_REQUEST, State::Established) => {
                conn.request_credit_update();
                Ok(())
            }
            _ => Err(ConnError::Protocol(hdr.op)),
        };
        if let Err(e) = res {
            tracing::debug!("vsock: connection {key:?}: {e}");
            conn.kill();
        }
        self.after(key);
    }

    /// Resets the connection a malformed packet belongs to (or answers RST if there is none).
    pub fn reset(&mut self, hdr: &Header) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.kill();
                self.after(key);
            }
            None => self.push_rst(hdr),
        }
    }

    fn peer_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!(
                "vsock: refusing guest connection to port {}: limit",
                key.local_port
            );
            self.push_rst(hdr);
            return;
        }
        let mut path = self.uds_base.clone();
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connection to port {}: {e}", key.local_port);
                self.push_rst(hdr);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let mut conn = Connection::peer_init(stream, key, hdr);
        conn.registered = true;
        conn.interest = conn.desired_interest();
        self.fd_ops.push(FdOp::Add(fd, conn.interest));
        self.sources.insert(fd, Source::Conn(key));
        self.conns.insert(key, conn);
        self.after(key);
    }

    /// Brings a connection's close state, epoll interest and queue membership up to date.
    fn after(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.closed {
            self.remove(key);
            return;
        }
        if conn.state == State::Established {
            if conn.fully_closed() {
                conn.kill();
            } else if conn.closing() && conn.deadline.is_none() {
                conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
            }
        }
        let want = conn.desired_interest();
        if conn.registered && want != conn.interest {
            conn.interest = want;
            self.fd_ops
                .push(FdOp::Modify(conn.stream.as_raw_fd(), want));
        }
        if !conn.queued && conn.has_rx_work() {
            conn.queued = true;
            self.rx_queue.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        self.sources.remove(&fd);
        if conn.registered {
            self.fd_ops.push(FdOp::Remove(fd, Some(conn.stream)));
        }
    }

    /// The driver reset the device: every connection is dropped without telling the guest
    /// (its driver state is gone); host clients still waiting for their `CONNECT` line stay.
    pub fn reset_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rx_queue.clear();
        self.rst_queue.clear();
    }

    /// Writes the next packet for the guest into `w` (which holds `cap >= HDR_SIZE` bytes).
    /// Returns its length, or `None` when nothing is waiting.
    pub fn fill_rx(&mut self, w: &mut dyn Write, cap: usize) -> Option<usize> {
        if cap < HDR_SIZE {
            return None;
        }
        if let Some(h) = self.rst_queue.pop_front() {
            if w.write_all(&h.encode()).is_err() {
                tracing::warn!("vsock: failed to write a packet into guest memory");
            }
            return Some(HDR_SIZE);
        }
        while let Some(key) = self.rx_queue.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let n = conn.fill_rx(w, cap, self.cid, &mut self.scratch);
            self.after(key);
            if n.is_some() {
                return n;
            }
        }
        None
    }

    /// The earliest pending deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.deadline);
        conns.chain(self.pending.values().map(|p| p.deadline)).min()
    }

    /// Gives up on requests, `CONNECT` lines and closes that are past their deadline.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            self.drop_pending(fd);
        }
        let late: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.key)
            .collect();
        for key in late {
            tracing::debug!("vsock: connection {key:?} timed out");
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.kill();
            }
            self.after(key);
        }
    }
}

/// Parses `CONNECT <port>` (the newline already stripped; a trailing `\r` is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = line.strip_prefix("CONNECT ")?;
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
