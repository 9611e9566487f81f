//! The `moat` command (docker-style `run`, each container in its own KVM microVM, and runc's
//! command line) and `containerd-shim-moat-v2` ([`shim`]): one library, two thin binaries
//! (`src/bin/`), so the shim builds its containers from bundles with the same code as `moat`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use moat_runtime::assets::{current_exe_dir, AssetSearch};
use moat_runtime::config::Rootfs;
use moat_runtime::run::EXIT_RUNTIME_ERROR;
use moat_runtime::{RunError, RuntimeOptions};

mod attach;
mod bundle_host;
mod containers;
mod exec;
mod image_config;
mod images;
mod inspect;
mod lifecycle;
mod logs;
mod oci;
mod run_args;
mod run_image;
mod seccomp;
pub mod shim;
mod signals;
mod when;

use run_args::RunArgs;

/// Run containers, each in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "moat", version, propagate_version = true)]
struct Cli {
    /// Where images and writable layers live (default /var/lib/moat; or MOAT_DATA_ROOT)
    #[arg(long, global = true, value_name = "DIR")]
    data_root: Option<std::path::PathBuf>,
    /// Where containers' state lives (default /run/moat)
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a new container, in a new microVM
    #[command(
        override_usage = "moat run [OPTIONS] [IMAGE] [CMD [ARG]...]\n       \
                          moat run [OPTIONS] [IMAGE] -- CMD [ARG]...\n       \
                          moat run [-it] [--name NAME] [VM OPTIONS] --bundle DIR",
        after_help = "Examples:\n  moat run -- echo hi\n  moat run -it busybox sh\n  \
                            moat run -m 512m --cpus 2 -e FOO=bar busybox env\n  \
                            moat run -v /srv/data:/data:ro --read-only busybox ls /data"
    )]
    Run(Box<RunArgs>),
    /// Pull an image from a registry
    Pull(images::PullArgs),
    /// List images
    Images(images::ImagesArgs),
    /// Manage images
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Remove images
    Rmi(images::RmiArgs),
    /// Load images from a `docker save` or OCI-layout tar archive
    Load(images::LoadArgs),
    /// Log in to a registry
    Login(images::LoginArgs),
    /// Log out from a registry
    Logout(images::LogoutArgs),
    /// Manage moat
    #[command(subcommand)]
    System(images::SystemCommand),
    /// List containers
    Ps(containers::PsArgs),
    /// Run a command in a running container
    Exec(exec::ExecArgs),
    /// Print a container's logs
    Logs(logs::LogsArgs),
    /// Stop containers: their stop signal, then SIGKILL after the grace period
    Stop(containers::StopArgs),
    /// Send a signal to containers (default SIGKILL)
    Kill(KillArgs),
    /// Wait until containers stop; print their exit codes
    Wait(containers::NamesArgs),
    /// Remove containers
    Rm(containers::RmArgs),
    /// Show containers as JSON
    Inspect(containers::NamesArgs),
    /// Start stopped containers
    Start(containers::NamesArgs),
    /// Restart containers
    Restart(containers::StopArgs),
    /// Freeze the processes of containers
    Pause(containers::NamesArgs),
    /// Thaw them
    Unpause(containers::NamesArgs),
    /// The host relay of an OCI container's process (started by moat itself)
    #[command(name = "__relay", hide = true)]
    Relay(oci::RelayArgs),
    /// The supervisor of one container (started by moat itself)
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The container's state directory.
        dir: std::path::PathBuf,
    },
}

/// `moat kill`.
#[derive(Debug, clap::Args)]
struct KillArgs {
    /// The signal (name or number)
    #[arg(short, long, value_name = "SIGNAL")]
    signal: Option<String>,
    /// Containers
    #[arg(required = true, value_name = "CONTAINER")]
    names: Vec<String>,
}

/// An error already printed; exit with this code.
#[derive(Debug)]
pub struct Reported(pub i32);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Reported {}

/// The exit code for an error of a command.
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    if let Some(r) = e.downcast_ref::<Reported>() {
        return r.0;
    }
    if let Some(r) = e.downcast_ref::<RunError>() {
        return r.exit_code();
    }
    if let Some(c) = e.downcast_ref::<moat_runtime::sandbox::client::ClientError>() {
        return c.exit_code();
    }
    EXIT_RUNTIME_ERROR
}

