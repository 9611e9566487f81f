//! `moat-vmm run --jail-id ID --uid U --gid G`: the privileged step before the VMM proper
//! (docs/jailer.md). [`plan`] validates everything without touching the host; [`ensure_pid1`]
//! makes sure the VMM is PID 1 of a fresh PID namespace; [`enter`] builds the jail root, joins
//! the VM's cgroup and pivots into it; after the VM is built, [`drop_privileges`] leaves nothing
//! but the VM's fds.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use moat_jail::cgroup::{self, Cgroup, CgroupError, CgroupPath, Limits};
use moat_jail::dir::{self, DirError, SourceKind};
use moat_jail::layout::{self, Layout, LayoutError};
use moat_jail::mounts::{self, Bind, MountError};
use moat_jail::privs::{self, Ids, PrivsError};
use moat_jail::{IdError, JailId};

use crate::config::{ConfigError, VmConfig};
use crate::devices::virtio::vsock::muxer::MAX_CONNECTIONS;

/// The host's KVM device.
const HOST_KVM: &str = "/dev/kvm";
/// Where `--stats` goes in the jail root.
const STATS: &str = "stats.json";
/// Fds beyond those open when privileges are dropped: vsock connections and pending clients.
const FD_HEADROOM: u64 =
    2 * MAX_CONNECTIONS as u64 + crate::control::MAX_CONNECTIONS as u64 + 1 + 16;
/// File size room beyond the console log's bound (the stats file, a last buffered line).
const MIN_FSIZE: u64 = 1 << 20;

/// Errors of the jail step.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    /// Bad `--jail-id`.
    #[error(transparent)]
    Id(#[from] IdError),
    /// Bad `--uid`/`--gid`, or the drop failed.
    #[error(transparent)]
    Privs(#[from] PrivsError),
    /// A path that must name a file in the jail root does not.
    #[error("with --jail-id, {flag} must name a file directly in the jail root (e.g. /{example}), got {}", path.display())]
    NotInJail {
        /// The flag.
        flag: &'static str,
        /// An example name.
        example: &'static str,
        /// What was given.
        path: PathBuf,
    },
    /// The VM configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The base or state directory.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A file to bind or a destination.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The mounts.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Namespaces or the fork into the fresh PID namespace.
    #[error("cannot {0}")]
    Namespace(&'static str, #[source] io::Error),
}

impl JailerError {
    /// Bad arguments (exit status 2) rather than a failure (1).
    pub fn is_bad_argument(&self) -> bool {
        matches!(
            self,
            Self::Id(_)
                | Self::Privs(PrivsError::Root { .. })
                | Self::NotInJail { .. }
                | Self::Config(_)
        )
    }
}

/// The jail flags of `moat-vmm run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailArgs {
    /// `--jail-id`.
    pub id: String,
    /// `--uid`.
    pub uid: u32,
    /// `--gid`.
    pub gid: u32,
    /// `--jail-base`.
    pub base: PathBuf,
    /// `--cgroup-root`.
    pub cgroup_root: PathBuf,
    /// `--cgroup-path`.
    pub cgroup_path: Option<String>,
}

/// A validated jail: what to bind where, and the VM configuration with jail-relative paths.
#[derive(Debug)]
pub struct Plan {
    layout: Layout,
    ids: Ids,
    cgroup_root: PathBuf,
    cgroup: CgroupPath,
    binds: Vec<Bind>,
    limits: Limits,
    /// The configuration to build the VM from, inside the jail.
    pub config: VmConfig,
}

/// `/name` or `name`, one plain component: the name.
fn jail_name(
    flag: &'static str,
    example: &'static str,
    path: &Path,
) -> Result<String, JailerError> {
    let mut parts = path.components().filter(|c| *c != Component::RootDir);
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) => Ok(name.to_string_lossy().into_owned()),
        _ => Err(JailerError::NotInJail {
            flag,
            example,
            path: path.to_owned(),
        }),
    }
}

