//! `moat run`'s flags (docker's names and meanings) and their translation into a run request:
//! an OCI spec (moat-spec), the volumes, and the VM's size.

use std::path::PathBuf;

use clap::Args;
use moat_images::config as image;
use moat_runtime::assets::DEFAULT_IMAGE;
use moat_runtime::config::{
    self, build_env, check_args, memory_mib, parse_env, parse_hostname, parse_name, parse_user,
    parse_vm_cpus, parse_vm_memory, parse_workdir, AssetOverrides, ConfigError, EnvArg, Rootfs,
    RunConfig, User, MAX_CPUS,
};
use moat_runtime::disks::{parse_storage_opt, DEFAULT_STORAGE_BYTES};
use moat_runtime::host;
use moat_runtime::run::MAX_VOLUMES;
use moat_runtime::volumes::{check_volume, resolve_device, Volume};
use moat_spec::parse::{
    parse_blkio_weight, parse_capability, parse_cpu_period, parse_cpu_quota, parse_cpu_shares,
    parse_device, parse_memory, parse_memory_reservation, parse_pids_limit, parse_security_opt,
    parse_swap, parse_sysctl, parse_throttle_bps, parse_throttle_iops, parse_tmpfs, parse_ulimit,
    parse_userns, parse_volume, CapName, DeviceArg, SecurityOpt, Throttle, TmpfsArg, VolumeArg,
};
use moat_spec::{BindMount, CpuLimit, Limits, RunOptions, SpecError};
use oci_spec::runtime::{PosixRlimit, Spec};

use crate::seccomp::{seccomp_for, SeccompChoice};

/// The flags that shape the spec: `--bundle` runs its config.json as is, so it takes none.
const SPEC_FLAGS: [&str; 33] = [
    "env",
    "entrypoint",
    "workdir",
    "user",
    "hostname",
    "read_only",
    "tmpfs",
    "volume",
    "cap_add",
    "cap_drop",
    "security_opt",
    "privileged",
    "memory",
    "memory_swap",
    "memory_reservation",
    "cpus",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpuset_cpus",
    "pids_limit",
    "blkio_weight",
    "device_read_bps",
    "device_write_bps",
    "device_read_iops",
    "device_write_iops",
    "ulimit",
    "userns",
    "sysctl",
    "device",
    "image",
    "args",
    "command",
];

