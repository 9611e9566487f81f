//! The 8250 UART at 0x3f8 (vm-superio's `Serial`): its output goes into the console log file,
//! bounded in size; its interrupt is an eventfd registered as irqfd for IRQ 4.

use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::stats::VmStats;

/// Errors creating the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The console log could not be created.
    #[error("cannot create the console log {path}")]
    Create {
        /// The log's path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The interrupt eventfd could not be created.
    #[error("cannot create the serial interrupt eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The console log: the first `max` bytes the guest writes; the rest is counted and dropped.
pub struct ConsoleLog<W: Write = File> {
    out: LineWriter<W>,
    written: u64,
    max: u64,
    stats: Arc<VmStats>,
}

impl ConsoleLog<File> {
    /// Creates (truncates) the log at `path`.
    pub fn create(path: &Path, max: u64, stats: Arc<VmStats>) -> Result<Self, SerialError> {
        let file = File::create(path).map_err(|source| SerialError::Create {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::new(file, max, stats))
    }
}

impl<W: Write> ConsoleLog<W> {
    /// A log writing into `out`.
    pub fn new(out: W, max: u64, stats: Arc<VmStats>) -> Self {
        Self {
            out: LineWriter::new(out),
            written: 0,
            max,
            stats,
        }
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        self.out.get_ref()
    }
}

impl<W: Write> Write for ConsoleLog<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max.saturating_sub(self.written);
        let keep = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if keep > 0 {
            self.out.write_all(&buf[..keep])?;
            self.written += keep as u64;
        }
        self.stats
            .console_dropped_bytes
            .add((buf.len() - keep) as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// An eventfd as the UART's interrupt line.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART on the port-I/O bus.
pub struct SerialDevice<W: Write = File> {
    serial: Serial<IrqTrigger, NoEvents, ConsoleLog<W>>,
}

impl<W: Write> SerialDevice<W> {
    /// A UART writing into `log`, interrupting through a new eventfd.
    pub fn new(log: ConsoleLog<W>) -> Result<Self, SerialError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        Ok(Self {
            serial: Serial::new(IrqTrigger(evt), log),
        })
    }

    /// The interrupt eventfd, to register as irqfd.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }

    /// Flushes the console log.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.serial.writer_mut().flush()
    }

    /// The console log.
    pub fn log(&self) -> &ConsoleLog<W> {
        self.serial.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.serial.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let ([byte], Ok(offset)) = (data, u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.serial.write(offset, *byte) {
            tracing::debug!(error = ?e, "serial write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(max: u64) -> (SerialDevice<Vec<u8>>, Arc<VmStats>) {
        let stats = Arc::new(VmStats::default());
        let log = ConsoleLog::new(Vec::new(), max, stats.clone());
        (SerialDevice::new(log).unwrap(), stats)
    }

    #[test]
    fn output_is_bounded() {
        let (mut dev, stats) = device(4);
        for b in b"hello\n" {
            dev.write(0, &[*b]);
        }
        dev.flush().unwrap();
        assert_eq!(dev.log().get_ref().as_slice(), b"hell");
        assert_eq!(stats.console_dropped_bytes.get(), 2);
    }

    #[test]
    fn ignores_wide_accesses() {
        let (mut dev, _) = device(100);
        dev.write(0, b"ab");
        let mut data = [7u8; 2];
        dev.read(5, &mut data);
        assert_eq!(data, [7, 7]);
        dev.flush().unwrap();
        assert!(dev.log().get_ref().is_empty());
        // Line status register: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
