//! `moat run`'s docker flags reach the container: the cgroup files the limits wrote, a custom
//! seccomp profile, no-new-privileges turned off, an added device, every guest device with
//! --privileged, a writable volume whose writes persist on the host, a directory snapshot that
//! holds exactly the directory. Each test boots a real microVM.

use std::process::Command;

use moat_jail::testutil::TempDir;
use moat_tests::{ext4_image, moat, vm_available, Outcome};

fn sh(flags: &[&str], script: &str) -> Outcome {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    moat(&args, None)
}

#[test]
fn resource_flags_land_in_the_containers_cgroup() {
    if !vm_available("resource_flags_land_in_the_containers_cgroup") {
        return;
    }
    let flags = [
        "-m",
        "128m",
        "--memory-swap",
        "192m",
        "--memory-reservation",
        "64m",
        "--cpu-shares",
        "512",
        "--cpu-quota",
        "25000",
        "--cpu-period",
        "50000",
        "--cpuset-cpus",
        "0",
        "--blkio-weight",
        "300",
        "--device-read-bps",
        "/dev/vda:1mb",
        "--device-write-iops",
        "/dev/vda:100",
    ];
    let script = "cd /sys/fs/cgroup; for f in memory.max memory.swap.max memory.low cpu.weight \
        cpu.max cpuset.cpus io.weight io.max; do echo \"$f: $(cat $f)\"; done; \
        echo \"vda: $(cat /sys/class/block/vda/dev)\"";
    let o = sh(&flags, script);
    o.expect_code(0);
    let out = o.out();
    let dev = out
        .lines()
        .find_map(|l| l.strip_prefix("vda: "))
        .unwrap_or_else(|| panic!("no vda\n{}", o.diagnostics()))
        .to_owned();
    // cpu.weight from 512 shares: 1 + (510 * 9999) / 262142 = 20, io.weight from a blkio weight
    // of 300: 1 + (290 * 9999) / 990 = 2930 (the runc/crun formulas).
    let expected = [
        format!("memory.max: {}", 128u64 << 20),
        format!("memory.swap.max: {}", 64u64 << 20),
        format!("memory.low: {}", 64u64 << 20),
        "cpu.weight: 20".to_string(),
        "cpu.max: 25000 50000".to_string(),
        "cpuset.cpus: 0".to_string(),
        "io.weight: default 2930".to_string(),
        format!("io.max: {dev} rbps=1048576 wbps=max riops=max wiops=100"),
    ];
    for line in &expected {
        assert!(
            out.lines().any(|l| l == line),
            "{line}\n{}",
            o.diagnostics()
        );
    }
}

#[test]
fn a_custom_seccomp_profile_and_no_new_privileges_off() {
    if !vm_available("a_custom_seccomp_profile_and_no_new_privileges_off") {
        return;
    }
    let dir = TempDir::new("profile");
    let profile = dir.path().join("deny-mkdir.json");
    let text = r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13 }]
    }"#;
    std::fs::write(&profile, text).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
        mkdir /tmp/d 2>&1 || echo refused; touch /tmp/f && echo touched";
    let o = sh(
        &[
            "--security-opt",
            &opt,
            "--security-opt",
            "no-new-privileges=false",
        ],
        script,
    );
    o.expect_code(0);
    let out = o.out();
    assert!(out.contains("NoNewPrivs:\t0\n"), "{}", o.diagnostics());
    assert!(out.contains("Seccomp:\t2\n"), "{}", o.diagnostics());
    // errnoRet 13 is EACCES; everything else is allowed.
    assert!(
        out.contains("Permission denied\nrefused\ntouched\n"),
        "{}",
        o.diagnostics()
    );
}

#[test]
fn an_added_device_exists_and_opens() {
    if !vm_available("an_added_device_exists_and_opens") {
        return;
    }
    let script = "ls /dev/kmsg 2>&1; head -c 1 /dev/kmsg > /dev/null && echo opened";
    let o = sh(&[], script);
    assert!(!o.out().contains("opened"), "{}", o.diagnostics());
    let o = sh(&["--device", "/dev/kmsg"], script);
    o.expect_code(0);
    assert_eq!(o.out(), "/dev/kmsg\nopened\n", "{}", o.diagnostics());
}

#[test]
fn writes_to_an_image_volume_persist_on_the_host() {
    if !vm_available("writes_to_an_image_volume_persist_on_the_host") {
        return;
    }
    let dir = TempDir::new("volume");
    let image = dir.path().join("data.ext4");
    ext4_image(&image, "16M");
    let volume = format!("{}:/data", image.display());
    let o = sh(
        &["-v", &volume],
        "echo from-the-guest > /data/hello && sync && cat /data/hello",
    );
    o.expect_code(0);
    assert_eq!(o.out(), "from-the-guest\n", "{}", o.diagnostics());
    let read = Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(&image)
        .output()
        .expect("debugfs");
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "from-the-guest\n",
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
}

/// The nodes of the container's /dev that only a privileged container has, its ptmx link and
/// the mounts of /dev/pts, shm and mqueue.
const DEV_SCRIPT: &str = "for d in /dev/null /dev/vda /dev/kmsg /dev/vsock; do \
    { [ -b $d ] || [ -c $d ]; } && echo node $d; done; [ -L /dev/ptmx ] && echo ptmx-link; \
    awk '$2 ~ \"^/dev/(pts|shm|mqueue)$\" {print $2, $3}' /proc/mounts | sort";

#[test]
fn privileged_sees_every_device_of_the_guest() {
    if !vm_available("privileged_sees_every_device_of_the_guest") {
        return;
    }
    let mounts = "/dev/mqueue mqueue\n/dev/pts devpts\n/dev/shm tmpfs\n";
    let o = sh(&[], DEV_SCRIPT);
    o.expect_code(0);
    let want = format!("node /dev/null\nptmx-link\n{mounts}");
    assert_eq!(o.out(), want, "{}", o.diagnostics());
    let o = sh(&["--privileged"], DEV_SCRIPT);
    o.expect_code(0);
    let nodes = "node /dev/null\nnode /dev/vda\nnode /dev/kmsg\nnode /dev/vsock\n";
    let want = format!("{nodes}ptmx-link\n{mounts}");
    assert_eq!(o.out(), want, "{}", o.diagnostics());
}

#[test]
fn a_directory_snapshot_holds_exactly_the_directory() {
    if !vm_available("a_directory_snapshot_holds_exactly_the_directory") {
        return;
    }
    let dir = TempDir::new("snapshot");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b"), b"bee\n").unwrap();
    std::fs::write(dir.path().join("a"), b"ay\n").unwrap();
    let volume = format!("{}:/snap:ro", dir.path().display());
    let o = sh(&["-v", &volume], "ls -A /snap; cat /snap/a /snap/sub/b");
    o.expect_code(0);
    assert_eq!(o.out(), "a\nsub\nay\nbee\n", "{}", o.diagnostics());
    // A lost+found of the directory's own is kept.
    std::fs::create_dir(dir.path().join("lost+found")).unwrap();
    let o = sh(&["-v", &volume], "ls -A /snap");
    o.expect_code(0);
    assert_eq!(o.out(), "a\nlost+found\nsub\n", "{}", o.diagnostics());
}
