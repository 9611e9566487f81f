//! A pod in one microVM (docs/containerd.md, "Pods"): tasks marked as containerd's CRI plugin
//! marks a pod's sandbox and its containers (`io.kubernetes.cri.container-type`,
//! `io.kubernetes.cri.sandbox-id`) go to one shim, and the containers run in the sandbox's VM,
//! on disks swapped into its disk slots, each with its own root and pid namespace.

use moat_tests::shim::{
    assert_task_gone, start, task_pid, task_status, wait_status, why, IMAGE, NS, RUNTIME,
};
use moat_tests::{unique_name, vmm_processes_mentioning};

const TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX: &str = "io.kubernetes.cri.sandbox-id";

/// `ctr run` flags of a pod's task: `role` is `sandbox` or `container`.
fn pod_flags(pod: &str, role: &str) -> Vec<String> {
    [
        "--runtime".to_owned(),
        RUNTIME.to_owned(),
        "--annotation".to_owned(),
        format!("{TYPE}={role}"),
        "--annotation".to_owned(),
        format!("{SANDBOX}={pod}"),
    ]
    .to_vec()
}

/// What a process of the task sees: the guest's boot id, its mount, pid, ipc and uts
/// namespaces.
fn identity(c: &moat_tests::containerd::Containerd, id: &str, exec_id: &str) -> Vec<String> {
    let script =
        "cat /proc/sys/kernel/random/boot_id; for n in mnt pid ipc uts; do readlink /proc/self/ns/$n; done";
    let out = c.ctr_ok(
        NS,
        &["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script],
    );
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 5, "boot id and four namespaces: {out:?}");
    lines
}

