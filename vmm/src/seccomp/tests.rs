use super::*;

/// The variable that makes the [`child`] test run one case of a filtered child process.
const CHILD_CASE: &str = "MOAT_SECCOMP_TEST_CHILD";

/// Runs this test binary again, with only the [`child`] test running `case`: a filter that kills
/// the process must not kill the test harness.
fn run_child(case: &str) -> std::process::ExitStatus {
    let exe = std::env::current_exe().unwrap();
    std::process::Command::new(exe)
        .args([
            "--exact",
            "seccomp::tests::child",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_CASE, case)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
}

fn killed_by_sigsys(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGSYS)
}

/// A filter for tests: exit_group and getpid, plus `extra` entries.
fn test_policy(extra: &str) -> Policy {
    let text = format!(
        r#"{{"filters": {{"main": {{}}, "event-loop": {{}}, "vcpu": {{"allow": [
            {{"syscall": "exit_group", "why": "the child's _exit"}},
            {{"syscall": "getpid", "why": "allowed call under test"}}{extra}]}}}}}}"#
    );
    Policy::parse(&text).unwrap()
}

/// Installs `policy`'s vCPU filter on this thread, runs `body` and ends the process with its
/// result (returning into the harness would need calls the filter does not allow).
fn filtered(policy: &Policy, body: impl FnOnce() -> i32) -> ! {
    let code = match policy.install(ThreadKind::Vcpu) {
        Ok(()) => body(),
        Err(_) => 10,
    };
    // SAFETY: ends the process at once with exit_group, which the filter allows.
    unsafe { libc::_exit(code) }
}

fn ioctl_fionbio_like(request: u64) -> i32 {
    let mut on: libc::c_int = 0;
    // SAFETY: an ioctl on stdin with a valid int pointer; only the filter's verdict matters.
    unsafe { libc::ioctl(0, request, &mut on) };
    0
}

/// Under the vCPU filter, makes this thread's heap grow by a few MiB and shrink again (what
/// vsock's buffers do under load), then ends the process.
fn filtered_arena_churn(policy: &Policy) -> ! {
    if policy.install(ThreadKind::Vcpu).is_err() {
        // SAFETY: ends the process at once.
        unsafe { libc::_exit(10) };
    }
    for _ in 0..4 {
        let blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 << 10]).collect();
        drop(std::hint::black_box(blocks));
    }
    // SAFETY: ends the process at once with exit_group, which the filter allows.
    unsafe { libc::_exit(0) }
}