/// The container verbs; their exit code.
fn container_command(
    command: Command,
    root: &std::path::Path,
    data_root: &std::path::Path,
) -> anyhow::Result<i32> {
    match command {
        Command::Ps(a) => containers::ps(root, &a)?,
        Command::Exec(a) => return exec::exec(root, &a),
        Command::Logs(a) => logs::logs(root, &a)?,
        Command::Stop(a) => containers::stop(root, &a)?,
        Command::Kill(a) => {
            let signo = containers::kill_signal(a.signal.as_deref())?;
            containers::kill(root, &a.names, signo)?
        }
        Command::Wait(a) => containers::wait(root, &a.names)?,
        Command::Rm(a) => containers::rm(root, &a)?,
        Command::Inspect(a) => inspect::inspect(root, &a.names)?,
        Command::Start(a) => containers::start(root, &a.names)?,
        Command::Restart(a) => containers::restart(root, &a)?,
        Command::Pause(a) => containers::pause(root, &a.names, true)?,
        Command::Unpause(a) => containers::pause(root, &a.names, false)?,
        Command::Supervise { dir } => return supervise(&dir),
        Command::Relay(a) => return oci::relay_main(&a),
        Command::System(images::SystemCommand::Prune { .. }) => containers::prune(root, data_root)?,
        _ => unreachable!("not a container command"),
    }
    Ok(0)
}

/// `moat __supervise DIR`: stdout is the readiness pipe of the CLI that started it.
pub fn supervise(dir: &std::path::Path) -> anyhow::Result<i32> {
    use std::os::fd::AsFd;
    let ready = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    Ok(moat_runtime::sandbox::supervise(dir, ready)?)
}

/// The data root: --data-root, else MOAT_DATA_ROOT, else /var/lib/moat.
pub(crate) fn data_root(flag: Option<std::path::PathBuf>) -> std::path::PathBuf {
    flag.or_else(|| {
        std::env::var_os("MOAT_DATA_ROOT")
            .filter(|d| !d.is_empty())
            .map(Into::into)
    })
    .unwrap_or_else(|| moat_runtime::disks::DATA_ROOT.into())
}

fn image_command(command: Command, data_root: &std::path::Path) -> anyhow::Result<()> {
    use images::ImageCommand as I;
    let store = || images::open_store(data_root);
    match command {
        Command::Run(_) => unreachable!("run is not an image command"),
        Command::Pull(a) | Command::Image(I::Pull(a)) => images::pull(&store()?, &a),
        Command::Images(a) | Command::Image(I::Ls(a)) => images::images(&store()?, &a),
        Command::Image(I::Inspect { images: names }) => images::inspect(&store()?, &names),
        Command::Rmi(a) | Command::Image(I::Rm(a)) => images::rmi(&store()?, &a),
        Command::Load(a) | Command::Image(I::Load(a)) => images::load(&store()?, &a),
        Command::Login(a) => images::login(&a),
        Command::Logout(a) => images::logout(&a),
        Command::System(images::SystemCommand::Df) => images::system_df(&store()?, data_root),
        Command::System(images::SystemCommand::Prune { .. }) => unreachable!("a container verb"),
        _ => unreachable!("not an image command"),
    }
}

fn run(
    args: RunArgs,
    data_root: &std::path::Path,
    state_root: &std::path::Path,
) -> anyhow::Result<i32> {
    let (no_jail, no_seccomp) = (args.no_jail, args.no_seccomp);
    let env = |k: &str| std::env::var_os(k);
    let builtin = |name: &str| {
        let overrides = moat_runtime::config::AssetOverrides::default();
        let search = AssetSearch {
            overrides: &overrides,
            env: &env,
            exe_dir: current_exe_dir(),
        };
        search.locate(Some(name)).is_ok()
    };
    let image = match (&args.bundle, &args.image) {
        (None, Some(name)) => Some(run_image::resolve(
            name,
            args.pull,
            &args.registry,
            data_root,
            &builtin,
        )?),
        _ => None,
    };
    let stored = match &image {
        Some(run_image::RunImage::Stored(stored)) => Some(stored),
        _ => None,
    };
    let image_config = stored
        .map(|s| moat_images::config::ImageConfig::from_json(&s.config))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.image.as_deref().unwrap_or_default()))?;
    let (life, rm) = (args.life.clone(), args.rm);
    let image_name = match (&args.bundle, &args.image) {
        (Some(dir), _) => dir.display().to_string(),
        (None, Some(name)) => name.clone(),
        (None, None) => moat_runtime::assets::DEFAULT_IMAGE.to_owned(),
    };
    let image_stop_signal = image_config
        .as_ref()
        .and_then(|c| c.config.stop_signal.clone());
    let bundle_dir = args.bundle.clone();
    let mut config = args.into_config_with(image_config.as_ref())?;
    if let (Some(dir), Some(_)) = (&bundle_dir, &config.hooks) {
        anyhow::bail!(
            "--bundle {}: hooks: run only by moat's OCI runtime verbs (moat create/start; \
             docker --runtime moat), on the host",
            dir.display()
        );
    }
    if let Some(stored) = stored {
        config.rootfs = Rootfs::Image(stored.name.clone());
    }
    let mut options = RuntimeOptions::from_env(|k| std::env::var(k).ok())?;
    options.data_root = data_root.to_owned();
    options.state_root = state_root.to_owned();
    if no_jail {
        eprintln!("moat: warning: --no-jail: the VMM runs as root in the host's namespaces, unconfined (debugging only)");
        options.jail = false;
    }
    if no_seccomp {
        eprintln!("moat: warning: --no-seccomp: moat-vmm runs WITHOUT its seccomp filters (debugging only)");
        options.seccomp = false;
    }
    let search = AssetSearch {
        overrides: &config.assets,
        env: &env,
        exe_dir: current_exe_dir(),
    };
    let builtin_name = match (&config.rootfs, stored) {
        (Rootfs::Image(name), None) => Some(name.as_str()),
        _ => None,
    };
    let mut assets = search.locate(builtin_name)?;
    if let Some(stored) = stored {
        assets.image = Some(stored.disk.clone());
    }
    lifecycle::run(lifecycle::RunRequest {
        stored_disk: stored.map(|s| s.disk.clone()),
        config,
        assets,
        options,
        life,
        rm,
        image: image_name,
        image_stop_signal,
    })
}

