//! The per-VM cgroup: cpu, memory and pids limits derived from the VM's size.
//!
//! - cgroup v2 (`<root>/cgroup.controllers` exists): `<root>/moat/<id>`, with cpu, memory and
//!   pids enabled in `<root>/moat/cgroup.subtree_control` (and in the root's if needed).
//! - cgroup v1 or hybrid: `<root>/{cpu,memory,pids}/moat/<id>`, one per controller hierarchy.
//! - An OCI bundle's `linux.cgroupsPath` (Docker's `/docker/<id>`) replaces `moat/<id>`
//!   ([`CgroupPath`]): the controllers are enabled on every level above it.
//!
//! The VMM creates and joins it (as root, before `pivot_root`); the runtime removes it after
//! the VMM is reaped ([`remove`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::id::JailId;

/// The default cgroup mount.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// The directory moat's cgroups live under, in each hierarchy.
pub const GROUP: &str = "moat";
/// The CFS period.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Memory the VMM itself may use beyond guest RAM: its own heap, stacks and binary, vsock
/// buffers, and (on cgroup v1) the page cache of the kernel, initramfs and disk reads it does.
/// Measured: a 512 MiB VM's `moat-vmm` has an RSS around 10 MiB besides the guest pages it
/// touched; this leaves ample room.
pub const VMM_MEMORY_OVERHEAD_MIB: u64 = 192;
/// Tasks beyond the vCPU threads: the main thread, the event loop, and room for a few more.
pub const EXTRA_TASKS: u64 = 8;
/// Tasks of the OCI relays (`moat create` and `exec`'s pid-file processes, a few threads each)
/// in a `linux.cgroupsPath` cgroup, which they share with the VM.
pub const RELAY_TASKS: u64 = 512;
/// Memory for those relays (a few MiB each).
pub const RELAY_MEMORY_MIB: u64 = 64;
/// Controllers moat limits.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// How long [`remove`] retries a busy cgroup (its last task is still exiting).
const REMOVE_RETRY: Duration = Duration::from_secs(2);

/// Errors around cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither cgroup v2 nor the v1 cpu, memory and pids hierarchies are mounted at the root.
    #[error("no usable cgroup hierarchy at {}: need cgroup v2, or v1 cpu, memory and pids", .0.display())]
    NotFound(PathBuf),
    /// A `linux.cgroupsPath` with `..`, `.` or nothing in it.
    #[error("cgroup path {0:?} must be a path of plain names")]
    BadPath(String),
    /// A cgroup file or directory could not be written.
    #[error("cannot set up cgroup {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where a VM's cgroup is, relative to each hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath(PathBuf);

impl CgroupPath {
    /// `moat/<id>`, the default.
    pub fn of_jail(id: &JailId) -> Self {
        Self(Path::new(GROUP).join(id.as_str()))
    }

    /// A path from an OCI bundle's `linux.cgroupsPath` (absolute or not: always under the
    /// root): plain components only, at least one.
    pub fn parse(path: &str) -> Result<Self, CgroupError> {
        let relative = path.trim_start_matches('/');
        let plain = Path::new(relative)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if relative.is_empty() || !plain {
            return Err(CgroupError::BadPath(path.to_owned()));
        }
        Ok(Self(PathBuf::from(relative)))
    }

    /// The path relative to a hierarchy's root.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// Which cgroup version a root holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// v1 (or hybrid): one hierarchy per controller.
    V1,
    /// v2: one unified hierarchy.
    V2,
}

/// The limits of one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per [`CPU_PERIOD_US`]: one period per vCPU.
    pub cpu_quota_us: u64,
    /// Bytes: guest RAM plus [`VMM_MEMORY_OVERHEAD_MIB`].
    pub memory_bytes: u64,
    /// Tasks: vCPUs plus [`EXTRA_TASKS`].
    pub pids: u64,
}

impl Limits {
    /// The limits of a VM with `cpus` vCPUs and `memory_mib` MiB of RAM.
    pub fn for_vm(cpus: u64, memory_mib: u64) -> Self {
        Self {
            cpu_quota_us: cpus * CPU_PERIOD_US,
            memory_bytes: (memory_mib + VMM_MEMORY_OVERHEAD_MIB) << 20,
            pids: cpus + EXTRA_TASKS,
        }
    }

