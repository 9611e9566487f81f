//! The `moat` command: docker-style `run`, each container in its own KVM microVM.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use moat_runtime::assets::{current_exe_dir, AssetSearch, DEFAULT_IMAGE};
use moat_runtime::config::{
    self, build_env, check_args, memory_mib, parse_cpus, parse_env, parse_hostname, parse_name,
    parse_size, parse_user, parse_workdir, AssetOverrides, EnvArg, RunConfig, User,
};
use moat_runtime::run::EXIT_RUNTIME_ERROR;
use moat_runtime::session::Stdio;
use moat_runtime::{RunError, RuntimeOptions};

/// Run containers, each in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "moat", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a new container, in a new microVM
    #[command(
        override_usage = "moat run [OPTIONS] [IMAGE] [CMD [ARG]...]\n       \
                          moat run [OPTIONS] [IMAGE] -- CMD [ARG]...",
        after_help = "Examples:\n  moat run -- echo hi\n  moat run -it busybox sh\n  \
                            moat run -m 512m --cpus 2 -e FOO=bar busybox env"
    )]
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Number of vCPUs (1 to 32)
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_cpus)]
    cpus: u8,
    /// Memory of the VM, e.g. 256m or 1g (default 256m, at least 64m)
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// Set an environment variable (KEY alone copies it from this environment)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<EnvArg>,
    /// Working directory inside the container (default /)
    #[arg(short = 'w', long, value_name = "DIR", value_parser = parse_workdir)]
    workdir: Option<String>,
    /// Keep stdin open and forward it to the container
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal
    #[arg(short = 't', long)]
    tty: bool,
    /// Accepted for docker compatibility: every container is removed when it exits
    #[arg(long)]
    rm: bool,
    /// Container name, also its id (default: random)
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,
    /// Numeric user and group to run as
    #[arg(short = 'u', long, value_name = "UID[:GID]", value_parser = parse_user)]
    user: Option<User>,
    /// Hostname of the container (default: the container id)
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    hostname: Option<String>,
    /// Guest kernel to boot (overrides MOAT_KERNEL)
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs with the guest agent (overrides MOAT_INITRAMFS)
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Debugging only: run the VMM without its jail (as root, in the host's namespaces)
    #[arg(long)]
    no_jail: bool,
    /// Debugging only: run the VMM without its seccomp filters
    #[arg(long)]
    no_seccomp: bool,
    /// Image to run (built-in: busybox)
    #[arg(value_name = "IMAGE")]
    image: Option<String>,
    /// Command and arguments (default: sh); also accepted after `--`
    #[arg(value_name = "CMD", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Command and arguments after `--` (needed when no IMAGE is given)
    #[arg(value_name = "CMD", last = true, hide = true)]
    command: Vec<String>,
}

impl RunArgs {
    /// Validates the flags into a run request (things clap's value parsers cannot check alone).
    fn into_config(self) -> Result<RunConfig, RunError> {
        let id = self.name.unwrap_or_else(config::random_id);
        let hostname = self.hostname.unwrap_or_else(|| id.clone());
        let requested = self
            .memory
            .unwrap_or(u64::from(config::DEFAULT_MEMORY_MIB) << 20);
        let memory_mib = memory_mib(requested, config::host_memory_bytes())?;
        let user = self.user.unwrap_or_default();
        let mut args = self.args;
        args.extend(self.command);
        if args.is_empty() {
            args.push("sh".to_owned());
        }
        check_args(&args)?;
        let env = build_env(&self.env, &hostname, user.uid, self.tty, |k| {
            std::env::var(k).ok()
        });
        Ok(RunConfig {
            id,
            image: self.image.unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
            args,
            env,
            workdir: self.workdir.unwrap_or_else(|| "/".to_owned()),
            user,
            hostname,
            cpus: self.cpus,
            memory_mib,
            interactive: self.interactive,
            tty: self.tty,
            assets: AssetOverrides {
                kernel: self.kernel,
                initramfs: self.initramfs,
            },
        })
    }
}

