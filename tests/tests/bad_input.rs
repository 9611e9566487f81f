//! Bad input: one clear line on stderr, exit 125, nothing left behind.

use std::path::PathBuf;

use moat_tests::{assert_nothing_left, moat, unique_name, vm_available, workspace, Outcome};
use serde_json::{json, Value};

fn kernel() -> PathBuf {
    workspace().join("target/release/moat-assets/vmlinux")
}

#[track_caller]
fn assert_refused(o: &Outcome, name: &str, mentions: &str) {
    assert_refused_naming(o, name, &[mentions]);
}

/// Exit 125, one line on stderr mentioning each of `mentions`, nothing left of `name`.
#[track_caller]
fn assert_refused_naming(o: &Outcome, name: &str, mentions: &[&str]) {
    o.expect_code(125);
    let err = o.err();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one error line\n{}", o.diagnostics());
    assert!(lines[0].starts_with("moat: "), "{}", o.diagnostics());
    for mention in mentions {
        assert!(
            lines[0].to_lowercase().contains(&mention.to_lowercase()),
            "error should mention {mention:?}\n{}",
            o.diagnostics()
        );
    }
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
    // The VM it needs is larger than the host's RAM: the flag and the RAM are named.
    flags_naming("mem1t", &["--memory", "1T"], &["--memory", "of RAM"]);
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
    // A limit of 99 CPUs needs more vCPUs than a VM can have.
    let name = unique_name("cpu99");
    assert_refused(&run_named(&name, &["--cpus", "99"]), &name, "cpus");
}

/// `moat run --name NAME FLAGS -- true` is refused with a line mentioning `mentions`.
#[track_caller]
fn flags_refused(tag: &str, flags: &[&str], mentions: &str) {
    flags_naming(tag, flags, &[mentions]);
}

/// [`flags_refused`] with a line that mentions each of `mentions` (the flag, docker's words).
#[track_caller]
fn flags_naming(tag: &str, flags: &[&str], mentions: &[&str]) {
    let name = unique_name(tag);
    assert_refused_naming(&run_named(&name, flags), &name, mentions);
}

/// A test that `moat run FLAGS -- true` is refused with a line mentioning each of `mentions`.
macro_rules! flags_case {
    ($test:ident, $flags:expr, $mentions:expr) => {
        #[test]
        fn $test() {
            flags_naming(stringify!($test), &$flags, &$mentions);
        }
    };
}

const CPU_RANGE: [&str; 3] = ["--cpus", "Range of CPUs is from 0.01 to ", "CPUs available"];

flags_case!(
    memory_below_dockers_minimum,
    ["-m", "1k"],
    ["--memory", "Minimum memory limit allowed is 6MB"]
);
flags_case!(
    reservation_below_dockers_minimum,
    ["--memory-reservation", "1k"],
    [
        "--memory-reservation",
        "Minimum memory reservation allowed is 6MB"
    ]
);
flags_case!(
    swap_below_memory,
    ["-m", "64m", "--memory-swap", "32m"],
    [
        "--memory-swap",
        "Minimum memoryswap limit should be larger than memory limit, see usage"
    ]
);
flags_case!(
    reservation_above_memory,
    ["-m", "64m", "--memory-reservation", "128m"],
    [
        "--memory-reservation",
        "Minimum memory limit can not be less than memory reservation limit"
    ]
);
flags_case!(cpus_above_the_hosts_cpus, ["--cpus", "4096"], CPU_RANGE);
flags_case!(cpus_negative, ["--cpus", "-1"], CPU_RANGE);
flags_case!(
    cpuset_naming_a_cpu_the_host_lacks,
    ["--cpuset-cpus", "4096"],
    [
        "--cpuset-cpus",
        "Requested CPUs are not available - requested 4096, available: "
    ]
);
flags_case!(
    volume_with_a_bad_mode,
    ["-v", "D:/data:rx"],
    ["--volume", "invalid mode: rx"]
);

#[test]
fn bare_moat_prints_usage_and_exits_zero() {
    let o = moat(&[], None);
    o.expect_code(0);
    assert!(o.out().contains("Usage: moat"), "{}", o.diagnostics());
    assert_eq!(o.err(), "", "{}", o.diagnostics());
}

