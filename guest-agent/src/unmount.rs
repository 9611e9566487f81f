//! The end of the VM: once every process is gone, each filesystem the agent mounted (the
//! container's overlay, its image, the writable layer's disk, the volumes) is unmounted, or,
//! if something still holds it, its superblock is remounted read-only, and everything is
//! synced. Either way ext4 writes its journal out and clears its needs-recovery flag, so no
//! disk is left with a journal to replay, whatever way the container ended.

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
            let super_opts = fields.get(dash + 3).copied().unwrap_or("");
            let readonly = super_opts.split(',').next() == Some("ro");
            Some(Mount {
                target,
                fstype,
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

/// Unmounts every mount of `mounts` but the agent's own, newest first (an overlay before the
/// disks under it), trying a busy one again for a second, then remounting a writable one
/// read-only; syncs at the end. Returns the mount points that could be neither unmounted nor
/// made read-only. `pause` waits between tries.
pub fn release(sys: &dyn Syscall, mounts: &[Mount], pause: &dyn Fn()) -> Vec<String> {
    let mut stuck = Vec::new();
    for m in mounts.iter().rev().filter(|m| released(m)) {
        let Ok(target) = CString::new(m.target.as_str()) else {
            continue;
        };
        let mut result = sys.umount(&target);
        for _ in 1..BUSY_TRIES {
            if !is_busy(&result) {
                break;
            }
            pause();
            result = sys.umount(&target);
        }
        if result.is_ok() || m.readonly {
            continue;
        }
        let flags = libc::MS_REMOUNT | libc::MS_RDONLY;
        if sys.mount(None, &target, None, flags, None).is_err() {
            stuck.push(m.target.clone());
        }
    }
    sys.sync();
    stuck
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

/// Whether a user process other than PID 1 still runs (`/proc/N/stat`: state not `Z`, and not
/// a kernel thread, whose parent is kthreadd, PID 2).
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
        matches!((state, ppid), (Some(s), Some(p)) if s != "Z" && p != "2" && p != "0")
    })
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