    /// These limits for a cgroup the OCI relays of the container share with its VM.
    pub fn with_relays(self) -> Self {
        Self {
            pids: self.pids + RELAY_TASKS,
            memory_bytes: self.memory_bytes + (RELAY_MEMORY_MIB << 20),
            ..self
        }
    }
}

/// Which version the hierarchy at `root` is.
pub fn detect(root: &Path) -> Result<Version, CgroupError> {
    if root.join("cgroup.controllers").is_file() {
        return Ok(Version::V2);
    }
    if CONTROLLERS.iter().all(|c| root.join(c).is_dir()) {
        return Ok(Version::V1);
    }
    Err(CgroupError::NotFound(root.to_owned()))
}

/// The directories of the cgroup at `path`: one (v2) or one per controller (v1).
pub fn dirs(root: &Path, path: &CgroupPath) -> Result<Vec<PathBuf>, CgroupError> {
    Ok(match detect(root)? {
        Version::V2 => vec![root.join(&path.0)],
        Version::V1 => CONTROLLERS
            .iter()
            .map(|c| root.join(c).join(&path.0))
            .collect(),
    })
}

/// Moves process `pid` into the cgroup at `path` (every hierarchy of it).
pub fn join(root: &Path, path: &CgroupPath, pid: u32) -> Result<(), CgroupError> {
    dirs(root, path)?
        .iter()
        .try_for_each(|dir| write(&dir.join("cgroup.procs"), &pid.to_string()))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        path: path.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A VM's cgroup, created with its limits.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the cgroup at `path` under `root` with `limits`. A cgroup left by an earlier
    /// VM of the same path is reused (its limits are rewritten). On failure nothing is left.
    pub fn create(root: &Path, path: &CgroupPath, limits: &Limits) -> Result<Self, CgroupError> {
        let version = detect(root)?;
        let cgroup = Self {
            version,
            dirs: dirs(root, path)?,
        };
        let result = match version {
            Version::V2 => cgroup.create_v2(root, limits),
            Version::V1 => cgroup.create_v1(limits),
        };
        if let Err(e) = result {
            let _ = remove(root, path);
            return Err(e);
        }
        Ok(cgroup)
    }

    fn create_v2(&self, root: &Path, limits: &Limits) -> Result<(), CgroupError> {
        let dir = &self.dirs[0];
        // Each level above the VM's delegates the controllers to the next.
        let mut level = root.to_path_buf();
        for name in dir.strip_prefix(root).unwrap_or(dir).components() {
            enable_controllers(&level)?;
            level.push(name);
            mkdir(&level)?;
        }
        write(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us),
        )?;
        write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
        write(&dir.join("pids.max"), &limits.pids.to_string())
    }

    fn create_v1(&self, limits: &Limits) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let [cpu, memory, pids] = &self.dirs[..] else {
            unreachable!("one cgroup per v1 controller");
        };
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(
            &cpu.join("cpu.cfs_quota_us"),
            &limits.cpu_quota_us.to_string(),
        )?;
        write(
            &memory.join("memory.limit_in_bytes"),
            &limits.memory_bytes.to_string(),
        )?;
        write(&pids.join("pids.max"), &limits.pids.to_string())
    }

    /// The version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Its directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Moves the calling process (all its threads) into the cgroup.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        self.dirs
            .iter()
            .try_for_each(|dir| write(&dir.join("cgroup.procs"), "0"))
    }
}

/// Enables cpu, memory and pids for the children of the v2 cgroup `dir` unless they are.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let control = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    if CONTROLLERS
        .iter()
        .all(|c| control.split_whitespace().any(|w| w == *c))
    {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids")
}

