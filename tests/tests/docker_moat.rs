//! Docker with moat as its runtime (docs/docker.md): a private dockerd (tests/src/docker.rs)
//! whose daemon.json names moat; `docker run --runtime moat` boots a microVM per container, and
//! docker's run, exec, logs, stop, kill and rm -f work on it. Each container boots a real VM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_tests::docker::{busybox_archive, docker_available, Dockerd};
use moat_tests::{moat, moat_bin, scratch_disk, vm_available, vmm_processes_mentioning};

const IMAGE: &str = "moat-test/busybox:1";

fn start() -> Dockerd {
    let dockerd = Dockerd::start(&moat_bin());
    let tar = dockerd.work_dir().join("busybox.tar");
    busybox_archive(&tar, IMAGE);
    dockerd.load(&tar);
    dockerd
}

/// `docker run -d --runtime moat --name NAME IMAGE COMMAND...`, which must succeed.
#[track_caller]
fn run_detached(dockerd: &Dockerd, name: &str, command: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", "moat", "--name", name, IMAGE];
    args.extend_from_slice(command);
    dockerd.ok(&args);
}

/// The state of container `name` as docker inspect shows it.
fn inspect(dockerd: &Dockerd, name: &str, format: &str) -> String {
    dockerd
        .ok(&["inspect", "-f", format, name])
        .trim()
        .to_owned()
}

#[track_caller]
fn wait_logs(dockerd: &Dockerd, name: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let logs = dockerd.docker(&["logs", name]);
        if logs.out().contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged: {}",
            logs.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// No VM and no OCI state of moat's is left.
#[track_caller]
fn assert_no_moat_left() {
    let vms = vmm_processes_mentioning("/run/moat/.oci/");
    assert!(vms.is_empty(), "moat VMs left: {vms:?}");
    let dirs: Vec<_> = std::fs::read_dir("/run/moat/.oci")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(dirs.is_empty(), "OCI state dirs left: {dirs:?}");
}

#[test]
fn docker_runs_containers_in_moat_microvms() {
    if !docker_available("docker_runs_containers_in_moat_microvms")
        || !vm_available("docker_runs_containers_in_moat_microvms")
    {
        return;
    }
    let dockerd = start();
    // In a VM: the guest's own kernel, and Docker's /etc/hostname copied in.
    let run = dockerd.docker(&[
        "run",
        "--rm",
        "--runtime",
        "moat",
        "--hostname",
        "dockered",
        IMAGE,
        "sh",
        "-c",
        "cat /etc/hostname; grep -c 8250.nr_uarts=1 /proc/cmdline",
    ]);
    assert_eq!(
        run.code,
        0,
        "{}{}",
        run.diagnostics(),
        dockerd.diagnostics()
    );
    assert_eq!(run.out(), "dockered\n1\n", "{}", run.diagnostics());
    // The image's layers became one cached disk, which the next container of the image reuses.
    let cached = layer_images(&dockerd);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let failed = dockerd.docker(&[
        "run",
        "--rm",
        "--runtime",
        "moat",
        IMAGE,
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(failed.code, 3, "{}", failed.diagnostics());
    assert_eq!(
        layer_images(&dockerd),
        cached,
        "the cached image was made again"
    );
    // The container's own layer travels: a file docker cp put in a created container.
    let file = dockerd.work_dir().join("from-host");
    std::fs::write(&file, "copied in\n").expect("write");
    let create = ["create", "--runtime", "moat", "--name", "copied", IMAGE];
    dockerd.ok(&[&create[..], &["cat", "/from-host", "/etc/hostname"]].concat());
    dockerd.ok(&["cp", &file.display().to_string(), "copied:/from-host"]);
    let copied = dockerd.docker(&["start", "-a", "copied"]);
    assert!(
        copied.code == 0 && copied.out().starts_with("copied in\n"),
        "{}",
        copied.diagnostics()
    );
    let echoed = dockerd.docker_with(
        &["run", "--rm", "-i", "--runtime", "moat", IMAGE, "cat"],
        Some(b"through stdin\n"),
        Duration::from_secs(300),
    );
    assert_eq!(
        (echoed.code, echoed.out().as_str()),
        (0, "through stdin\n"),
        "{}",
        echoed.diagnostics()
    );

    // A service: logs, exec, stop (its TERM trap gets the signal), start again.
    let script = "echo up; trap 'echo got-term; exit 7' TERM; while :; do sleep 0.2; done";
    run_detached(&dockerd, "svc", &["sh", "-c", script]);
    wait_logs(&dockerd, "svc", "up");
    let exec = dockerd.docker(&["exec", "svc", "sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(
        (exec.code, exec.out().as_str()),
        (4, "in-exec\n"),
        "{}",
        exec.diagnostics()
    );
    let id = inspect(&dockerd, "svc", "{{.Id}}");
    let cgroup = Path::new("/sys/fs/cgroup/docker").join(&id);
    assert!(
        cgroup.join("cgroup.procs").exists(),
        "no cgroup {}",
        cgroup.display()
    );
    dockerd.ok(&["stop", "svc"]);
    assert_eq!(inspect(&dockerd, "svc", "{{.State.ExitCode}}"), "7");
    wait_logs(&dockerd, "svc", "got-term");
    assert!(!cgroup.exists(), "{} left after stop", cgroup.display());

    // kill, then rm -f of a running one.
    run_detached(&dockerd, "killed", &["sleep", "600"]);
    dockerd.ok(&["kill", "killed"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while inspect(&dockerd, "killed", "{{.State.Running}}") != "false" {
        assert!(Instant::now() < deadline, "kill did not end k");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(inspect(&dockerd, "killed", "{{.State.ExitCode}}"), "137");
    run_detached(&dockerd, "forced", &["sleep", "600"]);
    dockerd.ok(&["rm", "-f", "svc", "killed", "forced", "copied"]);
    assert_eq!(dockerd.ok(&["ps", "-aq"]), "");
    assert_no_moat_left();
    drop(dockerd);
    assert_no_moat_left();
    // Its layers went with the daemon's data root: prune removes the cached image.
    moat(&["system", "prune"], None).expect_code(0);
    for (path, _) in &cached {
        assert!(!path.exists(), "{} left after prune", path.display());
    }
}

/// The cached layer images (and their inode) made from this daemon's layers.
fn layer_images(dockerd: &Dockerd) -> Vec<(PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    let data_root = scratch_disk("x")
        .parent()
        .and_then(Path::parent)
        .map(Path::to_owned);
    let dir = data_root.expect("data root").join("layers");
    let ours = dockerd.data_root().display().to_string();
    let mut found: Vec<(PathBuf, u64)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "layers"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&ours)))
        .map(|p| p.with_extension("ext4"))
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.ino())))
        .collect();
    found.sort();
    found
}
