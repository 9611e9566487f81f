//! The control socket (`--control-uds`): the host swaps the backing files of the disk slots
//! (`--disk-slots`) while the guest runs (docs/vmm-control.md).
//!
//! virtio-mmio has no hotplug, so a VM that needs disks after boot (a pod's later containers)
//! gets empty read-only slots at boot and the host fills them here. A request is one JSON object
//! on one line, sent in one message, with the new backing file as an `SCM_RIGHTS` fd (the jailed
//! VMM cannot open host files; the host opens it and hands the descriptor over):
//!
//! ```text
//! -> {"swap_disk":{"slot":0}}        + fd: the slot now serves that file
//! -> {"swap_disk":{"slot":0}}        no fd: the slot is empty again (eject)
//! <- {"ok":{"capacity":2048}}        the slot's new size in 512-byte sectors
//! <- {"error":"..."}
//! ```
//!
//! The socket is served on the event-loop thread, between device events; a swap takes the
//! slot's device lock, so no request of the guest is half-served across it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::devices::virtio::block::Block;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Longest request accepted.
const MAX_REQUEST: usize = 4096;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("cannot listen on the control socket {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A request on the control socket.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Puts the file sent with the request behind this slot, or empties it (no file).
    SwapDisk {
        /// The slot, 0 for the first `--disk-slots` disk.
        slot: usize,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok {
        /// The slot's capacity now, in 512-byte sectors.
        capacity: u64,
    },
    /// Not done, and why.
    Error(String),
}

/// The control socket's listener and connections, on the event loop.
pub struct Control {
    listener: UnixListener,
    slots: Vec<Arc<Mutex<Block>>>,
    connections: Vec<UnixStream>,
}

impl Control {
    /// Listens on `path` (created here; an old socket file there is replaced).
    pub fn new(path: &Path, slots: Vec<Arc<Mutex<Block>>>) -> Result<Self, ControlError> {
        let listen_err = |source| ControlError::Listen {
            path: path.to_owned(),
            source,
        };
        // An old socket there is replaced; any other file is not touched (bind fails on it).
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                std::fs::remove_file(path).map_err(listen_err)?;
            }
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Self {
            listener,
            slots,
            connections: Vec::new(),
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                warn!(error = %e, "control: accept failed");
                return;
            }
        };
        if self.connections.len() >= MAX_CONNECTIONS {
            warn!("control: too many connections, closing the new one");
            return;
        }
        // A client that does not read its replies must not stall the event loop: a reply that
        // does not fit in the socket's buffer ends the connection instead.
        if let Err(e) = stream.set_nonblocking(true) {
            warn!(error = %e, "control: cannot make a connection non-blocking");
            return;
        }
        if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
            warn!(error = ?e, "control: cannot watch a connection");
            return;
        }
        self.connections.push(stream);
    }

    /// Serves one request of the connection `fd`; closes it at its end or on an error.
    fn serve(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(index) = self.connections.iter().position(|c| c.as_raw_fd() == fd) else {
            warn!(fd, "control: event for an unknown fd");
            return;
        };
        let mut buf = [0u8; MAX_REQUEST];
        let received = self.connections[index].recv_with_fd(&mut buf);
        let (reply, open) = match received {
            Ok((0, _)) => (None, false),
            Ok((n, file)) => (Some(self.handle(&buf[..n], file)), true),
            Err(e) if e.errno() == libc::EAGAIN => return,
            // E.g. no descriptor left for the one sent (ENOBUFS): say so, then close.
            Err(e) => (
                Some(Reply::Error(format!("cannot receive the request: {e}"))),
                false,
            ),
        };
        let mut open = open;
        if let Some(reply) = reply {
            let mut line = serde_json::to_vec(&reply).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = self.connections[index].write_all(&line) {
                debug!(error = %e, "control: cannot reply, closing the connection");
                open = false;
            }
        }
        if !open {
            let stream = self.connections.swap_remove(index);
            let _ = ops.remove(Events::new(&stream, EventSet::IN));
        }
    }

    fn handle(&self, bytes: &[u8], file: Option<File>) -> Reply {
        let request: Request = match serde_json::from_slice(bytes.trim_ascii_end()) {
            Ok(request) => request,
            Err(e) => return Reply::Error(format!("malformed request: {e}")),
        };
        let Request::SwapDisk { slot } = request;
        let Some(block) = self.slots.get(slot) else {
            return Reply::Error(format!(
                "no disk slot {slot} (the VM has {})",
                self.slots.len()
            ));
        };
        let filled = file.is_some();
        let result = block.lock().unwrap_or_else(|p| p.into_inner()).swap(file);
        match result {
            Ok(capacity) => {
                info!(slot, capacity, filled, "control: disk slot swapped");
                Reply::Ok { capacity }
            }
            Err(e) => Reply::Error(crate::error_line(&e)),
        }
    }
}

