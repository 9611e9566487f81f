//! The `moat-vmm` binary: `moat-vmm run ...` boots a microVM, `moat-vmm probe` checks that this
//! host's KVM runs guest kernel code natively.
//!
//! Exit status of `run`: 0 the guest reset or powered off; 1 VMM error; 2 bad arguments;
//! 3 triple fault; 4 KVM internal error or failed entry.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use moat_vmm::builder::{self, BuildError};
use moat_vmm::config::{DiskConfig, VmConfig, VsockConfig, DEFAULT_CONSOLE_LOG_MAX};
use moat_vmm::jailer::{self, JailArgs, Plan};
#[cfg(feature = "test-hooks")]
use moat_vmm::seccomp::ThreadKind;
use moat_vmm::vstate::vcpu::VmExit;
use moat_vmm::{error_line, probe};

#[derive(Parser, Debug)]
#[command(name = "moat-vmm", version, about = "moat's KVM microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a microVM and run it until the guest resets or powers off.
    Run(Box<RunArgs>),
    /// Check that KVM runs guest kernel code natively (exit 0) or explain why not (exit 1).
    Probe,
}

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("jail").required(true).args(["jail_id", "no_jail"])))]
struct RunArgs {
    /// Run jailed (docs/jailer.md) as this id: the jail root is <jail-base>/<ID>/root.
    #[arg(long, value_name = "ID", requires_all = ["uid", "gid"])]
    jail_id: Option<String>,
    /// The unprivileged uid the jailed VMM runs as.
    #[arg(long, requires = "jail_id")]
    uid: Option<u32>,
    /// The unprivileged gid the jailed VMM runs as.
    #[arg(long, requires = "jail_id")]
    gid: Option<u32>,
    /// Parent of the jail directories (root-owned, mode 0700).
    #[arg(long, value_name = "DIR", default_value = moat_jail::layout::DEFAULT_BASE)]
    jail_base: PathBuf,
    /// Where the cgroup hierarchies are mounted.
    #[arg(long, value_name = "DIR", default_value = moat_jail::cgroup::DEFAULT_ROOT)]
    cgroup_root: PathBuf,
    /// The VM's cgroup relative to the root (an OCI bundle's linux.cgroupsPath; default
    /// moat/<jail id>)
    #[arg(long, value_name = "PATH", requires = "jail_id")]
    cgroup_path: Option<String>,
    /// Debugging only: run without the jail (a warning is printed).
    #[arg(long)]
    no_jail: bool,
    /// ELF vmlinux.
    #[arg(long)]
    kernel: PathBuf,
    /// initramfs (newc cpio).
    #[arg(long)]
    initramfs: PathBuf,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    cpus: u64,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: u64,
    /// A virtio-blk disk, PATH or PATH,ro; repeat for /dev/vda, /dev/vdb, ...
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskConfig>,
    /// Read-only virtio-blk disk slots after the --disk ones, empty until a backing file is
    /// swapped in through --control-uds (docs/vmm-control.md).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "control_uds")]
    disk_slots: usize,
    /// The control socket: a Unix socket path the VMM listens on (disk swaps).
    #[arg(long, value_name = "PATH")]
    control_uds: Option<PathBuf>,
    /// Host side of the virtio-vsock device: a Unix socket path.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[arg(long, default_value_t = moat_vmm::config::DEFAULT_VSOCK_CID, requires = "vsock_uds")]
    vsock_cid: u64,
    /// File receiving the serial console.
    #[arg(long)]
    console_log: PathBuf,
    /// Bytes kept in the console log; later output is dropped.
    #[arg(long, default_value_t = DEFAULT_CONSOLE_LOG_MAX)]
    console_log_max: u64,
    /// Appended to the kernel command line.
    #[arg(long)]
    cmdline_extra: Option<String>,
    /// Write VM-exit counts as JSON to this file when the VM ends.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// DEBUG ONLY: run without the seccomp filters (prints a warning).
    #[arg(long)]
    no_seccomp: bool,
    /// Test hook: the thread of this kind (main, event-loop, vcpu) makes a syscall outside its
    /// filter once every filter is loaded, so the process is killed with SIGSYS.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, value_name = "KIND")]
    test_violate_seccomp: Option<ThreadKind>,
}

