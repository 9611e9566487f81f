//! Unit tests of [`super`], against the recording mock.

use super::*;
use crate::container::plan::ProcessSpec;
use crate::container::security::{SeccompProgram, Security};
use crate::container::{plan, spec};
use crate::syscall::mock::Recorder;
use oci_spec::runtime::Spec;

fn plan(args: &[&str], cwd: &str) -> ExecPlan {
    let spec = ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        cwd: cwd.into(),
        uid: 1000,
        gid: 1000,
        additional_gids: vec![5],
        terminal: false,
        rows: 0,
        cols: 0,
    };
    let security = Security::from_oci(&Spec::default()).unwrap();
    plan::build(&spec, security).unwrap()
}

/// oci-spec's default spec (Docker-like: namespaces, mounts, masked and read-only paths)
/// with a hostname.
fn container() -> ContainerPlan {
    let mut s = Spec::default();
    s.set_hostname(Some("box".into()));
    spec::build(&s, &|_| false).unwrap()
}

const PIPES: ChildStdio = ChildStdio::Pipes {
    stdin: 10,
    stdout: 11,
    stderr: 12,
};

/// The error pipe's write end.
const ERR: Pipes = Pipes {
    err: 9,
    start: None,
};

fn pos(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
}

#[test]
fn isolated_sequence() {
    let sys = Recorder::default();
    sys.executable
        .borrow_mut()
        .push(("/bin/echo".into(), libc::E2BIG));
    sys.dirs.borrow_mut().push("/proc/acpi".into());
    let exit = run_init(
        &sys,
        &plan(&["echo", "hi"], "/work/dir"),
        &container(),
        PIPES,
        ERR,
    );
    assert_eq!(
        exit,
        Exit::Failed(Failure {
            stage: Stage::Exec,
            errno: libc::E2BIG
        })
    );
    let lines = sys.lines();
    let pos = |needle: &str| pos(&lines, needle);
    assert_eq!(
        &lines[..7],
        [
            "reset_signals",
            "setsid",
            &format!("unshare {:#x}", libc::CLONE_NEWCGROUP),
            "loopback_up",
            "mount - / - rec,private -",
            "mount /run/moat/root /run/moat/root - bind,rec -",
            &format!(
                "open /run/moat/root {:#o}",
                libc::O_PATH | libc::O_DIRECTORY
            ),
        ]
    );
    // Each mount point is resolved in the root and mounted on through its descriptor.
    let proc = pos("open_in_root 100 /proc ");
    assert!(lines[proc + 1].starts_with("close"));
    assert!(lines[proc + 2].starts_with("open_in_root 100 /proc "));
    assert!(lines[proc + 3].starts_with("mount proc /proc/self/fd/"));
    // oci-spec's default proc mount has no options.
    assert!(
        lines[proc + 3].ends_with(" proc - -"),
        "{}",
        lines[proc + 3]
    );
    assert!(pos("mount tmpfs /proc/self/fd/") < pos("mknod /run/moat/root/dev/null 20666 1:3"));
    assert!(pos("mknod /run/moat/root/dev/tty") < pos("symlink pts/ptmx /run/moat/root/dev/ptmx"));
    assert!(pos("umask 0") < pos("mknod") && pos("symlink /proc/self/fd/2") < pos("umask 22"));
    assert!(pos("symlink /proc/self/fd/2") < pos("mount /dev/pts /proc/self/fd/"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("mount sysfs /proc/self/fd/")
            && l.ends_with("sysfs ro,nosuid,nodev,noexec -")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("mount cgroup /proc/self/fd/") && l.contains(" cgroup2 ")));
    assert!(pos("mount cgroup ") < pos("chdir /run/moat/root"));
    let pivot = pos("pivot_root . .");
    assert_eq!(lines[pivot - 1], "chdir /run/moat/root");
    assert_eq!(lines[pivot + 1..pivot + 3], ["umount .", "chdir /"]);
    assert!(pivot < pos("sethostname box"));
    // Masked: a directory gets an empty read-only tmpfs, a file /dev/null; read-only paths
    // are bound onto themselves and remounted read-only, keeping their flags.
    let acpi = lines
        .iter()
        .position(|l| l.starts_with("open_in_root") && l.contains(" /proc/acpi "))
        .unwrap();
    assert!(pos("sethostname box") < acpi);
    let acpi = acpi + 1;
    assert!(
        lines[acpi].starts_with("mount tmpfs /proc/self/fd/"),
        "{}",
        lines[acpi]
    );
    assert!(lines[acpi].ends_with("ro,nosuid,nodev,noexec size=0,nr_inodes=1"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("mount /dev/null /proc/self/fd/")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("mount - /proc/self/fd/")
            && l.contains(" - ro,nosuid,bind,remount -")));
    assert!(pos("mkdir /work/dir 755") < pos("catch_signals"));
    // The init catches its signals before the command exists; the command (the clone's
    // child here) starts from default signals in a session of its own.
    let clone = pos("clone");
    assert_eq!(lines[clone], format!("clone {:#x}", libc::SIGCHLD));
    assert_eq!(clone, pos("catch_signals") + 1);
    let command = &lines[clone + 1..];
    let pos = |needle: &str| self::pos(command, needle);
    assert_eq!(
        command[..5],
        [
            "reset_signals",
            "setsid",
            "dup2 10 0",
            "dup2 11 1",
            "dup2 12 2"
        ]
    );
    assert_eq!(
        command[5..7],
        ["close_range 3 8", "close_range 10 2147483647"]
    );
    assert_eq!(
        command[7],
        format!("setrlimit {} 1024 1024", libc::RLIMIT_NOFILE)
    );
    assert_eq!(
        command[8],
        format!("prctl {} 1 0", libc::PR_SET_NO_NEW_PRIVS)
    );
    assert_eq!(command[9], format!("prctl {} 1 0", libc::PR_SET_KEEPCAPS));
    // The default bounding set is AUDIT_WRITE, KILL and NET_BIND_SERVICE.
    let drop = format!("prctl {} ", libc::PR_CAPBSET_DROP);
    let dropped = command.iter().filter(|l| l.starts_with(&drop)).count();
    assert_eq!(dropped, 41 - 3);
    assert!(pos(&drop) < pos("setgroups [5]"));
    assert!(pos("setgroups [5]") < pos("setgid 1000") && pos("setgid") < pos("setuid 1000"));
    let caps = (1u64 << 5) | (1 << 10) | (1 << 29);
    assert_eq!(
        command[pos("setuid") + 1],
        format!("capset {caps:#x} {caps:#x} {caps:#x}")
    );
    let ambient = format!(
        "prctl {} {} ",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_RAISE
    );
    assert_eq!(
        command.iter().filter(|l| l.starts_with(&ambient)).count(),
        3
    );
    assert!(pos("capset") < pos("chdir /work/dir"));
    assert_eq!(pos("chdir /work/dir") + 1, pos("getcwd"));
    assert!(command[command.len() - 2].starts_with("execve /usr/bin/echo [\"echo\", \"hi\"]"));
    assert!(command[command.len() - 1].starts_with("execve /bin/echo"));
}

