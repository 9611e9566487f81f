//! Bad input: one clear line on stderr, exit 125, nothing left behind.

use std::path::PathBuf;

use moat_tests::{assert_nothing_left, moat, unique_name, vm_available, workspace, Outcome};

fn kernel() -> PathBuf {
    workspace().join("target/release/moat-assets/vmlinux")
}

#[track_caller]
fn assert_refused(o: &Outcome, name: &str, mentions: &str) {
    o.expect_code(125);
    let err = o.err();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line\n{}", o.diagnostics());
    assert!(lines[0].starts_with("moat: "), "{}", o.diagnostics());
    assert!(
        lines[0].to_lowercase().contains(&mentions.to_lowercase()),
        "error should mention {mentions:?}\n{}",
        o.diagnostics()
    );
    assert_nothing_left(name);
}

fn run_named(name: &str, flags: &[&str]) -> Outcome {
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "true"]);
    moat(&args, None)
}

#[test]
fn memory_zero() {
    let name = unique_name("mem0");
    assert_refused(&run_named(&name, &["--memory", "0"]), &name, "memory");
}

#[test]
fn memory_one_terabyte() {
    let name = unique_name("mem1t");
    assert_refused(&run_named(&name, &["--memory", "1T"]), &name, "memory");
}

#[test]
fn memory_garbage() {
    let name = unique_name("memx");
    assert_refused(&run_named(&name, &["--memory", "lots"]), &name, "memory");
}

#[test]
fn cpus_zero() {
    let name = unique_name("cpu0");
    assert_refused(&run_named(&name, &["--cpus", "0"]), &name, "cpus");
}

#[test]
fn cpus_ninety_nine() {
    let name = unique_name("cpu99");
    assert_refused(&run_named(&name, &["--cpus", "99"]), &name, "cpus");
}

#[test]
fn unknown_image() {
    let name = unique_name("img");
    let o = moat(
        &["run", "--name", &name, "no-such-image:latest", "--", "true"],
        None,
    );
    assert_refused(&o, &name, "no-such-image");
}

#[test]
fn kernel_file_missing() {
    let name = unique_name("kmissing");
    let o = run_named(&name, &["--kernel", "/nonexistent/vmlinux"]);
    assert_refused(&o, &name, "/nonexistent/vmlinux");
}

#[test]
fn initramfs_missing() {
    let name = unique_name("imissing");
    let o = run_named(&name, &["--initramfs", "/nonexistent/initramfs.cpio"]);
    assert_refused(&o, &name, "/nonexistent/initramfs.cpio");
}

#[test]
fn kernel_file_garbage() {
    if !vm_available("kernel_file_garbage") {
        return;
    }
    let dir = tempdir("garbage");
    let path = dir.join("vmlinux");
    std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
    let name = unique_name("kgarbage");
    let o = run_named(&name, &["--kernel", path.to_str().unwrap()]);
    assert_refused(&o, &name, "kernel");
}

#[test]
fn kernel_file_truncated() {
    if !vm_available("kernel_file_truncated") {
        return;
    }
    let dir = tempdir("truncated");
    let path = dir.join("vmlinux");
    let full = std::fs::read(kernel()).expect("built kernel");
    std::fs::write(&path, &full[..full.len() / 3]).unwrap();
    let name = unique_name("ktrunc");
    let o = run_named(&name, &["--kernel", path.to_str().unwrap()]);
    assert_refused(&o, &name, "kernel");
}

#[test]
fn command_not_found_leaves_nothing() {
    if !vm_available("command_not_found_leaves_nothing") {
        return;
    }
    let name = unique_name("nocmd");
    let o = moat(&["run", "--name", &name, "--", "/no/such/binary"], None);
    o.expect_code(127);
    assert_nothing_left(&name);
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("moat-{tag}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
