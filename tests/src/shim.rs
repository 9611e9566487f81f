//! Helpers of the tests that drive moat's containerd shim through a private containerd
//! ([`crate::containerd`]) with `ctr`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::containerd::{containerd_available, Containerd, Options, CTR_TIMEOUT};
use crate::docker::busybox_archive;
use crate::{moat_bin, vm_available, vmm_processes_mentioning, Outcome};

pub const IMAGE: &str = "moat.test/busybox:1";
pub const NS: &str = "moat-test";
pub const RUNTIME: &str = "io.containerd.moat.v2";

pub fn shim_bin() -> PathBuf {
    moat_bin().with_file_name("containerd-shim-moat-v2")
}

/// containerd with the shim on its PATH and the test image imported; `None` (the test skips)
/// where VMs or containerd cannot run.
pub fn start(test: &str) -> Option<Containerd> {
    if !vm_available(test) || !containerd_available(test) {
        return None;
    }
    assert!(shim_bin().exists(), "{} is not built", shim_bin().display());
    let c = Containerd::start(&Options {
        name: "containerd-moat",
        path: vec![shim_bin().parent().expect("bin dir").to_path_buf()],
        ..Options::default()
    });
    let tar = c.work_dir().join("busybox.tar");
    busybox_archive(&tar, IMAGE);
    c.ctr_ok(NS, &["images", "import", tar.to_str().expect("utf-8")]);
    Some(c)
}

/// `ctr run --rm --runtime moat IMAGE ID ARGS...` with `extra` flags before the image.
pub fn ctr_run(
    c: &Containerd,
    extra: &[&str],
    id: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let mut all = vec!["run", "--rm", "--runtime", RUNTIME];
    all.extend_from_slice(extra);
    all.extend_from_slice(&[IMAGE, id]);
    all.extend_from_slice(args);
    c.ctr(NS, &all, stdin, CTR_TIMEOUT)
}

/// What a failed check shows: the command's output, containerd's log, and the shim's view.
pub fn why(c: &Containerd, o: &Outcome) -> String {
    format!("{}{}", o.diagnostics(), c.diagnostics())
}

/// The task's status as `ctr task ls` shows it.
pub fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr_ok(NS, &["task", "ls"]);
    out.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
    })
}

/// `ctr run -d --runtime moat IMAGE ID sleep 1000`, waited for until the task runs.
#[track_caller]
pub fn run_detached(c: &Containerd, id: &str) {
    let args = [
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        id,
        "sleep",
        "1000",
    ];
    c.ctr_ok(NS, &args);
    wait_status(c, id, "RUNNING");
}

#[track_caller]
pub fn wait_status(c: &Containerd, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = task_status(c, id);
        if status.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} is {status:?}, not {want}\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nothing of the task `id` is left: no VM, no shim link or state dir, no mount in its bundle.
#[track_caller]
pub fn assert_task_gone(c: &Containerd, id: &str) {
    let link = Path::new("/run/moat-shim").join(NS).join(id);
    assert!(!link.exists(), "{} left behind", link.display());
    let bundle = c
        .state()
        .join("io.containerd.runtime.v2.task")
        .join(NS)
        .join(id);
    let mounts = crate::containerd::mounts_under(&bundle);
    assert!(mounts.is_empty(), "mounts left in the bundle: {mounts:?}");
    let vms = vmm_processes_mentioning("/run/moat/.oci/");
    assert!(vms.is_empty(), "moat VMs left: {vms:?}");
}

/// The task's pid as `ctr task ls` shows it (the VMM's, for moat).
#[track_caller]
pub fn task_pid(c: &Containerd, id: &str) -> u32 {
    let out = c.ctr_ok(NS, &["task", "ls"]);
    out.lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no pid for {id}: {out}"))
}
