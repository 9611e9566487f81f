//! Volumes end clean and are never shared for writing: whatever way a run ends, a written ext4
//! volume checks clean on the host (no journal to replay, nothing for `e2fsck -fn` to report)
//! with its data intact; a read-write image is attached once (one VM or two); a volume left
//! dirty by a killed VMM is refused read-only and replayed read-write. Each test boots real
//! microVMs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use moat_jail::testutil::TempDir;
use moat_tests::{
    assert_nothing_left, ext4_image, moat, start_until_ready, unique_name, vm_available,
    vmm_processes_mentioning, wait_with_timeout, Outcome,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What a container writes to `/data/f`: a line naming the case (so that each case shows its
/// own write), then `seq 1 20000`.
fn write(tag: &str) -> String {
    format!("{{ echo {tag}; seq 1 20000; }} > /data/f")
}

fn expected_data(tag: &str) -> String {
    let numbers: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    format!("{tag}\n{numbers}")
}

/// A fresh 32 MiB ext4 image in `dir`.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("data.ext4");
    ext4_image(&path, "32M");
    path
}

/// Runs `cmd ARGS IMAGE`: its exit code, stdout and stderr.
fn tool(cmd: &str, args: &[&str], image: &Path) -> (i32, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Whether the superblock says the journal has transactions to replay.
fn needs_recovery(image: &Path) -> bool {
    let (_, text, _) = tool("dumpe2fs", &["-h"], image);
    let features = text
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_else(|| panic!("no features in\n{text}"));
    features.contains("needs_recovery")
}

/// The volume is clean and holds what the container of case `tag` wrote. `e2fsck -n` exits 0 even on an
/// image with a journal to replay, so its output is read: nothing but its passes and summary.
#[track_caller]
fn assert_clean_with_data(image: &Path, tag: &str) {
    let context = tag;
    assert!(!needs_recovery(image), "{context}: journal to replay");
    let (code, out, err) = tool("e2fsck", &["-fn"], image);
    let text = out + &err;
    let name = image.display().to_string();
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| !(l.starts_with("e2fsck ") || l.starts_with("Pass ") || l.starts_with(&name)))
        .collect();
    assert!(
        code == 0 && unexpected.is_empty(),
        "{context}: e2fsck -fn exited {code}:\n{text}"
    );
    let (_, data, _) = tool("debugfs", &["-R", "cat /f"], image);
    assert!(
        data == expected_data(tag),
        "{context}: /f is not what the container wrote"
    );
}

fn run(name: &str, flags: &[&str], script: &str) -> Outcome {
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    moat(&args, None)
}

/// A `moat run` in the background whose container printed "ready".
fn start_ready(name: &str, flags: &[&str], script: &str) -> Child {
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    start_until_ready(&args)
}

fn interrupt(child: &mut Child) -> i32 {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("kill");
    wait_with_timeout(child, Duration::from_secs(300))
}

#[test]
fn every_way_a_run_ends_leaves_the_volume_clean() {
    if !vm_available("every_way_a_run_ends_leaves_the_volume_clean") {
        return;
    }
    let dir = TempDir::new("volume-ends");
    let img = image(dir.path());
    let vol = format!("{}:/data", img.display());
    let v = ["-v", vol.as_str()];
    let priv_v = ["--privileged", "-v", vol.as_str()];
    let hog = "dd if=/dev/zero of=/dev/null bs=128M count=1";
    // busybox sh ends the script with status 2 when a fork fails.
    let fork = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 300 & done; exit 4";
    let ends: [(&str, &[&str], String, Option<i32>); 7] = [
        ("exit", &v, "WRITE; exit 3".into(), Some(3)),
        ("signal", &v, "WRITE; kill -9 $$".into(), Some(137)),
        (
            "oom",
            &["-m", "64m", "-v", &vol],
            format!("WRITE; {hog}"),
            Some(137),
        ),
        (
            "pids",
            &["--pids-limit", "6", "-v", &vol],
            format!("WRITE; {fork}"),
            Some(2),
        ),
        (
            "background",
            &v,
            "WRITE; sleep 300 & exit 0".into(),
            Some(0),
        ),
        ("poweroff", &priv_v, "WRITE; poweroff -f".into(), None),
        ("reboot", &priv_v, "WRITE; reboot -f".into(), None),
    ];
    for (how, flags, script, code) in ends {
        let name = unique_name(how);
        let o = run(&name, flags, &script.replace("WRITE", &write(how)));
        match code {
            Some(code) => {
                o.expect_code(code);
            }
            // The container's reboot(2) ends its pid namespace's init with a signal.
            None => assert!(
                o.code > 128 && o.code < 160 && o.err().is_empty(),
                "{how}: {}",
                o.diagnostics()
            ),
        }
        assert_clean_with_data(&img, how);
        assert_nothing_left(&name);
    }
    // Ctrl-C on the host.
    let name = unique_name("ctrl-c");
    let mut child = start_ready(
        &name,
        &v,
        &format!("{}; echo ready; exec sleep 600", write("ctrl-c")),
    );
    assert_eq!(interrupt(&mut child), 130);
    assert_clean_with_data(&img, "ctrl-c");
    assert_nothing_left(&name);
}

#[test]
fn a_read_write_image_is_attached_once() {
    if !vm_available("a_read_write_image_is_attached_once") {
        return;
    }
    let dir = TempDir::new("volume-lock");
    let img = image(dir.path());
    let rw = format!("{}:/data", img.display());
    let ro = format!("{rw}:ro");
    // Twice in one VM.
    let name = unique_name("twice");
    let o = run(
        &name,
        &["-v", &rw, "-v", &format!("{}:/b:ro", img.display())],
        "true",
    );
    o.expect_code(125);
    assert!(
        o.err().contains("attached twice (at /data and /b)"),
        "{}",
        o.diagnostics()
    );
    assert_nothing_left(&name);
    // While one VM writes it, no other VM may attach it at all.
    let holder = unique_name("holder");
    let mut child = start_ready(
        &holder,
        &["-v", &rw],
        &format!("{}; echo ready; exec sleep 600", write("holder")),
    );
    for vol in [&rw, &ro] {
        let name = unique_name("second");
        let o = run(&name, &["-v", vol], "true");
        o.expect_code(125);
        assert!(
            o.err().contains(&format!("in use by container {holder}")),
            "{}",
            o.diagnostics()
        );
        assert_eq!(o.err().lines().count(), 1, "{}", o.diagnostics());
        assert_nothing_left(&name);
    }
    assert_eq!(interrupt(&mut child), 130);
    assert_nothing_left(&holder);
    // Read-only twice at once is fine.
    let reader = unique_name("reader");
    let mut child = start_ready(&reader, &["-v", &ro], "echo ready; exec sleep 600");
    let name = unique_name("reader2");
    let o = run(&name, &["-v", &ro], "wc -l < /data/f");
    o.expect_code(0);
    assert_eq!(o.out(), "20001\n", "{}", o.diagnostics());
    assert_eq!(interrupt(&mut child), 130);
    assert_nothing_left(&reader);
    assert_clean_with_data(&img, "holder");
}

#[test]
fn a_volume_left_dirty_is_refused_read_only_and_replayed_read_write() {
    if !vm_available("a_volume_left_dirty_is_refused_read_only_and_replayed_read_write") {
        return;
    }
    let dir = TempDir::new("volume-dirty");
    let img = image(dir.path());
    let rw = format!("{}:/data", img.display());
    let name = unique_name("crash");
    let script = format!("{}; sync; echo ready; exec sleep 600", write("crash"));
    let mut child = start_ready(&name, &["-v", &rw], &script);
    let vmm = vmm_processes_mentioning(&name);
    assert_eq!(vmm.len(), 1, "{vmm:?}");
    kill(Pid::from_raw(vmm[0] as i32), Signal::SIGKILL).expect("kill moat-vmm");
    assert_eq!(wait_with_timeout(&mut child, Duration::from_secs(300)), 125);
    assert_nothing_left(&name);
    assert!(needs_recovery(&img), "a killed VMM left a clean volume?");
    let name = unique_name("dirty-ro");
    let o = run(&name, &["-v", &format!("{rw}:ro")], "true");
    o.expect_code(125);
    assert!(
        o.err().contains("journal needs recovery"),
        "{}",
        o.diagnostics()
    );
    assert_nothing_left(&name);
    // The guest's read-write mount replays the journal, as ext4 does.
    let name = unique_name("replay");
    let o = run(&name, &["-v", &rw], "wc -l < /data/f");
    o.expect_code(0);
    assert_eq!(o.out(), "20001\n", "{}", o.diagnostics());
    assert_clean_with_data(&img, "crash");
    assert_nothing_left(&name);
}

#[test]
fn the_writable_layer_is_a_disk_sized_by_storage_opt() {
    if !vm_available("the_writable_layer_is_a_disk_sized_by_storage_opt") {
        return;
    }
    let name = unique_name("layer");
    let o = run(
        &name,
        &[],
        "dd if=/dev/zero of=/big bs=1M count=1024 2>/dev/null && ls -l /big && df -k / | tail -n 1",
    );
    o.expect_code(0);
    assert!(o.out().contains(" 1073741824 "), "{}", o.diagnostics());
    assert_nothing_left(&name);
    let name = unique_name("small");
    let o = run(
        &name,
        &["--storage-opt", "size=128m"],
        "dd if=/dev/zero of=/tmp/big bs=1M count=200; echo dd=$?",
    );
    o.expect_code(0);
    assert!(
        o.err().contains("No space left on device"),
        "{}",
        o.diagnostics()
    );
    assert!(o.out().ends_with("dd=1\n"), "{}", o.diagnostics());
    assert_nothing_left(&name);
    // A read-only root gets no writable layer at all.
    let name = unique_name("ro-root");
    let o = run(&name, &["--read-only"], "touch /x; echo $?");
    o.expect_code(0);
    assert_eq!(o.out(), "1\n", "{}", o.diagnostics());
    assert_nothing_left(&name);
}

#[test]
fn a_plain_file_volume_is_a_copy() {
    if !vm_available("a_plain_file_volume_is_a_copy") {
        return;
    }
    let dir = TempDir::new("volume-file");
    let file = dir.path().join("greeting.txt");
    std::fs::write(&file, "hello from the host\n").expect("write");
    let rw = format!("{}:/etc/greeting", file.display());
    let ro = format!("{rw}:ro");
    let name = unique_name("file-rw");
    let script = "cat /etc/greeting; echo changed > /etc/greeting && cat /etc/greeting";
    let o = run(&name, &["-v", &rw], script);
    o.expect_code(0);
    assert_eq!(
        o.out(),
        "hello from the host\nchanged\n",
        "{}",
        o.diagnostics()
    );
    let host = std::fs::read_to_string(&file).expect("read");
    assert_eq!(host, "hello from the host\n", "the host file changed");
    assert_nothing_left(&name);
    let name = unique_name("file-ro");
    let o = run(
        &name,
        &["-v", &ro],
        "cat /etc/greeting; echo x > /etc/greeting",
    );
    assert_ne!(o.code, 0, "{}", o.diagnostics());
    assert!(
        o.out().starts_with("hello from the host\n"),
        "{}",
        o.diagnostics()
    );
    assert!(
        o.err().contains("Read-only file system"),
        "{}",
        o.diagnostics()
    );
    assert_nothing_left(&name);
}
