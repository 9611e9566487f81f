//! moat-agent: PID 1 inside every moat microVM.
//!
//! As PID 1 (whatever its arguments: the kernel passes unknown command-line words to init) it
//! runs [`init::main`]. For testing on a host it can instead serve one connection to a Unix
//! socket with `--test-connect unix:PATH`: no init mounts and no container isolation (the
//! process runs in the agent's own root; the request's rootfs is not used and the spec's
//! container fields (linux, mounts, hostname, volumes) are refused). With `--isolated` added (root only), the agent first moves into a private mount
//! namespace with its own tmpfs on /run, then builds containers exactly as in the guest, from the
//! request's rootfs device (e.g. a loop device).

mod bench;
pub mod cgroup;
mod container;
mod flow;
mod init;
mod limits;
mod reaper;
mod server;
mod stdio;
mod syscall;
mod unmount;
mod vsock;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};

use crate::container::Isolation;
use crate::server::{Config, KillScope};
use crate::syscall::{Linux, Syscall};

/// Gives the agent a private mount namespace with its own /run, so that containers built there
/// touch nothing on the host.
fn private_run_dir(sys: &dyn Syscall) -> std::io::Result<()> {
    sys.unshare(libc::CLONE_NEWNS)?;
    sys.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    sys.mount(
        Some(c"tmpfs"),
        c"/run",
        Some(c"tmpfs"),
        0,
        Some(c"mode=0755,size=1m"),
    )
}

fn test_connect(target: &str, isolation: Isolation) -> anyhow::Result<()> {
    let Some(path) = target.strip_prefix("unix:") else {
        bail!("--test-connect takes unix:PATH, not {target:?}");
    };
    if isolation == Isolation::Container {
        // Before any thread exists: unshare(CLONE_NEWNS) needs an unshared fs context.
        private_run_dir(&Linux).context("creating a private mount namespace")?;
    }
    reaper::block_sigchld().context("blocking SIGCHLD")?;
    let reaper = reaper::Reaper::start().context("starting the reaper")?;
    let stream = UnixStream::connect(path).with_context(|| format!("connecting to {path}"))?;
    let conn = File::from(OwnedFd::from(stream));
    let config = Config {
        isolation,
        kill: KillScope::Group,
        // A hybrid host (cgroup v1 controllers) has its cgroup2 hierarchy here; the
        // controllers it lacks are simply not enabled, and limits on them are refused.
        cgroup_root: if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            "/sys/fs/cgroup/unified"
        } else {
            limits::GUEST_CGROUP_ROOT
        },
    };
    server::serve(conn, config, reaper)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::process::id() == 1 {
        init::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, target] if flag == "--test-connect" => test_connect(target, Isolation::None),
        [flag, target, iso] if flag == "--test-connect" && iso == "--isolated" => {
            test_connect(target, Isolation::Container)
        }
        _ => bail!(
            "usage: moat-agent --test-connect unix:PATH [--isolated] (or as PID 1 of a guest)"
        ),
    }
}
