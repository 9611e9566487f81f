//! Syscall names: the x86_64 table (Linux 6.12) and names that exist only elsewhere.
//!
//! The x86_64 numbers come from the kernel's `arch/x86/entry/syscalls/syscall_64.tbl` as
//! installed in `asm/unistd_64.h`; numbers 336..=423 are unused on x86_64. Names in
//! [`OTHER_ARCHES`] are real syscalls of other architectures (32-bit ABIs, arm, s390, ppc, ...)
//! or newer than 6.12: a profile may list them (Docker's does) and they are skipped here.

/// x86_64 syscalls 0..=335, indexed by number.
const LOW: [&str; 336] = [
    "read", "write", "open", "close", "stat", "fstat",
    "lstat", "poll", "lseek", "mmap", "mprotect", "munmap",
    "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "ioctl", "pread64",
    "pwrite64", "readv", "writev", "access", "pipe", "select",
    "sched_yield", "mremap", "msync", "mincore", "madvise", "shmget",
    "shmat", "shmctl", "dup", "dup2", "pause", "nanosleep",
    "getitimer", "alarm", "setitimer", "getpid", "sendfile", "socket",
    "connect", "accept", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "shutdown", "bind", "listen", "getsockname", "getpeername", "socketpair",
    "setsockopt", "getsockopt", "clone", "fork", "vfork", "execve",
    "exit", "wait4", "kill", "uname", "semget", "semop",
    "semctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl",
    "fcntl", "flock", "fsync", "fdatasync", "truncate", "ftruncate",
    "getdents", "getcwd", "chdir", "fchdir", "rename", "mkdir",
    "rmdir", "creat", "link", "unlink", "symlink", "readlink",
    "chmod", "fchmod", "chown", "fchown", "lchown", "umask",
    "gettimeofday", "getrlimit", "getrusage", "sysinfo", "times", "ptrace",
    "getuid", "syslog", "getgid", "setuid", "setgid", "geteuid",
    "getegid", "setpgid", "getppid", "getpgrp", "setsid", "setreuid",
    "setregid", "getgroups", "setgroups", "setresuid", "getresuid", "setresgid",
    "getresgid", "getpgid", "setfsuid", "setfsgid", "getsid", "capget",
    "capset", "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_sigsuspend", "sigaltstack",
    "utime", "mknod", "uselib", "personality", "ustat", "statfs",
    "fstatfs", "sysfs", "getpriority", "setpriority", "sched_setparam", "sched_getparam",
    "sched_setscheduler", "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "mlock",
    "munlock", "mlockall", "munlockall", "vhangup", "modify_ldt", "pivot_root",
    "_sysctl", "prctl", "arch_prctl", "adjtimex", "setrlimit", "chroot",
    "sync", "acct", "settimeofday", "mount", "umount2", "swapon",
    "swapoff", "reboot", "sethostname", "setdomainname", "iopl", "ioperm",
    "create_module", "init_module", "delete_module", "get_kernel_syms", "query_module", "quotactl",
    "nfsservctl", "getpmsg", "putpmsg", "afs_syscall", "tuxcall", "security",
    "gettid", "readahead", "setxattr", "lsetxattr", "fsetxattr", "getxattr",
    "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr",
    "lremovexattr", "fremovexattr", "tkill", "time", "futex", "sched_setaffinity",
    "sched_getaffinity", "set_thread_area", "io_setup", "io_destroy", "io_getevents", "io_submit",
    "io_cancel", "get_thread_area", "lookup_dcookie", "epoll_create", "epoll_ctl_old", "epoll_wait_old",
    "remap_file_pages", "getdents64", "set_tid_address", "restart_syscall", "semtimedop", "fadvise64",
    "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete", "clock_settime",
    "clock_gettime", "clock_getres", "clock_nanosleep", "exit_group", "epoll_wait", "epoll_ctl",
    "tgkill", "utimes", "vserver", "mbind", "set_mempolicy", "get_mempolicy",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "kexec_load", "waitid", "add_key", "request_key", "keyctl", "ioprio_set",
    "ioprio_get", "inotify_init", "inotify_add_watch", "inotify_rm_watch", "migrate_pages", "openat",
    "mkdirat", "mknodat", "fchownat", "futimesat", "newfstatat", "unlinkat",
    "renameat", "linkat", "symlinkat", "readlinkat", "fchmodat", "faccessat",
    "pselect6", "ppoll", "unshare", "set_robust_list", "get_robust_list", "splice",
    "tee", "sync_file_range", "vmsplice", "move_pages", "utimensat", "epoll_pwait",
    "signalfd", "timerfd_create", "eventfd", "fallocate", "timerfd_settime", "timerfd_gettime",
    "accept4", "signalfd4", "eventfd2", "epoll_create1", "dup3", "pipe2",
    "inotify_init1", "preadv", "pwritev", "rt_tgsigqueueinfo", "perf_event_open", "recvmmsg",
    "fanotify_init", "fanotify_mark", "prlimit64", "name_to_handle_at", "open_by_handle_at", "clock_adjtime",
    "syncfs", "sendmmsg", "setns", "getcpu", "process_vm_readv", "process_vm_writev",
    "kcmp", "finit_module", "sched_setattr", "sched_getattr", "renameat2", "seccomp",
    "getrandom", "memfd_create", "kexec_file_load", "bpf", "execveat", "userfaultfd",
    "membarrier", "mlock2", "copy_file_range", "preadv2", "pwritev2", "pkey_mprotect",
    "pkey_alloc", "pkey_free", "statx", "io_pgetevents", "rseq", "uretprobe",
];

