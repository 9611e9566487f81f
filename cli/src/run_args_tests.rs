use clap::Parser;
use oci_spec::runtime::{Capability, LinuxNamespaceType};

use super::*;
use crate::{Cli, Command};

fn parse_run(args: &[&str]) -> Result<RunArgs, clap::Error> {
    let argv = ["moat", "run"].iter().chain(args).copied();
    Cli::try_parse_from(argv).map(|cli| match cli.command {
        Command::Run(run) => *run,
        other => panic!("not a run: {other:?}"),
    })
}

fn config(args: &[&str]) -> RunConfig {
    parse_run(args).unwrap().into_config().unwrap()
}

fn process(c: &RunConfig) -> &oci_spec::runtime::Process {
    c.spec.process().as_ref().unwrap()
}

fn linux(c: &RunConfig) -> &oci_spec::runtime::Linux {
    c.spec.linux().as_ref().unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn no_seccomp_is_off_unless_asked_for() {
    assert!(!parse_run(&[]).unwrap().no_seccomp);
    let args = parse_run(&["--no-seccomp", "alpine", "--", "--no-seccomp"]).unwrap();
    assert!(args.no_seccomp);
    assert_eq!(args.command, ["--no-seccomp"]);
}

#[test]
fn defaults() {
    let c = config(&[]);
    assert_eq!(c.rootfs, Rootfs::Image("busybox".into()));
    let p = process(&c);
    assert_eq!(p.args().as_deref(), Some(&["sh".to_owned()][..]));
    assert_eq!((c.cpus, c.memory_mib), (1, 256));
    assert_eq!(p.cwd().to_str(), Some("/"));
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(c.id.len(), 12);
    assert_eq!(c.spec.hostname().as_deref(), Some(c.id.as_str()));
    let env = p.env().clone().unwrap();
    assert!(env.contains(&format!("HOSTNAME={}", c.id)));
    // HOME comes from the passwd entry the agent finds for the user, sent unresolved.
    assert!(!env
        .iter()
        .any(|e| e.starts_with("HOME=") || e.starts_with("TERM=")));
    assert_eq!(user_annotation(&c), Some(""));
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(
        p.capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .len(),
        14
    );
    // Docker's default profile: errors by default, clone3 answers ENOSYS.
    let seccomp = linux(&c).seccomp().clone().unwrap();
    assert_eq!(
        seccomp.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
    );
    assert!(c.volumes.is_empty());
    let c = config(&["--security-opt", "seccomp=unconfined", "--", "true"]);
    assert!(linux(&c).seccomp().is_none());
}

fn user_annotation(c: &RunConfig) -> Option<&str> {
    c.spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(moat_spec::USER_ANNOTATION))
        .map(String::as_str)
}

#[test]
fn users_by_name_or_id_are_sent_unresolved() {
    // (flags, annotation, spec uid/gid, root's capabilities)
    type Case<'a> = (&'a [&'a str], &'a str, (u32, u32), bool);
    let cases: [Case; 6] = [
        (&[], "", (0, 0), true),
        (&["-u", "user"], "user", (0, 0), true),
        (&["-u", "user:users"], "user:users", (0, 0), true),
        (&["-u", "1000"], "1000", (1000, 0), false),
        (&["-u", "1000:users"], "1000:users", (1000, 0), false),
        (&["--user", "root:100"], "root:100", (0, 100), true),
    ];
    for (flags, annotation, ids, root) in cases {
        let c = config(flags);
        let p = process(&c);
        assert_eq!(user_annotation(&c), Some(annotation), "{flags:?}");
        assert_eq!((p.user().uid(), p.user().gid()), ids, "{flags:?}");
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(
            !caps.effective().as_ref().unwrap().is_empty(),
            root,
            "{flags:?}"
        );
    }
}

