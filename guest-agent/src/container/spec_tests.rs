//! Unit tests of [`super`], against the recording mock.

use super::*;
use oci_spec::runtime::{LinuxDeviceBuilder, LinuxNamespaceBuilder, MountBuilder};

fn refused(spec: &Spec) -> String {
    build(spec, &|_| false).unwrap_err().to_string()
}

fn with_linux(f: impl FnOnce(&mut Linux)) -> Spec {
    let mut s = Spec::default();
    f(s.linux_mut().as_mut().unwrap());
    s
}

fn namespaces(types: &[LinuxNamespaceType]) -> Spec {
    with_linux(|l| {
        let ns = types
            .iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
            .collect();
        l.set_namespaces(Some(ns));
    })
}

#[test]
fn default_spec_plan() {
    let mut s = Spec::default();
    s.set_hostname(Some("box".into()));
    let p = build(&s, &|_| false).unwrap();
    let want = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::SIGCHLD;
    assert_eq!(p.clone_flags, want as libc::c_ulong);
    assert!(p.cgroupns && p.userns.is_none());
    let dests: Vec<_> = p.mounts.iter().map(|m| m.dest.to_str().unwrap()).collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
    );
    assert!(p.mounts[1].fills_dev);
    assert!(
        matches!(&p.mounts[2].kind, MountKind::Bind { source, .. } if source.as_c_str() == c"/dev/pts")
    );
    assert_eq!(p.mounts[5].flags & libc::MS_RDONLY, libc::MS_RDONLY);
    assert_eq!(p.devices.len(), 6);
    assert_eq!(p.dev_links.len(), 5);
    assert_eq!(p.hostname.as_deref(), Some(&b"box"[..]));
    assert!(p.masked.iter().any(|m| m.as_c_str() == c"/proc/kcore"));
    assert!(p.readonly.iter().any(|m| m.as_c_str() == c"/proc/sys"));
    let steps: Vec<_> = p.mounts[6]
        .dirs
        .iter()
        .map(|d| d.path.to_str().unwrap())
        .collect();
    assert_eq!(steps, ["/sys", "/sys/fs", "/sys/fs/cgroup"]);
    assert_eq!(p.mounts[6].dirs[2].parent.as_c_str(), c"/sys/fs");
}

#[test]
fn namespace_refusals() {
    use LinuxNamespaceType as T;
    assert!(refused(&namespaces(&[T::Mount])).contains("a pid namespace is required"));
    assert!(refused(&namespaces(&[T::Pid])).contains("a mount namespace is required"));
    assert!(refused(&namespaces(&[T::Pid, T::Mount, T::Time])).contains("time"));
    let mut s = namespaces(&[T::Pid, T::Mount]);
    s.set_mounts(None);
    s.set_hostname(Some("box".into()));
    assert_eq!(refused(&s), "hostname: needs a uts namespace");
    let joining = |typ: T, path: &str| {
        let mut s = with_linux(|l| {
            let join = LinuxNamespaceBuilder::default()
                .typ(typ)
                .path(path)
                .build()
                .unwrap();
            let mount = LinuxNamespaceBuilder::default()
                .typ(T::Mount)
                .build()
                .unwrap();
            l.set_namespaces(Some(vec![join, mount]));
        });
        s.set_mounts(None);
        s.set_hostname(None);
        s
    };
    // A pod's pid namespace joined counts as the container's own; a mount namespace, or a
    // path that is no process's namespace of that kind, cannot be joined.
    assert!(build(&joining(T::Pid, "/proc/7/ns/pid"), &|_| true).is_ok());
    assert!(refused(&joining(T::Pid, "/proc/7/ns/net")).contains("only a pod's pid"));
    assert!(refused(&joining(T::Mount, "/proc/7/ns/mnt")).contains("only a pod's pid"));
    assert!(refused(&joining(T::Network, "/var/run/netns/x")).contains("only a pod's pid"));
    let mut s = Spec::default();
    s.set_linux(None);
    assert!(refused(&s).starts_with("linux.namespaces"));
}

#[test]
fn user_namespace_maps() {
    use LinuxNamespaceType as T;
    let map = |c: u32, h: u32, n: u32| {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(c)
            .host_id(h)
            .size(n)
            .build()
            .unwrap()
    };
    let mut s = namespaces(&[T::Pid, T::Mount, T::User]);
    s.set_mounts(None);
    s.set_hostname(None);
    assert_eq!(
        refused(&s),
        "linux.uidMappings: a user namespace needs mappings"
    );
    let l = s.linux_mut().as_mut().unwrap();
    l.set_uid_mappings(Some(vec![map(0, 1000, 1), map(1, 100000, 65535)]));
    l.set_gid_mappings(Some(vec![map(0, 2000, 10)]));
    let p = build(&s, &|_| false).unwrap();
    let maps = p.userns.unwrap();
    assert_eq!(maps.uid_map, "0 1000 1\n1 100000 65535\n");
    assert_eq!(maps.root, (1000, 2000));
    let l = s.linux_mut().as_mut().unwrap();
    l.set_gid_mappings(Some(vec![map(1, 2000, 10)]));
    assert!(refused(&s).contains("container root (id 0) is not mapped"));
    let s = with_linux(|l| {
        l.set_uid_mappings(Some(vec![map(0, 1, 1)]));
    });
    assert!(refused(&s).contains("mappings without a user namespace"));
}

