//! The container security stack the agent applies inside the VM (issue 3), checked from inside
//! the container the way a user would: `/proc/self/status`, the files of its cgroup, what its
//! system calls answer. Each test boots a real microVM.

use moat_tests::{moat, vm_available, Outcome, ProbeVolume};

/// `moat run FLAGS -- sh -c SCRIPT`.
fn sh(flags: &[&str], script: &str) -> Outcome {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    moat(&args, None)
}

/// The value of `Key:` in `/proc/self/status`-style output.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

const STATUS: &str = "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status";

/// Docker's default capabilities: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
/// NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
const DOCKER_CAPS: &str = "00000000a80425fb";
const NO_CAPS: &str = "0000000000000000";

#[test]
fn default_run_has_dockers_capabilities_no_new_privs_and_seccomp() {
    if !vm_available("default_run_has_dockers_capabilities_no_new_privs_and_seccomp") {
        return;
    }
    let o = sh(&[], STATUS);
    o.expect_code(0);
    let out = o.out();
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(&out, key), DOCKER_CAPS, "{key}\n{}", o.diagnostics());
    }
    for key in ["CapInh", "CapAmb"] {
        assert_eq!(field(&out, key), NO_CAPS, "{key}\n{}", o.diagnostics());
    }
    assert_eq!(field(&out, "NoNewPrivs"), "1", "{}", o.diagnostics());
    assert_eq!(field(&out, "Seccomp"), "2", "{}", o.diagnostics());
}

#[test]
fn cap_drop_all_and_a_non_root_user_have_no_capabilities() {
    if !vm_available("cap_drop_all_and_a_non_root_user_have_no_capabilities") {
        return;
    }
    let o = sh(&["--cap-drop", "ALL"], STATUS);
    o.expect_code(0);
    let out = o.out();
    for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(field(&out, key), NO_CAPS, "{key}\n{}", o.diagnostics());
    }
    let o = sh(&["--user", "1000"], &format!("id -u; {STATUS}"));
    o.expect_code(0);
    let out = o.out();
    assert!(out.starts_with("1000\n"), "{}", o.diagnostics());
    for key in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(field(&out, key), NO_CAPS, "{key}\n{}", o.diagnostics());
    }
    // Added back: only what was asked for.
    let o = sh(
        &["--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"],
        STATUS,
    );
    o.expect_code(0);
    assert_eq!(
        field(&o.out(), "CapEff"),
        "0000000000000400",
        "{}",
        o.diagnostics()
    );
}

const PROBES: &str = "for c in clone3 keyctl unshare-user reboot; do /probe/moat-probe $c; done; \
     /probe/moat-probe mount-tmpfs /tmp; mount -t tmpfs none /tmp 2>&1 || echo busybox-mount-failed; \
     unshare -U true 2>&1 || echo busybox-unshare-failed";

#[test]
fn the_default_seccomp_profile_refuses_what_docker_refuses() {
    if !vm_available("the_default_seccomp_profile_refuses_what_docker_refuses") {
        return;
    }
    let probe = ProbeVolume::new();
    let o = sh(&["-v", &probe.volume_arg()], PROBES);
    o.expect_code(0);
    let out = o.out();
    for line in [
        "clone3 ENOSYS",
        "keyctl EPERM",
        "unshare-user EPERM",
        "reboot EPERM",
        "mount-tmpfs EPERM",
        "busybox-mount-failed",
        "busybox-unshare-failed",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line}\n{}",
            o.diagnostics()
        );
    }
    // The same calls without the filter: clone3 and keyctl work, so the answers above came from
    // the profile (mount and unshare still fail: no CAP_SYS_ADMIN).
    let o = sh(
        &[
            "-v",
            &probe.volume_arg(),
            "--security-opt",
            "seccomp=unconfined",
        ],
        &format!("{PROBES}; grep Seccomp: /proc/self/status"),
    );
    o.expect_code(0);
    let out = o.out();
    for line in ["clone3 ok", "keyctl ok", "Seccomp:\t0"] {
        assert!(
            out.lines().any(|l| l == line),
            "{line}\n{}",
            o.diagnostics()
        );
    }
}

/// Prints the size of a masked /proc file and tries writes under /proc.
const PROC_WRITES: &str = "printf 'timer_list %s\\n' $(wc -c < /proc/timer_list); \
    [ -e /proc/sysrq-trigger ] && echo sysrq-exists; \
    echo h > /proc/sysrq-trigger || echo sysrq-refused; \
    echo 1 > /proc/sys/kernel/shm_rmid_forced && echo sys-written || echo sys-refused";

