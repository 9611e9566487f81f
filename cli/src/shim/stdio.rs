//! A process's stdio as containerd hands it over: FIFO paths (`ctr`, CRI), `file://` and
//! `binary://` log URIs (`ctr run --log-uri`), or nothing. What the supervisor gets are plain
//! descriptors it writes the process's output to and reads its stdin from.
//!
//! Output FIFOs are opened read-write, so the open never waits for a reader (runc's shim does
//! the same). Stdin is a pipe the shim fills from the FIFO, so that `CloseIO` can end the
//! process's stdin whether or not containerd's side of the FIFO is still open.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ChildStdio};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context};
use command_fds::{CommandFdExt, FdMapping};

/// What containerd asked for.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// The stdin FIFO, or empty.
    pub stdin: String,
    /// The stdout FIFO or log URI, or empty.
    pub stdout: String,
    /// The stderr FIFO or log URI, or empty.
    pub stderr: String,
    /// The process has a terminal (its output comes on stdout alone).
    pub terminal: bool,
}

/// The descriptors for the supervisor, and what the shim keeps.
pub struct Opened {
    /// The read end of the stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// Where the output goes.
    pub stdout: OwnedFd,
    /// Where the error output goes.
    pub stderr: OwnedFd,
    /// Ends the process's stdin.
    pub closer: Option<StdinCloser>,
    /// The logging binary of a `binary://` URI.
    pub logger: Option<Child>,
}

/// The write end of a process's stdin pipe: dropping it is the process's end of input.
#[derive(Clone)]
pub struct StdinCloser(Arc<Mutex<Option<File>>>);

impl StdinCloser {
    /// Closes the process's stdin.
    pub fn close(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Where output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn target(uri: &str) -> anyhow::Result<Target> {
    if uri.is_empty() {
        return Ok(Target::Null);
    }
    if let Some(rest) = uri.strip_prefix("binary://") {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let args = query
            .split('&')
            .filter(|p| !p.is_empty())
            .flat_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                [k.to_owned(), v.to_owned()]
            })
            .filter(|a| !a.is_empty())
            .collect();
        return Ok(Target::Binary {
            path: PathBuf::from(path),
            args,
        });
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Target::File(PathBuf::from(path)));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        bail!("unsupported log URI scheme {scheme:?} (fifo paths, file:// and binary:// are)");
    }
    Ok(Target::Fifo(PathBuf::from(uri)))
}

/// Opens the stdio of a process of container `id` in `namespace`.
pub fn open(paths: &Paths, namespace: &str, id: &str) -> anyhow::Result<Opened> {
    let (stdin, closer) = match paths.stdin.as_str() {
        "" => (None, None),
        fifo => {
            let (read, closer) = stdin_pipe(Path::new(fifo))?;
            (Some(read), Some(closer))
        }
    };
    let out = target(&paths.stdout)?;
    let err = target(&paths.stderr)?;
    let (stdout, stderr, logger) = match (&out, &err) {
        (Target::Binary { .. }, _) | (_, Target::Binary { .. }) => {
            let (stdout, stderr, child) = start_logger(&out, &err, namespace, id)?;
            (stdout, stderr, Some(child))
        }
        _ if out == err && out != Target::Null => {
            let stdout = open_output(&out)?;
            let stderr = stdout.try_clone().context("cannot duplicate the output")?;
            (stdout, stderr, None)
        }
        _ => (open_output(&out)?, open_output(&err)?, None),
    };
    Ok(Opened {
        stdin,
        stdout,
        stderr,
        closer,
        logger,
    })
}

fn open_output(target: &Target) -> anyhow::Result<OwnedFd> {
    let file = match target {
        Target::Null => File::options().write(true).open("/dev/null"),
        Target::Fifo(path) => File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path),
        Target::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            File::options().create(true).append(true).open(path)
        }
        Target::Binary { .. } => bail!("a logging binary has no file to open"),
    };
    let path = match target {
        Target::Fifo(p) | Target::File(p) => p.display().to_string(),
        _ => "/dev/null".to_owned(),
    };
    Ok(file.with_context(|| format!("cannot open {path}"))?.into())
}

