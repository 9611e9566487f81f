//! `create`, `run` and `exec` of the OCI command line: a container from a bundle (through the
//! same supervisor as `moat run`), the relay whose pid the pid file names, the console socket.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use moat_runtime::assets::{current_exe_dir, AssetSearch};
use moat_runtime::sandbox::client::{self, ClientError};
use moat_runtime::sandbox::control::{Reply, Request, StdioSpec};
use moat_runtime::sandbox::record::{Plan, Status};
use moat_runtime::sandbox::store::Container;
use moat_runtime::RuntimeOptions;

use super::{console, hooks, relay, store, Globals};

/// `create`'s flags (runc's).
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem)
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// Write the pid of the container's host process (its relay) here
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Send the pty master of a terminal container to this AF_UNIX socket
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Accepted: the container's root is the guest's own (nothing to pivot on the host)
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted: the guest kernel's keyrings are the VM's own
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Extra descriptors to pass: refused when not 0 (they cannot reach the guest)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container's id
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `run`'s flags: `create`'s and `--detach`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    create: CreateArgs,
    /// Return once the container started
    #[arg(short, long)]
    detach: bool,
}

/// `exec`'s flags (runc's).
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// The process as OCI JSON (its args, env, cwd, user, capabilities...)
    #[arg(short, long, value_name = "FILE")]
    process: Option<PathBuf>,
    /// Return once the process started
    #[arg(short, long)]
    detach: bool,
    /// Write the pid of the process's host relay here
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Send the pty master to this AF_UNIX socket
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Give the process a terminal
    #[arg(short, long)]
    tty: bool,
    /// Working directory
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Environment variables to add
    #[arg(short, long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// User as UID[:GID]
    #[arg(short, long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// The container's id
    #[arg(value_name = "ID")]
    id: String,
    /// The command and its arguments (without --process)
    #[arg(value_name = "COMMAND", allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `create`.
pub fn create(g: &Globals, a: &CreateArgs) -> anyhow::Result<()> {
    let made = make(g, a)?;
    let tty = made.plan.config.tty;
    let attached = attach(&made, a.console_socket.as_deref(), tty, true)
        .and_then(|(stream, pty)| detach_relay(stream, pty, a.pid_file.as_deref(), &made))
        .and_then(|()| create_hooks(&a.id, &made));
    attached.inspect_err(|_| discard(g, &a.id, &made))
}

/// The prestart and createRuntime hooks, with the created container's state.
fn create_hooks(id: &str, made: &Made) -> anyhow::Result<()> {
    let Some(hooks) = &made.plan.config.hooks else {
        return Ok(());
    };
    let c = Container::load(&made.dir)?;
    let mut state = super::verbs::state_json(id, &c);
    state["status"] = "creating".into();
    hooks::run(Some(hooks), hooks::Stage::Create, &state)
}

/// Moves `pid` (a relay, or this process relaying in the foreground) into the VM's host cgroup
/// when the bundle named one (`linux.cgroupsPath`): where containerd looks for the container.
fn join_cgroup(plan: &Plan, pid: u32) -> anyhow::Result<()> {
    let (Some(path), true) = (&plan.config.cgroup_path, plan.options.jail) else {
        return Ok(());
    };
    let cgroup = moat_jail::cgroup::CgroupPath::parse(path)?;
    moat_jail::cgroup::join(&plan.options.cgroup_root, &cgroup, pid)
        .with_context(|| format!("cannot move process {pid} into the container's cgroup"))
}

/// `run`: create, start, and (without `--detach`) relay in the foreground.
pub fn run(g: &Globals, a: &RunArgs) -> anyhow::Result<i32> {
    let made = make(g, &a.create)?;
    let tty = made.plan.config.tty;
    let own_terminal = tty && !a.detach && a.create.console_socket.is_none();
    let attached = if own_terminal {
        own_attach(&made, true).map(|s| (s, None))
    } else {
        attach(&made, a.create.console_socket.as_deref(), tty, a.detach)
    };
    let (stream, pty) = attached.inspect_err(|_| discard(g, &a.create.id, &made))?;
    let pid_file = a.create.pid_file.as_deref();
    if a.detach {
        // The pid file names the relay, which holds the process before it starts.
        detach_relay(stream, pty, pid_file, &made)
            .and_then(|()| create_hooks(&a.create.id, &made))
            .and_then(|()| super::verbs::start(g, &a.create.id))
            .inspect_err(|_| discard(g, &a.create.id, &made))?;
        return Ok(0);
    }
    let own = std::process::id();
    // This process is the relay: a network namespace of its own, as a detached relay has.
    let prepared = moat_jail::privs::own_network_namespace()
        .context("cannot make the relay's network namespace")
        .and_then(|()| join_cgroup(&made.plan, own))
        .and_then(|()| {
            std::fs::write(made.dir.join(super::RELAY_PID), own.to_string()).map_err(Into::into)
        })
        .and_then(|()| pid_file.map_or(Ok(()), |path| relay::write_pid_file(path, own)))
        .and_then(|()| create_hooks(&a.create.id, &made))
        .and_then(|()| super::verbs::start(g, &a.create.id));
    prepared.inspect_err(|_| discard(g, &a.create.id, &made))?;
    let _raw = if own_terminal {
        moat_runtime::terminal::RawMode::enter().ok().flatten()
    } else {
        None
    };
    let tty_file = if own_terminal {
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(File::from)
    } else {
        pty.map(|p| p.slave)
    };
    relay::serve(&stream, tty_file)
}

