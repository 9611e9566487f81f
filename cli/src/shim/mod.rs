//! `containerd-shim-moat-v2` (runtime type `io.containerd.moat.v2`, docs/containerd.md):
//! containerd's task API v2 over ttrpc, served by the `containerd-shim` crate's 0.8 line.
//!
//! Each task is a moat container: the shim builds its plan from the bundle with the same code
//! as the OCI command line ([`crate::oci`]), starts the same supervisor (this binary's
//! `__supervise DIR`), and drives it over its control socket ([`service`]). The snapshot mounts
//! containerd passes are mounted at the bundle's `rootfs`, where the image code finds the
//! overlay's layers ([`rootfs`]); the FIFOs and log URIs containerd hands over become the
//! descriptors the supervisor writes to ([`stdio`]).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags, StartOpts};

mod config;
mod events;
mod member;
mod metrics;
mod pod_size;
mod process;
mod rootfs;
mod service;
mod stdio;
mod task;

/// The runtime type containerd knows the shim by.
pub const RUNTIME_ID: &str = "io.containerd.moat.v2";

/// Where the shim's containers are linked by id, one directory per containerd namespace
/// (their state directories are the OCI command line's, under `/run/moat/.oci`).
pub const STATE_ROOT: &str = "/run/moat-shim";

/// The shim binary's main: containerd's `start`, `delete` and serve actions, and the
/// supervisor it starts for each container.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "__supervise") {
        return supervise(args.get(2));
    }
    let config = containerd_shim::Config {
        // Logs go to the bundle's `log` FIFO through tracing ([`init_logging`]).
        no_setup_logger: true,
        // The shim waits for its own children; the crate's reaper would steal their statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<Shim>(RUNTIME_ID, Some(config));
    ExitCode::SUCCESS
}

/// `__supervise DIR`, as `moat __supervise` (stdout is the readiness pipe).
fn supervise(dir: Option<&OsString>) -> ExitCode {
    init_stderr_logging();
    let Some(dir) = dir else {
        eprintln!("containerd-shim-moat-v2: __supervise needs a directory");
        return ExitCode::from(125);
    };
    match crate::supervise(Path::new(dir)) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(125)),
        Err(e) => {
            eprintln!(
                "containerd-shim-moat-v2: {}",
                crate::one_line(&format!("{e:#}"))
            );
            ExitCode::from(125)
        }
    }
}

fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

fn init_stderr_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The serving shim logs to the `log` FIFO containerd reads in the bundle (its cwd): opened
/// read-write so that the open never blocks, and non-blocking so that a containerd that stops
/// reading costs log lines, never a stuck shim.
fn init_logging(debug: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let fifo = std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    let level = if debug { "debug" } else { "info" };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(false);
    match fifo {
        Ok(file) => builder.with_writer(std::sync::Mutex::new(file)).init(),
        Err(_) => builder.with_writer(std::io::sink).init(),
    }
}

/// The shim of one container, or of a pod's (its sandbox's and its later containers).
pub struct Shim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    debug: bool,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // A pod's containers go to the shim of its sandbox (containerd runs `start` in the
        // bundle), which answers with its address.
        let grouping = member::grouping(&self.bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        init_stderr_logging();
        let globals = globals(&self.namespace);
        service::clean_up(&globals, &self.id, &self.bundle);
        let mut response = DeleteResponse::new();
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = protobuf::MessageField::some(events::now());
        Ok(response)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> service::Service {
        init_logging(self.debug);
        tracing::info!(id = %self.id, namespace = %self.namespace, "shim serving");
        let events = events::Events::new(publisher, &self.namespace);
        service::Service::new(globals(&self.namespace), events, Arc::clone(&self.exit))
    }
}

use containerd_shim::protos::protobuf;

/// The OCI command line's settings for the shim's containers in `namespace`.
fn globals(namespace: &str) -> crate::oci::Globals {
    crate::oci::Globals {
        root: Path::new(STATE_ROOT).join(namespace),
        data_root: crate::data_root(None),
    }
}
