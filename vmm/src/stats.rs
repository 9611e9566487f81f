//! Counters of VM exits by type and of dropped console bytes, written as JSON at exit.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the VMM counts, shared by the vCPU threads and devices.
#[derive(Debug, Default)]
pub struct VmStats {
    /// `KVM_EXIT_IO` reads.
    pub io_in: Counter,
    /// `KVM_EXIT_IO` writes.
    pub io_out: Counter,
    /// `KVM_EXIT_MMIO` reads.
    pub mmio_read: Counter,
    /// `KVM_EXIT_MMIO` writes.
    pub mmio_write: Counter,
    /// Port accesses no device claimed.
    pub io_unhandled: Counter,
    /// MMIO accesses no device claimed.
    pub mmio_unhandled: Counter,
    /// `KVM_EXIT_HLT`.
    pub hlt: Counter,
    /// `KVM_EXIT_SHUTDOWN` (triple fault).
    pub shutdown: Counter,
    /// `KVM_EXIT_FAIL_ENTRY`.
    pub fail_entry: Counter,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    pub internal_error: Counter,
    /// `KVM_EXIT_SYSTEM_EVENT`.
    pub system_event: Counter,
    /// `KVM_RUN` returned early (`KVM_EXIT_INTR`, `EINTR`, `EAGAIN`).
    pub intr: Counter,
    /// Any other exit reason.
    pub other: Counter,
    /// Console bytes dropped because the console log reached its limit.
    pub console_dropped_bytes: Counter,
}

impl VmStats {
    fn fields(&self) -> [(&'static str, &Counter); 14] {
        [
            ("io_in", &self.io_in),
            ("io_out", &self.io_out),
            ("mmio_read", &self.mmio_read),
            ("mmio_write", &self.mmio_write),
            ("io_unhandled", &self.io_unhandled),
            ("mmio_unhandled", &self.mmio_unhandled),
            ("hlt", &self.hlt),
            ("shutdown", &self.shutdown),
            ("fail_entry", &self.fail_entry),
            ("internal_error", &self.internal_error),
            ("system_event", &self.system_event),
            ("intr", &self.intr),
            ("other", &self.other),
            ("console_dropped_bytes", &self.console_dropped_bytes),
        ]
    }

    /// Exits of every kind together (dropped console bytes excluded).
    pub fn total_exits(&self) -> u64 {
        self.fields()
            .iter()
            .filter(|(name, _)| !name.ends_with("unhandled") && *name != "console_dropped_bytes")
            .map(|(_, c)| c.get())
            .sum()
    }

    /// The counters as one JSON object, with `total_exits` first, then each device's counters
    /// under `devices`.
    pub fn to_json(&self, devices: &[DeviceCounters]) -> String {
        let mut out = format!("{{\"total_exits\":{}", self.total_exits());
        for (name, counter) in self.fields() {
            out.push_str(&format!(",\"{name}\":{}", counter.get()));
        }
        out.push_str(",\"devices\":{");
        for (i, device) in devices.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            out.push_str(&format!("{sep}\"{}\":{{", device.name));
            for (j, (name, value)) in device.counters.iter().enumerate() {
                let sep = if j == 0 { "" } else { "," };
                out.push_str(&format!("{sep}\"{name}\":{value}"));
            }
            out.push('}');
        }
        out.push_str("}}\n");
        out
    }
}

/// A device's counters at one moment, for the stats file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The device's name (`vda`, `vsock`); plain ASCII, no quotes.
    pub name: String,
    /// Counter names and values.
    pub counters: Vec<(&'static str, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_every_counter() {
        let s = VmStats::default();
        s.io_out.add(3);
        s.mmio_read.inc();
        s.io_unhandled.inc();
        let vda = DeviceCounters {
            name: "vda".into(),
            counters: vec![("requests", 2), ("x", 1)],
        };
        let json = s.to_json(&[vda]);
        assert!(json.starts_with("{\"total_exits\":4,\"io_in\":0,\"io_out\":3,"));
        assert!(
            json.ends_with(",\"devices\":{\"vda\":{\"requests\":2,\"x\":1}}}\n"),
            "{json}"
        );
        assert!(s.to_json(&[]).ends_with(",\"devices\":{}}\n"));
        for (name, _) in s.fields() {
            assert!(json.contains(&format!("\"{name}\":")), "{name} missing");
        }
    }
}
