//! The process's privileges from the spec's `process` object: rlimits, umask, oom_score_adj,
//! capabilities (all five sets), no_new_privs and the seccomp filter, converted before the fork
//! ([`Security::from_oci`]) and applied by the forked child ([`apply_limits`],
//! [`drop_privileges`]) with system calls only.

use oci_spec::runtime::{Capabilities, Capability, PosixRlimitType, Process, Spec};

use super::child::{Failure, Stage};
use super::plan::PlanError;
use crate::syscall::Syscall;

/// The highest capability number the agent knows (`CAP_CHECKPOINT_RESTORE`).
pub const LAST_CAP: u32 = 40;

/// A compiled seccomp filter and the flags of seccomp(2).
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    /// The classic BPF program.
    pub filter: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: u32,
}

/// The five capability sets, as bit masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    /// The bounding set; every other capability is dropped from it.
    pub bounding: u64,
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// Ambient, raised after the id change.
    pub ambient: u64,
}

/// The process's limits and privileges, ready for the child.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// umask.
    pub umask: Option<libc::mode_t>,
    /// (resource, soft, hard).
    pub rlimits: Vec<(libc::c_int, u64, u64)>,
    /// The value written to /proc/self/oom_score_adj.
    pub oom_score_adj: Option<Vec<u8>>,
    /// The capability sets (no `process.capabilities` means all empty).
    pub caps: CapSets,
    /// prctl(PR_SET_NO_NEW_PRIVS).
    pub no_new_privs: bool,
    /// The seccomp filter.
    pub seccomp: Option<SeccompProgram>,
}

impl Security {
    /// What the container's init drops to after forking the command: the command's ids and
    /// capabilities, no_new_privs, and its own fixed filter ([`init_seccomp_program`]) when
    /// the command is filtered, so that no profile can break the init's loop.
    pub fn for_init(&self) -> Result<Self, PlanError> {
        let seccomp = match self.seccomp {
            Some(_) => Some(init_seccomp_program()?),
            None => None,
        };
        Ok(Self {
            umask: None,
            rlimits: Vec::new(),
            oom_score_adj: None,
            caps: self.caps,
            // The init never execs, so no_new_privs costs it nothing, and it lets the init load
            // its filter last, after its capabilities are gone, whatever the command's setting.
            no_new_privs: true,
            seccomp,
        })
    }
}

/// The only system calls the container's init makes once the command runs (waiting for signals,
/// passing them on, reaping, exiting); anything else fails with EPERM.
const INIT_SYSCALLS: [&str; 12] = [
    "rt_sigtimedwait",
    "rt_sigprocmask",
    "rt_sigreturn",
    "restart_syscall",
    "wait4",
    "waitid",
    "kill",
    "close",
    "close_range",
    "getpid",
    "exit",
    "exit_group",
];

/// The init's own filter: [`INIT_SYSCALLS`] and nothing else.
pub fn init_seccomp_program() -> Result<SeccompProgram, PlanError> {
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSyscall};
    let mut allow = LinuxSyscall::default();
    allow.set_names(INIT_SYSCALLS.iter().map(|s| s.to_string()).collect());
    allow.set_action(LinuxSeccompAction::ScmpActAllow);
    let mut filter = oci_spec::runtime::LinuxSeccomp::default();
    filter.set_default_action(LinuxSeccompAction::ScmpActErrno);
    filter.set_syscalls(Some(vec![allow]));
    compile(&filter)
}

/// Compiles an OCI seccomp section into the agent's form.
fn compile(seccomp: &oci_spec::runtime::LinuxSeccomp) -> Result<SeccompProgram, PlanError> {
    let program = moat_oci_seccomp::compile(seccomp)?;
    let filter = program
        .filter
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    Ok(SeccompProgram {
        filter,
        flags: program.flags,
    })
}

const OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

fn refuse(field: &str, why: &str) -> PlanError {
    PlanError::Field {
        field: field.to_owned(),
        why: why.to_owned(),
    }
}

impl Security {
    /// The security fields of `spec`'s process; fields the agent cannot honour are refused.
    pub fn from_oci(spec: &Spec) -> Result<Self, PlanError> {
        let p = spec.process().as_ref().ok_or(PlanError::NoCommand)?;
        Self::from_process(p, seccomp_program(spec)?)
    }

