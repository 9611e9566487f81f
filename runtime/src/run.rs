//! `moat run` from validated request to exit status: probe, state dir, VMM, agent, stdio,
//! teardown. Every exit path kills the VMM's process group and removes the state directory
//! (guards dropped in reverse order: raw mode, signals, VMM, state dir).

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::Duration;

use moat_protocol::{ErrorKind, ExitStatus, RootfsSpec, RunRequest, UpperLayer, VolumeSpec};
use oci_spec::runtime as oci;

use crate::assets::{AssetError, Assets};
use crate::boot::{self, BootError, Logs};
use crate::config::{ConfigError, RunConfig};
use crate::disks::{vm_disks, DiskError, VmDisks, DATA_ROOT};
use crate::session::{Event, Outcome, Session, SessionError, Stdio, EVENT_QUEUE};
use crate::signals::SignalForwarder;
use crate::state::{StateDir, StateError, STATE_ROOT};
use crate::terminal::{self, RawMode};
use crate::vmm::{self, JailSpec, VmSpec, VmmError, VmmProcess};
use moat_jail::cgroup::CgroupPath;
use moat_jail::uids::{UidError, UidSlot};
use moat_jail::{IdError, JailId};

/// Default time the guest gets to boot and connect.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Time the VM gets to power off after `Shutdown` before it is killed.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a VM whose agent vanished gets to exit by itself before it is killed.
const VM_END_GRACE: Duration = Duration::from_secs(1);

/// Exit status for errors of moat itself (docker's convention).
pub const EXIT_RUNTIME_ERROR: i32 = 125;

/// The guest device the image disk appears as (the first `--disk`).
const ROOT_DEVICE: &str = "/dev/vda";

/// Errors of a run. [`RunError::exit_code`] gives the status `moat run` exits with.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad user input.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An asset is missing.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// The VMM could not run.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The VM did not come up.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The conversation with the agent failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The kernel killed the VMM for a syscall outside its seccomp filter.
    #[error("VM {id}: moat-vmm was killed by its seccomp filter (SIGSYS); {hint}")]
    SeccompKilled {
        /// The VM (container) id.
        id: String,
        /// Where to look next.
        hint: String,
    },
    /// The VM ended while the container ran.
    #[error("VM ended before the container exited: {0}")]
    VmEnded(String),
    /// The agent could not start the process.
    #[error("{message}")]
    Agent {
        /// Its kind, which decides the exit status.
        kind: ErrorKind,
        /// The agent's message.
        message: String,
    },
    /// The disks (image, volumes, writable layer) could not be assembled.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A file in the state directory could not be created.
    #[error("cannot create {}", path.display())]
    CreateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The container id cannot name a jail.
    #[error(transparent)]
    JailId(#[from] IdError),
    /// The bundle's cgroup path cannot name a cgroup.
    #[error(transparent)]
    CgroupPath(#[from] moat_jail::cgroup::CgroupError),
    /// No unprivileged uid for the VM.
    #[error(transparent)]
    Uid(#[from] UidError),
    /// The terminal or the signal handlers could not be set up.
    #[error("cannot set up the terminal or signal handling")]
    Setup(#[source] std::io::Error),
    /// `MOAT_BOOT_TIMEOUT` is not a positive number of seconds.
    #[error("invalid MOAT_BOOT_TIMEOUT {0:?}: expected a positive number of seconds")]
    BadBootTimeout(String),
}

impl RunError {
    /// The exit status for this error: 126 not executable, 127 not found, 128+N for a signal
    /// that stopped the run before the container started, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Agent {
                kind: ErrorKind::NotFound,
                ..
            } => 127,
            Self::Agent {
                kind: ErrorKind::NotExecutable,
                ..
            } => 126,
            Self::Boot(BootError::Interrupted(signo)) => 128 + signo,
            _ => EXIT_RUNTIME_ERROR,
        }
    }
}