#[derive(Debug, Args)]
#[command(next_help_heading = "Container")]
pub struct RunArgs {
    /// Set an environment variable (KEY alone copies it from this environment)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvArg>,
    /// Working directory inside the container (default /)
    #[arg(short = 'w', long, value_name = "DIR", value_parser = parse_workdir,
          allow_hyphen_values = true)]
    pub workdir: Option<String>,
    /// Keep stdin open and forward it to the container
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Remove the container when it exits (always so without -d)
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub life: crate::lifecycle::LifeArgs,
    /// Container name, also its id (default: random)
    #[arg(long, value_name = "NAME", value_parser = parse_name, allow_hyphen_values = true)]
    pub name: Option<String>,
    /// User and group to run as, names or ids (names are looked up in the image's /etc/passwd
    /// and /etc/group)
    #[arg(short = 'u', long, value_name = "USER[:GROUP]", value_parser = parse_user,
          allow_hyphen_values = true)]
    pub user: Option<User>,
    /// Run this program instead of the image's entrypoint ("" for none); the image's default
    /// command is then dropped too
    #[arg(long, value_name = "CMD", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Hostname of the container (default: the container id)
    #[arg(long, value_name = "NAME", value_parser = parse_hostname, allow_hyphen_values = true)]
    pub hostname: Option<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// Mount a tmpfs (options: size=64m, mode=1777, ...)
    #[arg(long, value_name = "DST[:OPTIONS]", value_parser = parse_tmpfs)]
    pub tmpfs: Vec<TmpfsArg>,
    /// Attach a volume: an ext4 image file, a directory with :ro (a snapshot), or another file
    /// (copied in at start)
    #[arg(short = 'v', long, value_name = "SRC:DST[:ro|rw]", value_parser = parse_volume)]
    pub volume: Vec<VolumeArg>,
    /// Add a capability (NAME, CAP_NAME or ALL)
    #[arg(long, value_name = "CAP", value_parser = parse_capability)]
    pub cap_add: Vec<CapName>,
    /// Drop a capability (NAME, CAP_NAME or ALL)
    #[arg(long, value_name = "CAP", value_parser = parse_capability)]
    pub cap_drop: Vec<CapName>,
    /// seccomp=FILE|unconfined, no-new-privileges[=true|false]
    #[arg(long, value_name = "OPT", value_parser = parse_security_opt)]
    pub security_opt: Vec<SecurityOpt>,
    /// All capabilities, every device of the VM, no seccomp, writable /sys: privileged inside its
    /// VM only
    #[arg(long)]
    pub privileged: bool,
    /// Memory limit of the container, at least 6m, e.g. 512m (the VM gets this plus 96m, at least
    /// 256m)
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_memory,
          allow_hyphen_values = true)]
    pub memory: Option<u64>,
    /// Memory plus swap limit, at least --memory (-1: unlimited swap)
    #[arg(long, value_name = "SIZE", value_parser = parse_swap, allow_hyphen_values = true)]
    pub memory_swap: Option<i64>,
    /// Memory soft limit, at least 6m and at most --memory
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_reservation,
          allow_hyphen_values = true)]
    pub memory_reservation: Option<u64>,
    /// CPU limit of the container, 0.01 to the host's CPUs, e.g. 0.5 (the VM gets enough vCPUs)
    #[arg(long, value_name = "N", value_parser = host::parse_cpus, allow_hyphen_values = true)]
    pub cpus: Option<u64>,
    /// CPU weight (relative to other containers: none in moat's one-container VMs)
    #[arg(long, value_name = "N", value_parser = parse_cpu_shares, allow_hyphen_values = true)]
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per period
    #[arg(long, value_name = "US", value_parser = parse_cpu_quota, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds
    #[arg(long, value_name = "US", value_parser = parse_cpu_period, allow_hyphen_values = true)]
    pub cpu_period: Option<u64>,
    /// CPUs the container may use, e.g. 0-1: CPUs the host has (the VM gets enough vCPUs)
    #[arg(long, value_name = "LIST", value_parser = host::parse_cpuset)]
    pub cpuset_cpus: Option<(String, u32)>,
    /// Most processes (-1: unlimited)
    #[arg(long, value_name = "N", value_parser = parse_pids_limit, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight, 10 to 1000
    #[arg(long, value_name = "N", value_parser = parse_blkio_weight, allow_hyphen_values = true)]
    pub blkio_weight: Option<u16>,
    /// Read rate limit of a guest disk (/dev/vda: the image, /dev/vdb...: volumes)
    #[arg(long, value_name = "PATH:RATE", value_parser = parse_throttle_bps)]
    pub device_read_bps: Vec<Throttle>,
    /// Write rate limit of a guest disk
    #[arg(long, value_name = "PATH:RATE", value_parser = parse_throttle_bps)]
    pub device_write_bps: Vec<Throttle>,
    /// Read operations per second limit of a guest disk
    #[arg(long, value_name = "PATH:N", value_parser = parse_throttle_iops)]
    pub device_read_iops: Vec<Throttle>,
    /// Write operations per second limit of a guest disk
    #[arg(long, value_name = "PATH:N", value_parser = parse_throttle_iops)]
    pub device_write_iops: Vec<Throttle>,
    /// Resource limit, e.g. nofile=1024:2048
    #[arg(long, value_name = "NAME=SOFT[:HARD]", value_parser = parse_ulimit)]
    pub ulimit: Vec<PosixRlimit>,
    /// User namespace: remap (container root = guest uid 100000) or host (none, the default)
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true,
          default_missing_value = "remap", value_parser = parse_userns)]
    pub userns: Option<bool>,
    /// Namespaced kernel parameter (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_sysctl)]
    pub sysctl: Vec<(String, String)>,
    /// Make a device node in the container
    #[arg(long, value_name = "HOST[:CONTAINER[:rwm]]", value_parser = parse_device)]
    pub device: Vec<DeviceArg>,
    /// Writable layer: size=SIZE (default 10g; a sparse disk on the host, removed with the run)
    #[arg(long, value_name = "size=SIZE", value_parser = parse_storage_opt)]
    pub storage_opt: Vec<u64>,
    /// Run an OCI bundle (config.json and its root directory) as is, instead of IMAGE and CMD
    #[arg(long, value_name = "DIR", conflicts_with_all = SPEC_FLAGS)]
    pub bundle: Option<PathBuf>,
    /// vCPUs of the VM (default: enough for --cpus / --cpuset-cpus, at least 1)
    #[arg(long, value_name = "N", value_parser = parse_vm_cpus, help_heading = "VM",
          allow_hyphen_values = true)]
    pub vm_cpus: Option<u8>,
    /// Memory of the VM (default: --memory + 96m, at least 256m)
    #[arg(long, value_name = "SIZE", value_parser = parse_vm_memory, help_heading = "VM",
          allow_hyphen_values = true)]
    pub vm_memory: Option<u64>,
    /// Empty disk slots for a pod's later containers (the containerd shim's pod sandboxes)
    #[arg(long, value_name = "N", hide = true, default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=16))]
    pub disk_slots: u8,
    /// A pod's later container (the containerd shim's): its namespace paths are the pod's
    #[arg(long, hide = true)]
    pub pod_member: bool,
    /// Guest kernel to boot (overrides MOAT_KERNEL)
    #[arg(long, value_name = "PATH", help_heading = "VM")]
    pub kernel: Option<PathBuf>,
    /// Initramfs with the guest agent (overrides MOAT_INITRAMFS)
    #[arg(long, value_name = "PATH", help_heading = "VM")]
    pub initramfs: Option<PathBuf>,
    /// Debugging only: run the VMM without its jail (as root, in the host's namespaces)
    #[arg(long, help_heading = "VM")]
    pub no_jail: bool,
    /// Debugging only: run the VMM without its seccomp filters
    #[arg(long, help_heading = "VM")]
    pub no_seccomp: bool,
    /// Pull the image first: always, missing (when it is not stored; default), never
    #[arg(long, value_enum, default_value_t = crate::run_image::PullPolicy::Missing,
          value_name = "POLICY")]
    pub pull: crate::run_image::PullPolicy,
    /// How to reach the image's registry (with --pull)
    #[command(flatten)]
    pub registry: crate::images::RegistryArgs,
    /// Image to run (built-in: busybox)
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// Command and arguments (default: sh); also accepted after `--`
    #[arg(value_name = "CMD", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Command and arguments after `--` (needed when no IMAGE is given)
    #[arg(value_name = "CMD", last = true, hide = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    /// Validates the flags into a run request (things clap's value parsers cannot check alone).
    /// Nothing is created on the host.
    #[cfg(test)]
    pub fn into_config(self) -> Result<RunConfig, ConfigError> {
        self.into_config_with(None)
    }

    /// [`RunArgs::into_config`] for an image with this config (`None`: the built-in image).
    pub fn into_config_with(
        self,
        image: Option<&image::ImageConfig>,
    ) -> Result<RunConfig, ConfigError> {
        let id = self.name.clone().unwrap_or_else(config::random_id);
        let mut bundle_host = crate::bundle_host::Host::default();
        let (rootfs, spec, volumes, sizing) = match &self.bundle {
            // Validated against its directory by load_bundle.
            Some(dir) => {
                let bundle = moat_spec::load_bundle(dir).map_err(|source| ConfigError::Bundle {
                    dir: dir.clone(),
                    source,
                })?;
                let seccomp = bundle
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.seccomp().as_ref());
                if let Some(seccomp) = seccomp {
                    moat_oci_seccomp::validate(seccomp)
                        .map_err(|e| ConfigError::Seccomp(e.to_string()))?;
                }
                let sizing = Sizing::of_bundle(&bundle.spec);
                let (spec, volumes, host) =
                    crate::bundle_host::apply(dir, bundle.spec, bundle.host)?;
                bundle_host = host;
                (Rootfs::Directory(bundle.rootfs), spec, volumes, sizing)
            }
            None => {
                let (rootfs, spec, volumes) = self.image_spec(&id, image)?;
                moat_spec::validate(&spec, None).map_err(flag_spec_error)?;
                (rootfs, spec, volumes, self.sizing())
            }
        };
        let (cpus, memory_mib) = sizing.vm_size(self.vm_cpus, self.vm_memory)?;
        let joins = self.joins(&spec, std::mem::take(&mut bundle_host.namespace_paths))?;
        Ok(RunConfig {
            id,
            rootfs,
            spec,
            volumes,
            storage_bytes: self
                .storage_opt
                .last()
                .copied()
                .unwrap_or(DEFAULT_STORAGE_BYTES),
            cpus,
            memory_mib,
            interactive: self.interactive,
            tty: self.tty,
            assets: AssetOverrides {
                kernel: self.kernel,
                initramfs: self.initramfs,
            },
            cgroup_path: bundle_host.cgroup_path,
            hooks: bundle_host.hooks,
            disk_slots: self.disk_slots,
            joins,
        })
    }

    /// The namespaces a bundle joins, as its role allows: a pod's later container keeps them
    /// for its VM's supervisor to map; a pod sandbox's network namespace (CRI's, made by CNI on
    /// the host) is left for a VM of its own until moat joins it to the VM (the networking
    /// work); anything else is refused (each container has its own VM).
    fn joins(
        &self,
        spec: &Spec,
        paths: Vec<oci_spec::runtime::LinuxNamespace>,
    ) -> Result<Vec<oci_spec::runtime::LinuxNamespace>, ConfigError> {
        if self.pod_member {
            return Ok(paths);
        }
        let sandbox = self.disk_slots > 0;
        let refused = paths
            .iter()
            .find(|ns| !(sandbox && ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network));
        if let Some(ns) = refused {
            let path = ns.path().clone().unwrap_or_default();
            let index = spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().as_ref())
                .and_then(|all| all.iter().position(|n| n.typ() == ns.typ()))
                .unwrap_or_default();
            return Err(ConfigError::Spec(moat_spec::SpecError {
                field: format!("linux.namespaces[{index}].path"),
                problem: format!(
                    "joining the existing {} namespace {} is not supported (each container has \
                     its own VM)",
                    ns.typ(),
                    path.display()
                ),
            }));
        }
        Ok(Vec::new())
    }

    /// The spec and volumes of a run of IMAGE (or the default image) with docker's defaults.
    fn image_spec(
        &self,
        id: &str,
        image: Option<&image::ImageConfig>,
    ) -> Result<(Rootfs, Spec, Vec<Volume>), ConfigError> {
        let hostname = self.hostname.clone().unwrap_or_else(|| id.to_owned());
        let builtin = builtin_image_config();
        let image_config = image.unwrap_or(&builtin);
        let user = self.user.clone().unwrap_or_default();
        let mut cmd = self.args.clone();
        cmd.extend(self.command.iter().cloned());
        let args = image::process_args(image_config, self.entrypoint.as_deref(), &cmd)?;
        check_args(&args)?;
        let env = build_env(
            &self.env,
            &image_config.config.env,
            &hostname,
            self.tty,
            |k| std::env::var(k).ok(),
        );
        if self.volume.len() > MAX_VOLUMES {
            return Err(ConfigError::TooManyVolumes(MAX_VOLUMES));
        }
        let volumes = self
            .volume
            .iter()
            .map(check_volume)
            .collect::<Result<Vec<_>, _>>()?;
        let binds = volumes
            .iter()
            .enumerate()
            .map(|(i, v)| BindMount {
                source: v.bind_source(i),
                destination: v.destination.clone(),
                readonly: v.readonly,
            })
            .collect();
        let devices = self
            .device
            .iter()
            .map(resolve_device)
            .collect::<Result<Vec<_>, _>>()?;
        let limits = self.limits();
        limits.check()?;
        let mut options = RunOptions {
            args,
            env,
            cwd: image::working_dir(image_config, self.workdir.as_deref()),
            user: (user.uid.unwrap_or(0), user.gid.unwrap_or(0)),
            user_spec: Some(image::user(
                image_config,
                self.user.as_ref().map(|u| u.text.as_str()),
            )),
            terminal: self.tty,
            hostname,
            read_only: self.read_only,
            privileged: self.privileged,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            no_new_privileges: self.no_new_privileges(),
            seccomp: None,
            userns: self.userns.unwrap_or(false),
            tmpfs: self.tmpfs.clone(),
            binds,
            devices,
            sysctls: self.sysctl.clone(),
            ulimits: self.ulimit.clone(),
            limits,
        };
        let bounding = moat_spec::caps::bounding(self.privileged, &self.cap_add, &self.cap_drop);
        options.seccomp = seccomp_for(&self.seccomp_choice(), &bounding)
            .map_err(|e| ConfigError::Seccomp(format!("{e:#}")))?;
        let image = self
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
        Ok((Rootfs::Image(image), options.to_spec(), volumes))
    }

    fn limits(&self) -> Limits {
        Limits {
            memory: self.memory,
            memory_swap: self.memory_swap,
            memory_reservation: self.memory_reservation,
            nano_cpus: self.cpus,
            cpu_shares: self.cpu_shares,
            cpu_quota: self.cpu_quota,
            cpu_period: self.cpu_period,
            cpuset_cpus: self.cpuset_cpus.as_ref().map(|(text, _)| text.clone()),
            pids_limit: self.pids_limit,
            blkio_weight: self.blkio_weight,
            read_bps: self.device_read_bps.clone(),
            write_bps: self.device_write_bps.clone(),
            read_iops: self.device_read_iops.clone(),
            write_iops: self.device_write_iops.clone(),
        }
    }

    /// The limits that size the VM, named by their flags.
    fn sizing(&self) -> Sizing {
        Sizing {
            limits: self.limits(),
            cpuset_highest: self.cpuset_cpus.as_ref().map(|(_, highest)| *highest),
            names: &FLAG_NAMES,
        }
    }

    /// The last `no-new-privileges` given; true by default.
    fn no_new_privileges(&self) -> bool {
        self.security_opt
            .iter()
            .rev()
            .find_map(|o| match o {
                SecurityOpt::NoNewPrivileges(on) => Some(*on),
                _ => None,
            })
            .unwrap_or(true)
    }

    /// The last `seccomp=` given; privileged runs are unconfined.
    fn seccomp_choice(&self) -> SeccompChoice {
        if self.privileged {
            return SeccompChoice::Unconfined;
        }
        let last = self.security_opt.iter().rev().find_map(|o| match o {
            SecurityOpt::SeccompProfile(path) => Some(SeccompChoice::Profile(path.clone())),
            SecurityOpt::SeccompUnconfined => Some(SeccompChoice::Unconfined),
            SecurityOpt::NoNewPrivileges(_) => None,
        });
        last.unwrap_or(SeccompChoice::Default)
    }
}