    /// The security fields of process `p` (the spec's or an exec's), with `seccomp`.
    pub fn from_process(p: &Process, seccomp: Option<SeccompProgram>) -> Result<Self, PlanError> {
        refuse_unsupported(p)?;
        let umask = p.user().umask();
        if umask.is_some_and(|m| m > 0o777) {
            return Err(refuse("process.user.umask", "more than 0777"));
        }
        let rlimits = p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect::<Vec<_>>();
        if let Some(r) = p.rlimits().iter().flatten().find(|r| r.soft() > r.hard()) {
            return Err(refuse(
                "process.rlimits",
                &format!("{:?}: soft limit above the hard limit", r.typ()),
            ));
        }
        let oom_score_adj = match p.oom_score_adj() {
            Some(v) if !(-1000..=1000).contains(&v) => {
                return Err(refuse("process.oomScoreAdj", "not in -1000..=1000"))
            }
            v => v.map(|v| v.to_string().into_bytes()),
        };
        Ok(Self {
            umask: umask.map(|m| m as libc::mode_t),
            rlimits,
            oom_score_adj,
            caps: cap_sets(p),
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            seccomp,
        })
    }
}

/// Validates and compiles `linux.seccomp` (moat-oci-seccomp) into the program the command
/// installs; `None` when the spec has no filter.
pub fn seccomp_program(spec: &Spec) -> Result<Option<SeccompProgram>, PlanError> {
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    compile(seccomp).map(Some)
}

fn refuse_unsupported(p: &Process) -> Result<(), PlanError> {
    let why = "not supported: the guest kernel has no LSM for it";
    if p.apparmor_profile().as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(refuse("process.apparmorProfile", why));
    }
    if p.selinux_label().as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(refuse("process.selinuxLabel", why));
    }
    let why = "not supported: the container is alone in its VM";
    if p.scheduler().is_some() {
        return Err(refuse("process.scheduler", why));
    }
    if p.io_priority().is_some() {
        return Err(refuse("process.ioPriority", why));
    }
    if p.exec_cpu_affinity().is_some() {
        return Err(refuse("process.execCPUAffinity", why));
    }
    if p.command_line().is_some() {
        return Err(refuse("process.commandLine", "a Windows field"));
    }
    if p.user().username().is_some() {
        return Err(refuse("process.user.username", "a Windows field"));
    }
    Ok(())
}

fn cap_sets(p: &Process) -> CapSets {
    let Some(c) = p.capabilities() else {
        return CapSets::default();
    };
    let mask = |set: &Option<Capabilities>| {
        set.iter()
            .flatten()
            .fold(0u64, |acc, cap| acc | 1 << cap_number(*cap))
    };
    CapSets {
        bounding: mask(c.bounding()),
        effective: mask(c.effective()),
        permitted: mask(c.permitted()),
        inheritable: mask(c.inheritable()),
        ambient: mask(c.ambient()),
    }
}

/// The kernel's number of a capability.
pub fn cap_number(cap: Capability) -> u32 {
    use Capability as C;
    match cap {
        C::Chown => 0,
        C::DacOverride => 1,
        C::DacReadSearch => 2,
        C::Fowner => 3,
        C::Fsetid => 4,
        C::Kill => 5,
        C::Setgid => 6,
        C::Setuid => 7,
        C::Setpcap => 8,
        C::LinuxImmutable => 9,
        C::NetBindService => 10,
        C::NetBroadcast => 11,
        C::NetAdmin => 12,
        C::NetRaw => 13,
        C::IpcLock => 14,
        C::IpcOwner => 15,
        C::SysModule => 16,
        C::SysRawio => 17,
        C::SysChroot => 18,
        C::SysPtrace => 19,
        C::SysPacct => 20,
        C::SysAdmin => 21,
        C::SysBoot => 22,
        C::SysNice => 23,
        C::SysResource => 24,
        C::SysTime => 25,
        C::SysTtyConfig => 26,
        C::Mknod => 27,
        C::Lease => 28,
        C::AuditWrite => 29,
        C::AuditControl => 30,
        C::Setfcap => 31,
        C::MacOverride => 32,
        C::MacAdmin => 33,
        C::Syslog => 34,
        C::WakeAlarm => 35,
        C::BlockSuspend => 36,
        C::AuditRead => 37,
        C::Perfmon => 38,
        C::Bpf => 39,
        C::CheckpointRestore => 40,
    }
}

fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    use PosixRlimitType as R;
    let r = match t {
        R::RlimitCpu => libc::RLIMIT_CPU,
        R::RlimitFsize => libc::RLIMIT_FSIZE,
        R::RlimitData => libc::RLIMIT_DATA,
        R::RlimitStack => libc::RLIMIT_STACK,
        R::RlimitCore => libc::RLIMIT_CORE,
        R::RlimitRss => libc::RLIMIT_RSS,
        R::RlimitNproc => libc::RLIMIT_NPROC,
        R::RlimitNofile => libc::RLIMIT_NOFILE,
        R::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        R::RlimitAs => libc::RLIMIT_AS,
        R::RlimitLocks => libc::RLIMIT_LOCKS,
        R::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        R::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        R::RlimitNice => libc::RLIMIT_NICE,
        R::RlimitRtprio => libc::RLIMIT_RTPRIO,
        R::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    r as libc::c_int
}

/// The command's limits, before its privileges go: rlimits, oom_score_adj (lowering it needs
/// CAP_SYS_RESOURCE) and umask.
pub fn apply_limits(sys: &dyn Syscall, sec: &Security) -> Result<(), Failure> {
    let at = Failure::at(Stage::Limits);
    for &(resource, soft, hard) in &sec.rlimits {
        sys.setrlimit(resource, soft, hard).map_err(&at)?;
    }
    if let Some(adj) = &sec.oom_score_adj {
        sys.write_file(OOM_SCORE_ADJ, adj).map_err(&at)?;
    }
    if let Some(mask) = sec.umask {
        sys.umask(mask);
    }
    Ok(())
}

/// The ids and the identity `drop_privileges` switches to.
pub struct Ids<'a> {
    /// uid.
    pub uid: libc::uid_t,
    /// gid.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: &'a [libc::gid_t],
}

/// Drops to `ids` and the capability sets, in runc's order: no_new_privs, the seccomp filter
/// if no_new_privs is off (loading it then needs CAP_SYS_ADMIN, so before the id change), keep
/// capabilities across the id change, drop the bounding set, change ids, set the three sets,
/// raise the ambient ones. With no_new_privs the filter is loaded later by
/// [`load_seccomp_last`], right before execve.
pub fn drop_privileges(sys: &dyn Syscall, sec: &Security, ids: &Ids) -> Result<(), Failure> {
    let at = Failure::at(Stage::Privileges);
    if sec.no_new_privs {
        sys.prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(&at)?;
    } else if let Some(p) = &sec.seccomp {
        sys.seccomp_filter(p.flags, &p.filter)
            .map_err(Failure::at(Stage::Seccomp))?;
    }
    sys.prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(&at)?;
    for cap in 0..=LAST_CAP {
        if sec.caps.bounding & (1 << cap) == 0 {
            match sys.prctl(libc::PR_CAPBSET_DROP, cap.into(), 0) {
                // A capability this kernel does not have.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                other => other.map_err(&at)?,
            }
        }
    }
    let ids_at = Failure::at(Stage::Ids);
    sys.setgroups(ids.groups).map_err(&ids_at)?;
    sys.setgid(ids.gid).map_err(&ids_at)?;
    sys.setuid(ids.uid).map_err(&ids_at)?;
    let c = sec.caps;
    sys.capset(c.effective, c.permitted, c.inheritable)
        .map_err(&at)?;
    for cap in (0..=LAST_CAP).filter(|cap| c.ambient & (1 << cap) != 0) {
        let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
        sys.prctl(libc::PR_CAP_AMBIENT, raise, cap.into())
            .map_err(&at)?;
    }
    Ok(())
}