/// The first number of [`HIGH`].
const HIGH_BASE: u32 = 424;

/// x86_64 syscalls 424..=462, indexed by number minus [`HIGH_BASE`].
const HIGH: [&str; 39] = [
    "pidfd_send_signal", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "pidfd_open", "clone3",
    "close_range", "openat2", "pidfd_getfd", "faccessat2", "process_madvise", "epoll_pwait2",
    "mount_setattr", "quotactl_fd", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self", "memfd_secret",
    "process_mrelease", "futex_waitv", "set_mempolicy_home_node", "cachestat", "fchmodat2", "map_shadow_stack",
    "futex_wake", "futex_wait", "futex_requeue", "statmount", "listmount", "lsm_get_self_attr",
    "lsm_set_self_attr", "lsm_list_modules", "mseal",
];

/// Syscalls of other architectures (or of kernels newer than 6.12) that x86_64 6.12 lacks.
const OTHER_ARCHES: &[&str] = &[
    "_llseek", "_newselect", "arm_fadvise64_64", "arm_sync_file_range", "atomic_barrier", "atomic_cmpxchg_32",
    "bdflush", "break", "breakpoint", "cachectl", "cacheflush", "chown32",
    "clock_adjtime64", "clock_getres_time64", "clock_gettime64", "clock_nanosleep_time64", "clock_settime64", "fadvise64_64",
    "fchown32", "fcntl64", "file_getattr", "file_setattr", "fstat64", "fstatat64",
    "fstatfs64", "ftime", "ftruncate64", "futex_time64", "get_tls", "getegid32",
    "geteuid32", "getgid32", "getgroups32", "getresgid32", "getresuid32", "getuid32",
    "getxattrat", "gtty", "idle", "io_pgetevents_time64", "ipc", "lchown32",
    "listxattrat", "lock", "lstat64", "memory_ordering", "mmap2", "mpx",
    "mq_timedreceive_time64", "mq_timedsend_time64", "multiplexer", "nice", "oldfstat", "oldlstat",
    "oldolduname", "oldstat", "olduname", "open_tree_attr", "or1k_atomic", "pciconfig_iobase",
    "pciconfig_read", "pciconfig_write", "ppoll_time64", "prof", "profil", "pselect6_time64",
    "readdir", "recv", "recvmmsg_time64", "removexattrat", "riscv_flush_icache", "riscv_hwprobe",
    "rt_sigtimedwait_time64", "rtas", "s390_guarded_storage", "s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr",
    "s390_sthyi", "sched_rr_get_interval_time64", "semtimedop_time64", "send", "sendfile64", "set_tls",
    "setfsgid32", "setfsuid32", "setgid32", "setgroups32", "setregid32", "setresgid32",
    "setresuid32", "setreuid32", "setuid32", "setxattrat", "sgetmask", "sigaction",
    "signal", "sigpending", "sigprocmask", "sigreturn", "sigsuspend", "socketcall",
    "spu_create", "spu_run", "ssetmask", "stat64", "statfs64", "stime",
    "stty", "subpage_prot", "swapcontext", "switch_endian", "sync_file_range2", "sys_debug_setcontext",
    "sysmips", "timer_gettime64", "timer_settime64", "timerfd_gettime64", "timerfd_settime64", "truncate64",
    "ugetrlimit", "ulimit", "umount", "utimensat_time64", "vm86", "vm86old",
    "waitpid",
];

/// The x86_64 number of syscall `name`, if x86_64 (Linux 6.12) has it.
pub fn syscall_number(name: &str) -> Option<u32> {
    if let Some(nr) = LOW.iter().position(|n| *n == name) {
        return u32::try_from(nr).ok();
    }
    let nr = HIGH.iter().position(|n| *n == name)?;
    u32::try_from(nr).ok().map(|nr| nr + HIGH_BASE)
}

/// The name of x86_64 syscall `nr`.
#[cfg(test)]
pub(crate) fn name_of(nr: u32) -> Option<&'static str> {
    let nr = usize::try_from(nr).ok()?;
    let base = usize::try_from(HIGH_BASE).ok()?;
    LOW.get(nr).or_else(|| HIGH.get(nr.checked_sub(base)?)).copied()
}

/// Whether `name` is a syscall of some other architecture only (skipped, not an error).
pub fn is_foreign_syscall(name: &str) -> bool {
    OTHER_ARCHES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("getppid"), Some(110));
        assert_eq!(syscall_number("uretprobe"), Some(335));
        assert_eq!(syscall_number("pidfd_send_signal"), Some(424));
        assert_eq!(syscall_number("clone3"), Some(435));
        assert_eq!(syscall_number("mseal"), Some(462));
        assert_eq!(syscall_number("fooo"), None);
        assert_eq!(syscall_number("socketcall"), None);
    }

    #[test]
    fn tables_do_not_overlap() {
        for name in OTHER_ARCHES {
            assert_eq!(syscall_number(name), None, "{name}");
        }
        assert!(is_foreign_syscall("socketcall"));
        assert!(!is_foreign_syscall("read"));
    }
}