/// Parses the command line as docker does its own: help, version and a bare `moat` (its usage)
/// print to stdout and exit 0; bad input prints one line and exits 125.
fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp => {
                let _ = e.print();
                ExitCode::SUCCESS
            }
            // The subcommand's version too is moat's (clap would print `moat-run 0.1.0`).
            ErrorKind::DisplayVersion => {
                println!("{}", version());
                ExitCode::SUCCESS
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = Cli::command().print_help();
                ExitCode::SUCCESS
            }
            _ => {
                let text = e.to_string();
                let line = text.lines().next().unwrap_or("invalid arguments");
                eprintln!("moat: {}", line.strip_prefix("error: ").unwrap_or(line));
                exit_code(EXIT_RUNTIME_ERROR)
            }
        }
    })
}

/// An error as one line: what a registry or an archive said may hold newlines and control
/// characters, which must not reach the user's terminal as such.
pub fn one_line(text: &str) -> String {
    text.trim_end()
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// What `-V`/`--version` prints, for `moat` and its subcommands alike.
pub(crate) fn version() -> String {
    format!("moat {}", env!("CARGO_PKG_VERSION"))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_RUNTIME_ERROR as u8))
}

/// The `moat` binary's main.
pub fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,rustls_platform_verifier=off")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if oci::is_oci(&args[1.min(args.len())..]) {
        return exit_code(oci::main(args));
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let data_root = data_root(cli.data_root);
    let state_root = containers::state_root(cli.root.as_deref());
    let result = match cli.command {
        Command::Run(args) => run(*args, &data_root, &state_root),
        c @ (Command::Ps(_)
        | Command::Exec(_)
        | Command::Logs(_)
        | Command::Stop(_)
        | Command::Kill(_)
        | Command::Wait(_)
        | Command::Rm(_)
        | Command::Inspect(_)
        | Command::Start(_)
        | Command::Restart(_)
        | Command::Pause(_)
        | Command::Unpause(_)
        | Command::System(images::SystemCommand::Prune { .. })
        | Command::Supervise { .. }
        | Command::Relay(_)) => container_command(c, &state_root, &data_root),
        other => {
            let result = image_command(other, &data_root);
            let _ = std::io::stdout().flush();
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("moat: {}", one_line(&format!("{e:#}")));
                    exit_code(EXIT_RUNTIME_ERROR)
                }
            };
        }
    };
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => exit_code(code),
        Err(e) => {
            let code = exit_code_of(&e);
            if e.downcast_ref::<Reported>().is_none() {
                eprintln!("moat: {}", one_line(&format!("{e:#}")));
            }
            exit_code(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_as_one_line() {
        assert_eq!(one_line("a\nb\x1b[31m\n"), "a b?[31m");
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bare_moat_and_versions() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().kind();
        assert_eq!(
            kind(&["moat"]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        for args in [
            &["moat", "-V"][..],
            &["moat", "--version"],
            &["moat", "run", "-V"],
        ] {
            assert_eq!(kind(args), ErrorKind::DisplayVersion, "{args:?}");
        }
        assert_eq!(version(), "moat 0.1.0");
    }
}
