use std::cell::Cell;

use super::*;
use crate::syscall::mock::Recorder;

/// What the guest's mountinfo looks like with a container root, its writable layer's disk and
/// two volumes (one read-only).
const MOUNTINFO: &str = "\
17 1 0:16 / / rw,relatime - tmpfs tmpfs rw,size=64k
18 17 0:17 / /proc rw,nosuid,nodev,noexec - proc proc rw
19 17 0:18 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
20 17 0:5 / /dev rw,nosuid,noexec - devtmpfs devtmpfs rw,mode=755
21 20 0:19 / /dev/pts rw,nosuid,noexec - devpts devpts rw,gid=5
22 19 0:20 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw
23 17 0:21 / /run rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k
24 23 254:16 / /run/moat-volumes/0 rw - ext4 /dev/vdb rw
25 23 254:32 / /run/moat-volumes/my\\040vol ro - ext4 /dev/vdc ro
26 23 254:0 / /run/moat/lower ro - ext4 /dev/vda ro
27 23 0:22 / /run/moat/skel rw - tmpfs tmpfs rw,size=64k
28 23 254:48 / /run/moat/rw rw,nosuid,nodev shared:5 master:1 - ext4 /dev/vdd rw
29 23 0:23 / /run/moat/root rw - overlay overlay rw,lowerdir=/run/moat/lower
";

#[test]
fn parses_mountinfo() {
    let mounts = parse_mountinfo(MOUNTINFO);
    assert_eq!(mounts.len(), 13);
    assert_eq!(
        mounts[8],
        Mount {
            target: "/run/moat-volumes/my vol".into(),
            fstype: "ext4".into(),
            source: "/dev/vdc".into(),
            readonly: true,
        }
    );
    assert_eq!(mounts[11].target, "/run/moat/rw");
    assert!(!mounts[11].readonly);
    assert_eq!(mounts[12].fstype, "overlay");
    assert!(parse_mountinfo("garbage\n").is_empty());
}

#[test]
fn overlay_then_volumes_then_the_rest_writable_disks_sealed_first() {
    let sys = Recorder::default();
    let stuck = release(&sys, &parse_mountinfo(MOUNTINFO), &|| {});
    assert!(stuck.is_empty());
    assert_eq!(
        sys.lines(),
        [
            "umount2 /run/moat/root",
            "umount2 /run/moat-volumes/my vol",
            "mount - /run/moat-volumes/0 - ro,remount -",
            "umount2 /run/moat-volumes/0",
            "mount - /run/moat/rw - ro,remount -",
            "umount2 /run/moat/rw",
            "umount2 /run/moat/skel",
            "umount2 /run/moat/lower",
            "sync",
        ]
    );
}

#[test]
fn a_busy_remount_is_tried_again() {
    let sys = Recorder::failing("mount - /run/moat-volumes/0", libc::EBUSY);
    let pauses = Cell::new(0);
    let stuck = release(&sys, &parse_mountinfo(MOUNTINFO), &|| {
        pauses.set(pauses.get() + 1)
    });
    // Still busy after every try: named, and everything else still goes.
    assert_eq!(stuck, ["/run/moat-volumes/0"]);
    assert_eq!(pauses.get(), BUSY_TRIES - 1);
    let tries = sys
        .lines()
        .iter()
        .filter(|l| l.starts_with("mount - /run/moat-volumes/0"))
        .count();
    assert_eq!(tries, BUSY_TRIES as usize);
    assert!(sys.lines().contains(&"umount2 /run/moat/rw".to_string()));
    assert_eq!(sys.lines().last().unwrap(), "sync");
}

#[test]
fn a_failed_unmount_of_a_sealed_or_memory_filesystem_is_not_stuck() {
    let sys = Recorder::failing("umount2", libc::EINVAL);
    let stuck = release(&sys, &parse_mountinfo(MOUNTINFO), &|| {});
    assert!(stuck.is_empty(), "{stuck:?}");
    let sys = Recorder::failing("mount - /run/moat/rw", libc::EROFS);
    let stuck = release(&sys, &parse_mountinfo(MOUNTINFO), &|| {});
    assert_eq!(stuck, ["/run/moat/rw"]);
}
