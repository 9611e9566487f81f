//! containerd with moat's shim (docs/containerd.md): a private containerd
//! (tests/src/containerd.rs) finds `containerd-shim-moat-v2` on its PATH, and `ctr run --runtime
//! io.containerd.moat.v2` boots a microVM per task. Each test imports a busybox image it builds
//! itself and boots real VMs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_tests::containerd::{Containerd, CTR_TIMEOUT};
use moat_tests::{unique_name, vmm_processes_mentioning};

use moat_tests::shim::{
    assert_task_gone, ctr_run, run_detached, start, task_pid, task_status, wait_status, why, IMAGE,
    NS, RUNTIME,
};

#[test]
fn ctr_run_gives_output_exit_codes_and_stdin() {
    let Some(c) = start("ctr_run_gives_output_exit_codes_and_stdin") else {
        return;
    };
    let id = unique_name("ctr");
    let o = ctr_run(
        &c,
        &[],
        &id,
        &["sh", "-c", "echo hi; uname -r; exit 3"],
        None,
    );
    assert_eq!(o.code, 3, "exit code\n{}", why(&c, &o));
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let out = o.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"hi"), "{}", why(&c, &o));
    assert_ne!(
        lines.get(1).copied(),
        Some(host_kernel.trim()),
        "the task runs on the host's kernel"
    );
    assert_task_gone(&c, &id);

    // ctr always connects its stdin to the task's.
    let o = ctr_run(
        &c,
        &[],
        &id,
        &["sh", "-c", "tr a-z A-Z; echo done >&2"],
        Some(b"from stdin\n"),
    );
    assert_eq!(o.code, 0, "{}", why(&c, &o));
    assert_eq!(o.out(), "FROM STDIN\n", "{}", why(&c, &o));
    assert!(o.err().contains("done"), "stderr: {}", why(&c, &o));
    assert_task_gone(&c, &id);
}

/// `ctr events` running in the background, its output in a file.
struct EventLog {
    child: Child,
    path: PathBuf,
}

impl EventLog {
    fn start(c: &Containerd) -> Self {
        let path = c
            .work_dir()
            .join(format!("events-{}.log", unique_name("e")));
        let file = std::fs::File::create(&path).expect("events log");
        let child = Command::new(moat_tests::containerd::ctr_bin())
            .arg("--address")
            .arg(c.socket())
            .args(["--namespace", NS, "events"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctr events");
        // `ctr events` subscribes once it has connected; give it that moment.
        std::thread::sleep(Duration::from_secs(2));
        Self { child, path }
    }

    /// The task topics seen for container `id`, in order, each with its event's JSON.
    fn task_events(&self, id: &str) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(id))
            .filter_map(|l| {
                let start = l.find(" /tasks/")? + 1;
                let (topic, rest) = l[start..].split_once(' ')?;
                Some((topic.to_owned(), rest.to_owned()))
            })
            .collect()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctr_task_exec_pause_resume_kill_delete_and_their_events() {
    let Some(c) = start("ctr_task_exec_pause_resume_kill_delete_and_their_events") else {
        return;
    };
    let events = EventLog::start(&c);
    let id = unique_name("ctr");
    run_detached(&c, &id);

    let o = c.ctr(
        NS,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            &id,
            "sh",
            "-c",
            "echo from-exec; exit 4",
        ],
        None,
        CTR_TIMEOUT,
    );
    assert_eq!(o.code, 4, "exec's exit code\n{}", why(&c, &o));
    assert_eq!(o.out(), "from-exec\n", "{}", why(&c, &o));

    // The counters of the container's cgroup in the guest (cgroup v2 metrics).
    let metrics = c.ctr_ok(NS, &["task", "metrics", &id]);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in ctr task metrics:\n{metrics}"))
    };
    assert!(value("pids.current") >= 1, "{metrics}");
    assert!(value("memory.usage ") > 0, "{metrics}");
    assert!(value("cpu.usage_usec") > 0, "{metrics}");

