//! The guest cannot make the VMM crash or hang: power-off, reboot and panic from inside each end
//! the run with a clear status, and nothing is left behind. The container's defaults refuse
//! them; a `--privileged` container (privileged inside its own VM only) can do them, and the
//! host still ends the run cleanly.

use moat_tests::{assert_nothing_left, moat, unique_name, vm_available};

#[test]
fn poweroff_from_the_container_ends_the_run() {
    if !vm_available("poweroff_from_the_container_ends_the_run") {
        return;
    }
    let name = unique_name("poweroff");
    // By default reboot(2) is refused (seccomp, and no CAP_SYS_BOOT).
    let o = moat(&["run", "--name", &name, "--", "poweroff", "-f"], None);
    o.expect_code(1);
    assert!(
        o.err().contains("Operation not permitted"),
        "{}",
        o.diagnostics()
    );
    assert_nothing_left(&name);
    let o = moat(
        &[
            "run",
            "--privileged",
            "--name",
            &name,
            "--",
            "poweroff",
            "-f",
        ],
        None,
    );
    // The container has its own PID namespace: power-off there ends its init with SIGINT.
    o.expect_code(128 + 2);
    assert_nothing_left(&name);
}

/// Writes `key` to /proc/sysrq-trigger in the guest; the run must end with 125, a line on stderr
/// that mentions `says`, and nothing left behind.
fn sysrq_ends_the_run(tag: &str, key: char, says: &str) {
    let name = unique_name(tag);
    let script = format!("echo {key} > /proc/sysrq-trigger; sleep 60");
    let args = [
        "run",
        "--privileged",
        "--name",
        &name,
        "--",
        "sh",
        "-c",
        &script,
    ];
    let o = moat(&args, None);
    o.expect_code(125);
    assert!(o.err().contains(says), "{}", o.diagnostics());
    assert_nothing_left(&name);
}

#[test]
fn guest_kernel_reboot_ends_the_run() {
    if vm_available("guest_kernel_reboot_ends_the_run") {
        sysrq_ends_the_run("reboot", 'b', "VM ended");
    }
}

#[test]
fn guest_kernel_panic_ends_the_run() {
    if vm_available("guest_kernel_panic_ends_the_run") {
        sysrq_ends_the_run("panic", 'c', "panic");
    }
}