#[test]
fn entrypoint_follows_docker() {
    let args = |flags: &[&str]| process(&config(flags)).args().clone().unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (&[], &["sh"]),
        // The issue's own example: the image's args may start with a dash.
        (
            &["--entrypoint", "/bin/sh", "app:1.4", "-c", "id"],
            &["/bin/sh", "-c", "id"],
        ),
        (&["--entrypoint", "/bin/echo"], &["/bin/echo"]),
        (
            &["--entrypoint", "/bin/echo", "busybox", "hi"],
            &["/bin/echo", "hi"],
        ),
        (&["--entrypoint=", "busybox", "id"], &["id"]),
        (&["--entrypoint", "-x", "--", "y"], &["-x", "y"]),
    ];
    for (flags, want) in cases {
        assert_eq!(args(flags), want, "{flags:?}");
    }
    let err = parse_run(&["--entrypoint="])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert_eq!(err.to_string(), "no command specified");
}

#[test]
fn pull_policies_and_registry_flags() {
    use crate::run_image::PullPolicy;
    assert_eq!(parse_run(&["x"]).unwrap().pull, PullPolicy::Missing);
    for (text, want) in [
        ("always", PullPolicy::Always),
        ("missing", PullPolicy::Missing),
        ("never", PullPolicy::Never),
    ] {
        assert_eq!(parse_run(&["--pull", text, "x"]).unwrap().pull, want);
    }
    assert!(parse_run(&["--pull", "sometimes", "x"]).is_err());
    let run = parse_run(&["--insecure-registry", "r:5000", "--tls-ca", "/ca.pem", "x"]).unwrap();
    assert_eq!(run.registry.insecure_registry, ["r:5000"]);
    assert_eq!(
        run.registry.tls_ca.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
}

#[test]
fn image_and_command_forms() {
    let args = |c: &RunConfig| process(c).args().clone().unwrap();
    assert_eq!(args(&config(&["--", "echo", "hi"])), ["echo", "hi"]);
    let c = config(&["busybox", "echo", "-n", "hi"]);
    assert_eq!(c.rootfs, Rootfs::Image("busybox".into()));
    assert_eq!(args(&c), ["echo", "-n", "hi"]);
    assert_eq!(args(&config(&["busybox", "--", "ls", "-l"])), ["ls", "-l"]);
    assert_eq!(
        args(&config(&["busybox", "ls", "--", "-l"])),
        ["ls", "--", "-l"]
    );
}

#[test]
fn process_flags() {
    let c = config(&[
        "-e",
        "A=1",
        "--env",
        "B=2",
        "-w",
        "/tmp",
        "-it",
        "--rm",
        "--name",
        "web.1",
        "-u",
        "1000:1000",
        "--hostname",
        "h1",
        "busybox",
        "id",
    ]);
    let p = process(&c);
    let env = p.env().clone().unwrap();
    assert!(env.ends_with(&["TERM=xterm".into(), "A=1".into(), "B=2".into()]));
    assert!(!env.iter().any(|e| e.starts_with("HOME=")));
    assert_eq!(user_annotation(&c), Some("1000:1000"));
    assert_eq!(p.cwd().to_str(), Some("/tmp"));
    assert!(c.interactive && c.tty && p.terminal() == Some(true));
    assert_eq!(c.id, "web.1");
    assert_eq!(c.spec.hostname().as_deref(), Some("h1"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    let caps = p.capabilities().as_ref().unwrap();
    assert!(caps.effective().as_ref().unwrap().is_empty());
}

#[test]
fn limits_size_the_vm() {
    // Needs 2 online CPUs (--cpus and --cpuset-cpus are checked against the host).
    let c = config(&["--cpus", "1.5", "-m", "1g"]);
    assert_eq!((c.cpus, c.memory_mib), (2, 1024 + 96));
    let cpu = linux(&c)
        .resources()
        .as_ref()
        .unwrap()
        .cpu()
        .clone()
        .unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
    let mem = linux(&c).resources().as_ref().unwrap().memory().unwrap();
    assert_eq!(mem.limit(), Some(1 << 30));
    let c = config(&["--cpus", "0.5", "-m", "64m"]);
    assert_eq!((c.cpus, c.memory_mib), (1, 256));
    let c = config(&["--cpuset-cpus", "0-1"]);
    assert_eq!(c.cpus, 2);
    let c = config(&["--vm-cpus", "4", "--vm-memory", "1g", "-m", "128m"]);
    assert_eq!((c.cpus, c.memory_mib), (4, 1024));
    assert_eq!(config(&["--vm-memory", "16m"]).memory_mib, 64);
}

#[test]
fn security_flags() {
    let c = config(&[
        "--cap-add",
        "net_admin",
        "--cap-drop",
        "CAP_NET_RAW",
        "--security-opt",
        "no-new-privileges=false",
        "--read-only",
        "--userns",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        "--ulimit",
        "nofile=100:200",
        "--tmpfs",
        "/run:size=1m",
        "--pids-limit",
        "50",
    ]);
    let p = process(&c);
    let bounding = p
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert!(bounding.contains(&Capability::NetAdmin) && !bounding.contains(&Capability::NetRaw));
    assert_eq!(p.no_new_privileges(), Some(false));
    assert_eq!(c.spec.root().as_ref().unwrap().readonly(), Some(true));
    let ns = linux(&c).namespaces().clone().unwrap();
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    assert_eq!(p.rlimits().as_ref().unwrap()[0].hard(), 200);
    let mounts = c.spec.mounts().clone().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m.destination().to_str() == Some("/run")));
    let pids = linux(&c).resources().as_ref().unwrap().pids().unwrap();
    assert_eq!(pids.limit(), 50);
    let c = config(&["--userns=host", "--privileged"]);
    let ns = linux(&c).namespaces().clone().unwrap();
    assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    assert!(linux(&c).masked_paths().as_ref().unwrap().is_empty());
    assert!(config(&["--security-opt", "seccomp=unconfined"])
        .spec
        .linux()
        .is_some());
}

#[test]
fn userns_takes_its_mode_only_after_an_equals_sign() {
    let args = parse_run(&["--userns", "busybox", "id"]).unwrap();
    assert_eq!(args.userns, Some(true));
    assert_eq!(args.image.as_deref(), Some("busybox"));
    assert_eq!(parse_run(&["--userns=host"]).unwrap().userns, Some(false));
    assert_eq!(parse_run(&[]).unwrap().userns, None);
}

#[test]
fn volumes_become_disks_and_binds() {
    let dir = temp_dir("vol");
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let spec = format!("{}:/data:ro", data.display());
    let c = config(&["-v", &spec, "--device-read-bps", "/dev/vdb:1m"]);
    assert_eq!(c.volumes.len(), 1);
    assert!(c.volumes[0].readonly);
    let mounts = c.spec.mounts().clone().unwrap();
    let bind = mounts
        .iter()
        .find(|m| m.destination().to_str() == Some("/data"))
        .unwrap();
    assert_eq!(
        bind.source().as_ref().unwrap().to_str(),
        Some("/run/moat-volumes/0")
    );
    assert_eq!(bind.options().clone().unwrap(), ["rbind", "ro"]);
    let err = parse_run(&["-v", &format!("{}:/data", data.display())])
        .unwrap()
        .into_config()
        .unwrap_err();
    assert!(
        err.to_string().contains("use :ro or an ext4 image file"),
        "{err}"
    );
    let mut args = vec![];
    for _ in 0..=MAX_VOLUMES {
        args.extend(["-v", spec.as_str()]);
    }
    let err = parse_run(&args).unwrap().into_config().unwrap_err();
    assert!(matches!(err, ConfigError::TooManyVolumes(16)), "{err}");
    args.truncate(2 * MAX_VOLUMES);
    assert_eq!(config(&args).volumes.len(), MAX_VOLUMES);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn devices() {
    let c = config(&["--device", "/dev/null:/dev/mynull:rw"]);
    let dev = &linux(&c).devices().clone().unwrap()[0];
    assert_eq!(
        (dev.path().to_str(), dev.major(), dev.minor()),
        (Some("/dev/mynull"), 1, 3)
    );
}

#[test]
fn bundles() {
    let dir = temp_dir("bundle");
    std::fs::create_dir(dir.join("rootfs")).unwrap();
    let opts = RunOptions {
        args: vec!["true".into()],
        cwd: "/".into(),
        hostname: "b".into(),
        ..Default::default()
    };
    let text = serde_json::to_string(&opts.to_spec()).unwrap();
    std::fs::write(dir.join("config.json"), text).unwrap();
    let bundle = dir.to_str().unwrap();
    let c = config(&["--bundle", bundle, "-t", "--vm-cpus", "2"]);
    assert_eq!(c.rootfs, Rootfs::Directory(dir.join("rootfs")));
    assert_eq!((c.cpus, c.memory_mib, c.tty), (2, 256, true));
    assert_eq!(c.spec, opts.to_spec());
    // root.path may be absolute when it stays inside the bundle.
    let mut spec = opts.to_spec();
    let absolute = dir.join("rootfs");
    spec.root_mut().as_mut().unwrap().set_path(absolute.clone());
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config(&["--bundle", bundle]).rootfs,
        Rootfs::Directory(absolute)
    );
    for conflicting in [
        &["-e", "A=1"][..],
        &["busybox"],
        &["--", "sh"],
        &["--cap-add", "ALL"],
    ] {
        let mut args = vec!["--bundle", bundle];
        args.extend_from_slice(conflicting);
        assert!(
            parse_run(&args).is_err(),
            "{conflicting:?} accepted with --bundle"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_values_are_refused() {
    for bad in [
        &["--vm-cpus", "0"][..],
        &["--vm-cpus", "99"],
        &["--vm-cpus", "1.5"],
        &["--cpus", "0"],
        &["--cpus", "-1"],
        &["--cpus", "x"],
        &["--cpus", "64"],
        &["--cpuset-cpus", "4096"],
        &["-m", "lots"],
        &["-m", "0"],
        &["-m", "1k"],
        &["--memory-reservation", "1k"],
        &["--vm-memory", "0"],
        &["-v", "D:/data:rx"],
        &["--name", "-x"],
        &["--name", "a/b"],
        &["-u", "root:"],
        &["-u", "a:b:c"],
        &["-w", "relative"],
        &["-e", "=x"],
        &["--hostname", "a b"],
        &["--cap-add", "NOPE"],
        &["--security-opt", "apparmor=x"],
        &["--userns=keep-id"],
        &["--ulimit", "bogus=1"],
        &["--device-read-bps", "/dev/sda:1m"],
        &["--tmpfs", "run"],
        &["-v", "/x:data"],
        &["--device", "/etc/passwd"],
        &["--bogus"],
    ] {
        assert!(parse_run(bad).is_err(), "{bad:?} accepted");
    }
    for bad in [
        &["-m", "1000000g"][..],
        &["--vm-memory", "1T"],
        &["--cpu-quota", "5000000"],
        &["--cpus", "1", "--cpu-quota", "50000"],
        &["--memory-swap", "1g"],
        &["-m", "1g", "--vm-memory", "512m"],
        &["--cpuset-cpus", "1", "--vm-cpus", "1"],
        &["--sysctl", "vm.swappiness=1"],
        &["--security-opt", "seccomp=/p.json"],
        &["-v", "/nonexistent/dir:/data:ro"],
        &["--device", "/dev/nonexistent"],
    ] {
        let err = parse_run(bad).unwrap().into_config().unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
        let err: RunError = err.into();
        assert_eq!(err.exit_code(), 125, "{bad:?}");
    }
}

use moat_runtime::RunError;

/// The one line `moat run ARGS` prints for bad input (clap's, or the run request's chain).
fn error_line(args: &[&str]) -> String {
    match parse_run(args) {
        Err(e) => e.to_string().lines().next().unwrap_or("").to_owned(),
        Ok(run) => format!("{:#}", anyhow::Error::from(run.into_config().unwrap_err())),
    }
}

#[test]
fn errors_name_the_flag_in_dockers_words() {
    let n = moat_runtime::host::HostCpus::online().count();
    let range =
        format!("Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available");
    let cases: [(&[&str], &str); 14] = [
        (&["-m", "1k"], "'--memory <SIZE>': Minimum memory limit allowed is 6MB"),
        (
            &["--memory-reservation", "5m"],
            "'--memory-reservation <SIZE>': Minimum memory reservation allowed is 6MB",
        ),
        (
            &["-m", "64m", "--memory-swap", "32m"],
            "--memory-swap: Minimum memoryswap limit should be larger than memory limit, see usage",
        ),
        (
            &["--memory-swap", "1g"],
            "--memory-swap: You should always set the Memory limit when using Memoryswap limit",
        ),
        (
            &["-m", "64m", "--memory-reservation", "128m"],
            "--memory-reservation: Minimum memory limit can not be less than memory reservation",
        ),
        (&["--cpus", "4096"], &range),
        (&["--cpus", "-1"], &range),
        (&["--cpus", "0.001"], &range),
        (&["--cpuset-cpus", "4096"], "'--cpuset-cpus <LIST>': Requested CPUs are not available - requested 4096, available: "),
        (&["--vm-cpus", "33"], "'--vm-cpus <N>': expected an integer from 1 to 32"),
        (&["-m", "1000000g"], "--memory of 1024000000 MiB needs a VM of 1024000096 MiB, more than the host's "),
        (&["--vm-memory", "1000000g"], "--vm-memory of 1024000000 MiB exceeds the host's "),
        (&["-v", "D:/data:rx"], "'--volume <SRC:DST[:ro|rw]>': invalid mode: rx"),
        (&["-w", "/proc/1/fd/3"], "-w/--workdir: process.cwd: must not be under /proc"),
    ];
    for (args, want) in cases {
        let line = error_line(args);
        assert!(line.contains(want), "{args:?}: {line:?} lacks {want:?}");
    }
    assert!(error_line(&["--cpus", "4096"]).contains("'--cpus <N>'"));
    // A value that looks like a flag is still the flag's value (as docker takes it).
    for (args, flag) in [
        (&["--name", "-x"][..], "'--name <NAME>'"),
        (&["--hostname", "-x"], "'--hostname <NAME>'"),
        (&["-u", "-1"], "'--user <USER[:GROUP]>'"),
        (&["-u", "a:b:c"], "'--user <USER[:GROUP]>'"),
        (&["-w", "-x"], "'--workdir <DIR>'"),
        (&["-m", "-1"], "'--memory <SIZE>'"),
        (&["--vm-cpus", "-1"], "'--vm-cpus <N>'"),
    ] {
        let line = error_line(args);
        assert!(line.contains(flag), "{args:?}: {line}");
    }
    assert!(error_line(&["--cpu-quota", "5000000"]).starts_with("--cpu-quota needs 50 vCPUs"));
}

#[test]
fn vm_memory_above_the_host_names_what_sized_it() {
    let sizing = |memory: Option<u64>| Sizing {
        limits: Limits {
            memory,
            ..Default::default()
        },
        cpuset_highest: None,
        names: &FLAG_NAMES,
    };
    let host = 512 << 20;
    let err = |s: Sizing, vm: Option<u64>| s.vm_memory(vm, host).unwrap_err().to_string();
    assert_eq!(
        err(sizing(Some(1 << 30)), None),
        "--memory of 1024 MiB needs a VM of 1120 MiB, more than the host's 512 MiB of RAM (see --vm-memory)"
    );
    assert_eq!(
        err(sizing(None), Some(1 << 30)),
        "--vm-memory of 1024 MiB exceeds the host's 512 MiB of RAM"
    );
    let small_host = 200 << 20;
    assert_eq!(
        sizing(None)
            .vm_memory(None, small_host)
            .unwrap_err()
            .to_string(),
        "the default VM of 256 MiB exceeds the host's 200 MiB of RAM (see --vm-memory)"
    );
    assert_eq!(sizing(Some(400 << 20)).vm_memory(None, host).unwrap(), 496);
}
