//! An address bus: a map from non-overlapping address ranges to devices. One instance serves
//! port I/O, another MMIO. vCPU threads look a device up on every I/O exit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable on a [`Bus`]. `offset` is relative to the base the device was inserted at.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range is empty or overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Base of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Non-overlapping ranges of addresses, each served by one device.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlaps = match end {
            None => true,
            Some(end) => self
                .ranges
                .range(..end)
                .next_back()
                .is_some_and(|(b, e)| b + e.len > base),
        };
        if overlaps {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((addr - base, entry))
    }

    /// Dispatches a read; returns false when no device is at `addr` (the data is left as is).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((offset, entry)) = self.resolve(addr) else {
            return false;
        };
        // A poisoned lock means a device thread panicked; the VMM aborts on panic anyway.
        if let Ok(mut dev) = entry.device.lock() {
            dev.read(offset, data);
        }
        true
    }

    /// Dispatches a write; returns false when no device is at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((offset, entry)) = self.resolve(addr) else {
            return false;
        };
        if let Ok(mut dev) = entry.device.lock() {
            dev.write(offset, data);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert!(bus.insert(dev.clone(), 0x108, 0x10).is_err());
        assert!(bus.insert(dev.clone(), 0xf8, 0x10).is_err());
        assert!(bus.insert(dev.clone(), 0x0, 0).is_err());
        bus.insert(dev.clone(), 0x110, 0x10).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x105, &mut b));
        assert_eq!(b, [5, 5]);
        assert!(!bus.read(0x120, &mut b));
        assert!(bus.write(0x111, &[1]));
        assert_eq!(dev.lock().unwrap().0, vec![(1, vec![1])]);
    }
}
