//! Large streams through a microVM stay intact.

use moat_tests::{moat, vm_available};

const SIZE: usize = 64 << 20;

/// Deterministic pseudo-random bytes (xorshift), so the data is not trivially compressible.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[test]
fn sixty_four_mib_through_stdin_and_back_out() {
    if !vm_available("sixty_four_mib_through_stdin_and_back_out") {
        return;
    }
    let input = data(SIZE);
    let o = moat(&["run", "-i", "--", "cat"], Some(&input));
    o.expect_code(0);
    assert_eq!(o.stdout.len(), SIZE, "{}", o.diagnostics());
    assert!(o.stdout == input, "stdout differs from stdin");
}

#[test]
fn sixty_four_mib_generated_in_the_guest() {
    if !vm_available("sixty_four_mib_generated_in_the_guest") {
        return;
    }
    // The guest produces the bytes and their checksum; the host checks both.
    let script = "head -c 67108864 /dev/urandom > /tmp/blob; md5sum < /tmp/blob >&2; cat /tmp/blob";
    let o = moat(
        &["run", "--vm-memory", "512m", "--", "sh", "-c", script],
        None,
    );
    o.expect_code(0);
    assert_eq!(o.stdout.len(), SIZE, "{}", o.diagnostics());
    let guest_sum = o
        .err()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let host_sum = md5_hex(&o.stdout);
    assert_eq!(guest_sum, host_sum, "{}", o.diagnostics());
}

fn md5_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
