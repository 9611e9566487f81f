//! Profile tests: parsing Docker's format, resolving its conditions, errors naming fields.

use super::*;

fn caps(list: &[&str]) -> Vec<String> {
    list.iter().map(|c| c.to_string()).collect()
}

/// The OCI rules of `seccomp` that name `syscall`.
fn rules_for<'s>(seccomp: &'s LinuxSeccomp, syscall: &str) -> Vec<&'s LinuxSyscall> {
    seccomp
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.names().iter().any(|n| n == syscall))
        .collect()
}

#[test]
fn docker_default_parses_and_denies_by_default() {
    let oci = DockerProfile::docker_default().to_oci(&[]).unwrap();
    assert_eq!(oci.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(oci.default_errno_ret(), Some(1));
    assert_eq!(
        oci.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
    );
    for denied in [
        "keyctl",
        "add_key",
        "request_key",
        "swapon",
        "mount",
        "reboot",
        "unshare",
        "setns",
        "bpf",
    ] {
        assert!(rules_for(&oci, denied).is_empty(), "{denied}");
    }
    for allowed in [
        "read",
        "execve",
        "getpid",
        "uname",
        "fork",
        "ptrace",
        "arch_prctl",
        "modify_ldt",
    ] {
        assert_eq!(rules_for(&oci, allowed).len(), 1, "{allowed}");
    }
    // Names of other architectures are resolved away.
    assert!(rules_for(&oci, "socketcall").is_empty());
    assert!(rules_for(&oci, "s390_runtime_instr").is_empty());
}

#[test]
fn cap_sys_admin_changes_the_rules() {
    let profile = DockerProfile::docker_default();
    let without = profile.to_oci(&caps(&["CAP_CHOWN", "CAP_KILL"])).unwrap();
    let with = profile
        .to_oci(&caps(&["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"]))
        .unwrap();
    for name in ["mount", "umount2", "unshare", "setns", "sethostname"] {
        assert!(rules_for(&without, name).is_empty(), "{name}");
        assert_eq!(rules_for(&with, name).len(), 1, "{name}");
    }
    let clone = rules_for(&without, "clone");
    assert_eq!(clone.len(), 1);
    let args = clone[0].args().as_ref().unwrap();
    assert_eq!(
        (args[0].index(), args[0].value(), args[0].op()),
        (0, 0x7E02_0000, LinuxSeccompOperator::ScmpCmpMaskedEq)
    );
    let clone = rules_for(&with, "clone");
    assert_eq!(clone.len(), 1);
    assert!(clone[0].args().is_none());
    let clone3 = rules_for(&without, "clone3");
    assert_eq!(
        (clone3[0].action(), clone3[0].errno_ret()),
        (LinuxSeccompAction::ScmpActErrno, Some(38))
    );
    assert_eq!(
        rules_for(&with, "clone3")[0].action(),
        LinuxSeccompAction::ScmpActAllow
    );
}

#[test]
fn other_caps_open_their_groups() {
    let profile = DockerProfile::docker_default();
    let groups = [
        ("CAP_SYS_BOOT", "reboot"),
        ("CAP_SYS_MODULE", "finit_module"),
        ("CAP_SYS_PTRACE", "kcmp"),
        ("CAP_SYS_TIME", "settimeofday"),
        ("CAP_SYS_NICE", "mbind"),
        ("CAP_SYSLOG", "syslog"),
        ("CAP_SYS_RAWIO", "iopl"),
        ("CAP_SYS_PACCT", "acct"),
        ("CAP_SYS_CHROOT", "chroot"),
        ("CAP_SYS_TTY_CONFIG", "vhangup"),
        ("CAP_BPF", "bpf"),
        ("CAP_PERFMON", "perf_event_open"),
        ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ];
    for (cap, syscall) in groups {
        assert!(
            rules_for(&profile.to_oci(&[]).unwrap(), syscall).is_empty(),
            "{syscall}"
        );
        assert!(
            !rules_for(&profile.to_oci(&caps(&[cap])).unwrap(), syscall).is_empty(),
            "{cap}"
        );
    }
}

#[test]
fn conditions_resolve() {
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"syscalls":[
        {"name":"read","action":"SCMP_ACT_ALLOW","includes":{"minKernel":"6.13"}},
        {"names":["write"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"5.10.2"}},
        {"names":["open"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64"]}},
        {"names":["close"],"action":"SCMP_ACT_ALLOW","excludes":{"arches":["amd64"]}},
        {"names":["stat"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_KILL","CAP_CHOWN"]}},
        {"names":["fstat"],"action":"SCMP_ACT_ALLOW","excludes":{"minKernel":"7.0"},"comment":"kept"}]}"#;
    let profile = DockerProfile::from_json(json).unwrap();
    let oci = profile.to_oci(&caps(&["CAP_KILL"])).unwrap();
    let names: Vec<&str> = oci
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names())
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["write", "fstat"]);
    let oci = profile.to_oci(&caps(&["CAP_KILL", "CAP_CHOWN"])).unwrap();
    assert_eq!(rules_for(&oci, "stat").len(), 1);
}

#[test]
fn plain_oci_section_is_a_profile() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":42,"args":[]}]}"#;
    let oci = DockerProfile::from_json(json).unwrap().to_oci(&[]).unwrap();
    let direct: LinuxSeccomp = serde_json::from_str(json).unwrap();
    assert_eq!(oci, direct);
}

#[test]
fn errors_name_the_field() {
    let base = |rule: &str| {
        format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["read"],"action":"SCMP_ACT_ALLOW"}},{rule}]}}"#
        )
    };
    let cases = [
        (
            base(r#"{"names":["read","fooo"],"action":"SCMP_ACT_ALLOW"}"#),
            r#"syscalls[1].names[1]: unknown syscall "fooo""#,
        ),
        (
            base(r#"{"name":"fooo","action":"SCMP_ACT_ALLOW"}"#),
            r#"syscalls[1].name: unknown syscall "fooo""#,
        ),
        (
            base(r#"{"names":["read"],"action":"SCMP_ACT_MAYBE"}"#),
            r#"syscalls[1].action: unknown action "SCMP_ACT_MAYBE""#,
        ),
        (
            base(
                r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_ABOUT"}]}"#,
            ),
            r#"syscalls[1].args[0].op: unknown operator "SCMP_CMP_ABOUT""#,
        ),
        (
            base(r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["vax"]}}"#),
            r#"syscalls[1].includes.arches[0]: unknown architecture "vax""#,
        ),
        (
            base(
                r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_EVERYTHING"]}}"#,
            ),
            r#"syscalls[1].excludes.caps[0]: unknown capability "CAP_EVERYTHING""#,
        ),
        (
            base(r#"{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"six"}}"#),
            r#"syscalls[1].includes.minKernel: "six" is not a kernel version"#,
        ),
        (
            base(r#"{"action":"SCMP_ACT_ALLOW"}"#),
            "syscalls[1]: neither names nor name",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_VAX"]}"#.into(),
            r#"architectures[0]: unknown architecture "SCMP_ARCH_VAX""#,
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_FAST"]}"#.into(),
            r#"flags[0]: unknown flag"#,
        ),
    ];
    for (json, want) in cases {
        let got = DockerProfile::from_json(&json).unwrap_err().to_string();
        assert!(got.starts_with(want), "{json}\n got {got}\nwant {want}");
    }
}

#[test]
fn unknown_json_field_is_an_error() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","argz":[]}]}"#;
    let err = DockerProfile::from_json(json).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid seccomp profile at line 1"),
        "{err}"
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("unknown field `argz`"), "{cause}");
}

#[test]
fn resolved_section_is_validated() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock"}"#;
    let err = DockerProfile::from_json(json)
        .unwrap()
        .to_oci(&[])
        .unwrap_err();
    assert!(
        matches!(err, ProfileError::Invalid(CompileError::Listener { .. })),
        "{err}"
    );
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[{"architecture":"SCMP_ARCH_AARCH64","subArchitectures":null}]}"#;
    assert!(matches!(
        DockerProfile::from_json(json).unwrap().to_oci(&[]),
        Err(ProfileError::NoX86_64ArchMap)
    ));
}
