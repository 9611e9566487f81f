//! containerd's cgroup v2 metrics (`io.containerd.cgroups.v2.Metrics`, containerd/cgroups'
//! `cgroup2/stats/metrics.proto`) from the guest cgroup's counters, for `Stats` (`ctr task
//! metrics`, CRI's ContainerStats). The shim crate carries only the v1 message, and every field
//! of v2's is a uint64 or a message of them, so it is encoded here: field numbers as in that
//! file, zeros left out as proto3 does.

use moat_protocol::CgroupStats;

/// The type URL containerd decodes the metrics by.
pub const TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// `MemoryStat` fields 1 to 31, each named as its `memory.stat` key.
const MEMORY_STAT: [&str; 31] = [
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
];

/// `CPUStat` fields 1 to 6 by their `cpu.stat` keys.
const CPU_STAT: [&str; 6] = [
    "usage_usec",
    "user_usec",
    "system_usec",
    "nr_periods",
    "nr_throttled",
    "throttled_usec",
];

/// `MemoryEvents` fields 1 to 5 by their `memory.events` keys.
const MEMORY_EVENTS: [&str; 5] = ["low", "high", "max", "oom", "oom_kill"];

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.varint(u64::from(field) << 3);
            self.varint(v);
        }
    }

    fn message(&mut self, field: u32, m: Message) {
        self.varint((u64::from(field) << 3) | 2);
        self.varint(m.0.len() as u64);
        self.0.extend_from_slice(&m.0);
    }

    fn keyed(names: &[&str], values: &std::collections::BTreeMap<String, u64>) -> Self {
        let mut m = Self::default();
        for (i, name) in names.iter().enumerate() {
            m.uint(i as u32 + 1, values.get(*name).copied().unwrap_or(0));
        }
        m
    }
}

/// The encoded `Metrics` of `s`. A limit the cgroup does not set is `u64::MAX`, as containerd's
/// own reader reports `max`.
pub fn encode(s: &CgroupStats) -> Vec<u8> {
    let mut pids = Message::default();
    pids.uint(1, s.pids_current);
    pids.uint(2, s.pids_max.unwrap_or(u64::MAX));
    let mut memory = Message::keyed(&MEMORY_STAT, &s.memory);
    memory.uint(32, s.memory_current);
    memory.uint(33, s.memory_max.unwrap_or(u64::MAX));
    memory.uint(34, s.swap_current);
    memory.uint(35, s.swap_max.unwrap_or(u64::MAX));
    let mut io = Message::default();
    for (device, values) in &s.io {
        let (major, minor) = device.split_once(':').unwrap_or((device, "0"));
        let mut entry = Message::default();
        entry.uint(1, major.parse().unwrap_or(0));
        entry.uint(2, minor.parse().unwrap_or(0));
        for (i, key) in ["rbytes", "wbytes", "rios", "wios"].iter().enumerate() {
            entry.uint(i as u32 + 3, values.get(*key).copied().unwrap_or(0));
        }
        io.message(1, entry);
    }
    let mut metrics = Message::default();
    metrics.message(1, pids);
    metrics.message(2, Message::keyed(&CPU_STAT, &s.cpu));
    metrics.message(4, memory);
    metrics.message(6, io);
    metrics.message(8, Message::keyed(&MEMORY_EVENTS, &s.memory_events));
    metrics.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_encoded_with_v2_field_numbers() {
        let mut s = CgroupStats {
            pids_current: 3,
            pids_max: Some(300),
            memory_current: 1,
            memory_max: Some(2),
            swap_max: Some(0),
            ..CgroupStats::default()
        };
        s.cpu.insert("user_usec".into(), 5);
        s.memory.insert("file".into(), 7);
        s.io.insert("254:1".into(), [("wbytes".to_owned(), 9)].into());
        s.memory_events.insert("oom_kill".into(), 1);
        let expected: Vec<u8> = [
            &[0x0a, 5, 0x08, 3, 0x10, 0xac, 0x02][..], // pids {1: 3, 2: 300}
            &[0x12, 2, 0x10, 5],                       // cpu {2: 5}
            &[0x22, 8, 0x10, 7, 0x80, 0x02, 1, 0x88, 0x02, 2], // memory {2: 7, 32: 1, 33: 2}
            &[0x32, 9, 0x0a, 7, 0x08, 0xfe, 0x01, 0x10, 0x01, 0x20, 9], // io {1: {254, 1, 4: 9}}
            &[0x42, 2, 0x28, 1],                       // memory_events {5: 1}
        ]
        .concat();
        assert_eq!(encode(&s), expected);
    }
}