/// Validates the jail and the VM's files without changing anything on the host.
pub fn plan(config: &VmConfig, args: &JailArgs) -> Result<Plan, JailerError> {
    let id = JailId::new(&args.id)?;
    let ids = Ids::new(args.uid, args.gid)?;
    config.validate()?;
    let mut jailed = config.clone();
    let mut binds = Vec::new();
    let mut add = |what: &str, source: &Path, name: String, read_only: bool| {
        binds.push((
            what.to_owned(),
            Bind {
                source: source.to_owned(),
                name: name.clone(),
                read_only,
                device: false,
            },
        ));
        PathBuf::from("/").join(name)
    };
    jailed.kernel = add("kernel", &config.kernel, layout::KERNEL.into(), true);
    jailed.initramfs = add(
        "initramfs",
        &config.initramfs,
        layout::INITRAMFS.into(),
        true,
    );
    for (i, (disk, jailed_disk)) in config.disks.iter().zip(&mut jailed.disks).enumerate() {
        jailed_disk.path = add("disk", &disk.path, layout::disk_name(i), disk.read_only);
    }
    let mut names: Vec<String> = vec![jail_name(
        "--console-log",
        layout::CONSOLE_LOG,
        &config.console_log,
    )?];
    jailed.console_log = PathBuf::from("/").join(&names[0]);
    if let (Some(v), Some(jv)) = (&config.vsock, &mut jailed.vsock) {
        names.push(jail_name("--vsock-uds", layout::VSOCK, &v.uds_path)?);
        jv.uds_path = PathBuf::from("/").join(names.last().expect("pushed"));
    }
    if let Some(control) = &config.control_uds {
        names.push(jail_name("--control-uds", layout::CONTROL, control)?);
        jailed.control_uds = Some(PathBuf::from("/").join(names.last().expect("pushed")));
    }
    if let Some(stats) = &config.stats {
        names.push(jail_name("--stats", STATS, stats)?);
        jailed.stats = Some(PathBuf::from("/").join(names.last().expect("pushed")));
    }
    layout::check_base(&args.base)?;
    let layout = Layout::new(&args.base, id);
    for (what, bind) in &binds {
        dir::check_source(what, &bind.source, SourceKind::File)?;
    }
    dir::check_source("kvm", Path::new(HOST_KVM), SourceKind::CharDevice)?;
    let mut binds: Vec<Bind> = binds.into_iter().map(|(_, b)| b).collect();
    binds.push(Bind {
        source: HOST_KVM.into(),
        name: layout::KVM.into(),
        read_only: false,
        device: true,
    });
    for name in binds.iter().map(|b| &b.name).chain(&names) {
        dir::check_destination(&layout.in_root(name))?;
    }
    let limits = Limits::for_vm(config.cpus, config.memory_mib);
    // A bundle's cgroup holds the container's OCI relays too.
    let (cgroup, limits) = match &args.cgroup_path {
        Some(path) => (CgroupPath::parse(path)?, limits.with_relays()),
        None => (CgroupPath::of_jail(layout.id()), limits),
    };
    Ok(Plan {
        limits,
        layout,
        ids,
        cgroup_root: args.cgroup_root.clone(),
        cgroup,
        binds,
        config: jailed,
    })
}

impl Plan {
    /// The uid and gid the VMM ends up with.
    pub fn ids(&self) -> Ids {
        self.ids
    }

    fn placeholders(&self) -> Vec<String> {
        self.binds.iter().map(|b| b.name.clone()).collect()
    }
}

/// Makes sure this process is PID 1 of a fresh PID namespace. The runtime starts `moat-vmm`
/// that way already. Started by hand, `moat-vmm` forks itself into a new PID namespace: the
/// child carries on (`None`); the parent only waits, removes the placeholders and the cgroup
/// once the child is gone, and returns the child's status (128 + N if killed by signal N).
pub fn ensure_pid1(plan: &Plan) -> Result<Option<ExitCode>, JailerError> {
    if rustix::process::getpid().is_init() {
        return Ok(None);
    }
    let state_existed = plan.layout.state_dir().exists();
    // SAFETY: plain flag argument; the process is still single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(JailerError::Namespace(
            "create a PID namespace",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: single-threaded, so the child may do anything the parent could.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailerError::Namespace("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: an integer prctl; if the parent already died we are adopted, not killed, but
        // the parent has nothing to do for us besides cleaning up.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        return Ok(None);
    }
    let mut status = 0;
    // SAFETY: waits for our own child; status points to a local.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    cleanup_after_hand_run(plan, state_existed);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Some(ExitCode::from(code as u8)))
}

fn cleanup_after_hand_run(plan: &Plan, state_existed: bool) {
    if let Err(e) = cgroup::remove(&plan.cgroup_root, &plan.cgroup) {
        tracing::warn!(error = %e, "cannot remove the cgroup");
    }
    dir::remove_placeholders(&plan.layout.root(), &plan.placeholders());
    if !state_existed {
        // Only if empty: a console log or socket the VM made is left for the user to read.
        let _ = std::fs::remove_dir(plan.layout.root());
        let _ = std::fs::remove_dir(plan.layout.state_dir());
    }
}

/// As PID 1 of a fresh PID namespace and root: new mount, network, IPC and UTS namespaces (if
/// not new already, unsharing again is harmless), the jail root with its placeholders, the
/// cgroup, the bind mounts and `pivot_root`. Afterwards `plan.config`'s paths are valid.
pub fn enter(plan: &Plan) -> Result<(), JailerError> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: plain flag argument; the process is single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(JailerError::Namespace(
            "create namespaces",
            io::Error::last_os_error(),
        ));
    }
    layout::ensure_dir(&plan.layout.state_dir(), 0o700)?;
    layout::ensure_dir(&plan.layout.root(), layout::ROOT_MODE)?;
    for bind in &plan.binds {
        dir::create_placeholder(&plan.layout.root(), &bind.name)?;
    }
    let cgroup = Cgroup::create(&plan.cgroup_root, &plan.cgroup, &plan.limits)?;
    cgroup.join_self()?;
    mounts::enter(&plan.layout.root(), &plan.binds)?;
    tracing::debug!(root = %plan.layout.root().display(), "entered the jail");
    Ok(())
}