/// The shell-style status for how the container's process ended, kept within 0..=255.
pub fn exit_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code { code } => code & 0xff,
        ExitStatus::Signaled { signo } if (1..128).contains(&signo) => 128 + signo,
        ExitStatus::Signaled { .. } => EXIT_RUNTIME_ERROR,
    }
}

/// Settings of the runtime itself (not of the container).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeOptions {
    /// Parent of the state directories.
    pub state_root: PathBuf,
    /// Where data that outlives a process lives (the writable layers' disks).
    pub data_root: PathBuf,
    /// How long the guest gets to boot and connect.
    pub boot_timeout: Duration,
    /// Skip `moat-vmm probe` (only for tests of later failure paths).
    pub skip_probe: bool,
    /// Where to keep a copy of the console and VMM logs when the run ends (`MOAT_LOG_DIR`).
    pub log_dir: Option<PathBuf>,
    /// Run the VMM jailed (docs/jailer.md); off only with `moat run --no-jail`, for debugging.
    pub jail: bool,
    /// Where the cgroup hierarchies are mounted (the VM's cgroup is made under it).
    pub cgroup_root: PathBuf,
    /// Run the VMM under its seccomp filters; `false` only with `moat run --no-seccomp`.
    pub seccomp: bool,
    /// The host's one pool of VM uid slots, whatever the state root (`moat --root`, the OCI
    /// verbs' own root): two pools would hand two VMs the same uid.
    #[serde(default = "default_uid_slots")]
    pub uid_slots: PathBuf,
}

/// `/run/moat/.uids` (`.uids` cannot be a container id).
fn default_uid_slots() -> PathBuf {
    Path::new(STATE_ROOT).join(".uids")
}

impl RuntimeOptions {
    /// Defaults, with `MOAT_BOOT_TIMEOUT` (seconds) and `MOAT_SKIP_PROBE=1` applied.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, RunError> {
        let boot_timeout = match var("MOAT_BOOT_TIMEOUT") {
            None => DEFAULT_BOOT_TIMEOUT,
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or(RunError::BadBootTimeout(text))?,
        };
        Ok(Self {
            state_root: PathBuf::from(STATE_ROOT),
            data_root: var("MOAT_DATA_ROOT")
                .filter(|d| !d.is_empty())
                .map_or_else(|| PathBuf::from(DATA_ROOT), PathBuf::from),
            boot_timeout,
            skip_probe: var("MOAT_SKIP_PROBE").as_deref() == Some("1"),
            log_dir: var("MOAT_LOG_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            jail: true,
            cgroup_root: PathBuf::from(moat_jail::cgroup::DEFAULT_ROOT),
            seccomp: true,
            uid_slots: default_uid_slots(),
        })
    }
}

/// The agent's request for `config`, with the terminal size when it runs on one.
pub(crate) fn run_request(config: &RunConfig, upper: UpperLayer, size: (u16, u16)) -> RunRequest {
    let mut spec = config.spec.clone();
    if let Some(process) = spec.process_mut() {
        if config.tty {
            process.set_terminal(Some(true));
        }
        if process.terminal() == Some(true) {
            let (rows, cols) = size;
            let console = oci::BoxBuilder::default()
                .height(u64::from(rows))
                .width(u64::from(cols))
                .build();
            process.set_console_size(console.ok());
        }
    }
    let volumes = config
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| VolumeSpec {
            device: volume_device(i),
            fstype: "ext4".into(),
            readonly: v.readonly,
            mountpoint: volume_mountpoint(i),
            sectors: None,
            copy: false,
        })
        .collect();
    RunRequest {
        id: config.id.clone(),
        process: moat_protocol::MAIN_PROCESS,
        rootfs: RootfsSpec {
            device: ROOT_DEVICE.into(),
            fstype: "ext4".into(),
            upper,
            sectors: None,
        },
        volumes,
        spec,
    }
}