#[test]
fn every_version_flag_prints_moat() {
    for args in [&["-V"][..], &["--version"], &["run", "-V"]] {
        let o = moat(args, None);
        o.expect_code(0);
        assert!(
            o.out().starts_with("moat 0."),
            "{args:?}\n{}",
            o.diagnostics()
        );
    }
}

#[test]
fn vm_cpus_zero() {
    flags_refused("vmcpu0", &["--vm-cpus", "0"], "vm-cpus");
}

#[test]
fn vm_cpus_too_many() {
    flags_refused("vmcpu33", &["--vm-cpus", "33"], "vm-cpus");
}

#[test]
fn vm_memory_zero() {
    flags_refused("vmmem0", &["--vm-memory", "0"], "memory");
}

#[test]
fn vm_memory_one_terabyte() {
    flags_naming(
        "vmmem1t",
        &["--vm-memory", "1T"],
        &["--vm-memory", "of RAM"],
    );
}

#[test]
fn memory_limit_above_vm_memory() {
    flags_refused("memvm", &["-m", "1g", "--vm-memory", "512m"], "--vm-memory");
}

#[test]
fn cpuset_beyond_vm_cpus() {
    flags_refused(
        "cpuset",
        &["--cpuset-cpus", "1", "--vm-cpus", "1"],
        "--cpuset-cpus",
    );
}

#[test]
fn cpus_with_cpu_quota() {
    flags_refused(
        "cpuquota",
        &["--cpus", "1", "--cpu-quota", "50000"],
        "--cpu-quota",
    );
}

#[test]
fn memory_swap_without_memory() {
    flags_refused("swap", &["--memory-swap", "1g"], "--memory");
}

#[test]
fn cpu_shares_zero() {
    flags_refused("shares", &["--cpu-shares", "0"], "cpu shares");
}

#[test]
fn pids_limit_garbage() {
    flags_refused("pids", &["--pids-limit", "lots"], "pids");
}

#[test]
fn blkio_weight_out_of_range() {
    flags_refused("blkio", &["--blkio-weight", "5"], "blkio");
}

#[test]
fn device_rate_on_a_host_disk() {
    flags_refused("bps", &["--device-read-bps", "/dev/sda:1m"], "/dev/sda");
}

#[test]
fn device_rate_zero() {
    flags_refused("iops", &["--device-write-iops", "/dev/vda:0"], "/dev/vda:0");
}

#[test]
fn unknown_capability() {
    flags_refused("cap", &["--cap-add", "CAP_NOPE"], "CAP_NOPE");
}

#[test]
fn unknown_security_opt() {
    flags_refused("secopt", &["--security-opt", "apparmor=x"], "apparmor");
}

#[test]
fn seccomp_profile_file() {
    let profile = "/nonexistent/profile.json";
    flags_refused(
        "seccomp",
        &["--security-opt", &format!("seccomp={profile}")],
        profile,
    );
}

#[test]
fn bad_ulimit() {
    flags_refused("ulimit", &["--ulimit", "bogus=1"], "ulimit");
}

#[test]
fn bad_userns() {
    flags_refused("userns", &["--userns=keep-id"], "keep-id");
}

#[test]
fn non_namespaced_sysctl() {
    flags_refused("sysctl", &["--sysctl", "vm.swappiness=1"], "vm.swappiness");
}

#[test]
fn relative_tmpfs() {
    flags_refused("tmpfs", &["--tmpfs", "run"], "tmpfs");
}

#[test]
fn device_that_is_not_a_device() {
    flags_refused("dev", &["--device", "/dev/shm"], "/dev/shm");
}

#[test]
fn volume_directory_without_ro() {
    let dir = tempdir("voldir");
    let volume = format!("{}:/data", dir.display());
    flags_refused("volrw", &["-v", &volume], "use :ro or an ext4 image file");
}

#[test]
fn volume_missing() {
    flags_refused(
        "volmissing",
        &["-v", "/nonexistent/data:/data:ro"],
        "/nonexistent/data",
    );
}

/// A plain file is copied in (volumes.rs); a device node is none of the three kinds.
#[test]
fn volume_neither_file_nor_directory() {
    flags_refused("volnode", &["-v", "/dev/null:/data"], "a regular file");
}