/// A container made and created by its supervisor, waiting for `start`.
struct Made {
    plan: Plan,
    dir: PathBuf,
}

/// The bundle's config as moat runs it, the container's directories, and its supervisor.
fn make(g: &Globals, a: &CreateArgs) -> anyhow::Result<Made> {
    store::check_id(&a.id)?;
    if store::find(&g.root, &a.id).is_some() {
        bail!("container with id exists: {}", a.id);
    }
    if a.preserve_fds != 0 {
        bail!("--preserve-fds: descriptors cannot reach a container in its own VM");
    }
    let bundle = std::path::absolute(&a.bundle)?;
    let plan = plan_of(g, &a.id, &bundle)?;
    if plan.config.tty && a.console_socket.is_none() {
        // `run` in the foreground gives the container our terminal instead.
    } else if !plan.config.tty && a.console_socket.is_some() {
        bail!("cannot use console socket if the container has no terminal (process.terminal)");
    }
    let dir = store::reserve(&g.root, &a.id, &plan)?;
    let exe = std::env::current_exe()?;
    match client::spawn_supervisor(&exe, &dir, &|_| {}, false) {
        // The supervisor lives on: it is the container's, not ours.
        Ok(child) => drop(child),
        Err(e) => {
            forget(&g.root, &a.id, &dir);
            return Err(e.into());
        }
    }
    Ok(Made { plan, dir })
}

fn plan_of(g: &Globals, id: &str, bundle: &Path) -> anyhow::Result<Plan> {
    plan_with(g, id, bundle, &[])
}

/// The plan of container `id` from `bundle`, with `extra` flags of `moat run` (the shim's VM
/// size).
pub(crate) fn plan_with(
    g: &Globals,
    id: &str,
    bundle: &Path,
    extra: &[String],
) -> anyhow::Result<Plan> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        run: crate::run_args::RunArgs,
    }
    let name = store::dir_name();
    let bundle_arg = bundle.to_string_lossy();
    let mut args = vec!["run", "--bundle", &bundle_arg, "--name", &name];
    args.extend(extra.iter().map(String::as_str));
    let wrap = Wrap::try_parse_from(args).context("reading the bundle")?;
    let mut config = wrap.run.into_config_with(None)?;
    let process = config.spec.process().clone().unwrap_or_default();
    config.tty = process.terminal().unwrap_or(false);
    config.interactive = true;
    let mut options = RuntimeOptions::from_env(|k| std::env::var(k).ok())?;
    options.data_root = g.data_root.clone();
    options.state_root = store::state_base();
    let env = |k: &str| std::env::var_os(k);
    let search = AssetSearch {
        overrides: &config.assets,
        env: &env,
        exe_dir: current_exe_dir(),
    };
    let assets = search.locate(None)?;
    Ok(Plan {
        long_id: id.to_owned(),
        image: bundle.display().to_string(),
        command: process.args().clone().unwrap_or_default(),
        auto_remove: false,
        stop_signal: 15,
        stop_timeout: 10,
        log_options: Vec::new(),
        oci_bundle: Some(bundle.to_owned()),
        config,
        assets,
        options,
    })
}

/// Attaches to the created process, tied: with a terminal, a host pty whose master goes to the
/// console socket; else our own stdio (the shim's pipes).
fn attach(
    made: &Made,
    console_socket: Option<&Path>,
    tty: bool,
    detached: bool,
) -> anyhow::Result<(UnixStream, Option<console::Pty>)> {
    let name = made.plan.config.id.as_str();
    let req = Request::Attach(StdioSpec {
        stdin: true,
        tty,
        tied: true,
        events: false,
    });
    match (tty, console_socket) {
        (true, Some(socket)) => {
            let pty = console::Pty::open()?;
            let slave = pty.slave.as_fd();
            let stream = client::open_process(&made.dir, name, &req, &[slave, slave, slave])?;
            console::send_master(socket, &pty.master)?;
            Ok((stream, Some(pty)))
        }
        (true, None) if detached => {
            bail!("cannot allocate a terminal for a detached container without --console-socket")
        }
        _ => Ok((own_attach(made, tty)?, None)),
    }
}

