//! Kubernetes' view of moat: containerd's CRI plugin, driven over gRPC as a kubelet drives it
//! (tests/src/cri.rs), with a RuntimeClass handler `moat`, a CNI bridge network and a pause
//! image the test builds, runs a pod of two containers in one microVM (docs/kubernetes.md).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use moat_jail::testutil::TempDir;
use moat_tests::containerd::{containerd_available, Containerd, Options};
use moat_tests::cri::Cri;
use moat_tests::docker::image_archive;
use moat_tests::registry::Image;
use moat_tests::shim::{shim_bin, IMAGE};
use moat_tests::{unique_name, vm_available, vmm_processes_mentioning};

/// The pause image: busybox whose entrypoint waits.
const PAUSE: &str = "moat.test/pause:1";
/// The CRI plugin's namespace in containerd.
const K8S_NS: &str = "k8s.io";
/// The test network's bridge on the host (removed at the end: CNI's DEL leaves it).
const BRIDGE: &str = "moatcri0";

/// containerd with its CRI plugin, moat's handler and the test's CNI network (its config in
/// the directory returned, kept for containerd's life); the images imported into the CRI
/// plugin's namespace.
fn start(test: &str) -> Option<(Containerd, TempDir)> {
    if !vm_available(test) || !containerd_available(test) {
        return None;
    }
    if !Path::new("/usr/lib/cni/bridge").exists() {
        assert!(std::env::var_os("CI").is_none(), "{test}: no CNI plugins");
        eprintln!("SKIPPED {test}: no /usr/lib/cni/bridge (run scripts/deps.sh)");
        return None;
    }
    // The bridge plugin's kernel parts (the kernel may not load them on its own).
    for module in ["bridge", "veth"] {
        let _ = std::process::Command::new("modprobe").arg(module).status();
    }
    let cni = TempDir::new("moat-cri-cni");
    let c = Containerd::start(&Options {
        name: "containerd-cri",
        cri: true,
        extra_config: cri_config(cni.path()),
        path: vec![shim_bin().parent().expect("bin dir").to_path_buf()],
    });
    write_cni_config(cni.path(), &c.work_dir());
    for (name, image) in [(IMAGE, Image::busybox()), (PAUSE, pause_image())] {
        let tar = c.work_dir().join("image.tar");
        image_archive(&tar, image, name);
        c.ctr_ok(K8S_NS, &["images", "import", tar.to_str().expect("utf-8")]);
    }
    Some((c, cni))
}

fn pause_image() -> Image {
    let mut image = Image::busybox();
    image.config.entrypoint = Some(vec!["/bin/sleep".into(), "2147483647".into()]);
    image.config.cmd = None;
    image
}

fn cri_config(cni_dir: &Path) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
           sandbox_image = \"{PAUSE}\"\n  \
           disable_apparmor = true\n  \
           [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    \
             snapshotter = \"overlayfs\"\n    \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n      \
               runtime_type = \"io.containerd.runc.v2\"\n    \
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat]\n      \
               runtime_type = \"io.containerd.moat.v2\"\n  \
           [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    \
             bin_dir = \"/usr/lib/cni\"\n    \
             conf_dir = \"{}\"\n",
        cni_dir.display()
    )
}

/// A bridge network without a gateway or masquerading (nothing of the host's routing
/// changes), host-local addresses kept in the test's own directory.
fn write_cni_config(dir: &Path, work: &Path) {
    let config = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "moat-cri-test",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.177.0/24"}]],
                "dataDir": work.join("cni-ipam").display().to_string(),
            }
        }]
    });
    let text = serde_json::to_string_pretty(&config).expect("json");
    std::fs::write(dir.join("10-moat-cri-test.conflist"), text).expect("CNI config");
}

fn sandbox_config(work: &Path, uid: &str, cgroup_parent: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "cri-pod".into(),
            uid: uid.into(),
            namespace: "moat-test".into(),
            attempt: 0,
        }),
        hostname: "cri-pod".into(),
        log_directory: work.join("pod-logs").display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(own_pids()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, command: &[&str], empty_dir: &Path) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        mounts: vec![Mount {
            container_path: "/cache".into(),
            host_path: empty_dir.display().to_string(),
            ..Default::default()
        }],
        labels: HashMap::new(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(own_pids()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod without `shareProcessNamespace`, as the kubelet asks for it: each container its own
/// pid namespace (CRI's default, `POD`, shares the sandbox's).
fn own_pids() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    }
}

/// `ExecSync` of `sh -c script` in `id`: its stdout; panics with the outcome unless it exits 0.
#[track_caller]
fn exec(cri: &mut Cri, c: &Containerd, id: &str, script: &str) -> String {
    let resp = cri
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 60,
        })
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}\n{}", c.diagnostics()));
    assert_eq!(
        resp.exit_code,
        0,
        "ExecSync {script:?}: stderr {}\n{}",
        String::from_utf8_lossy(&resp.stderr),
        c.diagnostics()
    );
    String::from_utf8_lossy(&resp.stdout).into_owned()
}

fn state(cri: &mut Cri, id: &str) -> i32 {
    let resp = cri
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .expect("ContainerStatus");
    resp.status.map(|s| s.state).unwrap_or(-1)
}