/// Where the agent mounts volume `index` in the guest (the source of its bind mount).
pub fn volume_mountpoint(index: usize) -> String {
    format!("{}/{index}", moat_protocol::VOLUMES_DIR)
}

pub use crate::disks::{volume_device, MAX_VOLUMES};

/// An OCI spec with only the process set (`args`, `env`, `cwd`, (uid, gid), and a terminal of
/// (rows, cols) when `terminal` is given): what the agent's host test mode runs (tests only).
pub fn basic_spec(
    args: &[String],
    env: &[String],
    cwd: &str,
    (uid, gid): (u32, u32),
    terminal: Option<(u16, u16)>,
) -> oci::Spec {
    let mut process = oci::Process::default();
    process.set_args(Some(args.to_vec()));
    process.set_env(Some(env.to_vec()));
    process.set_cwd(cwd.into());
    process.set_terminal(Some(terminal.is_some()));
    if let Some((rows, cols)) = terminal {
        let console = oci::BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build();
        process.set_console_size(console.ok());
    }
    let mut user = oci::User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    process.set_user(user);
    let mut spec = oci::Spec::default();
    spec.set_process(Some(process));
    spec.set_root(
        oci::RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .ok(),
    );
    // oci-spec's defaults (mounts, namespaces, hostname...) need the guest mode.
    spec.set_linux(None);
    spec.set_mounts(None);
    spec.set_hostname(None);
    spec
}

/// A started VM. Dropping it kills the VMM's process group and reaps it, removes its cgroup,
/// frees its uid slot, releases its volumes and removes its scratch disk, then removes the
/// state directory (fields drop in declaration order).
pub(crate) struct Vm {
    pub(crate) vmm: VmmProcess,
    _jail: Option<JailGuard>,
    pub(crate) disks: VmDisks,
    pub(crate) state: StateDir,
}

/// A jailed VM's host resources: its uid slot, and its cgroup (made by the VMM), removed once
/// the VMM is gone.
struct JailGuard {
    cgroup_root: PathBuf,
    cgroup: CgroupPath,
    slot: UidSlot,
}

impl Drop for JailGuard {
    fn drop(&mut self) {
        if let Err(e) = moat_jail::cgroup::remove(&self.cgroup_root, &self.cgroup) {
            tracing::warn!(error = %crate::error_chain(&e), "cannot remove the VM's cgroup");
        }
        tracing::debug!(slot = self.slot.index(), "uid slot freed");
    }
}

/// Takes a uid slot and lets the VM's uid connect to the agent listener.
fn jail_for(
    config: &RunConfig,
    options: &RuntimeOptions,
    state: &StateDir,
) -> Result<(JailGuard, JailSpec), RunError> {
    let id = JailId::new(&config.id)?;
    let cgroup = config.cgroup(&id)?;
    let slot = UidSlot::acquire(&options.uid_slots)?;
    let ids = slot.ids();
    let listener = state.agent_listener();
    let chown_err = |e: rustix::io::Errno| RunError::CreateFile {
        path: listener.clone(),
        source: e.into(),
    };
    rustix::fs::chown(
        &listener,
        Some(rustix::fs::Uid::from_raw(ids.uid)),
        Some(rustix::fs::Gid::from_raw(ids.gid)),
    )
    .map_err(chown_err)?;
    rustix::fs::chmod(&listener, rustix::fs::Mode::from_raw_mode(0o600)).map_err(chown_err)?;
    let spec = JailSpec {
        id: id.to_string(),
        uid: ids.uid,
        gid: ids.gid,
        base: options.state_root.clone(),
        cgroup_root: options.cgroup_root.clone(),
        cgroup_path: config.cgroup_path.clone(),
    };
    let guard = JailGuard {
        cgroup_root: options.cgroup_root.clone(),
        cgroup,
        slot,
    };
    Ok((guard, spec))
}

