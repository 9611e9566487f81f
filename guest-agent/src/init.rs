//! PID 1: move off the initramfs, mount the pseudo filesystems, serve the host, reboot.
//!
//! The kernel runs with `reboot=k panic=-1`, so `reboot(RESTART)` makes the VMM exit cleanly.
//! PID 1 must never exit (the kernel would panic): every path ends in [`power_off`]. The console
//! stays quiet unless something fatal happens, which is reported in one line on the kernel log.

use std::ffi::{CStr, CString};
use std::io::{self, Write};

use moat_protocol::{AGENT_VSOCK_PORT, HOST_CID};

use crate::container::Isolation;
use crate::limits;
use crate::reaper::{self, Reaper};
use crate::server::{self, source_chain, Config, KillScope, ServerError};
use crate::syscall::{Linux, Syscall};
use crate::vsock;

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A boot step failed.
    #[error("{what} failed")]
    Step {
        /// Which step.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The conversation with the host failed.
    #[error("serving the host failed")]
    Serve(#[from] ServerError),
}

fn step(what: &'static str) -> impl Fn(io::Error) -> InitError {
    move |source| InitError::Step { what, source }
}

fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

const NEW_ROOT: &CStr = c"/newroot";

/// Moves the root from the initramfs (rootfs, which `pivot_root` cannot leave) onto a small tmpfs,
/// like `switch_root`, so that containers can later `pivot_root` away from it.
pub fn switch_root(sys: &dyn Syscall) -> io::Result<()> {
    ignore_exists(sys.mkdir(NEW_ROOT, 0o755))?;
    let opts = c"mode=0755,size=64k,nr_inodes=64";
    sys.mount(Some(c"tmpfs"), NEW_ROOT, Some(c"tmpfs"), 0, Some(opts))?;
    for dir in [
        c"/newroot/dev",
        c"/newroot/proc",
        c"/newroot/sys",
        c"/newroot/run",
        c"/newroot/tmp",
    ] {
        sys.mkdir(dir, 0o755)?;
    }
    // The binary keeps running from memory; this only hides it from the rootfs underneath.
    let _ = sys.unlink(c"/init");
    sys.chdir(NEW_ROOT)?;
    sys.mount(Some(c"."), c"/", None, libc::MS_MOVE, None)?;
    sys.chroot(c".")?;
    sys.chdir(c"/")
}

/// Mounts /proc, /sys, /dev, /dev/pts, the cgroup2 hierarchy and /run.
pub fn mount_basics(sys: &dyn Syscall) -> io::Result<()> {
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys.mount(Some(c"proc"), c"/proc", Some(c"proc"), hardened, None)?;
    sys.mount(Some(c"sysfs"), c"/sys", Some(c"sysfs"), hardened, None)?;
    let dev_flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    sys.mount(
        Some(c"devtmpfs"),
        c"/dev",
        Some(c"devtmpfs"),
        dev_flags,
        Some(c"mode=0755"),
    )?;
    ignore_exists(sys.mkdir(c"/dev/pts", 0o755))?;
    let pts_opts = c"ptmxmode=0666,mode=0620,gid=5";
    sys.mount(
        Some(c"devpts"),
        c"/dev/pts",
        Some(c"devpts"),
        dev_flags,
        Some(pts_opts),
    )?;
    sys.mount(
        Some(c"cgroup2"),
        c"/sys/fs/cgroup",
        Some(c"cgroup2"),
        hardened,
        None,
    )?;
    let run_opts = c"mode=0755,size=1m";
    sys.mount(
        Some(c"tmpfs"),
        c"/run",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(run_opts),
    )
}

/// Mounts the VM's directories its containers share, under the volumes' directory: the shared
/// memory tmpfs ([`moat_protocol::SHM_DIR`], 64 MiB as CRI's sandbox shm and Docker's default
/// `--shm-size`) and the emptyDir volumes' tmpfs ([`moat_protocol::EMPTY_DIRS`], the tmpfs
/// default of half the guest's memory). Both are empty until a container writes there.
pub fn mount_shared_dirs(sys: &dyn Syscall) -> io::Result<()> {
    let cstr = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    ignore_exists(sys.mkdir(&cstr(moat_protocol::VOLUMES_DIR)?, 0o755))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    for (dir, fs_flags, opts) in [
        (
            moat_protocol::SHM_DIR,
            libc::MS_NOEXEC,
            c"mode=1777,size=64m",
        ),
        (moat_protocol::EMPTY_DIRS, 0, c"mode=0755"),
    ] {
        let dir = cstr(dir)?;
        ignore_exists(sys.mkdir(&dir, 0o755))?;
        sys.mount(
            Some(c"tmpfs"),
            &dir,
            Some(c"tmpfs"),
            flags | fs_flags,
            Some(opts),
        )?;
    }
    Ok(())
}

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null when the kernel gave none), so
/// that pipes never land on them.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD takes no pointer; open gets a valid C string and its descriptor is
        // deliberately kept open for the agent's lifetime.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