/// Attaches with our own stdin, stdout and stderr.
fn own_attach(made: &Made, tty: bool) -> anyhow::Result<UnixStream> {
    let req = Request::Attach(StdioSpec {
        stdin: true,
        tty,
        tied: true,
        events: false,
    });
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let fds: [BorrowedFd<'_>; 3] = [i.as_fd(), o.as_fd(), e.as_fd()];
    Ok(client::open_process(
        &made.dir,
        &made.plan.config.id,
        &req,
        &fds,
    )?)
}

/// Hands `stream` to a relay process (in the container's cgroup) and writes its pid where asked.
fn detach_relay(
    stream: UnixStream,
    pty: Option<console::Pty>,
    pid_file: Option<&Path>,
    made: &Made,
) -> anyhow::Result<()> {
    let mut child = relay::spawn(stream, pty.as_ref().map(|p| p.path.as_path()))?;
    if let Err(e) = join_cgroup(&made.plan, child.id()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    std::fs::write(made.dir.join(super::RELAY_PID), child.id().to_string())?;
    if let Some(path) = pid_file {
        relay::write_pid_file(path, child.id())?;
    }
    Ok(())
}

/// Undoes a failed create: the supervisor removes the container, we the link.
fn discard(g: &Globals, id: &str, made: &Made) {
    let _ = client::request(&made.dir, &made.plan.config.id, &Request::Remove);
    forget(&g.root, id, &made.dir);
}

/// Removes what is left of a container without a supervisor, and its link.
pub(crate) fn forget(root: &Path, id: &str, dir: &Path) {
    if let Ok(c) = Container::load(dir) {
        if !c.supervised {
            moat_runtime::sandbox::store::remove_unsupervised(&c);
        }
    } else if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    store::unlink(root, id);
}

/// `exec`.
pub fn exec(g: &Globals, a: &ExecArgs) -> anyhow::Result<i32> {
    let c = store::find(&g.root, &a.id).ok_or_else(|| anyhow::anyhow!(store::NOT_EXIST))?;
    match (c.is_live(), c.state.status) {
        (true, Status::Running) => {}
        (true, Status::Paused) => bail!("cannot exec in a paused container"),
        (true, Status::Created | Status::Creating) => bail!("cannot exec in a created container"),
        _ => bail!("cannot exec in a stopped container"),
    }
    let process = exec_process(&c, a)?;
    let tty = process.terminal().unwrap_or(false);
    if tty && a.detach && a.console_socket.is_none() {
        bail!("cannot allocate a terminal for a detached process without --console-socket");
    }
    let req = Request::Exec {
        stdio: StdioSpec {
            stdin: true,
            tty,
            tied: true,
            events: false,
        },
        spec: Box::new(process),
        user: None,
    };
    let pty = match (&a.console_socket, tty) {
        (Some(_), true) => Some(console::Pty::open()?),
        _ => None,
    };
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let fds: [BorrowedFd<'_>; 3] = match &pty {
        Some(p) => [p.slave.as_fd(), p.slave.as_fd(), p.slave.as_fd()],
        None => [i.as_fd(), o.as_fd(), e.as_fd()],
    };
    let stream = client::open_process(&c.dir, c.name(), &req, &fds)?;
    match client::next_reply(&stream)? {
        Reply::Started { .. } => {}
        Reply::Error { message, code } => return Err(ClientError::Failed { message, code }.into()),
        _ => return Err(ClientError::Gone.into()),
    }
    if let (Some(p), Some(socket)) = (&pty, &a.console_socket) {
        console::send_master(socket, &p.master)?;
    }
    if a.detach {
        let child = relay::spawn(stream, pty.as_ref().map(|p| p.path.as_path()))?;
        join_cgroup(&c.plan, child.id())?;
        if let Some(path) = &a.pid_file {
            relay::write_pid_file(path, child.id())?;
        }
        return Ok(0);
    }
    join_cgroup(&c.plan, std::process::id())?;
    if let Some(path) = &a.pid_file {
        relay::write_pid_file(path, std::process::id())?;
    }
    let _raw = if tty && pty.is_none() {
        moat_runtime::terminal::RawMode::enter().ok().flatten()
    } else {
        None
    };
    let tty_file = match pty {
        Some(p) => Some(p.slave),
        None if tty => std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(File::from),
        None => None,
    };
    relay::serve(&stream, tty_file)
}

/// The exec's process: `--process`, or the container's own with these args and flags.
fn exec_process(c: &Container, a: &ExecArgs) -> anyhow::Result<oci_spec::runtime::Process> {
    if let Some(path) = &a.process {
        if !a.command.is_empty() {
            bail!("--process and a command cannot be given together");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut process: oci_spec::runtime::Process =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if let Some(profile) = process.apparmor_profile().clone().filter(|p| !p.is_empty()) {
            eprintln!(
                "moat: warning: apparmorProfile {profile:?} not applied: it names a host \
                 AppArmor profile and the process runs in its own VM's kernel"
            );
            process.set_apparmor_profile(None);
        }
        return Ok(process);
    }
    if a.command.is_empty() {
        bail!("exec needs a command or --process");
    }
    let mut process = c.plan.config.spec.process().clone().unwrap_or_default();
    process.set_args(Some(a.command.clone()));
    process.set_terminal(Some(a.tty));
    process.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        process.set_cwd(cwd.into());
    }
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(a.env.iter().cloned());
    process.set_env(Some(env));
    if let Some(user) = &a.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            bail!("--user {user}: expected UID[:GID]");
        };
        let mut u = process.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        process.set_user(u);
    }
    Ok(process)
}