impl RunArgs {
    /// The jail flags, `None` with `--no-jail`.
    fn jail(&self) -> Option<JailArgs> {
        Some(JailArgs {
            id: self.jail_id.clone()?,
            uid: self.uid?,
            gid: self.gid?,
            base: self.jail_base.clone(),
            cgroup_root: self.cgroup_root.clone(),
            cgroup_path: self.cgroup_path.clone(),
        })
    }

    fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            initramfs: self.initramfs,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disks: self.disks,
            disk_slots: self.disk_slots,
            control_uds: self.control_uds,
            vsock: self.vsock_uds.map(|uds_path| VsockConfig {
                cid: self.vsock_cid,
                uds_path,
            }),
            console_log: self.console_log,
            console_log_max: self.console_log_max,
            cmdline_extra: self.cmdline_extra,
            stats: self.stats,
            seccomp: !self.no_seccomp,
            #[cfg(feature = "test-hooks")]
            violate_seccomp_in: self.test_violate_seccomp,
            #[cfg(not(feature = "test-hooks"))]
            violate_seccomp_in: None,
        }
    }
}

/// clap's message up to its usage section, on one line.
fn clap_one_line(text: &str) -> String {
    let words: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = words.join(" ");
    line.trim_start_matches("error: ").to_string()
}

fn fail(status: u8, message: &str) -> ExitCode {
    eprintln!("moat-vmm: {message}");
    ExitCode::from(status)
}

fn run(args: RunArgs) -> ExitCode {
    let jail = args.jail();
    let config = args.into_config();
    if !config.seccomp {
        eprintln!("moat-vmm: warning: --no-seccomp: the seccomp filters are OFF (debugging only)");
    }
    match jail {
        Some(jail) => run_jailed(&config, &jail),
        None => {
            eprintln!("moat-vmm: warning: --no-jail: the VMM runs as root on the host, unconfined (debugging only)");
            run_vm(&config, None)
        }
    }
}

fn run_jailed(config: &VmConfig, jail: &JailArgs) -> ExitCode {
    let jail_fail = |e: jailer::JailerError| {
        let status = if e.is_bad_argument() { 2 } else { 1 };
        fail(status, &error_line(&e))
    };
    let plan = match jailer::plan(config, jail) {
        Ok(plan) => plan,
        Err(e) => return jail_fail(e),
    };
    match jailer::ensure_pid1(&plan) {
        Ok(Some(parent_status)) => return parent_status,
        Ok(None) => {}
        Err(e) => return jail_fail(e),
    }
    if let Err(e) = jailer::enter(&plan) {
        return jail_fail(e);
    }
    run_vm(&plan.config, Some(&plan))
}

fn run_vm(config: &VmConfig, jail: Option<&Plan>) -> ExitCode {
    let vm = match builder::build(config) {
        Ok(vm) => vm,
        Err(e @ BuildError::Config(_)) => return fail(2, &error_line(&e)),
        Err(e) => return fail(1, &error_line(&e)),
    };
    if let Some(plan) = jail {
        if let Err(e) = jailer::drop_privileges(plan) {
            return fail(1, &error_line(&e));
        }
        tracing::debug!(ids = ?plan.ids(), "privileges dropped");
    }
    tracing::debug!(cmdline = vm.cmdline(), "starting the vm");
    let exit = match vm.run() {
        Ok(exit) => exit,
        Err(e) => return fail(1, &error_line(&e)),
    };
    match &exit {
        VmExit::VmmError(message) => return fail(1, message),
        VmExit::TripleFault => tracing::warn!("the guest triple-faulted"),
        VmExit::InternalError(code) => tracing::warn!(code, "kvm internal error"),
        VmExit::FailEntry(reason) => tracing::warn!(reason, "kvm failed to enter the guest"),
        VmExit::Reset | VmExit::Halted => tracing::debug!(?exit, "the guest stopped"),
    }
    ExitCode::from(exit.status() as u8)
}