fn boot() -> Result<(), InitError> {
    reaper::block_sigchld().map_err(step("blocking SIGCHLD"))?;
    switch_root(&Linux).map_err(step("leaving the initramfs"))?;
    mount_basics(&Linux).map_err(step("mounting the pseudo filesystems"))?;
    mount_shared_dirs(&Linux).map_err(step("mounting the containers' shared directories"))?;
    ensure_stdio();
    if crate::bench::reset_requested() {
        return Ok(());
    }
    let reaper = Reaper::start().map_err(step("starting the reaper"))?;
    let conn =
        vsock::connect(HOST_CID, AGENT_VSOCK_PORT).map_err(step("connecting to the host"))?;
    let config = Config {
        isolation: Isolation::Container,
        kill: KillScope::Everything,
        cgroup_root: limits::GUEST_CGROUP_ROOT,
    };
    server::serve(conn, config, reaper)?;
    Ok(())
}

/// Writes one line to the kernel log at error level (shown on the console even with `quiet`),
/// or to stderr if the log cannot be opened.
fn fatal(err: &InitError) {
    log_error(&format!("{err}{}", source_chain(err)));
}

/// Writes `message` as one `moat-agent:` line to the kernel log at error level, or to stderr
/// if the log cannot be opened.
pub fn log_error(message: &str) {
    let line = format!("<3>moat-agent: {message}\n");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut kmsg| kmsg.write_all(line.as_bytes()));
    if written.is_err() {
        let _ = io::stderr().write_all(&line.as_bytes()[3..]);
    }
}

/// Kills everything, unmounts (or makes read-only) every filesystem it mounted, syncs and
/// restarts the machine, which ends the VM. Never returns.
pub fn power_off() -> ! {
    KillScope::Everything.kill(None);
    crate::unmount::release_all(&Linux);
    // SAFETY: reboot takes no pointers. As PID 1 we hold CAP_SYS_BOOT.
    unsafe {
        libc::reboot(libc::LINUX_REBOOT_CMD_RESTART);
    }
    // reboot only returns on failure; PID 1 must not exit, so wait for the end.
    loop {
        // SAFETY: pause takes no arguments.
        unsafe { libc::pause() };
    }
}

/// The agent as PID 1.
pub fn main() -> ! {
    // A panic (the build aborts on one) would kill PID 1 and panic the kernel, skipping the
    // clean end: end the VM the usual way instead, from whichever thread panicked.
    std::panic::set_hook(Box::new(|info| {
        log_error(&format!("panic: {info}"));
        power_off()
    }));
    if let Err(err) = boot() {
        fatal(&err);
    }
    power_off()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::mock::Recorder;

    #[test]
    fn switch_root_moves_onto_a_tmpfs() {
        let sys = Recorder::default();
        switch_root(&sys).unwrap();
        let lines = sys.lines();
        assert_eq!(
            lines[1],
            "mount tmpfs /newroot tmpfs - mode=0755,size=64k,nr_inodes=64"
        );
        assert_eq!(
            &lines[lines.len() - 4..],
            [
                "chdir /newroot",
                "mount . / - move -",
                "chroot .",
                "chdir /"
            ]
        );
    }

    #[test]
    fn basics_are_mounted_in_order() {
        let sys = Recorder::default();
        mount_basics(&sys).unwrap();
        let targets: Vec<String> = sys
            .lines_starting("mount")
            .iter()
            .map(|l| l.split(' ').nth(2).unwrap().to_string())
            .collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/sys/fs/cgroup",
                "/run"
            ]
        );
        let sys = Recorder::default();
        mount_shared_dirs(&sys).unwrap();
        assert_eq!(
            sys.lines_starting("mount"),
            [
                "mount tmpfs /run/moat-volumes/shm tmpfs nosuid,nodev,noexec mode=1777,size=64m",
                "mount tmpfs /run/moat-volumes/empty-dir tmpfs nosuid,nodev mode=0755",
            ]
        );
        let sys = Recorder::failing("mkdir /dev/pts", libc::EEXIST);
        mount_basics(&sys).unwrap();
        let sys = Recorder::failing("mount sysfs", libc::ENODEV);
        assert_eq!(
            mount_basics(&sys).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }
}
