use super::*;

#[track_caller]
fn refuses<T: std::fmt::Debug>(f: impl Fn(&str) -> Result<T, ParseError>, bad: &[&str]) {
    for text in bad {
        let result = f(text);
        let err = result.expect_err(&format!("{text:?} accepted"));
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

#[test]
fn sizes() {
    assert_eq!(parse_size("1024").unwrap(), 1024);
    assert_eq!(parse_size("1024b").unwrap(), 1024);
    assert_eq!(parse_size("512k").unwrap(), 512 << 10);
    assert_eq!(parse_size("64m").unwrap(), 64 << 20);
    assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
    assert_eq!(parse_size("1g").unwrap(), 1 << 30);
    assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
    assert_eq!(parse_size("0").unwrap(), 0);
    refuses(
        parse_size,
        &[
            "",
            "m",
            "-1m",
            "1x",
            "1.m",
            ".5m",
            "1..5m",
            "1mbb",
            "99999999999999999999g",
        ],
    );
}

#[test]
fn swap() {
    assert_eq!(parse_swap("-1").unwrap(), -1);
    assert_eq!(parse_swap("1g").unwrap(), 1 << 30);
    assert_eq!(parse_swap("0").unwrap(), 0);
    refuses(parse_swap, &["-2", "x"]);
}

#[test]
fn memory_minimum_is_dockers() {
    assert_eq!(parse_memory("6m").unwrap(), MIN_MEMORY);
    assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
    for small in ["0", "1k", "6291455"] {
        assert_eq!(
            parse_memory(small),
            Err(ParseError::MemoryMinimum),
            "{small}"
        );
        assert_eq!(
            parse_memory_reservation(small),
            Err(ParseError::ReservationMinimum)
        );
    }
    assert_eq!(
        ParseError::MemoryMinimum.to_string(),
        "Minimum memory limit allowed is 6MB"
    );
    assert_eq!(
        ParseError::ReservationMinimum.to_string(),
        "Minimum memory reservation allowed is 6MB"
    );
    assert_eq!(parse_memory_reservation("64m").unwrap(), 64 << 20);
    refuses(parse_memory, &["lots", "-1"]);
}

#[test]
fn cpus() {
    assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
    assert_eq!(parse_cpus("2").unwrap(), 2_000_000_000);
    assert_eq!(parse_cpus("1.25").unwrap(), 1_250_000_000);
    assert_eq!(parse_cpus("0.000000001").unwrap(), 1);
    // Signed, as docker's: the range is the caller's (the host's CPUs).
    assert_eq!(parse_cpus("-1").unwrap(), -1_000_000_000);
    assert_eq!(parse_cpus("0").unwrap(), 0);
    refuses(parse_cpus, &["", "x", "1.", "-", "--1", "99999999999"]);
}

#[test]
fn integers() {
    assert_eq!(parse_cpu_shares("512").unwrap(), 512);
    refuses(parse_cpu_shares, &["0", "1", "262145", "x"]);
    assert_eq!(parse_cpu_quota("50000").unwrap(), 50000);
    assert_eq!(parse_cpu_quota("-1").unwrap(), -1);
    refuses(parse_cpu_quota, &["0", "999", "-2"]);
    assert_eq!(parse_cpu_period("100000").unwrap(), 100000);
    refuses(parse_cpu_period, &["0", "999", "1000001"]);
    assert_eq!(parse_pids_limit("100").unwrap(), 100);
    assert_eq!(parse_pids_limit("-1").unwrap(), -1);
    assert_eq!(parse_pids_limit("0").unwrap(), -1);
    refuses(parse_pids_limit, &["-2", "x", ""]);
    assert_eq!(parse_blkio_weight("500").unwrap(), 500);
    refuses(parse_blkio_weight, &["0", "9", "1001"]);
}

#[test]
fn cpusets() {
    assert_eq!(parse_cpuset("0-2,4").unwrap(), ("0-2,4".into(), 4));
    assert_eq!(parse_cpuset("1").unwrap().1, 1);
    refuses(parse_cpuset, &["", "a", "2-1", "1,", "-1", "0-"]);
}

#[test]
fn ulimits() {
    let l = parse_ulimit("nofile=1024:2048").unwrap();
    assert_eq!(
        (l.typ(), l.soft(), l.hard()),
        (PosixRlimitType::RlimitNofile, 1024, 2048)
    );
    let l = parse_ulimit("core=-1").unwrap();
    assert_eq!(
        (l.typ(), l.soft(), l.hard()),
        (PosixRlimitType::RlimitCore, u64::MAX, u64::MAX)
    );
    assert_eq!(
        parse_ulimit("NPROC=5").unwrap().typ(),
        PosixRlimitType::RlimitNproc
    );
    refuses(
        parse_ulimit,
        &[
            "nofile",
            "nofile=",
            "bogus=1",
            "nofile=2:1",
            "nofile=a",
            "=1",
            "rlimit_nofile=1",
        ],
    );
}

#[test]
fn throttles() {
    let t = parse_throttle_bps("/dev/vda:1mb").unwrap();
    assert_eq!(
        t,
        Throttle {
            major: 254,
            minor: 0,
            rate: 1 << 20
        }
    );
    let t = parse_throttle_iops("/dev/vdc:1000").unwrap();
    assert_eq!(
        t,
        Throttle {
            major: 254,
            minor: 32,
            rate: 1000
        }
    );
    refuses(
        parse_throttle_bps,
        &[
            "/dev/sda:1m",
            "/dev/vda",
            "/dev/vda:0",
            "/dev/vdaa:1m",
            "vda:1",
        ],
    );
    refuses(
        parse_throttle_iops,
        &["/dev/vda:1m", "/dev/vda:0", "/dev/vda:-1"],
    );
}

#[test]
fn volumes() {
    let v = parse_volume("/data:/mnt:ro").unwrap();
    assert_eq!(
        (v.source, v.destination.as_str(), v.readonly),
        ("/data".into(), "/mnt", true)
    );
    assert!(!parse_volume("img.ext4:/mnt").unwrap().readonly);
    assert!(!parse_volume("/d:/mnt:rw").unwrap().readonly);
    refuses(
        parse_volume,
        &[
            "/d",
            ":/mnt",
            "/d:/m:ro:x",
            "/d:/mnt:xx",
            "/d:mnt",
            "/d:/a/../b",
        ],
    );
    // Each part blamed for what is wrong with it.
    let err = |text: &str| parse_volume(text).unwrap_err().to_string();
    assert_eq!(err("D:/data:rx"), "invalid mode: rx");
    assert_eq!(
        err("/d:data:ro"),
        "invalid volume destination \"data\": it must be an absolute path"
    );
    assert_eq!(
        err("/d:/m:ro:x"),
        "invalid volume specification \"/d:/m:ro:x\": expected SRC:DST[:ro|rw]"
    );
}

#[test]
fn tmpfs() {
    let t = parse_tmpfs("/run:size=64m,mode=1777").unwrap();
    assert_eq!(t.destination, "/run");
    assert_eq!(t.options, ["size=64m", "mode=1777"]);
    assert!(parse_tmpfs("/tmp").unwrap().options.is_empty());
    refuses(parse_tmpfs, &["tmp", "/", "/a/../b", "/x:a:b"]);
}

#[test]
fn sysctls() {
    assert_eq!(
        parse_sysctl("net.ipv4.ip_forward=1").unwrap(),
        ("net.ipv4.ip_forward".into(), "1".into())
    );
    refuses(parse_sysctl, &["x", "=1", "a/b=1"]);
}

#[test]
fn devices() {
    let d = parse_device("/dev/fuse").unwrap();
    assert_eq!(
        (d.container.as_str(), d.access.as_str()),
        ("/dev/fuse", "rwm")
    );
    let d = parse_device("/dev/null:/dev/mynull:r").unwrap();
    assert_eq!(
        (d.container.as_str(), d.access.as_str()),
        ("/dev/mynull", "r")
    );
    assert_eq!(parse_device("/dev/null:rw").unwrap().access, "rw");
    refuses(
        parse_device,
        &[
            "fuse",
            "/etc/passwd",
            "/dev/null:/tmp/x",
            "/dev/a:/dev/b:x",
            "/dev/../etc",
        ],
    );
}

#[test]
fn capabilities() {
    assert_eq!(parse_capability("ALL").unwrap(), CapName::All);
    assert_eq!(
        parse_capability("net_admin").unwrap(),
        CapName::One(Capability::NetAdmin)
    );
    assert_eq!(
        parse_capability("CAP_SYS_ADMIN").unwrap(),
        CapName::One(Capability::SysAdmin)
    );
    refuses(
        parse_capability,
        &["", "CAP_", "NOPE", "cap_cap_chown", "chown!"],
    );
}

#[test]
fn security_opts() {
    use SecurityOpt::*;
    assert_eq!(
        parse_security_opt("seccomp=unconfined").unwrap(),
        SeccompUnconfined
    );
    assert_eq!(
        parse_security_opt("seccomp=/p.json").unwrap(),
        SeccompProfile("/p.json".into())
    );
    assert_eq!(
        parse_security_opt("no-new-privileges").unwrap(),
        NoNewPrivileges(true)
    );
    assert_eq!(
        parse_security_opt("no-new-privileges:false").unwrap(),
        NoNewPrivileges(false)
    );
    refuses(
        parse_security_opt,
        &[
            "seccomp",
            "seccomp=",
            "apparmor=x",
            "no-new-privileges=maybe",
        ],
    );
    assert!(parse_userns("remap").unwrap());
    assert!(!parse_userns("host").unwrap());
    refuses(parse_userns, &["", "keep-id"]);
}

#[test]
fn guest_disks() {
    assert_eq!(guest_disk_numbers("/dev/vdb"), Some((254, 16)));
    assert_eq!(guest_disk_numbers("/dev/vda1"), None);
    assert_eq!(guest_disk_numbers("/dev/sda"), None);
}
