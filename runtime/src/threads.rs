//! What a VM that does not come up is doing, for the line of a boot that timed out: its
//! process tree's threads from `/proc` (a vCPU thread that burns CPU is a guest that spins; one
//! that sleeps is a guest that waits for an interrupt or a device), and KVM's counters of its
//! VM from debugfs, where mounted (which exits it is taking, how fast).

use std::fmt::Write as _;
use std::path::Path;

/// At most this many processes are described (the VMM, its jailer, nothing else expected).
const MAX_PROCESSES: usize = 8;

/// `name state cpu-seconds` of every thread of `pid` and its descendants, e.g.
/// `moat-vmm S 0.01s, vcpu0 R 118.20s, event-loop S 0.00s`; empty if `/proc` says nothing.
pub fn summary(pid: i32) -> String {
    summary_in(Path::new("/proc"), pid, ticks_per_second())
}

fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

fn summary_in(proc: &Path, pid: i32, hz: u64) -> String {
    let mut pending = vec![pid];
    let mut seen = Vec::new();
    let mut out = String::new();
    while let Some(pid) = pending.pop() {
        if seen.len() >= MAX_PROCESSES || seen.contains(&pid) {
            continue;
        }
        seen.push(pid);
        let tasks = proc.join(pid.to_string()).join("task");
        let Ok(entries) = std::fs::read_dir(&tasks) else {
            continue;
        };
        let mut tids: Vec<i32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            let task = tasks.join(tid.to_string());
            if let Some(line) = std::fs::read_to_string(task.join("stat"))
                .ok()
                .and_then(|s| describe(&s, hz))
            {
                if !out.is_empty() {
                    out.push_str(", ");
                }
                out.push_str(&line);
            }
            let children = std::fs::read_to_string(task.join("children")).unwrap_or_default();
            pending.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// `comm state seconds` from one `stat` line (`pid (comm) state ... utime stime ...`).
fn describe(stat: &str, hz: u64) -> Option<String> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), utime 14 and stime 15.
    let state = fields.first()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let mut line = String::new();
    let _ = write!(
        line,
        "{comm} {state} {}.{:02}s",
        ticks / hz,
        (ticks % hz) * 100 / hz
    );
    Some(line)
}

/// KVM's exit counters of `pid`'s VMs that moved during `window`, per second, highest first
/// (e.g. `exits 51200/s, io_exits 51000/s`); empty without debugfs or when nothing moved.
pub fn kvm_rates(pid: i32, window: std::time::Duration) -> String {
    kvm_rates_in(Path::new("/sys/kernel/debug/kvm"), pid, window)
}

fn kvm_rates_in(debugfs: &Path, pid: i32, window: std::time::Duration) -> String {
    let prefix = format!("{pid}-");
    let dirs: Vec<_> = std::fs::read_dir(debugfs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    let before: Vec<_> = dirs.iter().map(|d| counters(d)).collect();
    if before.iter().all(Vec::is_empty) {
        return String::new();
    }
    std::thread::sleep(window);
    let secs = window.as_secs_f64().max(0.001);
    let mut moved: Vec<(String, u64)> = Vec::new();
    for (dir, before) in dirs.iter().zip(before) {
        for (name, now) in counters(dir) {
            let was = before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(now, |(_, v)| *v);
            let rate = (now.saturating_sub(was) as f64 / secs) as u64;
            if rate > 0 {
                moved.push((name, rate));
            }
        }
    }
    moved.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let shown: Vec<String> = moved
        .iter()
        .take(8)
        .map(|(n, r)| format!("{n} {r}/s"))
        .collect();
    shown.join(", ")
}

/// The numeric files of one KVM debugfs directory.
fn counters(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let value = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stat_line() {
        let stat = "42 (vcpu 0) R 1 42 42 0 -1 4194560 0 0 0 0 11820 3 0 0 20 0 3 0 1 2 3";
        assert_eq!(describe(stat, 100).as_deref(), Some("vcpu 0 R 118.23s"));
        assert_eq!(describe("42 (x) S", 100), None);
    }

    #[test]
    fn this_process_and_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id() as i32;
        // The child shows up under the spawning thread's `children`, which is this one.
        let mut found = String::new();
        for _ in 0..100 {
            found = summary(me);
            if found.contains("sleep S") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains("sleep S 0."), "{found}");
        assert!(found.split(", ").count() >= 2, "{found}");
        assert_eq!(summary_in(Path::new("/nonexistent"), me, 100), "");
    }

    #[test]
    fn kvm_counters_that_move() {
        let tmp = crate::testutil::TempDir::new("kvm-debugfs");
        let vm = tmp.path().join("42-11");
        std::fs::create_dir(&vm).unwrap();
        std::fs::create_dir(tmp.path().join("421-12")).unwrap();
        std::fs::write(vm.join("exits"), "100\n").unwrap();
        std::fs::write(vm.join("halt_exits"), "7\n").unwrap();
        std::fs::create_dir(vm.join("vcpu0")).unwrap();
        let dir = vm.clone();
        let bump = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::fs::write(dir.join("exits"), "300\n").unwrap();
        });
        let window = std::time::Duration::from_millis(200);
        let rates = kvm_rates_in(tmp.path(), 42, window);
        bump.join().unwrap();
        assert_eq!(rates, "exits 1000/s");
        assert_eq!(kvm_rates_in(tmp.path(), 7, window), "");
        assert_eq!(kvm_rates_in(&tmp.path().join("none"), 42, window), "");
    }
}
