//! The `moat` binary's exit codes and error lines, without a VM: bad input, missing assets and
//! a VMM that fails (a shell script standing in for `moat-vmm`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moat_jail::testutil::write_executable;

fn moat(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
    cmd.args(args);
    for var in [
        "MOAT_VMM",
        "MOAT_ASSETS_DIR",
        "MOAT_KERNEL",
        "MOAT_INITRAMFS",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fake installation: assets (empty files) and a `moat-vmm` script with `body`.
fn install(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    for f in ["vmlinux", "initramfs.cpio", "images/busybox.ext4"] {
        std::fs::write(dir.join(f), b"").unwrap();
    }
    write_executable(&dir.join("moat-vmm"), &format!("#!/bin/sh\n{body}"));
    dir
}

#[test]
fn version_and_help_exit_zero() {
    let out = moat(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("moat "));
    let out = moat(&["run", "--help"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--memory <SIZE>"));
}

#[test]
fn bare_moat_prints_usage_and_exits_zero_as_docker() {
    let out = moat(&[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: moat [OPTIONS] <COMMAND>"));
    assert_eq!(stderr(&out), "");
}

#[test]
fn every_version_flag_prints_moat_and_its_version() {
    for args in [
        &["-V"][..],
        &["--version"],
        &["run", "-V"],
        &["run", "--version"],
    ] {
        let out = moat(args, &[]);
        assert!(out.status.success(), "{args:?}");
        let want = format!("moat {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{args:?}");
    }
}

#[test]
fn bad_input_is_one_line_and_125() {
    for args in [
        &["run", "--cpus", "0"][..],
        &["run", "--cpus", "99"],
        &["run", "--vm-cpus", "0"],
        &["run", "--vm-memory", "1T"],
        &["run", "--cap-add", "NOPE"],
        &["run", "--bundle", "/nonexistent", "-t"],
        &["run", "--bundle", "/nonexistent", "busybox"],
        &["run", "-v", "/nonexistent:/data:ro"],
        &["run", "-m", "0"],
        &["run", "-m", "1k"],
        &["run", "-m", "1T"],
        &["run", "--cpus", "-1"],
        &["run", "--cpuset-cpus", "4096"],
        &["run", "-v", "D:/data:rx"],
        &["run", "--name", "bad/name"],
        &["run", "--frobnicate"],
    ] {
        let out = moat(args, &[]);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("moat: ") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn unknown_image_and_missing_vmm() {
    let dir = install("image", "exit 0");
    // Neither stored nor built in, and not to be pulled.
    let out = moat(
        &["run", "--pull", "never", "nginx"],
        &[
            ("MOAT_ASSETS_DIR", &dir),
            ("MOAT_VMM", &dir.join("moat-vmm")),
            ("MOAT_DATA_ROOT", &dir.join("data")),
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        stderr(&out),
        "moat: No such image: nginx (not in the store, and --pull never)\n"
    );
    let out = moat(
        &["run"],
        &[("MOAT_ASSETS_DIR", &dir), ("MOAT_VMM", &dir.join("nope"))],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with("moat: moat-vmm not found at "),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn probe_refusal_and_vmm_failure_leave_nothing() {
    let body = r#"
if [ "$1" = probe ]; then echo 'moat-vmm: no usable kvm here' >&2; exit 1; fi
echo 'moat-vmm: guest memory: cannot allocate' >&2; exit 1"#;
    let dir = install("probe", body);
    let vmm = dir.join("moat-vmm");
    let env = [
        ("MOAT_ASSETS_DIR", dir.as_path()),
        ("MOAT_VMM", vmm.as_path()),
    ];
    let out = moat(&["run", "--", "true"], &env);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(stderr(&out), "moat: no usable kvm here\n");

    let name = format!("cli-test-{}", std::process::id());
    let skip = Path::new("1");
    let env = [env[0], env[1], ("MOAT_SKIP_PROBE", skip)];
    let out = moat(&["run", "--name", &name, "--", "true"], &env);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        stderr(&out),
        "moat: VM exited before the agent was ready (status 1): \
         moat-vmm: guest memory: cannot allocate\n"
    );
    assert!(!Path::new("/run/moat").join(&name).exists());
    let _ = std::fs::remove_dir_all(dir);
}