fn run_probe() -> ExitCode {
    match probe::run_probe() {
        Ok(result) if result.native() => {
            println!("moat-vmm: {}", probe::native_message(&result));
            ExitCode::SUCCESS
        }
        Ok(result) => fail(1, &probe::emulated_message(&result)),
        Err(e) => fail(1, &error_line(&e)),
    }
}

fn main() -> ExitCode {
    // SAFETY: first thing: nothing in this process owns an fd above stderr yet.
    if let Err(e) = unsafe { moat_jail::privs::close_inherited_fds() } {
        return fail(1, &error_line(&e));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // The VMM log is a file: no colour codes in it.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // After the subscriber (its warning must be seen), before any other thread exists.
    moat_vmm::seccomp::prepare_process();
    // Before any thread too: they inherit SIGUSR1 blocked, and an early one waits for a vCPU.
    if let Err(e) = moat_vmm::vstate::vcpu::prepare_dump_signal() {
        return fail(1, &format!("cannot install the SIGUSR1 handler: {e}"));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return fail(
                2,
                "missing command: `moat-vmm run ...` or `moat-vmm probe` (see --help)",
            );
        }
        Err(e) => return fail(2, &clap_one_line(&e.to_string())),
    };
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Probe => run_probe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fit_one_line() {
        let err = Cli::try_parse_from(["moat-vmm", "run", "--vsock-cid", "7"]).unwrap_err();
        let line = clap_one_line(&err.to_string());
        assert!(line.starts_with("the following required arguments were not provided: --kernel"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn run_arguments() {
        let args = parse(&[
            "--no-jail",
            "--disk",
            "a.img,ro",
            "--disk",
            "b.img",
            "--vsock-uds",
            "v",
        ])
        .unwrap();
        let config = args.into_config();
        assert_eq!(config.cpus, 1);
        assert_eq!(config.disks.len(), 2);
        assert!(config.disks[0].read_only && !config.disks[1].read_only);
        assert_eq!(config.vsock.unwrap().cid, 3);
        assert_eq!(config.console_log_max, DEFAULT_CONSOLE_LOG_MAX);
        assert!(Cli::try_parse_from(["moat-vmm", "run", "--cpus", "x"]).is_err());
    }

    fn parse(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec![
            "moat-vmm",
            "run",
            "--kernel",
            "k",
            "--initramfs",
            "i",
            "--memory-mib",
            "128",
            "--console-log",
            "/console.log",
        ];
        argv.extend_from_slice(extra);
        let Command::Run(args) = Cli::try_parse_from(argv)?.command else {
            panic!("not run")
        };
        Ok(*args)
    }

    #[test]
    fn the_jail_is_asked_for_or_explicitly_refused() {
        assert!(parse(&[]).is_err(), "neither --jail-id nor --no-jail");
        assert!(parse(&["--no-jail"]).unwrap().jail().is_none());
        assert!(parse(&["--jail-id", "a"]).is_err(), "no --uid/--gid");
        assert!(parse(&["--no-jail", "--jail-id", "a", "--uid", "1", "--gid", "1"]).is_err());
        let jail = parse(&["--jail-id", "a", "--uid", "5", "--gid", "6"])
            .unwrap()
            .jail()
            .unwrap();
        assert_eq!((jail.id.as_str(), jail.uid, jail.gid), ("a", 5, 6));
        assert_eq!(jail.base, PathBuf::from("/run/moat"));
        assert_eq!(jail.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
    }
}
