//! Installs compiled filters into a forked child with the real `seccomp(2)` and checks the
//! kernel's answers from inside. The child only makes raw syscalls (no allocation after `fork`)
//! and reports `(return value, errno)` per probe to the parent through a pipe.

use std::io::Error;

use moat_oci_seccomp::{compile, DockerProfile, Program};

/// Docker's default capability set.
const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
const MAX_PROBES: usize = 32;
/// Errno the child reports when installing the filter failed.
const SETUP_FAILED: i64 = -1000;

/// What a probe must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Success (a non-negative return).
    Ok,
    /// Failure with this errno.
    Errno(i32),
}

struct Probe {
    name: &'static str,
    call: fn() -> i64,
    want: Want,
}

/// `syscall(2)` with up to five arguments; `-1` and errno on failure.
fn sys(nr: libc::c_long, a: [libc::c_long; 5]) -> i64 {
    // SAFETY: every probe passes null pointers or valid stack buffers its syscall accepts.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) }
}

fn uname() -> i64 {
    // SAFETY: utsname is plain bytes; all zeroes is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    i64::from(unsafe { libc::uname(&mut u) })
}

fn socket(domain: libc::c_int) -> i64 {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just opened here and is closed once.
        unsafe { libc::close(fd) };
    }
    i64::from(fd)
}

fn fork_and_wait() -> i64 {
    // SAFETY: the child only calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: leaving the forked child without running any destructor.
        unsafe { libc::_exit(7) };
    }
    if pid < 0 {
        return -1;
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    let got = unsafe { libc::waitpid(pid, &mut status, 0) };
    match got == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7 {
        true => 0,
        false => -1,
    }
}

fn docker_probes() -> Vec<Probe> {
    vec![
        Probe {
            name: "clone3",
            call: || sys(libc::SYS_clone3, [0, 0, 0, 0, 0]),
            want: Want::Errno(libc::ENOSYS),
        },
        Probe {
            name: "keyctl",
            call: || sys(libc::SYS_keyctl, [0, -3, 0, 0, 0]),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "add_key",
            call: || sys(libc::SYS_add_key, [0; 5]),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "mount",
            call: || sys(libc::SYS_mount, [0; 5]),
            want: Want::Errno(libc::EPERM),
        },
        // Without the filter this bad magic would get EINVAL: nothing reboots either way.
        Probe {
            name: "reboot",
            call: || sys(libc::SYS_reboot, [0; 5]),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "swapon",
            call: || sys(libc::SYS_swapon, [0; 5]),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "personality(ADDR_NO_RANDOMIZE)",
            call: || sys(libc::SYS_personality, [0x0040000, 0, 0, 0, 0]),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "socket(AF_VSOCK)",
            call: || socket(libc::AF_VSOCK),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "getpid",
            call: || sys(libc::SYS_getpid, [0; 5]),
            want: Want::Ok,
        },
        Probe {
            name: "uname",
            call: uname,
            want: Want::Ok,
        },
        Probe {
            name: "personality(0xffffffff) (query)",
            call: || sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0]),
            want: Want::Ok,
        },
        Probe {
            name: "personality(PER_LINUX)",
            call: || sys(libc::SYS_personality, [0; 5]),
            want: Want::Ok,
        },
        Probe {
            name: "fork",
            call: fork_and_wait,
            want: Want::Ok,
        },
        // x32 getpid: the default action (without the filter: ENOSYS, or success with x32).
        Probe {
            name: "x32 getpid",
            call: || sys(0x4000_0000 | libc::SYS_getpid, [0; 5]),
            want: Want::Errno(libc::EPERM),
        },
        // setxattrat (463, Linux 6.13): unknown to the profile, so the default action.
        Probe {
            name: "syscall 463",
            call: || sys(463, [0; 5]),
            want: Want::Errno(libc::EPERM),
        },
        Probe {
            name: "socket(AF_UNIX)",
            call: || socket(libc::AF_UNIX),
            want: Want::Ok,
        },
        // Last: without the filter it would succeed and drop this child's capabilities, which
        // would make the probes above fail for the wrong reason.
        Probe {
            name: "unshare(CLONE_NEWUSER)",
            call: || {
                sys(
                    libc::SYS_unshare,
                    [libc::c_long::from(libc::CLONE_NEWUSER), 0, 0, 0, 0],
                )
            },
            want: Want::Errno(libc::EPERM),
        },
    ]
}