/// Removes the cgroup at `path` (not the levels above it), retrying briefly while it is busy
/// (its last task is still exiting). A cgroup that does not exist is not an error.
pub fn remove(root: &Path, path: &CgroupPath) -> Result<(), CgroupError> {
    let dirs = match dirs(root, path) {
        Ok(dirs) => dirs,
        Err(CgroupError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + REMOVE_RETRY;
    for dir in dirs {
        loop {
            match rmdir_cgroup(&dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(source) => return Err(CgroupError::Io { path: dir, source }),
                Ok(()) => break,
            }
        }
    }
    Ok(())
}

/// `rmdir` of a cgroup. A real cgroup directory holds only kernel interface files and goes with
/// one `rmdir`; a fake tree (tests) holds ordinary files, removed first.
fn rmdir_cgroup(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => std::fs::remove_dir_all(dir),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn limits_follow_the_vm_size() {
        let l = Limits::for_vm(2, 512);
        assert_eq!(l.cpu_quota_us, 200_000);
        assert_eq!(l.memory_bytes, (512 + VMM_MEMORY_OVERHEAD_MIB) << 20);
        assert_eq!(l.pids, 2 + EXTRA_TASKS);
    }

    #[test]
    fn versions_are_detected() {
        let tmp = TempDir::new("cg-detect");
        assert!(matches!(detect(tmp.path()), Err(CgroupError::NotFound(_))));
        for c in CONTROLLERS {
            std::fs::create_dir(tmp.path().join(c)).unwrap();
        }
        assert_eq!(detect(tmp.path()).unwrap(), Version::V1);
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        assert_eq!(detect(tmp.path()).unwrap(), Version::V2);
    }

    #[test]
    fn v2_limits_are_written_and_removed() {
        let tmp = TempDir::new("cg-v2");
        let root = tmp.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids io").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let id = CgroupPath::of_jail(&JailId::new("vm1").unwrap());
        let cg = Cgroup::create(root, &id, &Limits::for_vm(2, 256)).unwrap();
        assert_eq!(cg.version(), Version::V2);
        let dir = root.join("moat/vm1");
        assert_eq!(cg.dirs(), std::slice::from_ref(&dir));
        assert_eq!(read(dir.join("cpu.max")), "200000 100000");
        assert_eq!(
            read(dir.join("memory.max")),
            ((256 + VMM_MEMORY_OVERHEAD_MIB) << 20).to_string()
        );
        assert_eq!(read(dir.join("pids.max")), "10");
        assert_eq!(
            read(root.join("moat/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(root.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        remove(root, &id).unwrap();
        assert!(!dir.exists() && root.join("moat").exists());
        remove(root, &id).unwrap();
    }

    #[test]
    fn v1_limits_are_written_per_controller() {
        let tmp = TempDir::new("cg-v1");
        let root = tmp.path();
        for c in CONTROLLERS {
            std::fs::create_dir(root.join(c)).unwrap();
        }
        let id = CgroupPath::of_jail(&JailId::new("vm1").unwrap());
        let cg = Cgroup::create(root, &id, &Limits::for_vm(1, 128)).unwrap();
        assert_eq!(cg.version(), Version::V1);
        assert_eq!(cg.dirs().len(), 3);
        assert_eq!(read(root.join("cpu/moat/vm1/cpu.cfs_quota_us")), "100000");
        assert_eq!(read(root.join("cpu/moat/vm1/cpu.cfs_period_us")), "100000");
        assert_eq!(
            read(root.join("memory/moat/vm1/memory.limit_in_bytes")),
            ((128 + VMM_MEMORY_OVERHEAD_MIB) << 20).to_string()
        );
        assert_eq!(read(root.join("pids/moat/vm1/pids.max")), "9");
        remove(root, &id).unwrap();
        for c in CONTROLLERS {
            assert!(!root.join(c).join("moat/vm1").exists());
        }
    }

    #[test]
    fn a_bundle_cgroup_path_is_made_level_by_level() {
        let tmp = TempDir::new("cg-path");
        let root = tmp.path();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let path = CgroupPath::parse("/docker/abc").unwrap();
        let cg = Cgroup::create(root, &path, &Limits::for_vm(1, 128).with_relays()).unwrap();
        assert_eq!(cg.dirs(), [root.join("docker/abc")]);
        assert_eq!(
            read(root.join("docker/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(root.join("docker/abc/pids.max")),
            (1 + EXTRA_TASKS + RELAY_TASKS).to_string()
        );
        remove(root, &path).unwrap();
        assert!(!root.join("docker/abc").exists() && root.join("docker").exists());
        for bad in ["", "/", "docker/../x", "./a"] {
            assert!(CgroupPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            CgroupPath::parse("system.slice/docker-1.scope")
                .unwrap()
                .as_path(),
            Path::new("system.slice/docker-1.scope")
        );
    }
}