impl MutEventSubscriber for Control {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
        } else {
            self.serve(events.fd(), ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            warn!(error = ?e, "control: cannot watch the listener");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use event_manager::{EventManager, SubscriberOps};
    use vmm_sys_util::tempdir::TempDir;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn setup(dir: &TempDir, slots: usize) -> (Manager, Vec<Arc<Mutex<Block>>>, PathBuf) {
        let path = dir.as_path().join("control.sock");
        let slots: Vec<_> = (0..slots)
            .map(|i| {
                let empty = TempFile::new().unwrap().into_file();
                Arc::new(Mutex::new(Block::slot(i, empty).unwrap()))
            })
            .collect();
        let control = Control::new(&path, slots.clone()).unwrap();
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(control)));
        (manager, slots, path)
    }

    /// Sends `request` (with `fd`), runs the loop until the reply is there, returns it.
    fn call(manager: &mut Manager, client: &UnixStream, request: &str, fd: Option<RawFd>) -> Reply {
        match fd {
            Some(fd) => client.send_with_fd(request.as_bytes(), fd).unwrap(),
            None => (&*client).write(request.as_bytes()).unwrap(),
        };
        manager.run_with_timeout(1000).unwrap();
        let mut line = String::new();
        BufReader::new(client).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn swap_in_eject_and_errors() {
        let dir = TempDir::new().unwrap();
        let (mut manager, slots, path) = setup(&dir, 2);
        let client = UnixStream::connect(&path).unwrap();
        manager.run_with_timeout(1000).unwrap();
        let disk = TempFile::new().unwrap();
        disk.as_file().set_len(8 * 512).unwrap();
        let fd = disk.as_file().as_raw_fd();

        let swap = |slot: usize| format!("{{\"swap_disk\":{{\"slot\":{slot}}}}}\n");
        let reply = call(&mut manager, &client, &swap(1), Some(fd));
        assert_eq!(reply, Reply::Ok { capacity: 8 });
        assert_eq!(slots[1].lock().unwrap().capacity(), 8);
        assert_eq!(slots[0].lock().unwrap().capacity(), 0);
        let reply = call(&mut manager, &client, &swap(1), None);
        assert_eq!(reply, Reply::Ok { capacity: 0 });

        let Reply::Error(e) = call(&mut manager, &client, &swap(2), Some(fd)) else {
            panic!("slot 2 of 2")
        };
        assert_eq!(e, "no disk slot 2 (the VM has 2)");
        let Reply::Error(e) = call(&mut manager, &client, "{\"eject\":1}", None) else {
            panic!("unknown request")
        };
        assert!(e.starts_with("malformed request"), "{e}");
        disk.as_file().set_len(700).unwrap();
        let Reply::Error(e) = call(&mut manager, &client, &swap(0), Some(fd)) else {
            panic!("700 bytes")
        };
        assert!(e.contains("not a multiple of 512"), "{e}");
        assert_eq!(slots[0].lock().unwrap().capacity(), 0);
    }

    #[test]
    fn connections_beyond_the_limit_are_closed() {
        let dir = TempDir::new().unwrap();
        let (mut manager, _slots, path) = setup(&dir, 1);
        let clients: Vec<_> = (0..=MAX_CONNECTIONS)
            .map(|_| {
                let c = UnixStream::connect(&path).unwrap();
                manager.run_with_timeout(1000).unwrap();
                c
            })
            .collect();
        let mut byte = [0u8; 1];
        let last = clients.last().unwrap();
        last.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(std::io::Read::read(&mut &*last, &mut byte).unwrap(), 0);
        // A closed client frees its place.
        drop(clients);
        manager.run_with_timeout(100).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        manager.run_with_timeout(1000).unwrap();
        let reply = call(&mut manager, &client, "{\"swap_disk\":{\"slot\":0}}", None);
        assert_eq!(reply, Reply::Ok { capacity: 0 });
    }
}