#[test]
fn seccomp_is_last_with_no_new_privs_else_before_the_id_change() {
    let filter = vec![libc::sock_filter {
        code: 6,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    }];
    for nnp in [true, false] {
        let sys = Recorder::default();
        let mut plan = plan(&["/bin/true"], "/");
        plan.security.no_new_privs = nnp;
        plan.security.seccomp = Some(SeccompProgram {
            filter: filter.clone(),
            flags: 0,
        });
        run(&sys, &plan, PIPES, ERR);
        let lines = sys.lines();
        let seccomp = pos(&lines, "seccomp 0 1");
        if nnp {
            assert_eq!(seccomp + 1, pos(&lines, "execve"));
            assert!(pos(&lines, "chdir /") < seccomp);
        } else {
            assert!(seccomp < pos(&lines, "setuid"));
            assert!(!lines
                .iter()
                .any(|l| l.starts_with(&format!("prctl {} ", libc::PR_SET_NO_NEW_PRIVS))));
        }
    }
}

#[test]
fn user_namespace_init_becomes_root_and_binds_devices() {
    let mut s = Spec::default();
    let linux = s.linux_mut().as_mut().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(oci_spec::runtime::LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    linux.set_namespaces(Some(ns));
    let map = oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(100000u32)
        .size(65536u32)
        .build()
        .unwrap();
    linux.set_uid_mappings(Some(vec![map]));
    linux.set_gid_mappings(Some(vec![map]));
    let c = spec::build(&s, &|_| false).unwrap();
    assert_ne!(c.clone_flags & libc::CLONE_NEWUSER as libc::c_ulong, 0);
    let sys = Recorder::default();
    run_init(&sys, &plan(&["true"], "/"), &c, PIPES, ERR);
    let lines = sys.lines();
    assert_eq!(lines[2..4], ["setgid 0", "setuid 0"]);
    let null = pos(&lines, "mknod /run/moat/root/dev/null 100644 0:0");
    assert_eq!(
        lines[null + 1],
        "mount /dev/null /run/moat/root/dev/null - bind -"
    );
}

#[test]
fn init_drops_privileges_closes_descriptors_then_supervises() {
    let sys = Recorder::default();
    sys.clone_pid.set(2);
    sys.signals.borrow_mut().push_back(libc::SIGCHLD);
    sys.children.borrow_mut().push_back((2, 3 << 8));
    let exit = run_init(&sys, &plan(&["false"], "/"), &container(), PIPES, ERR);
    assert_eq!(exit, Exit::Code(3));
    let lines = sys.lines();
    let clone = pos(&lines, "clone");
    let after = &lines[clone + 1..];
    // The agent's descriptors go before anything else; the error pipe stays until the end.
    assert_eq!(after[..2], ["close_range 0 8", "close_range 10 2147483647"]);
    assert_eq!(after[2], format!("prctl {} 1 0", libc::PR_SET_NO_NEW_PRIVS));
    assert!(pos(after, "setuid 1000") < pos(after, "capset"));
    assert_eq!(
        after[after.len() - 4..],
        [
            "close_range 9 9",
            "wait_signal 17",
            "reap 2 0x300",
            "reap none"
        ]
    );
}

#[test]
fn host_mode_skips_namespaces_and_mounts() {
    let sys = Recorder::default();
    run(
        &sys,
        &plan(&["/bin/true"], "/"),
        ChildStdio::Pty { slave: 8 },
        ERR,
    );
    assert_eq!(
        sys.lines()[..8],
        [
            "reset_signals",
            "setsid",
            "tiocsctty 8",
            "dup2 8 0",
            "dup2 8 1",
            "dup2 8 2",
            // Everything but stdio and the error pipe is closed before anything else.
            "close_range 3 8",
            "close_range 10 2147483647",
        ]
    );
    assert!(!sys
        .lines()
        .iter()
        .any(|l| l.starts_with("mount") || l.starts_with("unshare")));
}

#[test]
fn path_lookup_semantics() {
    // Nothing found anywhere: ENOENT.
    let sys = Recorder::default();
    let f = run(&sys, &plan(&["nope"], "/"), PIPES, ERR);
    assert_eq!(
        f,
        Failure {
            stage: Stage::Exec,
            errno: libc::ENOENT
        }
    );
    assert_eq!(sys.lines_starting("execve").len(), 2);
    // A non-executable match is remembered while the search goes on.
    let sys = Recorder::default();
    sys.executable
        .borrow_mut()
        .push(("/usr/bin/x".into(), libc::EACCES));
    let f = run(&sys, &plan(&["x"], "/"), PIPES, ERR);
    assert_eq!(
        f,
        Failure {
            stage: Stage::Exec,
            errno: libc::EACCES
        }
    );
    // Any other error stops the search.
    let sys = Recorder::default();
    sys.executable
        .borrow_mut()
        .push(("/usr/bin/x".into(), libc::ENOEXEC));
    let f = run(&sys, &plan(&["x"], "/"), PIPES, ERR);
    assert_eq!(
        f,
        Failure {
            stage: Stage::Exec,
            errno: libc::ENOEXEC
        }
    );
    assert_eq!(sys.lines_starting("execve").len(), 1);
}

#[test]
fn failures_stop_at_their_stage() {
    let sys = Recorder::failing("pivot_root", libc::EINVAL);
    let exit = run_init(&sys, &plan(&["true"], "/"), &container(), PIPES, ERR);
    let failure = |stage, errno| Exit::Failed(Failure { stage, errno });
    assert_eq!(exit, failure(Stage::Root, libc::EINVAL));
    assert!(!sys
        .lines()
        .iter()
        .any(|l| l.starts_with("execve") || l.starts_with("clone")));
    for call in ["catch_signals", "clone"] {
        let sys = Recorder::failing(call, libc::EAGAIN);
        let exit = run_init(&sys, &plan(&["true"], "/"), &container(), PIPES, ERR);
        assert_eq!(exit, failure(Stage::Init, libc::EAGAIN));
        assert!(!sys.lines().iter().any(|l| l.starts_with("execve")));
    }
    let sys = Recorder::failing("setuid", libc::EPERM);
    let f = run(&sys, &plan(&["true"], "/"), PIPES, ERR);
    assert_eq!(
        f,
        Failure {
            stage: Stage::Ids,
            errno: libc::EPERM
        }
    );
    let sys = Recorder::failing("chdir /nowhere", libc::ENOENT);
    let f = run(&sys, &plan(&["true"], "/nowhere"), PIPES, ERR);
    assert_eq!(
        f,
        Failure {
            stage: Stage::Cwd,
            errno: libc::ENOENT
        }
    );
}

#[test]
fn failure_encoding() {
    let f = Failure {
        stage: Stage::Cwd,
        errno: libc::ENOTDIR,
    };
    assert_eq!(Failure::from_bytes(&f.to_bytes()), Some(f));
    assert_eq!(Failure::from_bytes(&[0; FAILURE_LEN]), None);
    assert_eq!(Failure::from_bytes(&[1, 0, 0]), None);
}

#[test]
fn a_held_process_reports_ready_and_waits_before_its_filter_and_exec() {
    let sys = Recorder::default();
    let pipes = Pipes {
        err: 9,
        start: Some(13),
    };
    let mut p = plan(&["/bin/true"], "/");
    p.security.no_new_privs = true;
    p.security.seccomp = Some(SeccompProgram {
        filter: vec![],
        flags: 0,
    });
    run(&sys, &p, PIPES, pipes);
    let lines = sys.lines();
    // Both pipes stay open through the descriptor sweep.
    assert!(lines.contains(&"close_range 3 8".to_string()), "{lines:#?}");
    assert!(
        lines.contains(&"close_range 10 12".to_string()),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"close_range 14 2147483647".to_string()),
        "{lines:#?}"
    );
    let (cwd, ready, wait, closed) = (
        pos(&lines, "getcwd"),
        pos(&lines, "write_fd 9 8"),
        pos(&lines, "read_byte 13"),
        pos(&lines, "close 13"),
    );
    let (filter, exec) = (pos(&lines, "seccomp"), pos(&lines, "execve"));
    assert!(cwd < ready && ready < wait && wait < closed, "{lines:#?}");
    assert!(closed < filter && filter < exec, "{lines:#?}");
}