/// Not a test by itself: the body of the filtered children of the tests below.
#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD_CASE) else {
        return;
    };
    let ioctls =
        test_policy(r#", {"syscall": "ioctl", "why": "x", "ioctls": ["FIONBIO", "KVM_RUN"]}"#);
    match case.as_str() {
        "allowed" => filtered(&test_policy(""), || {
            // SAFETY: getpid(2) has no arguments and cannot fail.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            i32::from(pid <= 0)
        }),
        "denied" => filtered(&test_policy(""), || {
            violate();
            12
        }),
        "fionbio" => filtered(&ioctls, || ioctl_fionbio_like(libc::FIONBIO)),
        "fioasync" => filtered(&ioctls, || ioctl_fionbio_like(libc::FIOASYNC)),
        "kvm_run" => {
            let kvm = kvm_ioctls::Kvm::new().unwrap();
            let vm = kvm.create_vm().unwrap();
            let mut vcpu = vm.create_vcpu(0).unwrap();
            // Without memory the vCPU exits (or fails) at once; either way the ioctl got
            // through the filter.
            filtered(&ioctls, || {
                let _ = vcpu.run();
                0
            })
        }
        "arena_shrink" => {
            prepare_process();
            let policy = Policy::embedded().unwrap();
            let thread = std::thread::spawn(move || filtered_arena_churn(&policy));
            let _ = thread.join();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(13) }
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn the_embedded_file_resolves_for_every_kind() {
    let policy = Policy::embedded().unwrap();
    for kind in ThreadKind::ALL {
        assert!(!policy.rules[&kind].is_empty(), "{kind}");
        policy.build(kind).unwrap();
        assert!(policy.mentions(kind, "futex"), "{kind}");
        assert!(!policy.mentions(kind, VIOLATION_SYSCALL), "{kind}");
    }
    assert!(policy.mentions(ThreadKind::Vcpu, "ioctl"));
}

#[test]
fn every_entry_is_explained_and_known() {
    let file: PolicyFile = serde_json::from_str(EMBEDDED_POLICY).unwrap();
    let entries = file
        .groups
        .values()
        .flatten()
        .chain(file.filters.values().flat_map(|f| &f.allow));
    let mut count = 0;
    for entry in entries {
        count += 1;
        assert!(!entry.why.trim().is_empty(), "{}", entry.syscall);
        assert!(
            ScmpSyscall::from_name(&entry.syscall).is_ok(),
            "{}",
            entry.syscall
        );
        for name in &entry.ioctls {
            assert!(names::ioctl(name).is_some(), "{name}");
        }
        assert!(resolve_entry(entry).is_ok(), "{}", entry.syscall);
    }
    assert!(count > 10);
}

#[test]
fn bad_files_are_refused() {
    let filters = r#""main": {}, "event-loop": {}, "vcpu": {}"#;
    let with = |extra: &str| format!(r#"{{"filters": {{{filters}{extra}}}}}"#);
    let ok = Policy::parse(&with("")).unwrap();
    assert!(!ok.mentions(ThreadKind::Main, "read"));
    let cases = [
        (with(r#", "gpu": {}"#), "unknown thread kind"),
        (r#"{"filters": {"main": {}}}"#.to_owned(), "no filter for the event-loop"),
        (
            with(r#", "x": {}"#).replace(r#""main": {}"#, r#""main": {"include": ["g"]}"#),
            "unknown group",
        ),
        (
            with("").replace(r#""vcpu": {}"#, r#""vcpu": {"allow": [{"syscall": "read", "why": " "}]}"#),
            "has no `why`",
        ),
        (
            with("").replacen('{', r#"{"groups": {"g": [{"syscall": "read", "why": ""}]}, "#, 1),
            "has no `why`",
        ),
        (
            with("").replace(r#""vcpu": {}"#, r#""vcpu": {"allow": [{"syscall": "nosuchcall", "why": "x"}]}"#),
            "unknown syscall",
        ),
        (
            with("").replace(
                r#""vcpu": {}"#,
                r#""vcpu": {"allow": [{"syscall": "ioctl", "why": "x", "ioctls": ["KVM_NOPE"]}]}"#,
            ),
            "unknown ioctl",
        ),
        (
            with("").replace(
                r#""vcpu": {}"#,
                r#""vcpu": {"allow": [{"syscall": "socket", "why": "x", "args": [{"arg": 0, "op": "eq", "value": "AF_NOPE"}]}]}"#,
            ),
            "unknown constant",
        ),
        (
            with("").replace(
                r#""vcpu": {}"#,
                r#""vcpu": {"allow": [{"syscall": "mmap", "why": "x", "args": [{"arg": 2, "op": "masked_eq", "value": 0}]}]}"#,
            ),
            "needs a mask",
        ),
        (
            with("").replace(
                r#""vcpu": {}"#,
                r#""vcpu": {"allow": [{"syscall": "mmap", "why": "x", "args": [{"arg": 6, "op": "eq", "value": 0}]}]}"#,
            ),
            "0 to 5",
        ),
    ];
    for (text, says) in cases {
        let err = Policy::parse(&text).unwrap_err();
        let message = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(message.contains(says), "{text}\n{message}");
    }
}

#[test]
fn a_call_outside_the_filter_kills_the_process_with_sigsys() {
    let allowed = run_child("allowed");
    assert!(allowed.success(), "{allowed}");
    let denied = run_child("denied");
    assert!(killed_by_sigsys(denied), "{denied}");
}

#[test]
fn ioctl_rules_compare_the_request() {
    let allowed = run_child("fionbio");
    assert!(allowed.success(), "{allowed}");
    let denied = run_child("fioasync");
    assert!(killed_by_sigsys(denied), "{denied}");
}

/// A filtered thread whose heap shrinks is not killed (glibc would otherwise read
/// /proc/sys/vm/overcommit_memory the first time).
#[test]
fn a_shrinking_heap_stays_inside_the_filter() {
    let status = run_child("arena_shrink");
    assert!(status.success(), "{status}");
}

/// The KVM_RUN number the filter file resolves is the one kvm-ioctls issues: a vCPU thread
/// filtered to that ioctl can still call `VcpuFd::run`.
#[test]
fn kvm_run_matches_kvm_ioctls() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED kvm_run_matches_kvm_ioctls: no /dev/kvm");
        return;
    }
    let status = run_child("kvm_run");
    assert!(status.success(), "{status}");
}
