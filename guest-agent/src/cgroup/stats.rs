//! A container cgroup's counters for `Stats` (the shim's `ctr task metrics`, CRI's
//! ContainerStats): cgroup v2's flat-keyed files read as they are. A file the kernel does not
//! have (a controller that is not enabled) reads as empty: the counters are a report, not a
//! check.

use std::collections::BTreeMap;
use std::path::Path;

use moat_protocol::CgroupStats;

/// The counters of the cgroup at `dir`.
pub fn read(dir: &Path) -> CgroupStats {
    let text = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    CgroupStats {
        cpu: flat_keyed(&text("cpu.stat")),
        memory_current: single(&text("memory.current")).unwrap_or(0),
        memory_max: single(&text("memory.max")),
        swap_current: single(&text("memory.swap.current")).unwrap_or(0),
        swap_max: single(&text("memory.swap.max")),
        memory: flat_keyed(&text("memory.stat")),
        memory_events: flat_keyed(&text("memory.events")),
        pids_current: single(&text("pids.current")).unwrap_or(0),
        pids_max: single(&text("pids.max")),
        io: nested_keyed(&text("io.stat")),
    }
}

/// A one-value file (`memory.current`, `pids.max`): `None` for `max` or nothing.
fn single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `key value` lines (`cpu.stat`, `memory.stat`).
fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `MAJ:MIN key=value ...` lines (`io.stat`).
fn nested_keyed(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?.to_owned();
            let values = fields
                .filter_map(|f| {
                    let (k, v) = f.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect();
            Some((device, values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_are_read_as_the_kernel_writes_them() {
        let dir = std::env::temp_dir().join(format!("moat-agent-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 1024\nfile 2048\ninactive_file 512\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
            (
                "io.stat",
                "254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let stats = read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(stats.cpu["usage_usec"], 1500);
        assert_eq!(stats.memory_current, 4096);
        assert_eq!(stats.memory_max, None);
        assert_eq!(stats.swap_current, 0, "no swap file reads as 0");
        assert_eq!(stats.memory["inactive_file"], 512);
        assert_eq!(stats.memory_events["oom_kill"], 1);
        assert_eq!((stats.pids_current, stats.pids_max), (3, Some(64)));
        assert_eq!(stats.io["254:0"]["rbytes"], 4096);
    }
}