#[test]
fn a_pods_containers_share_the_sandboxs_vm_with_their_own_root_and_pids() {
    let Some(c) = start("a_pods_containers_share_the_sandboxs_vm_with_their_own_root_and_pids")
    else {
        return;
    };
    let pod = unique_name("pod");
    let mut args = vec!["run".to_owned(), "-d".to_owned()];
    args.extend(pod_flags(&pod, "sandbox"));
    args.extend([IMAGE, &pod, "sleep", "1000"].map(str::to_owned));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ctr_ok(NS, &refs);
    wait_status(&c, &pod, "RUNNING");

    // A long-running container of the pod, detached, in the pod's ipc and uts namespaces as
    // CRI asks (the sandbox task's /proc/<pid>/ns/... paths).
    let pid = task_pid(&c, &pod);
    let web = format!("{pod}-web");
    let mut args = vec!["run".to_owned(), "-d".to_owned()];
    args.extend(pod_flags(&pod, "container"));
    for kind in ["ipc", "uts"] {
        args.extend([
            "--with-ns".to_owned(),
            format!("{kind}:/proc/{pid}/ns/{kind}"),
        ]);
    }
    args.extend([IMAGE, &web, "sleep", "1000"].map(str::to_owned));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    c.ctr_ok(NS, &refs);
    wait_status(&c, &web, "RUNNING");
    // One VM: the same task pid (the VMM's) and the same guest boot; its own root and pids.
    assert_eq!(
        task_pid(&c, &web),
        task_pid(&c, &pod),
        "one VMM for the pod"
    );
    // Only a pod sandbox's VM has disk slots.
    let vms = vmm_processes_mentioning("--disk-slots");
    assert_eq!(vms.len(), 1, "one VM for the pod: {vms:?}");
    let sandbox = identity(&c, &pod, "id1");
    let member = identity(&c, &web, "id2");
    assert_eq!(sandbox[0], member[0], "the same guest kernel (boot id)");
    assert_ne!(sandbox[1], member[1], "a mount namespace of its own");
    assert_ne!(sandbox[2], member[2], "a pid namespace of its own");
    assert_eq!(sandbox[3], member[3], "the pod's ipc namespace");
    assert_eq!(sandbox[4], member[4], "the pod's uts namespace");
    let write = [
        "task",
        "exec",
        "--exec-id",
        "w",
        &web,
        "sh",
        "-c",
        "echo x > /mine",
    ];
    c.ctr_ok(NS, &write);
    let look = ["task", "exec", "--exec-id", "l", &pod, "ls", "/mine"];
    let o = c.ctr(NS, &look, None, moat_tests::containerd::CTR_TIMEOUT);
    assert_ne!(
        o.code,
        0,
        "the sandbox's root is not the member's: {}",
        why(&c, &o)
    );
    let pids = c.ctr_ok(NS, &["task", "ps", &web]);
    assert!(
        pids.lines().count() >= 2,
        "the member's processes: {pids:?}"
    );
    let metrics = c.ctr_ok(NS, &["task", "metrics", &web]);
    assert!(
        metrics.contains("memory"),
        "the member's metrics: {metrics:?}"
    );

    // Foreground containers of the pod with their output and exit code, each in the slots the
    // one before freed; the second shares the pod's pid namespace (shareProcessNamespace) and
    // sees the sandbox's process.
    for round in 0..2 {
        let job = format!("{pod}-job{round}");
        let mut args = vec!["run".to_owned(), "--rm".to_owned()];
        args.extend(pod_flags(&pod, "container"));
        if round == 1 {
            args.extend(["--with-ns".to_owned(), format!("pid:/proc/{pid}/ns/pid")]);
        }
        let script = "echo job-out; ps -o args | grep -qx 'sleep 1000' && echo shared; exit 3";
        args.extend([IMAGE, &job, "sh", "-c", script].map(str::to_owned));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = c.ctr(NS, &refs, None, moat_tests::containerd::CTR_TIMEOUT);
        assert_eq!(o.code, 3, "the job's exit code\n{}", why(&c, &o));
        let shared = String::from_utf8_lossy(&o.stdout).contains("shared");
        assert_eq!(
            shared,
            round == 1,
            "the pod's pid namespace only when shared\n{}",
            why(&c, &o)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("job-out"),
            "the job's output\n{}",
            why(&c, &o)
        );
        assert_task_link_gone(&job);
    }

    // A member's terminal, and an exec's into a member, are ptys of the member's own devpts:
    // its /dev/pts shows no other container's.
    let tty_job = format!("{pod}-tty");
    let mut flags = pod_flags(&pod, "container").join(" ");
    flags.push_str(" -t");
    let show = "sh -c 'tty; echo /dev/pts/*'";
    let runs = [
        format!("run --rm {flags} {IMAGE} {tty_job} {show}"),
        format!("task exec -t --exec-id t {web} {show}"),
    ];
    for args in runs {
        let command = format!(
            "{} --address {} --namespace {NS} {args}",
            moat_tests::containerd::ctr_bin().display(),
            c.socket().display()
        );
        let mut script = std::process::Command::new("script");
        script.args(["-qec", &command, "/dev/null"]);
        let o = c.run(script, moat_tests::containerd::CTR_TIMEOUT);
        assert_eq!(o.code, 0, "{args}\n{}", why(&c, &o));
        assert!(
            o.out()
                .replace('\r', "")
                .contains("/dev/pts/0\n/dev/pts/0 /dev/pts/ptmx\n"),
            "{args}: a pty of the container's own devpts\n{}",
            why(&c, &o)
        );
    }
    assert_task_link_gone(&tty_job);
    cri_mounts(&c, &pod);

    // A namespace that is not the sandbox's is refused, and nothing of the container stays.
    let stray = format!("{pod}-stray");
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(pod_flags(&pod, "container"));
    args.extend(["--with-ns".to_owned(), "network:/proc/1/ns/net".to_owned()]);
    args.extend([IMAGE, &stray, "true"].map(str::to_owned));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.ctr(NS, &refs, None, moat_tests::containerd::CTR_TIMEOUT);
    assert_ne!(o.code, 0, "a host namespace is refused\n{}", why(&c, &o));
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("not a pid, ipc, uts or network namespace of the pod's sandbox"),
        "the reason is told: {text}"
    );
    assert_task_link_gone(&stray);

    c.ctr_ok(NS, &["task", "kill", "-s", "SIGKILL", &web]);
    wait_status(&c, &web, "STOPPED");
    assert_eq!(
        task_status(&c, &pod).as_deref(),
        Some("RUNNING"),
        "the sandbox runs on"
    );
    c.ctr_ok(NS, &["task", "delete", &web]);
    c.ctr_ok(NS, &["container", "delete", &web]);
    assert_task_link_gone(&web);
    c.ctr_ok(NS, &["task", "kill", "-s", "SIGKILL", &pod]);
    wait_status(&c, &pod, "STOPPED");
    c.ctr_ok(NS, &["task", "delete", &pod]);
    c.ctr_ok(NS, &["container", "delete", &pod]);
    assert_task_gone(&c, &pod);
    let vms = vmm_processes_mentioning("--disk-slots");
    assert!(vms.is_empty(), "the pod's VM is left: {vms:?}");
}