fn with_mount(m: oci_spec::runtime::Mount) -> Spec {
    let mut s = Spec::default();
    s.mounts_mut().as_mut().unwrap().push(m);
    s
}

#[test]
fn mount_refusals_and_binds() {
    let bind = |src: &str, dest: &str| {
        MountBuilder::default()
            .destination(dest)
            .source(src)
            .typ("bind")
            .options(vec!["bind".into(), "ro".into()])
            .build()
            .unwrap()
    };
    let s = with_mount(bind("/etc", "/x"));
    assert!(refused(&s).starts_with("mounts[7].source: \"/etc\" is not a volume"));
    let s = with_mount(bind("/run/moat-volumes/0/../../../etc", "/x"));
    assert!(refused(&s).contains("contains \"..\""));
    let s = with_mount(bind("/run/moat-volumes/0", "x"));
    assert!(refused(&s).contains("is not absolute"));
    let s = with_mount(bind("/run/moat-volumes/0", "/a/../../b"));
    assert!(refused(&s).contains("\"..\""));
    let s = with_mount(bind("/run/moat-volumes/0", "/"));
    assert!(refused(&s).contains("the root itself"));
    let s = with_mount(bind("/run/moat-volumes/0/f", "/etc/f"));
    let p = build(&s, &|path| path == "/run/moat-volumes/0/f").unwrap();
    let m = &p.mounts[7];
    assert!(m.file && m.flags == libc::MS_RDONLY);
    let nfs = MountBuilder::default()
        .destination("/n")
        .typ("nfs")
        .source("srv:/x")
        .build()
        .unwrap();
    assert!(refused(&with_mount(nfs)).contains("type \"nfs\" is not supported"));
    let with_opts = |typ: &str, opts: &[&str]| {
        let m = MountBuilder::default()
            .destination("/m")
            .typ(typ)
            .source("/run/moat-volumes/0")
            .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        with_mount(m)
    };
    let s = with_opts("bind", &["rbind", "z"]);
    assert!(refused(&s).contains("option \"z\" does not apply to a bind mount"));
    let s = with_opts("cgroup", &["cpu,cpuacct"]);
    assert!(refused(&s).contains("v1 controllers are not supported"));
    let p = build(&with_opts("tmpfs", &["size=1m"]), &|_| false).unwrap();
    assert!(matches!(&p.mounts[7].kind,
        MountKind::Fs { source, fstype } if source.as_c_str() == c"/run/moat-volumes/0" && fstype.as_c_str() == c"tmpfs"));
}

#[test]
fn sysctl_and_devices() {
    let sysctl = |k: &str| {
        with_linux(|l| {
            l.set_sysctl(Some([(k.to_string(), "1".to_string())].into()));
        })
    };
    let p = build(&sysctl("net.ipv4.ip_forward"), &|_| false).unwrap();
    assert_eq!(p.sysctl[0].0.as_c_str(), c"/proc/sys/net/ipv4/ip_forward");
    build(&sysctl("kernel.shmmax"), &|_| false).unwrap();
    build(&sysctl("fs.mqueue.msg_max"), &|_| false).unwrap();
    for key in ["kernel.panic", "vm.swappiness", "net..x", "net.a/b"] {
        assert!(refused(&sysctl(key)).starts_with("linux.sysctl["), "{key}");
    }
    let device = |path: &str, typ| {
        with_linux(|l| {
            let d = LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(10)
                .minor(200)
                .file_mode(0o620u32)
                .uid(5u32)
                .build()
                .unwrap();
            l.set_devices(Some(vec![d]));
        })
    };
    let p = build(&device("/dev/net/tun", LinuxDeviceType::C), &|_| false).unwrap();
    let tun = p.devices.last().unwrap();
    assert_eq!(tun.path.as_c_str(), c"/run/moat/root/dev/net/tun");
    assert_eq!(tun.parents, [c"/run/moat/root/dev/net".to_owned()]);
    assert_eq!((tun.mode, tun.owner), (libc::S_IFCHR | 0o620, Some((5, 0))));
    assert!(refused(&device("/etc/x", LinuxDeviceType::C)).contains("not under /dev"));
    assert!(refused(&device("/dev/x", LinuxDeviceType::A)).contains("not a node"));
    let mut s = device("/dev/x", LinuxDeviceType::B);
    s.mounts_mut()
        .as_mut()
        .unwrap()
        .retain(|m| m.destination().to_str() != Some("/dev"));
    assert!(refused(&s).contains("needs a tmpfs mounted on /dev"));
}

#[test]
fn unsupported_linux_fields() {
    let s = with_linux(|l| {
        l.set_mount_label(Some("x".into()));
    });
    assert_eq!(refused(&s), "linux.mountLabel: not supported");
    let s = with_linux(|l| {
        l.set_rootfs_propagation(Some("sideways".into()));
    });
    assert!(refused(&s).starts_with("linux.rootfsPropagation"));
    let s = with_linux(|l| {
        l.set_rootfs_propagation(Some("rslave".into()));
    });
    let p = build(&s, &|_| false).unwrap();
    assert_eq!(p.propagation, libc::MS_SLAVE | libc::MS_REC);
}