    let ps = c.ctr_ok(NS, &["task", "ps", &id]);
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        !pids.is_empty(),
        "ctr task ps lists the container's processes:\n{ps}"
    );

    c.ctr_ok(NS, &["task", "pause", &id]);
    wait_status(&c, &id, "PAUSED");
    c.ctr_ok(NS, &["task", "resume", &id]);
    wait_status(&c, &id, "RUNNING");

    c.ctr_ok(NS, &["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(NS, &["task", "delete", &id]);
    c.ctr_ok(NS, &["container", "delete", &id]);
    assert_task_gone(&c, &id);

    // Give containerd a moment to forward the last event to `ctr events`.
    std::thread::sleep(Duration::from_secs(1));
    let seen = events.task_events(&id);
    let topics: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ],
        "events in order: {seen:#?}"
    );
    assert!(
        seen[4].1.contains("\"exit_status\":4"),
        "the exec's exit: {}",
        seen[4].1
    );
    assert!(
        seen[7].1.contains("\"exit_status\":137"),
        "the task's exit: {}",
        seen[7].1
    );
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let Some(c) = start("a_killed_shim_is_cleaned_up_by_containerd") else {
        return;
    };
    let id = unique_name("ctr");
    run_detached(&c, &id);
    let shims = moat_tests::containerd::processes_mentioning(&id)
        .into_iter()
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            exe.ends_with("containerd-shim-moat-v2")
                && !std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .windows(11)
                    .any(|w| w == b"__supervise")
        })
        .collect::<Vec<_>>();
    assert_eq!(shims.len(), 1, "one shim serves the task: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    // containerd sees the shim's connection close and runs `containerd-shim-moat-v2 delete`.
    let deadline = Instant::now() + Duration::from_secs(120);
    while task_status(&c, &id).is_some_and(|s| s != "STOPPED") {
        assert!(
            Instant::now() < deadline,
            "the task outlived its shim\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = c.ctr(NS, &["task", "delete", &id], None, CTR_TIMEOUT);
    c.ctr_ok(NS, &["container", "delete", &id]);
    // The supervisor removes the VM, then exits.
    let supervisors = || moat_tests::processes_mentioning("__supervise", "/run/moat/.oci/");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(vmm_processes_mentioning("/run/moat/.oci/").is_empty() && supervisors().is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_task_gone(&c, &id);
    let left = supervisors();
    let status: Vec<String> = left
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default())
        .collect();
    assert!(
        left.is_empty(),
        "supervisors left: {left:?} {status:?}\n{}",
        c.diagnostics()
    );
}

#[test]
fn ctr_run_with_a_terminal_and_an_oom_event() {
    let Some(c) = start("ctr_run_with_a_terminal_and_an_oom_event") else {
        return;
    };
    // `ctr run -t` wants a terminal of its own: script(1) gives it one.
    let id = unique_name("ctr");
    let command = format!(
        "{} --address {} --namespace {NS} run --rm -t --runtime {RUNTIME} {IMAGE} {id} \
         sh -c 'tty; stty size'",
        moat_tests::containerd::ctr_bin().display(),
        c.socket().display()
    );
    let mut script = Command::new("script");
    script.args(["-qec", &command, "/dev/null"]);
    let o = c.run(script, CTR_TIMEOUT);
    assert_eq!(o.code, 0, "{}", why(&c, &o));
    assert!(
        o.out().contains("/dev/pts/"),
        "the task has a terminal: {}",
        why(&c, &o)
    );
    assert_task_gone(&c, &id);

    let events = EventLog::start(&c);
    let id = unique_name("ctr");
    let o = ctr_run(
        &c,
        &["--memory-limit", "33554432"],
        &id,
        &["sh", "-c", "tail /dev/zero"],
        None,
    );
    assert_eq!(o.code, 137, "killed by the OOM killer\n{}", why(&c, &o));
    std::thread::sleep(Duration::from_secs(1));
    let topics: Vec<String> = events
        .task_events(&id)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    assert!(
        matches!((oom, exit), (Some(o), Some(e)) if o < e),
        "TaskOOM before TaskExit: {topics:?}"
    );
    assert_task_gone(&c, &id);
}

/// No container record of `id` is left in containerd (a failed `ctr run --rm` removes its own).
#[track_caller]
fn assert_no_container(c: &Containerd, id: &str) {
    let list = c.ctr_ok(NS, &["container", "ls", "-q"]);
    if list.lines().any(|l| l.trim() == id) {
        c.ctr_ok(NS, &["container", "rm", id]);
    }
    assert_task_gone(c, id);
}

#[test]
fn bad_runtime_options_and_bundles_fail_with_a_clear_error() {
    let Some(c) = start("bad_runtime_options_and_bundles_fail_with_a_clear_error") else {
        return;
    };
    let config = c.work_dir().join("bad-shim.toml");
    std::fs::write(&config, "vm_memroy = \"512m\"\n").expect("write config");
    let id = unique_name("ctr");
    let path = config.to_str().expect("utf-8");
    let o = ctr_run(&c, &["--runtime-config-path", path], &id, &["true"], None);
    assert_ne!(o.code, 0, "{}", why(&c, &o));
    assert!(
        o.err().contains("vm_memroy") && o.err().contains("invalid shim config"),
        "the error names the key: {}",
        why(&c, &o)
    );
    assert!(c.log().contains("vm_memroy"), "containerd's log has it");
    assert_no_container(&c, &id);

    // A spec no image-made bundle has: a process without arguments.
    let root = c.work_dir().join("rootfs");
    moat_tests::busybox_rootfs(&root, &["sh"]);
    let spec = c.work_dir().join("spec.json");
    let json = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": root},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
    });
    std::fs::write(&spec, json.to_string()).expect("write spec");
    let id = unique_name("ctr");
    let spec = spec.to_str().expect("utf-8");
    let args = ["run", "--rm", "--runtime", RUNTIME, "--config", spec, &id];
    let o = c.ctr(NS, &args, None, CTR_TIMEOUT);
    assert_ne!(o.code, 0, "{}", why(&c, &o));
    let err = o.err();
    assert!(
        err.contains("failed to create shim task"),
        "{}",
        why(&c, &o)
    );
    assert!(err.lines().count() <= 2, "one clear line: {}", why(&c, &o));
    assert_no_container(&c, &id);
}