/// The CRI log file at `path` once it holds `line` on stdout (CRI's format:
/// `<time> stdout F <line>`), within 30 s.
#[track_caller]
fn wait_log(path: &Path, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found = text
            .lines()
            .any(|l| l.ends_with(&format!(" stdout F {line}")));
        if found || Instant::now() > deadline {
            assert!(found, "{} lacks {line:?}: {text:?}", path.display());
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes the test network's bridge, which CNI's DEL leaves on the host.
fn remove_bridge() {
    let _ = std::process::Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(std::process::Stdio::null())
        .status();
}

#[test]
fn a_cri_pod_of_two_containers_runs_in_one_vm() {
    let Some((c, _cni)) = start("a_cri_pod_of_two_containers_runs_in_one_vm") else {
        return;
    };
    let mut cri = Cri::connect(&c.socket());
    if let Err(last) = cri.wait_ready() {
        panic!("the CRI plugin is not ready: {last}\n{}", c.diagnostics());
    }
    let uid = unique_name("uid");
    let cgroup_parent = format!("/{}", unique_name("moat-cri"));
    let work = c.work_dir();
    let config = sandbox_config(&work, &uid, &cgroup_parent);
    std::fs::create_dir_all(work.join("pod-logs")).unwrap();
    let empty_dir = work.join(format!("pods/{uid}/volumes/kubernetes.io~empty-dir/cache"));
    std::fs::create_dir_all(&empty_dir).unwrap();

    let pod = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "moat".into(),
        })
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.diagnostics()))
        .pod_sandbox_id;
    let vms = vmm_processes_mentioning("--disk-slots");
    assert_eq!(vms.len(), 1, "the pod's VM: {vms:?}");

    let mut ids = Vec::new();
    for (name, command) in [
        ("a", &["sh", "-c", "echo hello-from-a; exec sleep 1000"][..]),
        ("b", &["sleep", "1000"][..]),
    ] {
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(name, command, &empty_dir)),
                sandbox_config: Some(config.clone()),
            })
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", c.diagnostics()))
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", c.diagnostics()));
        assert_eq!(
            state(&mut cri, &id),
            ContainerState::ContainerRunning as i32
        );
        ids.push(id);
    }
    assert_eq!(
        vmm_processes_mentioning("--disk-slots"),
        vms,
        "still one VM"
    );

    // One guest, two containers: the same boot id, their own mount and pid namespaces, the
    // pod's hostname; the emptyDir written by one and read by the other.
    let who = "cat /proc/sys/kernel/random/boot_id; readlink /proc/self/ns/mnt; \
               readlink /proc/self/ns/pid; hostname";
    let a: Vec<String> = exec(&mut cri, &c, &ids[0], who)
        .lines()
        .map(Into::into)
        .collect();
    let b: Vec<String> = exec(&mut cri, &c, &ids[1], who)
        .lines()
        .map(Into::into)
        .collect();
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(a[0], b[0], "one guest boot");
    assert_ne!(a[1], b[1], "own mount namespaces");
    assert_ne!(a[2], b[2], "own pid namespaces");
    assert_eq!((a[3].as_str(), b[3].as_str()), ("cri-pod", "cri-pod"));
    exec(&mut cri, &c, &ids[0], "echo shared > /cache/f");
    assert_eq!(exec(&mut cri, &c, &ids[1], "cat /cache/f"), "shared\n");
    assert_eq!(
        std::fs::read_dir(&empty_dir).unwrap().count(),
        0,
        "the host's stays empty"
    );

    // The container's log in CRI's format, and its stats from its cgroup in the guest.
    wait_log(&work.join("pod-logs/a.log"), "hello-from-a");
    let stats = cri
        .container_stats(ContainerStatsRequest {
            container_id: ids[0].clone(),
        })
        .unwrap_or_else(|e| panic!("ContainerStats: {e}\n{}", c.diagnostics()))
        .stats
        .expect("stats");
    let cpu = stats
        .cpu
        .and_then(|u| u.usage_core_nano_seconds)
        .map(|v| v.value);
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    assert!(cpu.unwrap_or(0) > 0, "CPU usage: {cpu:?}");
    assert!(memory.unwrap_or(0) > 0, "memory working set: {memory:?}");

    for id in &ids {
        cri.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", c.diagnostics()));
        assert_eq!(state(&mut cri, id), ContainerState::ContainerExited as i32);
        cri.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", c.diagnostics()));
    }
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", c.diagnostics()));
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", c.diagnostics()));
    remove_bridge();

    // Nothing of the pod is left: its VM, its task links, its host cgroup.
    let vms = vmm_processes_mentioning("--disk-slots");
    assert!(vms.is_empty(), "the pod's VM is left: {vms:?}");
    for id in ids.iter().chain([&pod]) {
        let link = Path::new("/run/moat-shim").join(K8S_NS).join(id);
        assert!(!link.exists(), "{} left behind", link.display());
    }
    let parent = Path::new("/sys/fs/cgroup").join(cgroup_parent.trim_start_matches('/'));
    assert!(!parent.join(&pod).exists(), "the pod's cgroup is left");
    if parent.exists() {
        std::fs::remove_dir(&parent).expect("the pod's parent cgroup is empty");
    }
}