/// Probes KVM, creates the state directory, starts the VMM and waits for the agent's `Ready`.
fn boot_vm(
    config: &RunConfig,
    assets: &Assets,
    options: &RuntimeOptions,
    events: &Receiver<Event>,
) -> Result<(Vm, UnixStream), RunError> {
    if !options.skip_probe {
        vmm::probe(&assets.vmm)?;
        tracing::debug!("probe passed");
    }
    let state = StateDir::create(&options.state_root, &config.id, options.jail)?;
    boot_vm_in(state, config, assets, options, events)
}

/// [`boot_vm`] in a state directory the caller made (after the probe).
pub(crate) fn boot_vm_in(
    mut state: StateDir,
    config: &RunConfig,
    assets: &Assets,
    options: &RuntimeOptions,
    events: &Receiver<Event>,
) -> Result<(Vm, UnixStream), RunError> {
    if let Some(dir) = &options.log_dir {
        state.keep_logs_in(dir.clone());
    }
    let listener = boot::listen(&state.agent_listener())?;
    let vmm_log = state.vmm_log();
    let log = File::create(&vmm_log).map_err(|source| RunError::CreateFile {
        path: vmm_log.clone(),
        source,
    })?;
    // The VMM's names for its files: in its jail's root, or in the state directory.
    let vm_root = if options.jail {
        PathBuf::from("/")
    } else {
        state.vm_dir().to_owned()
    };
    let in_vm = |name: &str| vm_root.join(name);
    let (guard, jail, vsock_uds, console_log) = if options.jail {
        let (guard, spec) = jail_for(config, options, &state)?;
        let vsock = in_vm(moat_jail::layout::VSOCK);
        (
            Some(guard),
            Some(spec),
            vsock,
            in_vm(moat_jail::layout::CONSOLE_LOG),
        )
    } else {
        (None, None, state.vsock_uds(), state.console_log())
    };
    let disks = vm_disks(
        config,
        assets,
        &state,
        &options.data_root,
        &options.state_root,
    )?;
    let spec = VmSpec {
        kernel: assets.kernel.clone(),
        initramfs: assets.initramfs.clone(),
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        disks: disks.disks.clone(),
        disk_slots: config.disk_slots.into(),
        control_uds: (config.disk_slots > 0).then(|| in_vm(moat_jail::layout::CONTROL)),
        vsock_uds,
        console_log,
        jail,
        seccomp: options.seccomp,
    };
    let vm = Vm {
        vmm: VmmProcess::spawn(&assets.vmm, &spec.args()?, &log, options.jail)?,
        _jail: guard,
        disks,
        state,
    };
    let pid = vm.vmm.pid().as_raw_nonzero().get();
    let pid_file = vm.state.vmm_pid();
    std::fs::write(&pid_file, format!("{pid}\n")).map_err(|source| RunError::CreateFile {
        path: pid_file,
        source,
    })?;
    let console_log = vm.state.console_log();
    let logs = Logs {
        vmm_log: &vmm_log,
        console_log: &console_log,
    };
    tracing::debug!(pid, jailed = options.jail, "moat-vmm started");
    let stream = boot::wait_for_agent(listener, &vm.vmm, &logs, options.boot_timeout, events)?;
    tracing::debug!("agent ready");
    Ok((vm, stream))
}