/// A pipe for the process's stdin, filled from `fifo` by a thread once a writer opens it.
fn stdin_pipe(fifo: &Path) -> anyhow::Result<(OwnedFd, StdinCloser)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .context("cannot make a pipe for stdin")?;
    let closer = StdinCloser(Arc::new(Mutex::new(Some(File::from(write)))));
    let (fifo, writer) = (fifo.to_owned(), closer.clone());
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || copy_stdin(&fifo, &writer))
        .context("cannot start the stdin thread")?;
    Ok((read, closer))
}

fn copy_stdin(fifo: &Path, writer: &StdinCloser) {
    // Blocks until containerd's side opens the FIFO for writing.
    let Ok(mut source) = File::open(fifo) else {
        writer.close();
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut guard = writer.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pipe) = guard.as_mut() else {
            return;
        };
        if pipe.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    writer.close();
}

/// Starts the logging binary of a `binary://` URI as containerd specifies it: the output on
/// fds 3 and 4, a pipe on fd 5 that it closes once it is ready, `CONTAINER_ID` and
/// `CONTAINER_NAMESPACE` in its environment.
fn start_logger(
    out: &Target,
    err: &Target,
    namespace: &str,
    id: &str,
) -> anyhow::Result<(OwnedFd, OwnedFd, Child)> {
    let (Target::Binary { path, args }, true) = (out, out == err) else {
        bail!("a logging binary must take both stdout and stderr");
    };
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let (out_read, out_write) = pipe().context("cannot make a pipe")?;
    let (err_read, err_write) = pipe().context("cannot make a pipe")?;
    let (mut ready_read, ready_write) = pipe().map(|(r, w)| (File::from(r), w))?;
    let mut command = Command::new(path);
    command
        .args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(ChildStdio::null())
        .stdout(ChildStdio::null())
        .stderr(ChildStdio::null());
    command
        .fd_mappings(vec![
            FdMapping {
                parent_fd: out_read,
                child_fd: 3,
            },
            FdMapping {
                parent_fd: err_read,
                child_fd: 4,
            },
            FdMapping {
                parent_fd: ready_write,
                child_fd: 5,
            },
        ])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let child = command
        .spawn()
        .with_context(|| format!("cannot start the logging binary {}", path.display()))?;
    // The command holds our copies of its descriptors: without it, EOF means "ready" (or gone).
    drop(command);
    let mut byte = [0u8; 1];
    let _ = ready_read.read(&mut byte);
    Ok((out_write, err_write, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_their_targets() {
        assert_eq!(target("").unwrap(), Target::Null);
        assert_eq!(
            target("/run/x/stdout").unwrap(),
            Target::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            target("file:///var/log/c.log").unwrap(),
            Target::File("/var/log/c.log".into())
        );
        assert_eq!(
            target("binary:///usr/bin/log?tag=web&debug").unwrap(),
            Target::Binary {
                path: "/usr/bin/log".into(),
                args: vec!["tag".into(), "web".into(), "debug".into()],
            }
        );
        assert!(target("s3://bucket/key").is_err());
    }

    #[test]
    fn a_file_uri_gets_both_streams() {
        let dir = moat_jail::testutil::TempDir::new("moat-shim-stdio");
        let path = dir.path().join("logs/c.log");
        let paths = Paths {
            stdout: format!("file://{}", path.display()),
            stderr: format!("file://{}", path.display()),
            ..Paths::default()
        };
        let opened = open(&paths, "ns", "c").unwrap();
        File::from(opened.stdout).write_all(b"out\n").unwrap();
        File::from(opened.stderr).write_all(b"err\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "out\nerr\n");
    }

    #[test]
    fn closing_stdin_ends_the_pipe_even_without_a_writer() {
        let dir = moat_jail::testutil::TempDir::new("moat-shim-stdio");
        let fifo = dir.path().join("stdin");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::RWXU).unwrap();
        let (read, closer) = stdin_pipe(&fifo).unwrap();
        closer.close();
        let mut text = String::new();
        File::from(read).read_to_string(&mut text).unwrap();
        assert_eq!(text, "");
    }
}