/// The config of the built-in image: `sh` as its command, the rest empty.
fn builtin_image_config() -> image::ImageConfig {
    let mut config = image::ImageConfig::default();
    config.config.cmd = Some(vec!["sh".to_owned()]);
    config
}

/// The flag of a refused field of the spec that the flags made.
fn flag_spec_error(source: SpecError) -> ConfigError {
    let field = source.field.as_str();
    let flag = [
        ("process.cwd", "-w/--workdir"),
        ("process.user", "-u/--user"),
        ("process.env", "-e/--env"),
        ("process.rlimits", "--ulimit"),
        ("process.capabilities", "--cap-add/--cap-drop"),
        ("hostname", "--hostname"),
        ("mounts", "--tmpfs/-v"),
        ("linux.sysctl", "--sysctl"),
        ("linux.devices", "--device"),
    ]
    .iter()
    .find(|(prefix, _)| field.starts_with(prefix));
    match flag {
        Some((_, flag)) => ConfigError::FlagSpec { flag, source },
        None => ConfigError::Spec(source),
    }
}

/// What the user called the limits that size the VM: flags, or a bundle's fields.
struct LimitNames {
    memory: &'static str,
    cpus: &'static str,
    quota: &'static str,
    cpuset: &'static str,
}

const FLAG_NAMES: LimitNames = LimitNames {
    memory: "--memory",
    cpus: "--cpus",
    quota: "--cpu-quota",
    cpuset: "--cpuset-cpus",
};

