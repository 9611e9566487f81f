//! The Docker harness itself, with Docker's default runtime runc (no VM): a private dockerd
//! loads the busybox test image, and `docker run` gives the container's output and exit code.
//! The moat runtime's docker tests build on the same harness.

use moat_tests::docker::{busybox_archive, docker_available, processes_mentioning, Dockerd};
use moat_tests::{moat_bin, unique_name};

const IMAGE: &str = "moat-test/busybox:1";

#[test]
fn docker_harness_runs_busybox_with_runc() {
    if !docker_available("docker_harness_runs_busybox_with_runc") {
        return;
    }
    let dockerd = Dockerd::start(&moat_bin());
    let tar = dockerd.work_dir().join("busybox.tar");
    busybox_archive(&tar, IMAGE);
    let loaded = dockerd.load(&tar);
    assert!(
        loaded.contains(&format!("Loaded image: {IMAGE}")),
        "{loaded}"
    );

    let hi = dockerd.docker(&["run", "--rm", IMAGE, "echo", "hi"]);
    hi.expect_code(0);
    assert_eq!(hi.out(), "hi\n", "{}", hi.diagnostics());

    dockerd
        .docker(&["run", "--rm", IMAGE, "sh", "-c", "exit 3"])
        .expect_code(3);

    let left = dockerd.ok(&["ps", "-aq"]);
    assert_eq!(left, "", "--rm left containers behind");

    // Dropped with a container running: the container, the daemons, their shims and mounts
    // all go, and so does the temp dir.
    let marker = unique_name("docker-left-running");
    let script = format!("sleep 600; echo {marker}");
    dockerd.ok(&["run", "-d", IMAGE, "sh", "-c", &script]);
    assert_eq!(processes_mentioning(&marker).len(), 1, "the container runs");
    let dir = dockerd.dir().to_path_buf();
    let dir_text = dir.display().to_string();
    drop(dockerd);
    assert_eq!(
        processes_mentioning(&marker),
        Vec::<i32>::new(),
        "container left"
    );
    assert_eq!(
        processes_mentioning(&dir_text),
        Vec::<i32>::new(),
        "daemon or shim left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir_text),
        "mounts left under {dir_text}:\n{mounts}"
    );
    assert!(!dir.exists(), "{dir_text} left");
}
