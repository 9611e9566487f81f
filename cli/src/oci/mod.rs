//! moat as an OCI runtime, with runc's command line: `create`, `start`, `run`, `state`,
//! `kill`, `delete`, `list`, `exec`, `ps`, `pause`, `resume`, `update`, `features`, and runc's
//! global flags. Docker (`--runtime moat`) and containerd's runc shim drive it as they drive
//! runc; a person can too, with `moat oci VERB`. See docs/docker.md.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod console;
pub(crate) mod create;
mod hooks;
mod relay;
pub mod store;
pub(crate) mod verbs;

pub use relay::{relay_main, RelayArgs};

/// The file in a container's directory that holds its relay's pid.
pub const RELAY_PID: &str = "relay.pid";

/// Verbs only the OCI command line has.
const OCI_VERBS: [&str; 7] = [
    "create", "state", "delete", "list", "resume", "features", "oci",
];
/// Global flags only runc's command line has (Docker and containerd always pass `--log`).
const OCI_GLOBALS: [&str; 5] = [
    "--log",
    "--log-format",
    "--systemd-cgroup",
    "--debug",
    "--rootless",
];
/// Global flags that take a value, of either command line.
const VALUED_GLOBALS: [&str; 5] = [
    "--root",
    "--data-root",
    "--log",
    "--log-format",
    "--rootless",
];

/// Whether `args` (after argv[0]) is an OCI runtime invocation.
pub fn is_oci(args: &[OsString]) -> bool {
    let mut skip = false;
    for arg in args {
        let arg = arg.to_string_lossy();
        if std::mem::take(&mut skip) {
            continue;
        }
        let flag = arg.split('=').next().unwrap_or_default();
        if OCI_GLOBALS.contains(&flag) {
            return true;
        }
        if VALUED_GLOBALS.contains(&arg.as_ref()) {
            skip = true;
            continue;
        }
        if !arg.starts_with('-') {
            return OCI_VERBS.contains(&arg.as_ref());
        }
    }
    false
}

/// runc's command line.
#[derive(Debug, Parser)]
#[command(
    name = "moat",
    version,
    about = "moat as an OCI runtime (runc's command line)"
)]
struct OciCli {
    /// Root directory for the containers' state
    #[arg(long, global = true, value_name = "DIR", default_value = store::DEFAULT_ROOT)]
    root: PathBuf,
    /// Where images and writable layers live (default /var/lib/moat; or MOAT_DATA_ROOT)
    #[arg(long, global = true, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// Log file (errors and, with --debug, more)
    #[arg(long, global = true, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Debug logging
    #[arg(long, global = true)]
    debug: bool,
    /// linux.cgroupsPath is systemd's slice:prefix:name (moat refuses linux.cgroupsPath for
    /// now: the VM's host cgroup is moat's own)
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc's compatibility (moat runs as root)
    #[arg(long, global = true, hide = true, value_name = "BOOL")]
    rootless: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Create a container from a bundle (it waits for `start`)
    Create(create::CreateArgs),
    /// Start a created container
    Start(IdArg),
    /// Create and start a container
    Run(create::RunArgs),
    /// Print a container's state as JSON
    State(IdArg),
    /// Send a signal to a container's process (default SIGTERM)
    Kill(verbs::KillArgs),
    /// Delete a container
    Delete(verbs::DeleteArgs),
    /// List containers
    List(verbs::ListArgs),
    /// Run a process in a running container
    Exec(create::ExecArgs),
    /// The host processes of a container
    Ps(verbs::PsArgs),
    /// Freeze a container's processes
    Pause(IdArg),
    /// Thaw them
    Resume(IdArg),
    /// Change a container's resource limits
    Update(verbs::UpdateArgs),
    /// What this runtime supports, as OCI features JSON
    Features,
}

/// A container id.
#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// The container's id
    #[arg(value_name = "ID")]
    pub id: String,
}

/// The settings every verb shares.
pub struct Globals {
    /// `--root`.
    pub root: PathBuf,
    /// The data root.
    pub data_root: PathBuf,
}

/// Runs the OCI command line `args` (argv[0] first); the process's exit code.
pub fn main(mut args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == "oci") {
        args.remove(1);
    }
    let cli = match OciCli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let (log, format) = (cli.log.clone(), cli.log_format);
    let globals = Globals {
        root: cli.root,
        data_root: crate::data_root(cli.data_root),
    };
    let result = dispatch(cli.verb, &globals);
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = crate::one_line(&format!("{e:#}"));
            eprintln!("moat: {message}");
            if let Some(path) = log {
                log_error(&path, format, &message);
            }
            // runc exits 1 on every error.
            1
        }
    }
}

fn dispatch(verb: Verb, g: &Globals) -> anyhow::Result<i32> {
    match verb {
        Verb::Create(a) => create::create(g, &a).map(|()| 0),
        Verb::Start(a) => verbs::start(g, &a.id).map(|()| 0),
        Verb::Run(a) => create::run(g, &a),
        Verb::State(a) => verbs::state(g, &a.id).map(|()| 0),
        Verb::Kill(a) => verbs::kill(g, &a).map(|()| 0),
        Verb::Delete(a) => verbs::delete(g, &a).map(|()| 0),
        Verb::List(a) => verbs::list(g, &a).map(|()| 0),
        Verb::Exec(a) => create::exec(g, &a),
        Verb::Ps(a) => verbs::ps(g, &a).map(|()| 0),
        Verb::Pause(a) => verbs::pause(g, &a.id, true).map(|()| 0),
        Verb::Resume(a) => verbs::pause(g, &a.id, false).map(|()| 0),
        Verb::Update(a) => verbs::update(g, &a).map(|()| 0),
        Verb::Features => verbs::features().map(|()| 0),
    }
}

/// Appends an error to `--log` as runc does: containerd reads the last `level=error` entry.
fn log_error(path: &std::path::Path, format: LogFormat, message: &str) {
    let time = moat_logs::time::format_rfc3339_nano(std::time::SystemTime::now());
    let line = match format {
        LogFormat::Json => {
            serde_json::json!({"level": "error", "msg": message, "time": time}).to_string()
        }
        LogFormat::Text => format!("time={time:?} level=error msg={message:?}"),
    };
    let file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(args: &[&str]) -> bool {
        is_oci(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn oci_invocations_are_told_from_docker_style_ones() {
        assert!(oci(&[
            "--root",
            "/run/x",
            "--log",
            "l.json",
            "--log-format",
            "json",
            "kill",
            "a",
            "9"
        ]));
        assert!(oci(&["--log=l", "start", "a"]));
        assert!(oci(&["create", "--bundle", "b", "a"]));
        assert!(oci(&["--root", "/run/x", "state", "a"]));
        assert!(oci(&["oci", "list"]));
        assert!(oci(&["--systemd-cgroup", "run", "a"]));
        assert!(!oci(&["run", "--", "echo", "hi"]));
        assert!(!oci(&["--root", "/run/x", "ps", "-a"]));
        assert!(!oci(&["--root", "delete", "ps"]));
        assert!(!oci(&["kill", "-s", "TERM", "web"]));
        assert!(!oci(&[]));
    }

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        OciCli::command().debug_assert();
    }
}