fn timer_list_size(o: &Outcome) -> u64 {
    o.out()
        .lines()
        .find_map(|l| l.strip_prefix("timer_list "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timer_list size\n{}", o.diagnostics()))
}

#[test]
fn masked_and_read_only_paths() {
    if !vm_available("masked_and_read_only_paths") {
        return;
    }
    let o = sh(&[], PROC_WRITES);
    o.expect_code(0);
    let out = o.out();
    assert_eq!(timer_list_size(&o), 0, "{}", o.diagnostics());
    for line in ["sysrq-exists", "sysrq-refused", "sys-refused"] {
        assert!(
            out.lines().any(|l| l == line),
            "{line}\n{}",
            o.diagnostics()
        );
    }
    assert!(
        o.err().contains("Read-only file system"),
        "{}",
        o.diagnostics()
    );
    // Privileged (inside its VM only) there are no masked or read-only paths: the same file
    // has content and /proc/sys takes the write.
    let o = sh(&["--privileged"], PROC_WRITES);
    o.expect_code(0);
    assert!(timer_list_size(&o) > 0, "{}", o.diagnostics());
    assert!(
        o.out().lines().any(|l| l == "sys-written"),
        "{}",
        o.diagnostics()
    );
}

#[test]
fn read_only_root_with_a_writable_tmpfs() {
    if !vm_available("read_only_root_with_a_writable_tmpfs") {
        return;
    }
    let script = "touch /x 2>&1; echo data > /run/y && cat /run/y";
    let o = sh(&["--read-only", "--tmpfs", "/run"], script);
    o.expect_code(0);
    let out = o.out();
    assert!(out.contains("Read-only file system"), "{}", o.diagnostics());
    assert!(out.ends_with("data\n"), "{}", o.diagnostics());
    // Without --read-only the root takes writes (in the overlay's upper layer).
    let o = sh(&[], "touch /x && echo wrote");
    o.expect_code(0);
    assert_eq!(o.out(), "wrote\n", "{}", o.diagnostics());
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    if !vm_available("a_fork_bomb_stops_at_the_pids_limit") {
        return;
    }
    // The bomb runs in the background for 10 s; then the shell kills everything it can and
    // reads the cgroup with builtins (forks may still fail): pids.max, and how often the limit
    // refused a fork. Then a second command (a fork and an exec) runs again, and the run ending
    // normally shows the agent (outside the container's cgroup) still answers.
    let script = "read m < /sys/fs/cgroup/pids.max; echo $m; \
        sleep 10 & s=$!; \
        ( b() { b | b & }; b ) 2>/dev/null & \
        wait $s; \
        for i in 1 2 3 4 5 6 7 8 9 10; do kill -9 -1 2>/dev/null; done; \
        read e < /sys/fs/cgroup/pids.events; echo events $e; \
        until cat /sys/fs/cgroup/pids.max 2>/dev/null; do kill -9 -1 2>/dev/null; done";
    let o = sh(&["--pids-limit", "64"], script);
    o.expect_code(0);
    let out = o.out();
    assert!(out.starts_with("64\n"), "{}", o.diagnostics());
    let hits: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("events max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pids.events line\n{}", o.diagnostics()));
    assert!(hits > 0, "{}", o.diagnostics());
    assert!(out.ends_with("\n64\n"), "{}", o.diagnostics());
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    if !vm_available("a_memory_hog_is_oom_killed_and_reported") {
        return;
    }
    let o = moat(
        &[
            "run",
            "-m",
            "64m",
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=128M",
            "count=1",
        ],
        None,
    );
    o.expect_code(137);
    assert!(o.err().contains("out of memory"), "{}", o.diagnostics());
    // The limit is the container's: the same VM size without it completes.
    let o = sh(
        &["-m", "512m"],
        "dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null && cat /sys/fs/cgroup/memory.max",
    );
    o.expect_code(0);
    assert_eq!(
        o.out(),
        format!("{}\n", 512u64 << 20),
        "{}",
        o.diagnostics()
    );
}

#[test]
fn cpus_sets_a_quota_that_throttles() {
    if !vm_available("cpus_sets_a_quota_that_throttles") {
        return;
    }
    let script = "cat /sys/fs/cgroup/cpu.max; timeout 3 yes > /dev/null; \
        grep nr_throttled /sys/fs/cgroup/cpu.stat";
    let o = sh(&["--cpus", "0.5"], script);
    o.expect_code(0);
    let out = o.out();
    assert!(out.starts_with("50000 100000\n"), "{}", o.diagnostics());
    let throttled: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no nr_throttled\n{}", o.diagnostics()));
    assert!(throttled > 0, "{}", o.diagnostics());
}

/// Makes the guest's image disk as a node in the container and tries to read it.
const DISK_NODE: &str = "mknod /tmp/disk b $(cat /sys/class/block/vda/dev | tr : ' ') && \
    head -c 1 /tmp/disk > /dev/null && echo disk-opened";

#[test]
fn only_the_allowed_devices_exist_and_open() {
    if !vm_available("only_the_allowed_devices_exist_and_open") {
        return;
    }
    let script =
        format!("ls /dev | tr '\\n' ' '; echo; head -c 4 /dev/urandom | wc -c; {DISK_NODE}");
    let o = sh(&[], &script);
    let out = o.out();
    let first = out.lines().next().unwrap_or_default();
    let devices: Vec<&str> = first.split_whitespace().collect();
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm",
    ] {
        assert!(devices.contains(&d), "{d}\n{}", o.diagnostics());
    }
    for d in ["vda", "vdb", "kmsg", "mem", "console", "vsock"] {
        assert!(!devices.contains(&d), "{d}\n{}", o.diagnostics());
    }
    assert!(out.contains("\n4\n"), "{}", o.diagnostics());
    // mknod works (CAP_MKNOD is a default) but the device filter refuses to open the node.
    assert!(!out.contains("disk-opened"), "{}", o.diagnostics());
    assert!(
        o.err().contains("Operation not permitted"),
        "{}",
        o.diagnostics()
    );
    // Privileged (inside its VM only), the same node opens: the filter made the difference.
    let o = sh(&["--privileged"], DISK_NODE);
    o.expect_code(0);
    assert_eq!(o.out(), "disk-opened\n", "{}", o.diagnostics());
}