const BUNDLE_NAMES: LimitNames = LimitNames {
    memory: "linux.resources.memory.limit",
    cpus: "linux.resources.cpu.quota",
    quota: "linux.resources.cpu.quota",
    cpuset: "linux.resources.cpu.cpus",
};

/// The limits that size a VM, and their names for the errors.
struct Sizing {
    limits: Limits,
    cpuset_highest: Option<u32>,
    names: &'static LimitNames,
}

impl Sizing {
    fn of_bundle(spec: &Spec) -> Self {
        Self {
            limits: moat_spec::resources::limits_of(spec),
            cpuset_highest: moat_spec::resources::cpuset_highest(spec),
            names: &BUNDLE_NAMES,
        }
    }

    /// The VM's (vCPUs, MiB): as given, else sized from the limits; checked against the host's
    /// memory and the limits (a cpuset or memory limit the VM cannot hold is refused).
    fn vm_size(
        &self,
        vm_cpus: Option<u8>,
        vm_memory: Option<u64>,
    ) -> Result<(u8, u32), ConfigError> {
        let cpus = match vm_cpus {
            Some(n) => n,
            None => self.vm_cpus()?,
        };
        if let Some(highest) = self.cpuset_highest.filter(|h| *h >= u32::from(cpus)) {
            return Err(ConfigError::CpusetBeyondVm {
                limit: self.names.cpuset,
                highest: u64::from(highest),
                cpus,
            });
        }
        let memory_mib = self.vm_memory(vm_memory, moat_runtime::host::memory_bytes())?;
        if let Some(limit) = self.limits.memory {
            let limit_mib = limit.div_ceil(1 << 20);
            if limit_mib > u64::from(memory_mib) {
                return Err(ConfigError::LimitAboveVm {
                    limit: self.names.memory,
                    limit_mib,
                    vm_mib: memory_mib,
                });
            }
        }
        Ok((cpus, memory_mib))
    }