#[test]
fn the_shim_config_sizes_the_vm_and_a_file_log_uri_gets_the_output() {
    let Some(c) = start("the_shim_config_sizes_the_vm_and_a_file_log_uri_gets_the_output") else {
        return;
    };
    let config = c.work_dir().join("shim.toml");
    std::fs::write(&config, "vm_memory = \"300m\"\nvm_cpus = 1\n").expect("write config");
    let id = unique_name("ctr");
    let log = c.work_dir().join("logs/task.log");
    let uri = format!("file://{}", log.display());
    let path = config.to_str().expect("utf-8");
    let script = "grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo; echo err >&2";
    let o = ctr_run(
        &c,
        &["--runtime-config-path", path, "--log-uri", &uri],
        &id,
        &["sh", "-c", script],
        None,
    );
    assert_eq!(o.code, 0, "{}", why(&c, &o));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mem_kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in the log file: {text:?}\n{}", why(&c, &o)));
    assert!(
        (200 * 1024..=300 * 1024).contains(&mem_kib),
        "a 300 MiB VM: MemTotal {mem_kib} kB"
    );
    assert!(text.lines().any(|l| l == "1"), "one vCPU: {text:?}");
    assert!(
        text.lines().any(|l| l == "err"),
        "stderr goes to the file too: {text:?}"
    );
    assert_task_gone(&c, &id);
}

#[test]
fn a_pod_sandbox_is_sized_by_its_annotations_and_placed_in_its_systemd_cgroup() {
    let Some(c) =
        start("a_pod_sandbox_is_sized_by_its_annotations_and_placed_in_its_systemd_cgroup")
    else {
        return;
    };
    let id = unique_name("pod");
    let slice = format!("moattest-p{}.slice", std::process::id());
    let cgroup = format!("{slice}:cri-containerd:{id}");
    // What containerd's CRI plugin puts on a sandbox whose containers declare 512 MiB and 1.5
    // CPUs: the VM gets 512 + 96 MiB and 2 vCPUs.
    let args = [
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cgroup",
        &cgroup,
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-memory=536870912",
        "--annotation",
        "io.kubernetes.cri.sandbox-cpu-quota=150000",
        "--annotation",
        "io.kubernetes.cri.sandbox-cpu-period=100000",
        IMAGE,
        &id,
        "sleep",
        "1000",
    ];
    c.ctr_ok(NS, &args);
    wait_status(&c, &id, "RUNNING");
    let pid = task_pid(&c, &id);
    // The task's pid is the VMM's; its host cgroup is the unit systemd would have made.
    let scope = format!("/moattest.slice/{slice}/cri-containerd-{id}.scope");
    let host_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    assert!(
        host_cgroup.lines().any(|l| l.ends_with(&scope)),
        "VMM {pid} is in {host_cgroup:?}, not {scope}\n{}",
        c.diagnostics()
    );
    let script = "grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo";
    let exec = ["task", "exec", "--exec-id", "size", &id, "sh", "-c", script];
    let text = c.ctr_ok(NS, &exec);
    let mem_kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {text:?}"));
    assert!(
        (500 * 1024..=608 * 1024).contains(&mem_kib),
        "a 608 MiB VM: MemTotal {mem_kib} kB"
    );
    assert!(text.lines().any(|l| l.trim() == "2"), "two vCPUs: {text:?}");
    c.ctr_ok(NS, &["task", "kill", "-s", "SIGKILL", &id]);
    wait_status(&c, &id, "STOPPED");
    c.ctr_ok(NS, &["task", "delete", &id]);
    c.ctr_ok(NS, &["container", "delete", &id]);
    assert_task_gone(&c, &id);
    let root = Path::new("/sys/fs/cgroup");
    let leaf = root.join(scope.trim_start_matches('/'));
    assert!(!leaf.exists(), "{} left behind", leaf.display());
    let _ = std::fs::remove_dir(root.join("moattest.slice").join(&slice));
    let _ = std::fs::remove_dir(root.join("moattest.slice"));
}