#[test]
fn volume_relative_destination() {
    flags_refused("voldst", &["-v", "/tmp:data:ro"], "volume");
}

#[test]
fn bundle_with_a_command() {
    let dir = bundle(&base_config());
    let name = unique_name("bundlecmd");
    let o = moat(
        &[
            "run",
            "--name",
            &name,
            "--bundle",
            dir.to_str().unwrap(),
            "--",
            "true",
        ],
        None,
    );
    assert_refused(&o, &name, "--bundle");
}

/// A valid config.json for a bundle with an empty `rootfs`.
fn base_config() -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": "b",
        "linux": {"namespaces": [
            {"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"},
            {"type": "network"}
        ]}
    })
}

/// A bundle directory with `config` (JSON) and an empty `rootfs`.
fn bundle(config: &Value) -> PathBuf {
    let dir = tempdir("bundle");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// A bundle whose config.json is the base changed by `edit` is refused, naming `field`.
#[track_caller]
fn bundle_refused(tag: &str, field: &str, edit: impl FnOnce(&mut Value)) {
    let mut config = base_config();
    edit(&mut config);
    let dir = bundle(&config);
    let name = unique_name(tag);
    let o = moat(
        &["run", "--name", &name, "--bundle", dir.to_str().unwrap()],
        None,
    );
    assert_refused(&o, &name, &format!("{field}: "));
}

macro_rules! bundle_case {
    ($test:ident, $field:expr, |$v:ident| $edit:expr) => {
        #[test]
        fn $test() {
            bundle_refused(stringify!($test), $field, |$v: &mut Value| {
                $edit;
            });
        }
    };
}

fn with_user_ns(v: &mut Value) {
    let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
    ns.push(json!({"type": "user"}));
}

bundle_case!(bundle_oci_version, "ociVersion", |v| v["ociVersion"] =
    json!("2.0.0"));
bundle_case!(bundle_root_escapes, "root.path", |v| v["root"]["path"] =
    json!("../rootfs"));
bundle_case!(bundle_root_missing, "root.path", |v| v["root"]["path"] =
    json!("nothere"));
bundle_case!(bundle_no_process, "process", |v| v
    .as_object_mut()
    .unwrap()
    .remove("process"));
bundle_case!(bundle_cwd_relative, "process.cwd", |v| v["process"]
    ["cwd"] =
    json!("tmp"));
bundle_case!(bundle_cwd_proc_fd, "process.cwd", |v| v["process"]["cwd"] =
    json!("/proc/self/fd/5"));
bundle_case!(
    bundle_unknown_capability,
    "process.capabilities.bounding[1]",
    |v| v["process"]["capabilities"] = json!({"bounding": ["CAP_CHOWN", "CAP_NOPE"]})
);
bundle_case!(
    bundle_mount_destination_relative,
    "mounts[0].destination",
    |v| v["mounts"] = json!([{"destination": "proc", "type": "proc", "source": "proc"}])
);
bundle_case!(
    bundle_mount_destination_dotdot,
    "mounts[0].destination",
    |v| v["mounts"] = json!([{"destination": "/a/../proc", "type": "proc", "source": "proc"}])
);
bundle_case!(bundle_mount_source_escapes, "mounts[0].source", |v| v
    ["mounts"] = json!([{"destination": "/x", "type": "bind", "source": "../../etc", "options": ["rbind"]}]));
bundle_case!(bundle_uid_maps_overlap, "linux.uidMappings[1]", |v| {
    with_user_ns(v);
    v["linux"]["uidMappings"] = json!([
        {"containerID": 0, "hostID": 100000, "size": 1000},
        {"containerID": 10, "hostID": 300000, "size": 10}
    ]);
    v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1000}]);
});
bundle_case!(
    bundle_gid_map_onto_root,
    "linux.gidMappings[0].hostID",
    |v| {
        with_user_ns(v);
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]);
    }
);
bundle_case!(bundle_maps_without_user_ns, "linux.uidMappings", |v| v
    ["linux"]["uidMappings"] =
    json!([{"containerID": 0, "hostID": 100000, "size": 1}]));