/// After the VM is built, before any thread starts: rlimits sized to the VM, then the uid/gid,
/// no capabilities, `no_new_privs`.
pub fn drop_privileges(plan: &Plan) -> Result<(), JailerError> {
    let highest = privs::highest_open_fd(4096).unwrap_or(2);
    // A filled disk slot holds its swapped-in file beside its empty memfd.
    let nofile = highest as u64 + 1 + FD_HEADROOM + plan.config.disk_slots as u64;
    let rw_disks = plan.config.disks.iter().filter(|d| !d.read_only);
    let largest_rw_disk = rw_disks
        .filter_map(|d| std::fs::metadata(&d.path).ok().map(|m| m.len()))
        .max()
        .unwrap_or(0);
    let fsize = (plan.config.console_log_max + MIN_FSIZE).max(largest_rw_disk);
    privs::set_rlimits(nofile, fsize)?;
    privs::drop_privileges(plan.ids)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, VsockConfig, DEFAULT_CONSOLE_LOG_MAX};

    struct Tmp(PathBuf);

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(name: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("moat-jailer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["k", "i", "d0", "d1"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        Tmp(dir)
    }

    fn config(dir: &Path) -> VmConfig {
        VmConfig {
            kernel: dir.join("k"),
            initramfs: dir.join("i"),
            cpus: 2,
            memory_mib: 128,
            disks: vec![
                DiskConfig {
                    path: dir.join("d0"),
                    read_only: true,
                },
                DiskConfig {
                    path: dir.join("d1"),
                    read_only: false,
                },
            ],
            disk_slots: 0,
            control_uds: None,
            vsock: Some(VsockConfig {
                cid: 3,
                uds_path: "/vsock.sock".into(),
            }),
            console_log: "/console.log".into(),
            console_log_max: DEFAULT_CONSOLE_LOG_MAX,
            cmdline_extra: None,
            stats: Some("stats.json".into()),
            seccomp: true,
            violate_seccomp_in: None,
        }
    }

    fn args(dir: &Path, id: &str) -> JailArgs {
        JailArgs {
            id: id.into(),
            uid: 1_000_001,
            gid: 1_000_001,
            base: dir.join("base"),
            cgroup_root: dir.join("cgroup"),
            cgroup_path: None,
        }
    }

    #[test]
    fn jail_names_are_single_components() {
        assert_eq!(jail_name("f", "x", Path::new("/a.log")).unwrap(), "a.log");
        assert_eq!(jail_name("f", "x", Path::new("a.log")).unwrap(), "a.log");
        for bad in ["/a/b", "../a", "/", "", "/.."] {
            assert!(jail_name("f", "x", Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_plan_binds_host_files_and_rewrites_paths() {
        if !Path::new(HOST_KVM).exists() {
            return;
        }
        let t = tmp("plan");
        let plan = plan(&config(&t.0), &args(&t.0, "vm1")).unwrap();
        let c = &plan.config;
        assert_eq!(c.kernel, Path::new("/vmlinux"));
        assert_eq!(c.initramfs, Path::new("/initramfs"));
        assert_eq!(c.disks[0].path, Path::new("/disk0"));
        assert_eq!(c.disks[1].path, Path::new("/disk1"));
        assert_eq!(c.console_log, Path::new("/console.log"));
        assert_eq!(c.stats.as_deref(), Some(Path::new("/stats.json")));
        let binds: Vec<(&str, bool, bool)> = plan
            .binds
            .iter()
            .map(|b| (b.name.as_str(), b.read_only, b.device))
            .collect();
        assert_eq!(
            binds,
            [
                ("vmlinux", true, false),
                ("initramfs", true, false),
                ("disk0", true, false),
                ("disk1", false, false),
                ("dev/kvm", false, true)
            ]
        );
        assert_eq!(plan.limits, Limits::for_vm(2, 128));
        // Nothing was created but the base.
        assert!(!t.0.join("base/vm1").exists());
    }

    #[test]
    fn bad_jails_are_refused_before_anything_is_made() {
        let t = tmp("plan-bad");
        let err = plan(&config(&t.0), &args(&t.0, "../x")).unwrap_err();
        assert!(err.is_bad_argument(), "{err}");
        let mut c = config(&t.0);
        c.console_log = "/run/x.log".into();
        let err = plan(&c, &args(&t.0, "vm1")).unwrap_err();
        assert!(matches!(err, JailerError::NotInJail { .. }), "{err}");
        let mut c = config(&t.0);
        c.disks[1].path = t.0.join("missing");
        let err = plan(&c, &args(&t.0, "vm1")).unwrap_err();
        assert!(!err.is_bad_argument());
        assert!(err.to_string().ends_with("missing: not found"), "{err}");
        let root = t.0.join("base/vm1/root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("console.log"), b"old").unwrap();
        let err = plan(&config(&t.0), &args(&t.0, "vm1")).unwrap_err();
        assert!(
            matches!(err, JailerError::Dir(DirError::Exists(_))),
            "{err}"
        );
    }
}