#[test]
fn the_container_sees_only_its_own_processes_hostname_and_mounts() {
    if !vm_available("the_container_sees_only_its_own_processes_hostname_and_mounts") {
        return;
    }
    // The shell's own descriptors (a builtin glob: no other process) are its stdio and the
    // directory the glob is reading (3, the lowest free number): none of the agent's reached the
    // container. The init has closed all of its own.
    let script = "for p in /proc/[0-9]*; do printf '%s ' ${p#/proc/}; done; echo; hostname; \
        cat /proc/self/uid_map; grep -c -E ' /run/moat| /newroot' /proc/self/mountinfo; \
        for f in /proc/self/fd/*; do printf '%s ' ${f##*/}; done; echo; \
        ls /proc/1/fd | wc -l";
    let o = sh(&["--hostname", "tenant-a"], script);
    o.expect_code(0);
    let lines: Vec<String> = o.out().lines().map(str::to_owned).collect();
    assert_eq!(lines[0].trim(), "1 2", "{}", o.diagnostics());
    assert_eq!(lines[1], "tenant-a", "{}", o.diagnostics());
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", "0", "4294967295"], "{}", o.diagnostics());
    assert_eq!(lines[3], "0", "{}", o.diagnostics());
    assert_eq!(lines[4].trim(), "0 1 2 3", "{}", o.diagnostics());
    assert_eq!(lines[5], "0", "{}", o.diagnostics());
}

#[test]
fn userns_maps_container_root_to_an_unprivileged_id() {
    if !vm_available("userns_maps_container_root_to_an_unprivileged_id") {
        return;
    }
    let script = "id -u; cat /proc/self/uid_map /proc/self/gid_map; touch /owned && echo wrote";
    let o = sh(&["--userns=remap"], script);
    o.expect_code(0);
    let lines: Vec<Vec<String>> = o
        .out()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(lines[0], ["0"], "{}", o.diagnostics());
    assert_eq!(lines[1], ["0", "100000", "65536"], "{}", o.diagnostics());
    assert_eq!(lines[2], ["0", "100000", "65536"], "{}", o.diagnostics());
    assert_eq!(lines[3], ["wrote"], "{}", o.diagnostics());
}

#[test]
fn ulimits_sysctls_and_umask_apply() {
    if !vm_available("ulimits_sysctls_and_umask_apply") {
        return;
    }
    let o = sh(
        &[
            "--ulimit",
            "nofile=512:1024",
            "--sysctl",
            "kernel.shm_rmid_forced=1",
        ],
        "ulimit -n; ulimit -Hn; cat /proc/sys/kernel/shm_rmid_forced; umask",
    );
    o.expect_code(0);
    assert_eq!(o.out(), "512\n1024\n1\n0022\n", "{}", o.diagnostics());
}

#[test]
fn a_read_only_volume_is_mounted_and_refuses_writes() {
    if !vm_available("a_read_only_volume_is_mounted_and_refuses_writes") {
        return;
    }
    let probe = ProbeVolume::new();
    let o = sh(
        &["-v", &probe.volume_arg()],
        "ls /probe; touch /probe/x 2>&1; true",
    );
    o.expect_code(0);
    let out = o.out();
    assert!(
        out.lines().any(|l| l == "moat-probe"),
        "{}",
        o.diagnostics()
    );
    assert!(out.contains("Read-only file system"), "{}", o.diagnostics());
}
