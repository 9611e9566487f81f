//! `moat run --bundle DIR`: an OCI bundle (config.json + its root directory) runs as is (a spec
//! without device rules still gets the default device filter: with CAP_MKNOD, making the guest's
//! disk node is refused), and a bundle whose root the agent must refuse is refused with the
//! reason. Each test boots a VM.

use std::path::Path;

use moat_jail::testutil::TempDir;
use moat_tests::{assert_nothing_left, busybox_rootfs, moat, unique_name, vm_available};
use serde_json::json;

const BUNDLE_APPLETS: &[&str] = &[
    "sh", "cat", "echo", "hostname", "id", "grep", "touch", "wc", "mknod",
];

fn write_config(bundle: &Path, script: &str) {
    let config = json!({
        "ociVersion": "1.2.0",
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "bundled",
        "process": {
            "args": ["sh", "-c", script],
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": { "uid": 0, "gid": 0 },
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_MKNOD"],
                "effective": ["CAP_KILL", "CAP_MKNOD"],
                "permitted": ["CAP_KILL", "CAP_MKNOD"]
            }
        },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "mode=755", "size=1m"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "mount" }, { "type": "uts" }, { "type": "ipc" }
            ],
            "maskedPaths": ["/proc/timer_list"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    let text = serde_json::to_string_pretty(&config).unwrap();
    std::fs::write(bundle.join("config.json"), text).unwrap();
}

#[test]
fn a_bundle_runs_as_is() {
    if !vm_available("a_bundle_runs_as_is") {
        return;
    }
    let bundle = TempDir::new("bundle");
    busybox_rootfs(&bundle.path().join("rootfs"), BUNDLE_APPLETS);
    write_config(
        bundle.path(),
        "echo from-bundle; hostname; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
         cat /proc/timer_list | wc -c; touch /x 2>&1; \
         mknod /dev/disk b 254 0 2>&1",
    );
    let dir = bundle.path().to_str().unwrap();
    let o = moat(&["run", "--bundle", dir], None);
    o.expect_code(1);
    assert_eq!(
        o.out(),
        "from-bundle\nbundled\nCapEff:\t0000000008000020\nNoNewPrivs:\t1\n0\n\
         touch: /x: Read-only file system\nmknod: /dev/disk: Operation not permitted\n",
        "{}",
        o.diagnostics()
    );
}

#[test]
fn a_bundle_whose_proc_is_a_symlink_is_refused() {
    if !vm_available("a_bundle_whose_proc_is_a_symlink_is_refused") {
        return;
    }
    let bundle = TempDir::new("bundle-bad");
    let rootfs = bundle.path().join("rootfs");
    busybox_rootfs(&rootfs, BUNDLE_APPLETS);
    std::fs::remove_dir(rootfs.join("proc")).unwrap();
    std::os::unix::fs::symlink("/tmp", rootfs.join("proc")).unwrap();
    write_config(bundle.path(), "echo should-not-run");
    let name = unique_name("bundle-bad");
    let dir = bundle.path().to_str().unwrap();
    let o = moat(&["run", "--name", &name, "--bundle", dir], None);
    o.expect_code(125);
    assert!(o.out().is_empty(), "{}", o.diagnostics());
    assert!(o.err().contains("/proc"), "{}", o.diagnostics());
    assert!(o.err().contains("symlink"), "{}", o.diagnostics());
    assert_nothing_left(&name);
}
