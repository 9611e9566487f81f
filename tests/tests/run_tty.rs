//! `moat run -t`: an interactive shell on a pseudo-terminal.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_tests::{moat_bin, vm_available, wait_with_timeout, RUN_TIMEOUT};
use nix::pty::{openpty, Winsize};

fn read_until(master: &mut std::fs::File, needle: &str, deadline: Instant) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !seen.contains(needle) {
        let mut fds = [nix::poll::PollFd::new(
            master.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16)).unwrap_or(0) == 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    seen
}

#[test]
fn interactive_shell_on_a_pty() {
    if !vm_available("interactive_shell_on_a_pty") {
        return;
    }
    let size = Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let mut child = Command::new(moat_bin())
        .args(["run", "-i", "-t", "--", "sh"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn moat");
    let mut master = std::fs::File::from(pty.master);
    let deadline = Instant::now() + RUN_TIMEOUT;
    master
        .write_all(b"stty size; tty; echo marker-$((40+2))\n")
        .unwrap();
    let seen = read_until(&mut master, "marker-42", deadline);
    assert!(seen.contains("marker-42"), "no shell output: {seen:?}");
    assert!(
        seen.contains("33 101"),
        "terminal size not applied: {seen:?}"
    );
    assert!(seen.contains("/dev/pts/"), "not on a pty: {seen:?}");
    master.write_all(b"exit 3\n").unwrap();
    let code = wait_with_timeout(&mut child, Duration::from_secs(300));
    let rest = read_until(
        &mut master,
        "\u{0}",
        Instant::now() + Duration::from_millis(500),
    );
    assert_eq!(code, 3, "output: {seen:?}{rest:?}");
}