/// Runs the container of `config` in a new microVM and returns its exit status.
pub fn run(
    config: &RunConfig,
    assets: &Assets,
    options: &RuntimeOptions,
    stdio: Stdio,
) -> Result<i32, RunError> {
    let (tx, events) = sync_channel(EVENT_QUEUE);
    // First, so that a Ctrl-C during the boot is ours and cleans up.
    let _signals = SignalForwarder::start(tx.clone()).map_err(RunError::Setup)?;
    let (mut vm, stream) = boot_vm(config, assets, options, &events).map_err(|e| match e {
        RunError::Boot(BootError::SeccompKilled) => seccomp_killed(config, options),
        e => e,
    })?;
    let raw = if config.tty && config.interactive {
        RawMode::enter().map_err(RunError::Setup)?
    } else {
        None
    };
    let size = terminal::window_size().unwrap_or(terminal::DEFAULT_SIZE);
    let mut session = Session::new(stream);
    let request = run_request(config, vm.disks.upper.clone(), size);
    let outcome = session.run(request, stdio, &events, &tx);
    tracing::debug!(?outcome, "container done");
    drop(raw);
    match outcome {
        Ok(Outcome::Exited(status)) => {
            let vmm_status = shut_down(&mut session, &mut vm.vmm);
            check_seccomp(vmm_status, config, options)?;
            Ok(exit_code(status))
        }
        Ok(Outcome::Failed { kind, message }) => {
            let vmm_status = shut_down(&mut session, &mut vm.vmm);
            check_seccomp(vmm_status, config, options)?;
            Err(RunError::Agent { kind, message })
        }
        Err(SessionError::Ended(reason)) => Err(vm_ended(&mut vm, reason, config, options)),
        Err(e) => {
            // The agent still ends the VM cleanly when it sees the host go: give it the time.
            let _ = shut_down(&mut session, &mut vm.vmm);
            Err(e.into())
        }
    }
}

/// The error for a VMM killed by its seccomp filter: one line with the VM id and where to look.
pub(crate) fn seccomp_killed(config: &RunConfig, options: &RuntimeOptions) -> RunError {
    let hint = match &options.log_dir {
        Some(dir) => format!("see {}", dir.join("vmm.log").display()),
        None => "the kernel log (dmesg, type=1326) names the syscall".to_owned(),
    };
    RunError::SeccompKilled {
        id: config.id.clone(),
        hint,
    }
}

/// Fails with [`RunError::SeccompKilled`] if the VMM ended by SIGSYS.
fn check_seccomp(
    status: Option<std::process::ExitStatus>,
    config: &RunConfig,
    options: &RuntimeOptions,
) -> Result<(), RunError> {
    match status {
        Some(status) if vmm::killed_by_seccomp(status) => Err(seccomp_killed(config, options)),
        _ => Ok(()),
    }
}

/// The error for a VM whose agent vanished while the container ran.
fn vm_ended(
    vm: &mut Vm,
    reason: Option<String>,
    config: &RunConfig,
    options: &RuntimeOptions,
) -> RunError {
    // A panicking or rebooting guest ends the VMM by itself; give it a moment so its console
    // log is complete, then make sure it is gone.
    let _ = vm.vmm.wait_timeout(VM_END_GRACE);
    if let Err(e) = check_seccomp(vm.vmm.kill_and_reap(), config, options) {
        return e;
    }
    let hint = crate::console::guest_hint(&vm.state.console_log())
        .or(reason.map(|r| crate::console::sanitize(&r)))
        .unwrap_or_else(|| "the guest gave no reason".to_owned());
    RunError::VmEnded(hint)
}

/// Asks the agent to power the VM off and waits for the VMM, killing it after
/// [`SHUTDOWN_TIMEOUT`]; returns how the VMM ended.
fn shut_down(session: &mut Session, vmm: &mut VmmProcess) -> Option<std::process::ExitStatus> {
    if let Err(e) = session.shutdown() {
        tracing::debug!(error = %e, "cannot send shutdown");
    }
    match vmm.wait_timeout(SHUTDOWN_TIMEOUT) {
        Ok(Some(status)) if status.success() || vmm::killed_by_seccomp(status) => {}
        Ok(Some(status)) => {
            tracing::warn!(status = %vmm::describe(status), "moat-vmm failed at shutdown")
        }
        Ok(None) => tracing::warn!("the VM did not power off in time; killing it"),
        Err(e) => tracing::warn!(error = %e, "cannot wait for moat-vmm"),
    }
    let status = vmm.kill_and_reap();
    tracing::debug!("moat-vmm gone");
    status
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
