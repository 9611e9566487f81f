//! Each container's cgroup v2: created under the agent's cgroup2 mount, given the OCI spec's
//! `linux.resources` ([`resources`] for the files, [`devices`] + [`bpf`] for the device
//! allowlist), watched for OOM kills ([`oom`]), killed and removed at the end.

pub mod bpf;
pub mod devices;
pub mod oom;
pub mod resources;
pub mod stats;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

pub use self::oom::OomWatch;
use self::resources::{Setting, Target};

/// The controllers a container's cgroup gets (those of them the kernel has).
const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];
/// How long [`Cgroup::remove`] waits for the killed processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const DEV_BLOCK: &str = "/sys/dev/block";

/// Errors creating, configuring or removing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The spec asks for something this cgroup cannot do; names the OCI field.
    #[error("{field}: {reason}")]
    Refused {
        /// The OCI field, e.g. `linux.resources.memory.limit`.
        field: String,
        /// Why.
        reason: String,
    },
    /// The kernel refused a value the spec asked for.
    #[error("{field}: the kernel refused {value:?} in {file}")]
    Write {
        /// The OCI field.
        field: String,
        /// The cgroup file.
        file: String,
        /// The text written.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup file did not say what it should.
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// The cgroup to create exists already.
    #[error("cgroup {0} exists already")]
    Exists(PathBuf),
    /// The kernel refused to load the device program.
    #[error("loading the device program of linux.resources.devices; verifier log: {log}")]
    BpfLoad {
        /// The verifier's log.
        log: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to attach the device program.
    #[error("attaching the device program to {path}")]
    BpfAttach {
        /// The cgroup.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Processes survived cgroup.kill.
    #[error("cgroup {0} still has processes {KILL_TIMEOUT:?} after cgroup.kill")]
    StillPopulated(PathBuf),
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // One write(2) per value: cgroup files take one setting (one io.max line) per write.
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Enables, in `dir`'s cgroup.subtree_control, those of [`CONTROLLERS`] that `dir` has.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = dir.join("cgroup.controllers");
    let text = std::fs::read_to_string(&available).map_err(io_error("reading", &available))?;
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| text.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let control = dir.join("cgroup.subtree_control");
    write_file(&control, &wanted.join(" ")).map_err(io_error("writing", &control))
}

fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// One container's cgroup: the directory and an `O_DIRECTORY` fd of it (the target the
/// device program attaches to).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    fd: OwnedFd,
    dev_block: PathBuf,
}

impl Cgroup {
    /// Enables the controllers (cpu cpuset io memory pids) down from `root`, creates
    /// `root/<parent>/<name>` (e.g. /sys/fs/cgroup/containers/<id>); refuses an existing one.
    pub fn create(root: &Path, parent: &str, name: &str) -> Result<Self, CgroupError> {
        for (what, part) in [("parent", parent), ("name", name)] {
            if !plain_name(part) {
                return Err(CgroupError::Malformed {
                    path: root.join(parent).join(name),
                    what: if what == "parent" {
                        "the parent must be one plain directory name"
                    } else {
                        "the name must be one plain directory name"
                    },
                });
            }
        }
        enable_controllers(root)?;
        let parent_dir = root.join(parent);
        match std::fs::create_dir(&parent_dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_error("creating", &parent_dir)(e))
            }
            _ => {}
        }
        enable_controllers(&parent_dir)?;
        let path = parent_dir.join(name);
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::Exists(path))
            }
            other => other.map_err(io_error("creating", &path))?,
        }
        Self::open(path, PathBuf::from(DEV_BLOCK))
    }

    /// Opens an existing cgroup directory (`create`'s last step; tests point `dev_block` at
    /// a stand-in for /sys/dev/block).
    fn open(path: PathBuf, dev_block: PathBuf) -> Result<Self, CgroupError> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_error("opening", &path))?;
        Ok(Self {
            path,
            fd: OwnedFd::from(dir),
            dev_block,
        })
    }

    /// Writes every limit of `r` and loads + attaches the device filter from `r.devices()`.
    /// Refuses (naming the OCI field) what it cannot apply; checks everything before
    /// writing anything.
    pub fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let program = match r.devices() {
            Some(devices) => Some(devices::program(&devices::rules(devices)?)),
            None => None,
        };
        self.write_limits(r)?;
        if let Some(program) = program {
            let prog = bpf::load_device_program(&program).map_err(|e| CgroupError::BpfLoad {
                log: e.log,
                source: e.source,
            })?;
            bpf::attach_device_program(self.fd.as_fd(), prog.as_fd()).map_err(|source| {
                CgroupError::BpfAttach {
                    path: self.path.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// The file part of [`apply`](Self::apply).
    fn write_limits(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let target = Target {
            dir: &self.path,
            dev_block: &self.dev_block,
        };
        for Setting { field, file, value } in resources::plan(r, &target)? {
            write_file(&self.path.join(&file), &value).map_err(|source| CgroupError::Write {
                field,
                file,
                value,
                source,
            })?;
        }
        Ok(())
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        write_file(&procs, &pid.to_string()).map_err(io_error("writing", &procs))
    }

    /// Freezes (`true`) or thaws the cgroup (cgroup.freeze) and waits until cgroup.events says
    /// so (at most [`KILL_TIMEOUT`]).
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let file = self.path.join("cgroup.freeze");
        write_file(&file, if frozen { "1" } else { "0" }).map_err(io_error("writing", &file))?;
        let events = self.path.join("cgroup.events");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&events).map_err(io_error("reading", &events))?;
            if text.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Malformed {
                    path: events,
                    what: "the freezer did not get there in time",
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pids in the cgroup and its descendants, ascending.
    pub fn pids(&self) -> Result<Vec<libc::pid_t>, CgroupError> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids)?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// The cgroup's counters (`Stats`).
    pub fn stats(&self) -> moat_protocol::CgroupStats {
        stats::read(&self.path)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many processes the OOM killer killed in the cgroup (memory.events `oom_kill`).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        oom::read_oom_kills(&self.path.join("memory.events"))
    }

    /// A watch of the cgroup's OOM kills (see [`OomWatch::next`]).
    pub fn oom_watch(&self) -> Result<OomWatch, CgroupError> {
        OomWatch::new(&self.path)
    }

    /// Writes `cgroup.kill`: the kernel kills every process in the cgroup and below.
    pub fn kill(&self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        write_file(&kill, "1").map_err(io_error("writing", &kill))
    }

    /// Kills everything left (cgroup.kill), waits until cgroup.events says `populated 0`
    /// (at most [`KILL_TIMEOUT`]), removes the directory and any cgroups the container made
    /// under it.
    pub fn remove(self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        write_file(&kill, "1").map_err(io_error("writing", &kill))?;
        let events = self.path.join("cgroup.events");
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&events).map_err(io_error("reading", &events))?;
            if text.lines().any(|l| l.trim() == "populated 0") {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated(self.path));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(self.fd);
        remove_tree(&self.path)
    }
}

/// Adds the pids of `dir`'s cgroup.procs and of its child cgroups' to `pids`.
fn collect_pids(dir: &Path, pids: &mut Vec<libc::pid_t>) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(io_error("reading", &procs))?;
    pids.extend(
        text.lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
    );
    for entry in std::fs::read_dir(dir).map_err(io_error("listing", dir))? {
        let entry = entry.map_err(io_error("listing", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), pids)?;
        }
    }
    Ok(())
}

/// Removes an empty cgroup and its descendants, deepest first (the only directories in a
/// cgroup are child cgroups; its files go with it).
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for entry in std::fs::read_dir(dir).map_err(io_error("listing", dir))? {
        let entry = entry.map_err(io_error("listing", dir))?;
        if entry
            .file_type()
            .map_err(io_error("listing", dir))?
            .is_dir()
        {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).map_err(io_error("removing", dir))
}

/// Opens a stand-in directory as a cgroup (unit tests).
#[cfg(test)]
fn open_for_test(path: &Path, dev_block: &Path) -> Cgroup {
    Cgroup::open(path.to_owned(), dev_block.to_owned()).expect("open test cgroup")
}

// The lead's threads share these: one blocks in `OomWatch::next`, another calls `stop`.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<OomWatch>();
    send_sync::<Cgroup>();
};

/// A directory under the temp dir, removed with its contents when dropped (unit tests).
#[cfg(test)]
pub(crate) struct TestDir(pub PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("moat-cg-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod kernel_tests;