bundle_case!(bundle_memory_zero, "linux.resources.memory.limit", |v| v
    ["linux"]["resources"] =
    json!({"memory": {"limit": 0}}));
bundle_case!(bundle_pids_zero, "linux.resources.pids.limit", |v| v
    ["linux"]["resources"] =
    json!({"pids": {"limit": 0}}));
bundle_case!(bundle_cpu_quota_zero, "linux.resources.cpu.quota", |v| v
    ["linux"]["resources"] =
    json!({"cpu": {"quota": 0}}));
bundle_case!(bundle_cpu_period_zero, "linux.resources.cpu.period", |v| {
    v["linux"]["resources"] = json!({"cpu": {"period": 0}})
});
bundle_case!(bundle_blkio_weight, "linux.resources.blockIO.weight", |v| {
    v["linux"]["resources"] = json!({"blockIO": {"weight": 1}})
});
bundle_case!(
    bundle_throttle_zero,
    "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
    |v| v["linux"]["resources"] =
        json!({"blockIO": {"throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 0}]}})
);
bundle_case!(
    bundle_sysctl_not_namespaced,
    "linux.sysctl[\"kernel.panic\"]",
    |v| v["linux"]["sysctl"] = json!({"kernel.panic": "1"})
);
bundle_case!(bundle_namespace_twice, "linux.namespaces[5]", |v| v
    ["linux"]["namespaces"]
    .as_array_mut()
    .unwrap()
    .push(json!({"type": "pid"})));
bundle_case!(bundle_namespace_path, "linux.namespaces[1].path", |v| v
    ["linux"]["namespaces"][1]["path"] =
    json!("/proc/1/ns/mnt"));
bundle_case!(bundle_hostname_without_uts, "hostname", |v| v["linux"]
    ["namespaces"] =
    json!([{"type": "pid"}, {"type": "mount"}]));
bundle_case!(bundle_device_outside_dev, "linux.devices[0].path", |v| v
    ["linux"]["devices"] =
    json!([{"path": "/etc/null", "type": "c", "major": 1, "minor": 3}]));

#[test]
fn bundle_without_config() {
    let dir = tempdir("noconfig");
    let name = unique_name("noconfig");
    let o = moat(
        &["run", "--name", &name, "--bundle", dir.to_str().unwrap()],
        None,
    );
    assert_refused(&o, &name, "config.json");
}

#[test]
fn bundle_config_not_json() {
    let dir = tempdir("notjson");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let name = unique_name("notjson");
    let o = moat(
        &["run", "--name", &name, "--bundle", dir.to_str().unwrap()],
        None,
    );
    assert_refused(&o, &name, "config.json");
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

#[test]
fn workdir_under_proc() {
    // /proc/2/fd/N would be a descriptor of the command's: a way out of the root.
    let name = unique_name("cwdproc");
    let o = run_named(&name, &["-w", "/proc/2/fd/3"]);
    assert_refused(&o, &name, "process.cwd: ");
}

bundle_case!(bundle_hooks, "hooks", |v| v["hooks"] =
    json!({"prestart": [{"path": "/bin/true"}]}));

bundle_case!(
    bundle_bind_mount,
    "mounts[0].source",
    |v| v["mounts"] =
        json!([{"destination": "/x", "type": "bind", "source": "data", "options": ["rbind"]}])
);

bundle_case!(bundle_cwd_proc_pid_fd, "process.cwd", |v| v["process"]
    ["cwd"] =
    json!("/proc/2/fd/3"));

#[test]
fn storage_opt_too_small_or_unknown() {
    flags_naming(
        "st1m",
        &["--storage-opt", "size=1m"],
        &["--storage-opt", "at least 32m"],
    );
    flags_naming(
        "stfoo",
        &["--storage-opt", "dm.basesize=1g"],
        &["--storage-opt", "size=SIZE"],
    );
}

flags_case!(
    pull_policy_unknown,
    ["--pull", "sometimes"],
    ["--pull", "sometimes"]
);
flags_case!(
    image_not_stored_with_pull_never,
    ["--pull", "never", "nosuch/image:1"],
    ["No such image: nosuch/image:1"]
);
flags_case!(
    image_name_invalid,
    ["Bad/Name"],
    ["invalid reference format"]
);
