//! moat-vmm runs every thread under its seccomp filter, and a VMM killed by its filter is
//! reported in one line and leaves nothing behind.
//!
//! These checks need a running VMM, not a booted guest: they also run on a host whose KVM is too
//! slow to boot one (`MOAT_SKIP_PROBE=1`), as well as in the nested test host.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_jail::testutil::write_executable;
use moat_tests::{
    assert_nothing_left, hooked_vmm_bin, moat_bin, moat_with_env, unique_name, vmm_bin,
    vmm_processes_mentioning, wait_with_timeout,
};

/// Time for a VMM to appear and start its threads (the nested host is slow).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether a VMM can be started here at all (a KVM device and the built binaries); in CI a
/// missing piece is a failure.
fn can_start_vmm(test: &str, vmm: &Path) -> bool {
    let moat = moat_bin();
    let missing = [Path::new("/dev/kvm"), &moat, vmm]
        .into_iter()
        .find(|p| !p.exists());
    let Some(missing) = missing else {
        return true;
    };
    let reason = format!("{} does not exist (run scripts/test)", missing.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// `moat run --name NAME --vm-cpus 2 -- sleep 600`, without waiting for the probe or the boot.
fn start_moat(name: &str) -> Child {
    Command::new(moat_bin())
        .args([
            "run",
            "--name",
            name,
            "--vm-cpus",
            "2",
            "--",
            "sleep",
            "600",
        ])
        .env("MOAT_SKIP_PROBE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn moat")
}

/// The `Seccomp:` mode of every thread of `pid` (name, mode).
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .flatten()
        .map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            (field("Name:"), field("Seccomp:"))
        })
        .collect()
}

/// The threads moat-vmm starts for a 2-vCPU VM (KVM may add its own kernel worker, e.g.
/// `kvm-nx-lpage-recovery`, which inherits the filter of the thread that made it).
const THREADS: [&str; 4] = ["moat-vmm", "event-loop", "vcpu0", "vcpu1"];

/// Waits until the VMM of `name` runs its main thread, the event loop and two vCPUs, and every
/// thread it has is in seccomp filter mode (2); returns its pid, or panics with what it saw.
fn wait_for_filtered_vmm(name: &str) -> u32 {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let [pid] = vmm_processes_mentioning(name)[..] {
            seen = thread_modes(pid);
            let started = THREADS.iter().all(|t| seen.iter().any(|(n, _)| n == t));
            if started && seen.iter().all(|(_, mode)| mode == "2") {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the VMM of {name} never had 4 filtered threads; last seen: {seen:?}");
}

fn stop_moat(mut moat: Child, name: &str) {
    let pid = nix::unistd::Pid::from_raw(moat.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill");
    let code = wait_with_timeout(&mut moat, Duration::from_secs(60));
    assert_eq!(code, 128 + 15, "moat did not stop on SIGTERM");
    assert_nothing_left(name);
}

#[test]
fn every_vmm_thread_runs_under_a_seccomp_filter() {
    if !can_start_vmm("every_vmm_thread_runs_under_a_seccomp_filter", &vmm_bin()) {
        return;
    }
    let name = unique_name("seccomp-threads");
    let moat = start_moat(&name);
    let pid = wait_for_filtered_vmm(&name);
    let seen = thread_modes(pid);
    assert!(seen.len() >= THREADS.len(), "{seen:?}");
    assert!(seen.iter().all(|(_, mode)| mode == "2"), "{seen:?}");
    stop_moat(moat, &name);
}

/// A host client of the vsock socket takes the event loop through accept, FIONBIO and reads:
/// the VMM must survive it.
#[test]
fn a_host_vsock_client_does_not_trip_the_filter() {
    if !can_start_vmm("a_host_vsock_client_does_not_trip_the_filter", &vmm_bin()) {
        return;
    }
    let name = unique_name("seccomp-vsock");
    let moat = start_moat(&name);
    let pid = wait_for_filtered_vmm(&name);
    let socket = Path::new("/run/moat").join(&name).join("root/vsock.sock");
    let mut stream = UnixStream::connect(&socket).expect("connect to the vsock socket");
    stream.write_all(b"CONNECT 4444\n").expect("write");
    // The VMM answers, closes the connection, or keeps it pending: any is fine, a SIGSYS is not.
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let _ = stream.read(&mut [0u8; 64]);
    drop(stream);
    assert_eq!(vmm_processes_mentioning(&name), [pid], "the VMM is gone");
    let seen = thread_modes(pid);
    assert!(
        THREADS.iter().all(|t| seen.iter().any(|(n, _)| n == t)),
        "the VMM lost threads: {seen:?}"
    );
    stop_moat(moat, &name);
}

/// Writes `dir/moat-vmm`: runs the hooked VMM, with `run` made to violate `kind`'s filter.
fn hooked_wrapper(dir: &Path, kind: &str) -> PathBuf {
    let path = dir.join("moat-vmm");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = run ]; then exec '{vmm}' \"$@\" --test-violate-seccomp {kind}; fi\n\
         exec '{vmm}' \"$@\"",
        vmm = hooked_vmm_bin().display()
    );
    write_executable(&path, &script);
    path
}

#[test]
fn a_syscall_outside_the_filter_kills_the_vmm_and_moat_says_so() {
    let test = "a_syscall_outside_the_filter_kills_the_vmm_and_moat_says_so";
    if !can_start_vmm(test, &hooked_vmm_bin()) {
        return;
    }
    for kind in ["vcpu", "event-loop", "main"] {
        let dir = std::env::temp_dir().join(unique_name("seccomp-hook"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let wrapper = hooked_wrapper(&dir, kind);
        let name = unique_name("seccomp-kill");
        let o = moat_with_env(
            &["run", "--name", &name, "--", "true"],
            None,
            START_TIMEOUT,
            &[
                ("MOAT_VMM", wrapper.as_os_str()),
                ("MOAT_SKIP_PROBE", OsStr::new("1")),
            ],
        );
        let _ = std::fs::remove_dir_all(&dir);
        o.expect_code(125);
        let expected = format!(
            "moat: VM {name}: moat-vmm was killed by its seccomp filter (SIGSYS); see {}",
            o.log_dir.join("vmm.log").display()
        );
        assert_eq!(o.err().trim_end(), expected, "{kind}\n{}", o.diagnostics());
        assert_nothing_left(&name);
    }
}