/// The mounts CRI gives every container of a pod: writable file binds (its /etc/hosts,
/// /etc/hostname, /etc/resolv.conf) are copies the container may write, the host's files
/// untouched; the sandbox's shm directory and a kubelet emptyDir are the VM's own tmpfs
/// directories, shared by the pod's containers (the shm one is the topmost of the mounts at
/// /dev/shm: ctr's default spec has a tmpfs there already, under the bind).
fn cri_mounts(c: &moat_tests::containerd::Containerd, pod: &str) {
    let dir = c.work_dir().join(format!("{pod}-cri"));
    let empty_dir = dir.join("volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(dir.join("shm")).unwrap();
    std::fs::create_dir_all(&empty_dir).unwrap();
    let hosts = "127.0.0.1 localhost\n10.9.8.7 pod-peer\n";
    std::fs::write(dir.join("hosts"), hosts).unwrap();
    std::fs::write(dir.join("hostname"), "pod-host\n").unwrap();
    let shared = [(dir.join("shm"), "/dev/shm"), (empty_dir.clone(), "/cache")];
    let mut mounts = vec![
        (dir.join("hosts"), "/etc/hosts"),
        (dir.join("hostname"), "/etc/hostname"),
    ];
    mounts.extend(shared.iter().cloned());
    let script = "grep pod-peer /etc/hosts; echo 10.1.1.1 added >> /etc/hosts; grep -c added \
        /etc/hosts; cat /etc/hostname; echo x > /dev/shm/seg && echo shm-written; \
        awk '$2 == \"/dev/shm\" {t = $3} END {print t}' /proc/mounts; \
        stat -c %a /cache; echo cached > /cache/f";
    let o = cri_member(c, pod, "cri", &mounts, script);
    assert_eq!(o.code, 0, "CRI's mounts\n{}", why(c, &o));
    assert_eq!(
        o.out(),
        "10.9.8.7 pod-peer\n1\npod-host\nshm-written\ntmpfs\n777\n",
        "the copies, the shm tmpfs and the emptyDir\n{}",
        why(c, &o)
    );
    // The next container of the pod finds what the first left in the shared directories.
    let o = cri_member(c, pod, "cri2", &shared, "cat /dev/shm/seg /cache/f");
    assert_eq!(o.code, 0, "the shared directories\n{}", why(c, &o));
    assert_eq!(
        o.out(),
        "x\ncached\n",
        "shm and emptyDir are the pod's\n{}",
        why(c, &o)
    );
    assert_eq!(std::fs::read_to_string(dir.join("hosts")).unwrap(), hosts);
    for host_dir in [dir.join("shm"), empty_dir] {
        let entries = std::fs::read_dir(&host_dir).unwrap().count();
        assert_eq!(entries, 0, "{} stays empty", host_dir.display());
    }

    // Files past the copy limit are refused with their size, and nothing of the container stays.
    let big = dir.join("big");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len((16 << 20) + 1).unwrap(); // moat_protocol::COPY_VOLUME_MAX + 1
    let o = cri_member(c, pod, "big", &[(big, "/big")], "true");
    assert_ne!(
        o.code,
        0,
        "files past the limit are refused\n{}",
        why(c, &o)
    );
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("take 16777217 bytes; a pod's later container takes at most 16777216"),
        "the reason is told: {text}"
    );
}

/// `ctr run --rm` of the pod's container `<pod>-<name>` running `script`, with writable binds.
fn cri_member(
    c: &moat_tests::containerd::Containerd,
    pod: &str,
    name: &str,
    mounts: &[(std::path::PathBuf, &str)],
    script: &str,
) -> moat_tests::Outcome {
    let job = format!("{pod}-{name}");
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(pod_flags(pod, "container"));
    for (src, dst) in mounts {
        let mount = format!("type=bind,src={},dst={dst},options=rbind:rw", src.display());
        args.extend(["--mount".to_owned(), mount]);
    }
    args.extend([IMAGE, &job, "sh", "-c", script].map(str::to_owned));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = c.ctr(NS, &refs, None, moat_tests::containerd::CTR_TIMEOUT);
    assert_task_link_gone(&job);
    o
}

#[track_caller]
fn assert_task_link_gone(id: &str) {
    let link = std::path::Path::new("/run/moat-shim").join(NS).join(id);
    assert!(!link.exists(), "{} left behind", link.display());
}