/// The seccomp filter as the last step before execve, when no_new_privs is set.
pub fn load_seccomp_last(sys: &dyn Syscall, sec: &Security) -> Result<(), Failure> {
    match (&sec.seccomp, sec.no_new_privs) {
        (Some(p), true) => sys
            .seccomp_filter(p.flags, &p.filter)
            .map_err(Failure::at(Stage::Seccomp)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Linux;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, LinuxSeccomp, Process};

    fn spec_with(f: impl FnOnce(&mut Process)) -> Spec {
        let mut s = Spec::default();
        f(s.process_mut().as_mut().unwrap());
        s
    }

    fn refused(s: &Spec) -> String {
        Security::from_oci(s).unwrap_err().to_string()
    }

    #[test]
    fn default_process() {
        let sec = Security::from_oci(&Spec::default()).unwrap();
        let three = (1 << 5) | (1 << 10) | (1 << 29);
        let all = CapSets {
            bounding: three,
            effective: three,
            permitted: three,
            inheritable: three,
            ambient: three,
        };
        assert_eq!(sec.caps, all);
        assert!(sec.no_new_privs);
        assert_eq!(
            sec.rlimits,
            [(libc::RLIMIT_NOFILE as libc::c_int, 1024, 1024)]
        );
        assert_eq!((sec.umask, sec.oom_score_adj), (None, None));
        let s = spec_with(|p| {
            p.set_capabilities(None);
        });
        assert_eq!(Security::from_oci(&s).unwrap().caps, CapSets::default());
        let s = spec_with(|p| {
            let c = LinuxCapabilitiesBuilder::default()
                .bounding(
                    [Capability::CheckpointRestore, Capability::Chown]
                        .into_iter()
                        .collect::<Capabilities>(),
                )
                .build()
                .unwrap();
            p.set_capabilities(Some(c));
            p.set_oom_score_adj(Some(-17));
        });
        let sec = Security::from_oci(&s).unwrap();
        assert_eq!(sec.caps.bounding, (1 << 40) | 1);
        assert_eq!(sec.oom_score_adj.as_deref(), Some(&b"-17"[..]));
    }

    #[test]
    fn the_init_gets_its_own_filter_only_when_the_command_is_filtered() {
        let filtered = Security {
            seccomp: Some(SeccompProgram {
                filter: vec![],
                flags: 0,
            }),
            no_new_privs: false,
            ..Security::default()
        };
        let init = filtered.for_init().unwrap();
        // Always set, so the init's filter is loaded after its capabilities are gone.
        assert!(init.no_new_privs);
        assert!(init.seccomp.unwrap().filter.len() > INIT_SYSCALLS.len());
        assert!(Security::default().for_init().unwrap().seccomp.is_none());
    }

    #[test]
    fn refusals() {
        assert!(refused(&spec_with(|p| {
            p.set_apparmor_profile(Some("x".into()));
        }))
        .starts_with("process.apparmorProfile"));
        assert!(refused(&spec_with(|p| {
            p.set_selinux_label(Some("x".into()));
        }))
        .starts_with("process.selinuxLabel"));
        assert!(refused(&spec_with(|p| {
            p.set_oom_score_adj(Some(1001));
        }))
        .starts_with("process.oomScoreAdj"));
        assert!(refused(&spec_with(|p| {
            p.user_mut().set_umask(Some(0o1000));
        }))
        .starts_with("process.user.umask"));
        let s = spec_with(|p| {
            let r = oci_spec::runtime::PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitCore)
                .soft(2u64)
                .hard(1u64)
                .build()
                .unwrap();
            p.set_rlimits(Some(vec![r]));
        });
        assert!(refused(&s).contains("soft limit above the hard limit"));
        let mut rule = oci_spec::runtime::LinuxSyscall::default();
        rule.set_names(vec!["fooo".into()]);
        let mut seccomp = LinuxSeccomp::default();
        seccomp.set_syscalls(Some(vec![rule]));
        let mut s = Spec::default();
        s.linux_mut().as_mut().unwrap().set_seccomp(Some(seccomp));
        assert!(
            refused(&s).contains("unknown syscall \"fooo\""),
            "{}",
            refused(&s)
        );
    }

    /// A hand-written filter: uname(2) fails with EPERM, everything else is allowed.
    fn deny_uname() -> Vec<libc::sock_filter> {
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let nr_offset = 0; // offsetof(struct seccomp_data, nr)
        vec![
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr_offset),
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_uname as u32,
            },
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ]
    }

    #[test]
    fn installs_a_real_filter_in_a_child() {
        let sec = Security {
            no_new_privs: true,
            seccomp: Some(SeccompProgram {
                filter: deny_uname(),
                flags: 0,
            }),
            ..Security::default()
        };
        // SAFETY: the child only makes system calls (prctl, seccomp, uname) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                Linux.prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).ok()?;
                load_seccomp_last(&Linux, &sec).ok()?;
                // SAFETY: `buf` is a local utsname the kernel would fill.
                let ret = unsafe {
                    let mut buf: libc::utsname = std::mem::zeroed();
                    libc::uname(&mut buf)
                };
                let errno = std::io::Error::last_os_error().raw_os_error();
                // getpid still works.
                // SAFETY: no arguments.
                let alive = unsafe { libc::getpid() } > 0;
                Some(if ret == -1 && errno == Some(libc::EPERM) && alive {
                    0
                } else {
                    2
                })
            })()
            .unwrap_or(3);
            // SAFETY: ends the forked child without running the test harness's handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
