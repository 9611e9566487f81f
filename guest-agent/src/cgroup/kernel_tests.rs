//! Real-kernel tests: root on a pure cgroup v2 host (the nested test host L1, or a guest).
//! Each forks a child that waits on a pipe until the parent has moved it into the cgroup;
//! the child then uses raw syscalls only (the test process has other threads) and reports
//! through its exit status.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;

use super::{Cgroup, CgroupError, OomWatch, TestDir};

const IGNORE: &str = "needs root on a cgroup v2 host: run in tests/nested/run";
const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "moat-test";

fn new_cgroup(tag: &str) -> Cgroup {
    assert!(
        Path::new(ROOT).join("cgroup.controllers").exists(),
        "{ROOT} is not cgroup v2: {IGNORE}"
    );
    let name = format!("{tag}-{}", std::process::id());
    Cgroup::create(Path::new(ROOT), PARENT, &name).expect("create cgroup")
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("resources json")
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two new fds owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Forks a child that runs `body` inside `cg` and `_exit`s with its result; returns the raw
/// wait status. `body` must use raw syscalls only (no allocation, no locks).
fn run_in(cg: &Cgroup, body: impl FnOnce() -> i32) -> i32 {
    let (rx, tx) = pipe();
    // SAFETY: the child only reads a pipe, runs `body` (raw syscalls) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a live local; then leaves without unwinding.
        unsafe {
            libc::read(rx.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(body());
        }
    }
    drop(rx);
    let added = cg.add(pid);
    // SAFETY: writes one byte from a live local to our pipe end.
    unsafe { libc::write(tx.as_raw_fd(), b"g".as_ptr().cast(), 1) };
    let mut status = 0;
    // SAFETY: waits for our own child, status into a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    added.expect("add the child to the cgroup");
    status
}

fn exit_code(status: i32) -> i32 {
    assert!(
        libc::WIFEXITED(status),
        "child did not exit: status {status:#x}"
    );
    libc::WEXITSTATUS(status)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn create_apply_remove() {
    let cg = new_cgroup("apply");
    let again = Cgroup::create(
        Path::new(ROOT),
        PARENT,
        cg.path().file_name().unwrap().to_str().unwrap(),
    );
    assert!(matches!(again, Err(CgroupError::Exists(_))), "{again:?}");
    let r = resources(
        r#"{"memory": {"limit": 67108864, "reservation": 1048576},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "pids": {"limit": 42}, "blockIO": {"weight": 500},
            "unified": {"memory.high": "33554432"}}"#,
    );
    cg.apply(&r).expect("apply");
    let read = |f: &str| std::fs::read_to_string(cg.path().join(f)).unwrap();
    assert_eq!(read("memory.max"), "67108864\n");
    assert_eq!(read("memory.low"), "1048576\n");
    assert_eq!(read("memory.high"), "33554432\n");
    assert_eq!(read("cpu.max"), "50000 100000\n");
    assert_eq!(read("cpu.weight"), "20\n");
    assert_eq!(read("pids.max"), "42\n");
    assert_eq!(cg.oom_kills().unwrap(), 0);
    // Cgroups a container makes under its own go with it.
    std::fs::create_dir_all(cg.path().join("sub/subsub")).unwrap();
    let path = cg.path().to_owned();
    cg.remove().expect("remove");
    assert!(!path.exists());
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn kernel_refusal_names_the_field() {
    let cg = new_cgroup("refuse");
    let err = cg
        .apply(&resources(r#"{"cpu": {"cpus": "4000"}}"#))
        .unwrap_err();
    assert!(
        err.to_string().starts_with("linux.resources.cpu.cpus"),
        "{err}"
    );
    cg.remove().unwrap();
}

/// Opens /dev/null, then a block device node; returns 0 if null opened and the block device
/// got EPERM, else a code saying what went wrong.
fn devices_probe(null: &CString, block: &CString) -> i32 {
    // SAFETY: open/close with NUL-terminated paths that outlive the calls.
    unsafe {
        let fd = libc::open(null.as_ptr(), libc::O_RDWR);
        if fd < 0 {
            return 10;
        }
        libc::close(fd);
        let fd = libc::open(block.as_ptr(), libc::O_RDONLY);
        if fd >= 0 {
            return 11;
        }
    }
    if errno() == libc::EPERM {
        0
    } else {
        12
    }
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn device_filter_allows_null_denies_block_device() {
    let dir = TestDir::new("dev");
    let node = dir.0.join("vda");
    let block = CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a NUL-terminated path.
    let rc = unsafe { libc::mknod(block.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(254, 0)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    let null = CString::new("/dev/null").unwrap();

    let docker = resources(&format!(r#"{{"devices": {}}}"#, DOCKER_RULES));
    let cg = new_cgroup("devices");
    cg.apply(&docker).expect("apply the device rules");
    let status = run_in(&cg, || devices_probe(&null, &block));
    assert_eq!(
        exit_code(status),
        0,
        "10: null refused, 11: block opened, 12: not EPERM"
    );
    cg.remove().unwrap();

    // The same probe with everything allowed: the block device's open fails, but not EPERM.
    let cg = new_cgroup("privileged");
    cg.apply(&resources(
        r#"{"devices": [{"allow": true, "access": "rwm"}]}"#,
    ))
    .unwrap();
    assert_eq!(exit_code(run_in(&cg, || devices_probe(&null, &block))), 12);
    cg.remove().unwrap();
}

const DOCKER_RULES: &str = r#"[{"allow": false, "access": "rwm"},
    {"allow": true, "type": "c", "access": "m"}, {"allow": true, "type": "b", "access": "m"},
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": true, "type": "c", "major": 136, "access": "rwm"}]"#;

/// Forks until fork fails; returns the number of forks that worked (the forked children
/// pause until cgroup.kill), or 100 + errno if the failure was not EAGAIN.
fn fork_until_refused() -> i32 {
    for n in 0..50 {
        // SAFETY: the grandchild only pauses until killed.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: no arguments; returns only on a signal that does not kill.
                unsafe { libc::pause() };
            },
            pid if pid < 0 => {
                let e = errno();
                return if e == libc::EAGAIN { n } else { 100 + e };
            }
            _ => {}
        }
    }
    99
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn pids_max_makes_fork_fail() {
    let cg = new_cgroup("pids");
    cg.apply(&resources(r#"{"pids": {"limit": 3}}"#)).unwrap();
    let status = run_in(&cg, fork_until_refused);
    assert_eq!(exit_code(status), 2, "the child and two forks make 3 tasks");
    // The two paused grandchildren are still there: remove kills them.
    cg.remove().expect("remove kills what is left");
}

/// Touches 256 MiB of anonymous memory, page by page.
fn allocate() -> i32 {
    let len = 256 << 20;
    // SAFETY: a fresh private anonymous mapping; touched only within its length.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return 20;
        }
        for off in (0..len).step_by(4096) {
            p.cast::<u8>().add(off).write_volatile(1);
        }
    }
    0
}

/// Runs `trigger` while another thread waits in `watch.next()`; returns both results. The
/// wait is bounded (generously: nothing is timed) so that a watch that never wakes up fails
/// the test instead of hanging it.
fn next_during<T>(watch: &OomWatch, trigger: impl FnOnce() -> T) -> (T, Option<u64>) {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(watch.next()));
        let value = trigger();
        let next = rx.recv_timeout(Duration::from_secs(60));
        if next.is_err() {
            watch.stop();
        }
        let next = next.expect("OomWatch::next did not return within 60 s");
        (value, next.expect("OomWatch::next"))
    })
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn oom_kill_is_counted_and_watched() {
    let cg = new_cgroup("oom");
    cg.apply(&resources(
        r#"{"memory": {"limit": 16777216, "swap": 16777216}}"#,
    ))
    .unwrap();
    let watch = cg.oom_watch().unwrap();
    let (status, next) = next_during(&watch, || run_in(&cg, allocate));
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the child was not OOM-killed: status {status:#x}"
    );
    assert_eq!(next, Some(1));
    assert_eq!(cg.oom_kills().unwrap(), 1);
    let ((), next) = next_during(&watch, || watch.stop());
    assert_eq!(next, None);
    assert_eq!(watch.next().unwrap(), None, "stopped for good");
    cg.remove().unwrap();
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn oom_watch_ends_when_the_cgroup_goes() {
    let cg = new_cgroup("gone");
    let watch = cg.oom_watch().unwrap();
    let (removed, next) = next_during(&watch, || cg.remove());
    removed.expect("remove");
    assert_eq!(next, None);
    assert_eq!(watch.next().unwrap(), None, "ended for good");
}

#[test]
#[ignore = "needs root on a cgroup v2 host: run in tests/nested/run"]
fn verifier_takes_a_long_rule_list() {
    // 1000 rules of every shape: the verifier must not run out of its complexity budget.
    let rules: Vec<String> = (0..1000)
        .map(|i| match i % 4 {
            0 => format!(
                r#"{{"allow": true, "type": "c", "major": {i}, "minor": 1, "access": "r"}}"#
            ),
            1 => format!(r#"{{"allow": false, "type": "b", "major": {i}, "access": "w"}}"#),
            2 => format!(r#"{{"allow": true, "type": "c", "minor": {i}, "access": "rwm"}}"#),
            _ => r#"{"allow": true, "type": "a", "access": "m"}"#.to_owned(),
        })
        .collect();
    let cg = new_cgroup("long");
    let json = format!(r#"{{"devices": [{}]}}"#, rules.join(","));
    cg.apply(&resources(&json))
        .expect("load and attach 1000 rules");
    cg.remove().unwrap();
}
