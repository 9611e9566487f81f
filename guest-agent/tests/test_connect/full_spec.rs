//! Isolated tests with Docker-like full specs: capabilities, rlimits, umask, no_new_privs,
//! oom_score_adj, sysctl, devices, masked and read-only paths, volumes, a user namespace, and
//! the fields the agent refuses.

use super::*;

/// A writable ext4 image on a loop device, for a volume; detached and removed on drop.
struct VolumeImage {
    dev: Loop,
    file: std::path::PathBuf,
}

impl VolumeImage {
    fn new() -> Self {
        let file = std::env::temp_dir().join(format!("moat-agent-vol-{}.ext4", std::process::id()));
        std::fs::File::create(&file)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(ok.success());
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success());
        let dev = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
        Self { dev, file }
    }
}

impl Drop for VolumeImage {
    fn drop(&mut self) {
        // The loop device is detached when `dev` drops, after this.
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A Docker-like spec: oci-spec's default namespaces, mounts, masked and read-only paths,
/// with a chosen capability set, rlimit, umask, no_new_privs, oom_score_adj, sysctl, a domain
/// name, a tmpfs with options and a read-only volume bind.
fn full_spec(script: &str) -> oci::Spec {
    use oci::Capability as C;
    let mut process = spec(&["sh", "-c", script]);
    process.uid = 1000;
    process.gid = 1000;
    let mut s = process.to_oci(Some("box"), false);
    s.set_domainname(Some("example.org".into()));
    let p = s.process_mut().as_mut().unwrap();
    let set = caps(&[C::Chown, C::Kill, C::NetBindService, C::Setuid]);
    let capabilities = oci::LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .permitted(set.clone())
        .effective(set.clone())
        .inheritable(caps(&[C::NetBindService]))
        .ambient(caps(&[C::NetBindService]))
        .build()
        .unwrap();
    p.set_capabilities(Some(capabilities));
    let nofile = oci::PosixRlimitBuilder::default()
        .typ(oci::PosixRlimitType::RlimitNofile)
        .soft(512u64)
        .hard(1024u64)
        .build()
        .unwrap();
    p.set_rlimits(Some(vec![nofile]));
    p.set_no_new_privileges(Some(true));
    p.set_oom_score_adj(Some(500));
    p.user_mut().set_umask(Some(0o027));
    let linux = s.linux_mut().as_mut().unwrap();
    let sysctl = [("net.ipv4.ip_forward".to_string(), "1".to_string())];
    linux.set_sysctl(Some(sysctl.into_iter().collect()));
    let tun = oci::LinuxDeviceBuilder::default()
        .path("/dev/net/tun")
        .typ(oci::LinuxDeviceType::C)
        .major(10)
        .minor(200)
        .file_mode(0o620u32)
        .uid(1000u32)
        .gid(5u32)
        .build()
        .unwrap();
    linux.set_devices(Some(vec![tun]));
    linux.set_rootfs_propagation(Some("rshared".into()));
    let mut mounts = s.mounts().clone().unwrap();
    // Docker's proc options, which the read-only /proc/sys keeps.
    let hardened = ["nosuid", "noexec", "nodev"].map(String::from).to_vec();
    mounts[0].set_options(Some(hardened));
    let tmp = oci::MountBuilder::default()
        .destination("/tmp/small")
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec![
            "nosuid".into(),
            "nodev".into(),
            "size=1m".into(),
            "mode=750".into(),
        ])
        .build()
        .unwrap();
    let vol = oci::MountBuilder::default()
        .destination("/data")
        .typ("bind")
        .source("/run/moat-volumes/0")
        .options(vec!["rbind".into(), "ro".into()])
        .build()
        .unwrap();
    mounts.extend([tmp, vol]);
    s.set_mounts(Some(mounts));
    s
}

const FULL_SCRIPT: &str = "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; \
    ulimit -n; umask; cat /proc/self/oom_score_adj; hostname; cat /proc/sys/kernel/domainname; \
    cat /proc/sys/net/ipv4/ip_forward; wc -c < /proc/keys; \
    echo 1 > /proc/sys/kernel/shmmni 2>/dev/null || echo sys-ro; \
    grep -E ' /(tmp/small|data|proc/sys|sys/fs/cgroup) ' /proc/self/mounts; \
    touch /data/x 2>/dev/null || echo data-ro; cat /sys/class/net/lo/flags; \
    stat -c '%t:%T %a %u:%g' /dev/net/tun; awk '$5 == \"/\" {print substr($7, 1, 7)}' /proc/self/mountinfo";

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_full_spec() {
    let vol = VolumeImage::new();
    let volume = VolumeSpec {
        device: vol.dev.0.clone(),
        fstype: "ext4".into(),
        readonly: false,
        mountpoint: "/run/moat-volumes/0".into(),
        sectors: None,
        copy: false,
    };
    let out = run_spec(full_spec(FULL_SCRIPT), vec![volume]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status,
        Some(ExitStatus::Code { code: 0 }),
        "{text}{err}"
    );
    let lines: Vec<&str> = text.lines().collect();
    // CHOWN(0) KILL(5) NET_BIND_SERVICE(10) SETUID(7): 0x4a1; the uid change clears the
    // effective set of a non-root user, which capset restores; only the ambient
    // NET_BIND_SERVICE survives the exec of a non-root user's program in permitted/effective.
    assert_eq!(
        lines[..7],
        [
            "CapInh:\t0000000000000400",
            "CapPrm:\t0000000000000400",
            "CapEff:\t0000000000000400",
            "CapBnd:\t00000000000004a1",
            "CapAmb:\t0000000000000400",
            "NoNewPrivs:\t1",
            "Seccomp:\t0",
        ],
        "{text}{err}"
    );
    assert_eq!(
        lines[7..15],
        [
            "512",
            "0027",
            "500",
            "box",
            "example.org",
            "1",
            "0",
            "sys-ro"
        ],
        "{text}{err}"
    );
    let mounts = &lines[15..lines.len() - 4];
    let has = |dest: &str, want: &[&str]| {
        let line = mounts
            .iter()
            .find(|l| l.split(' ').nth(1) == Some(dest))
            .unwrap_or_else(|| panic!("no {dest}: {text}"));
        for w in want {
            assert!(line.contains(w), "{dest} lacks {w}: {line}");
        }
    };
    has(
        "/tmp/small",
        &["tmpfs", "rw,nosuid,nodev", "size=1024k", "mode=750"],
    );
    has("/data", &["ro,"]);
    has("/proc/sys", &["ro,nosuid,nodev,noexec"]);
    has("/sys/fs/cgroup", &["cgroup2", "ro,"]);
    assert_eq!(
        lines[lines.len() - 4..],
        ["data-ro", "0x9", "a:c8 620 1000:5", "shared:"],
        "{text}"
    );
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_user_namespace() {
    let script = "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c '%u %g' / /dev/null; \
         echo x > /dev/null && touch /owned && echo root-owns-root; \
         cat /proc/self/status | grep CapEff";
    let s = in_user_namespace(spec(&["sh", "-c", script]));
    let out = run_spec(s, vec![]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status,
        Some(ExitStatus::Code { code: 0 }),
        "{text}{err}"
    );
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "0 100000 65536",
            "0 100000 65536",
            "0",
            "0 0",
            "65534 65534",
            "root-owns-root",
            "CapEff: 0000000020000420"
        ],
        "{text}{err}"
    );
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_refusals() {
    let refused = |s: oci::Spec, want: &str| {
        let (host, _dev, started) = isolated_spec_request(s, vec![]);
        let (kind, message) = started.unwrap_err();
        assert_eq!(kind, ErrorKind::InvalidRequest, "{message}");
        assert!(message.contains(want), "{message} lacks {want}");
        host.shutdown();
    };
    let base = spec(&["true"]).to_oci(Some("box"), false);
    let mut s = base.clone();
    let bind = oci::MountBuilder::default()
        .destination("/etc2")
        .typ("bind")
        .source("/etc")
        .options(vec!["rbind".into()])
        .build()
        .unwrap();
    s.mounts_mut().as_mut().unwrap().push(bind);
    refused(s, "mounts[7].source: \"/etc\" is not a volume");
    let mut s = base.clone();
    let p = s.process_mut().as_mut().unwrap();
    p.set_apparmor_profile(Some("docker-default".into()));
    refused(s, "process.apparmorProfile");
    let mut s = base.clone();
    let linux = s.linux_mut().as_mut().unwrap();
    linux.set_sysctl(Some(
        [("kernel.panic".into(), "1".into())].into_iter().collect(),
    ));
    refused(s, "linux.sysctl[\"kernel.panic\"]");
    let mut s = base;
    let linux = s.linux_mut().as_mut().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.retain(|n| n.typ() != oci::LinuxNamespaceType::Pid);
    linux.set_namespaces(Some(ns));
    refused(s, "a pid namespace is required");
}

/// `process` in the default spec with a user namespace mapping container ids 0..65536 to
/// 100000..165536.
fn in_user_namespace(process: ProcessSpec) -> oci::Spec {
    let mut s = process.to_oci(Some("box"), false);
    let linux = s.linux_mut().as_mut().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    let user = oci::LinuxNamespaceBuilder::default()
        .typ(oci::LinuxNamespaceType::User)
        .build()
        .unwrap();
    ns.push(user);
    linux.set_namespaces(Some(ns));
    let map = oci::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(100_000u32)
        .size(65_536u32)
        .build()
        .unwrap();
    linux.set_uid_mappings(Some(vec![map]));
    linux.set_gid_mappings(Some(vec![map]));
    s
}

#[test]
#[ignore = "needs root, loop devices and MOAT_TEST_IMAGE (rootfs/build-image.sh)"]
fn isolated_user_namespace_terminal() {
    // The pty is given to the guest ids the user maps to, so the user owns it inside.
    let mut process = spec(&["sh", "-c", "stat -c '%u' $(tty); id -u"]);
    process.terminal = true;
    process.uid = 1000;
    let out = run_spec(in_user_namespace(process), vec![]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "1000\r\n1000\r\n");
    assert_eq!(out.status, Some(ExitStatus::Code { code: 0 }), "{text}");
}