/// Forks a child that installs `prog` and runs `probes`; returns `(return, errno)` per probe.
fn run_filtered(prog: &Program, probes: &[Probe]) -> Vec<(i64, i64)> {
    assert!(probes.len() <= MAX_PROBES);
    let fprog = fprog(prog);
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints.
    let piped = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(piped, 0, "pipe: {}", Error::last_os_error());
    // SAFETY: the child makes only raw syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", Error::last_os_error());
    if pid == 0 {
        child(fds[1], &fprog, prog.flags, probes);
    }
    // SAFETY: closing our copy of the write end, once.
    unsafe { libc::close(fds[1]) };
    let mut out = [[0i64; 2]; MAX_PROBES];
    // SAFETY: `out` is a writable buffer of the given size.
    let got = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), std::mem::size_of_val(&out)) };
    // SAFETY: closing the read end, once.
    unsafe { libc::close(fds[0]) };
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x}"
    );
    assert_eq!(
        usize::try_from(got).unwrap(),
        std::mem::size_of_val(&out),
        "short report from the child"
    );
    assert_ne!(
        out[0][0], SETUP_FAILED,
        "installing the filter failed with errno {}",
        out[0][1]
    );
    out[..probes.len()]
        .iter()
        .map(|[ret, errno]| (*ret, *errno))
        .collect()
}

/// `PR_SET_NO_NEW_PRIVS`, then `seccomp(SECCOMP_SET_MODE_FILTER, flags, fprog)`.
fn install(fprog: &libc::sock_fprog, flags: u32) -> bool {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes no pointers.
    let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let mode = libc::SECCOMP_SET_MODE_FILTER;
    // SAFETY: `fprog` points at a live filter of `len` instructions (copied by the kernel).
    nnp == 0
        && unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                mode,
                flags,
                fprog as *const libc::sock_fprog,
            )
        } == 0
}

fn fprog(prog: &Program) -> libc::sock_fprog {
    libc::sock_fprog {
        len: u16::try_from(prog.filter.len()).unwrap(),
        filter: prog.filter.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    }
}

/// The forked child: install the filter, run the probes, report, `_exit`.
fn child(fd: libc::c_int, fprog: &libc::sock_fprog, flags: u32, probes: &[Probe]) -> ! {
    let mut out = [[0i64; 2]; MAX_PROBES];
    let errno = || i64::from(Error::last_os_error().raw_os_error().unwrap_or(0));
    let installed = install(fprog, flags);
    if installed {
        for (slot, probe) in out.iter_mut().zip(probes) {
            let ret = (probe.call)();
            *slot = [ret, if ret < 0 { errno() } else { 0 }];
        }
    } else {
        out[0] = [SETUP_FAILED, errno()];
    }
    // SAFETY: `out` is a readable buffer of the given size; then leave without destructors.
    unsafe {
        libc::write(fd, out.as_ptr().cast(), std::mem::size_of_val(&out));
        libc::_exit(0)
    }
}

fn check(probes: &[Probe], results: &[(i64, i64)]) {
    let mut wrong = Vec::new();
    for (probe, &(ret, errno)) in probes.iter().zip(results) {
        let got = if ret >= 0 {
            Want::Ok
        } else {
            Want::Errno(i32::try_from(errno).unwrap())
        };
        if got != probe.want {
            wrong.push(format!(
                "{}: want {:?}, got return {ret} errno {errno}",
                probe.name, probe.want
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn docker_default_in_the_kernel() {
    let caps: Vec<String> = DOCKER_CAPS.iter().map(|c| c.to_string()).collect();
    let oci = DockerProfile::docker_default().to_oci(&caps).unwrap();
    let prog = compile(&oci).unwrap();
    println!(
        "docker default profile with Docker's caps: {} instructions",
        prog.filter.len()
    );
    let probes = docker_probes();
    check(&probes, &run_filtered(&prog, &probes));
}

#[test]
fn custom_profile_in_the_kernel() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":42}]}"#;
    let prog = compile(&DockerProfile::from_json(json).unwrap().to_oci(&[]).unwrap()).unwrap();
    let probes = [
        Probe {
            name: "getppid",
            call: || sys(libc::SYS_getppid, [0; 5]),
            want: Want::Errno(42),
        },
        Probe {
            name: "getpid",
            call: || sys(libc::SYS_getpid, [0; 5]),
            want: Want::Ok,
        },
        Probe {
            name: "uname",
            call: uname,
            want: Want::Ok,
        },
    ];
    check(&probes, &run_filtered(&prog, &probes));
}

#[test]
fn kill_process_in_the_kernel() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#;
    let prog = compile(&DockerProfile::from_json(json).unwrap().to_oci(&[]).unwrap()).unwrap();
    let fprog = fprog(&prog);
    // SAFETY: the child makes only raw syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", Error::last_os_error());
    if pid == 0 {
        let code = if install(&fprog, prog.flags) { 0 } else { 3 };
        sys(libc::SYS_getppid, [0; 5]);
        // SAFETY: leaving the forked child without running any destructor.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "child status {status:#x}, want killed by SIGSYS"
    );
}