    /// The vCPUs the limits need: refused above [`MAX_CPUS`].
    fn vm_cpus(&self) -> Result<u8, ConfigError> {
        let (needed, by) = self.limits.vm_cpus_by(self.cpuset_highest);
        u8::try_from(needed)
            .ok()
            .filter(|n| (1..=MAX_CPUS).contains(n))
            .ok_or(ConfigError::TooManyCpus {
                limit: match by {
                    Some(CpuLimit::Cpus) => self.names.cpus,
                    Some(CpuLimit::Quota) | None => self.names.quota,
                    Some(CpuLimit::Cpuset) => self.names.cpuset,
                },
                needed,
            })
    }

    /// The VM's MiB: `--vm-memory`, else from the memory limit; refused above the host's RAM.
    fn vm_memory(&self, vm_memory: Option<u64>, host_bytes: u64) -> Result<u32, ConfigError> {
        let host_mib = host_bytes >> 20;
        let sized = self.limits.vm_memory_mib();
        let requested = vm_memory.unwrap_or(sized << 20);
        memory_mib(requested, host_bytes).map_err(|requested_mib| {
            match (vm_memory, self.limits.memory) {
                (Some(_), _) => ConfigError::VmMemoryAboveHost {
                    requested_mib,
                    host_mib,
                },
                (None, Some(limit)) => ConfigError::LimitAboveHost {
                    limit: self.names.memory,
                    limit_mib: limit.div_ceil(1 << 20),
                    vm_mib: sized,
                    host_mib,
                },
                (None, None) => ConfigError::DefaultAboveHost {
                    vm_mib: sized,
                    host_mib,
                },
            }
        })
    }
}

#[cfg(test)]
#[path = "run_args_tests.rs"]
mod tests;
