//! The end of the VM: once every process is gone, each filesystem the agent mounted (the
//! container's overlay, its image, the writable layer's disk, the volumes) is released: a
//! writable disk filesystem's superblock is remounted read-only (in every mount namespace at
//! once), which makes ext4 write its journal out and clear its needs-recovery flag, then it is
//! unmounted; everything is synced. So no disk is left with a journal to replay, whatever way
//! the container ended.

use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

use crate::syscall::Syscall;

/// Filesystem types of the agent's own pseudo filesystems, which stay mounted to the end.
const PSEUDO: [&str; 5] = ["proc", "sysfs", "devtmpfs", "devpts", "cgroup2"];

/// Mount points that stay: the root tmpfs and /run (which holds the others' mount points).
const KEPT: [&str; 2] = ["/", "/run"];

/// How often, and how long apart, a busy unmount is tried again.
const BUSY_TRIES: u32 = 50;
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// How long the processes get to be gone after `SIGKILL`.
pub const PROCESS_GRACE: Duration = Duration::from_secs(5);

/// One line of `/proc/self/mountinfo`, as far as the end needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount point.
    pub target: String,
    /// The filesystem type.
    pub fstype: String,
    /// The mount source (a device for disk filesystems).
    pub source: String,
    /// The superblock is read-only.
    pub readonly: bool,
}

/// Parses `/proc/self/mountinfo`: `ID PARENT MAJ:MIN ROOT TARGET OPTS [OPTIONAL...] - TYPE
/// SOURCE SUPER_OPTS`, with octal escapes (`\040`) in paths.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let target = unescape(fields.get(4)?);
            let fstype = fields.get(dash + 1)?.to_string();
            let source = unescape(fields.get(dash + 2).copied().unwrap_or(""));
            let super_opts = fields.get(dash + 3).copied().unwrap_or("");
            let readonly = super_opts.split(',').next() == Some("ro");
            Some(Mount {
                target,
                fstype,
                source,
                readonly,
            })
        })
        .collect()
}

fn unescape(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the end unmounts it.
fn released(m: &Mount) -> bool {
    !PSEUDO.contains(&m.fstype.as_str()) && !KEPT.contains(&m.target.as_str())
}

/// The order mounts go in: overlays first (they sit on the disks), then the volumes (the user's
/// data, before the writable layer's disk, whose flush can take long), then the rest; each
/// group newest first.
fn rank(m: &Mount) -> u8 {
    match () {
        _ if m.fstype == "overlay" => 0,
        _ if m.target.starts_with(moat_protocol::VOLUMES_DIR) => 1,
        _ => 2,
    }
}

/// Releases every mount of `mounts` but the agent's own, in [`rank`] order. A writable disk
/// filesystem is first remounted read-only: that acts on its superblock, so in every mount
/// namespace at once (a container's copy included), and writes its journal out; then it is
/// unmounted. A busy call is tried again for a second. Syncs at the end. Returns the mount
/// points of writable disk filesystems that could not be made read-only. `pause` waits between
/// tries.
pub fn release(sys: &dyn Syscall, mounts: &[Mount], pause: &dyn Fn()) -> Vec<String> {
    let mut order: Vec<&Mount> = mounts.iter().rev().filter(|m| released(m)).collect();
    order.sort_by_key(|m| rank(m));
    let mut stuck = Vec::new();
    for m in order {
        let Ok(target) = CString::new(m.target.as_str()) else {
            continue;
        };
        let on_disk = m.source.starts_with("/dev/");
        let flags = libc::MS_REMOUNT | libc::MS_RDONLY;
        let sealed = m.readonly
            || !on_disk
            || retry(pause, || sys.mount(None, &target, None, flags, None)).is_ok();
        // Gone from the agent's namespace; what matters for the disk happened above.
        let _ = retry(pause, || sys.umount(&target));
        if !sealed {
            stuck.push(m.target.clone());
        }
    }
    sys.sync();
    stuck
}

/// Calls `f` until it is not busy, [`BUSY_TRIES`] times at most.
fn retry(pause: &dyn Fn(), f: impl Fn() -> io::Result<()>) -> io::Result<()> {
    let mut result = f();
    for _ in 1..BUSY_TRIES {
        if !is_busy(&result) {
            break;
        }
        pause();
        result = f();
    }
    result
}

fn is_busy(result: &io::Result<()>) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
}

/// Waits until no process but PID 1 is left (kernel threads and zombies aside), at most
/// `grace`. True if none is left.
pub fn wait_for_processes(grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if !any_process_left() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a user process other than PID 1 still runs: not a kernel thread (whose parent is
/// kthreadd, PID 2), and not a zombie, unless other threads of it are still exiting (a zombie
/// leader whose threads still hold the process's files and mount namespace).
fn any_process_left() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        if pid <= 2 {
            return false;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        match (state, ppid) {
            (_, Some("2" | "0")) | (None, _) | (_, None) => false,
            (Some("Z"), _) => threads(&entry.path()) > 1,
            _ => true,
        }
    })
}

/// The `Threads:` count of `/proc/N/status` (1 if it cannot be read).
fn threads(proc_dir: &std::path::Path) -> u32 {
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1)
}

/// The whole end, as PID 1 does it: wait for the killed processes, release the mounts, sync.
/// What could not be released is reported on the kernel log.
pub fn release_all(sys: &dyn Syscall) {
    if !wait_for_processes(PROCESS_GRACE) {
        crate::init::log_error("processes were still running at power-off");
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let stuck = release(sys, &parse_mountinfo(&text), &|| {
        std::thread::sleep(BUSY_PAUSE)
    });
    if !stuck.is_empty() {
        crate::init::log_error(&format!(
            "could not unmount or make read-only: {}",
            stuck.join(", ")
        ));
    }
}

#[cfg(test)]
#[path = "unmount_tests.rs"]
mod tests;
