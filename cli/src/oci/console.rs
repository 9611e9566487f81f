//! `--console-socket`: a host pty for a terminal process. The supervisor writes the guest pty's
//! output into the slave and reads the input from it (set raw: the guest's line discipline is
//! the one that counts); the master goes to the socket as runc sends it, one message whose
//! data is the name and whose one SCM_RIGHTS descriptor is the master.

use std::fs::File;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};

/// A host pseudo-terminal.
pub struct Pty {
    /// Its master.
    pub master: OwnedFd,
    /// Its slave, raw.
    pub slave: File,
    /// The slave's path (the relay's controlling terminal).
    pub path: PathBuf,
}

/// `O_NOCTTY`: opening the slave must not make it our controlling terminal.
const O_NOCTTY: i32 = 0o400;

impl Pty {
    /// Opens a new pty with a raw slave.
    pub fn open() -> anyhow::Result<Self> {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .context("cannot open a pty")?;
        grantpt(&master).context("grantpt")?;
        unlockpt(&master).context("unlockpt")?;
        let name = ptsname(&master, Vec::new()).context("ptsname")?;
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        let slave = File::options()
            .read(true)
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut termios = tcgetattr(&slave).context("tcgetattr")?;
        termios.make_raw();
        tcsetattr(&slave, OptionalActions::Now, &termios).context("tcsetattr")?;
        Ok(Self {
            master,
            slave,
            path,
        })
    }
}

/// Sends `master` to the console socket at `socket`.
pub fn send_master(socket: &Path, master: &OwnedFd) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the console socket {}", socket.display()))?;
    let fds = [master.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut buffer = SendAncillaryBuffer::new(&mut space);
    buffer.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(
        &stream,
        &[IoSlice::new(b"/dev/ptmx")],
        &mut buffer,
        SendFlags::empty(),
    )
    .context("cannot send the pty master to the console socket")?;
    Ok(())
}
