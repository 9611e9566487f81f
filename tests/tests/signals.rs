//! A signal to `moat run` reaches the container's process, and the VM still goes away.

use std::time::Duration;

use moat_tests::{
    assert_nothing_left, start_until_ready, unique_name, vm_available, wait_with_timeout,
};

fn run_until_ready_then_signal(signal: nix::sys::signal::Signal) -> (String, i32) {
    let name = unique_name("sig");
    let mut child = start_until_ready(&[
        "run",
        "--name",
        &name,
        "--",
        "sh",
        "-c",
        "echo ready; exec sleep 600",
    ]);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).expect("kill");
    let code = wait_with_timeout(&mut child, Duration::from_secs(300));
    (name, code)
}

#[test]
fn sigterm_reaches_the_container() {
    if !vm_available("sigterm_reaches_the_container") {
        return;
    }
    let (name, code) = run_until_ready_then_signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 128 + 15);
    assert_nothing_left(&name);
}

#[test]
fn sigint_reaches_the_container() {
    if !vm_available("sigint_reaches_the_container") {
        return;
    }
    let (name, code) = run_until_ready_then_signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(code, 128 + 2);
    assert_nothing_left(&name);
}