fn run(args: RunArgs) -> Result<i32, RunError> {
    let (no_jail, no_seccomp) = (args.no_jail, args.no_seccomp);
    let config = args.into_config()?;
    let mut options = RuntimeOptions::from_env(|k| std::env::var(k).ok())?;
    if no_jail {
        eprintln!("moat: warning: --no-jail: the VMM runs as root in the host's namespaces, unconfined (debugging only)");
        options.jail = false;
    }
    if no_seccomp {
        eprintln!("moat: warning: --no-seccomp: moat-vmm runs WITHOUT its seccomp filters (debugging only)");
        options.seccomp = false;
    }
    let env = |k: &str| std::env::var_os(k);
    let search = AssetSearch {
        overrides: &config.assets,
        env: &env,
        exe_dir: current_exe_dir(),
    };
    let assets = search.locate(&config.image)?;
    moat_runtime::run(
        &config,
        &assets,
        &options,
        Stdio::inherit(config.interactive),
    )
}

/// Parses the command line; help and version exit 0, bad input prints one line and exits 125.
fn parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = e.print();
                ExitCode::SUCCESS
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                exit_code(EXIT_RUNTIME_ERROR)
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

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(EXIT_RUNTIME_ERROR as u8))
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Run(args) => run(args),
    };
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => exit_code(code),
        Err(e) => {
            let code = e.exit_code();
            eprintln!("moat: {:#}", anyhow::Error::from(e));
            exit_code(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse_run(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["moat", "run"].iter().chain(args).copied();
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(run) => run,
        })
    }

    fn config(args: &[&str]) -> RunConfig {
        parse_run(args).unwrap().into_config().unwrap()
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_seccomp_is_off_unless_asked_for() {
        assert!(!parse_run(&[]).unwrap().no_seccomp);
        let args = parse_run(&["--no-seccomp", "alpine", "--", "--no-seccomp"]).unwrap();
        assert!(args.no_seccomp);
        assert_eq!(args.command, ["--no-seccomp"]);
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.image, "busybox");
        assert_eq!(c.args, ["sh"]);
        assert_eq!((c.cpus, c.memory_mib), (1, 256));
        assert_eq!(c.workdir, "/");
        assert_eq!(c.user, User { uid: 0, gid: 0 });
        assert_eq!(c.id.len(), 12);
        assert_eq!(c.hostname, c.id);
        assert!(c.env.contains(&format!("HOSTNAME={}", c.id)));
        assert!(c.env.contains(&"HOME=/root".to_owned()));
        assert!(!c.env.iter().any(|e| e.starts_with("TERM=")));
    }

    #[test]
    fn image_and_command_forms() {
        assert_eq!(config(&["--", "echo", "hi"]).args, ["echo", "hi"]);
        let c = config(&["busybox", "echo", "-n", "hi"]);
        assert_eq!(
            (c.image.as_str(), c.args),
            ("busybox", vec!["echo".into(), "-n".into(), "hi".into()])
        );
        let c = config(&["busybox", "--", "ls", "-l"]);
        assert_eq!(c.args, ["ls", "-l"]);
        let c = config(&["busybox", "ls", "--", "-l"]);
        assert_eq!(c.args, ["ls", "--", "-l"]);
    }

    #[test]
    fn flags() {
        let c = config(&[
            "--cpus",
            "2",
            "-m",
            "1g",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "-w",
            "/tmp",
            "-it",
            "--rm",
            "--name",
            "web.1",
            "-u",
            "1000:1000",
            "--hostname",
            "h1",
            "busybox",
            "id",
        ]);
        assert_eq!((c.cpus, c.memory_mib), (2, 1024));
        assert!(c
            .env
            .ends_with(&["TERM=xterm".into(), "A=1".into(), "B=2".into()]));
        assert!(c.env.contains(&"HOME=/".to_owned()));
        assert_eq!(c.workdir, "/tmp");
        assert!(c.interactive && c.tty);
        assert_eq!((c.id.as_str(), c.hostname.as_str()), ("web.1", "h1"));
        assert_eq!(
            c.user,
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(config(&["-m", "16m"]).memory_mib, 64);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--cpus", "0"][..],
            &["--cpus", "99"],
            &["--cpus", "1.5"],
            &["-m", "lots"],
            &["--name", "-x"],
            &["--name", "a/b"],
            &["-u", "root"],
            &["-w", "relative"],
            &["-e", "=x"],
            &["--hostname", "a b"],
            &["--bogus"],
        ] {
            assert!(parse_run(bad).is_err(), "{bad:?} accepted");
        }
        for bad in [&["-m", "0"][..], &["-m", "1T"], &["-m", "1000000g"]] {
            let err = parse_run(bad).unwrap().into_config().unwrap_err();
            assert_eq!(err.exit_code(), 125);
        }
    }
}
