//! `moat run` through the container's supervisor: `-d` starts it and prints its id; in the
//! foreground the CLI attaches its stdio, starts it and exits with its code (the container is
//! then removed, as with docker's `--rm`).

use std::path::Path;

use clap::Args;
use moat_runtime::assets::Assets;
use moat_runtime::config::RunConfig;
use moat_runtime::sandbox::client::{self, ClientError};
use moat_runtime::sandbox::control::{Reply, Request, StdioSpec};
use moat_runtime::sandbox::record::{self, Plan};
use moat_runtime::sandbox::store;
use moat_runtime::RuntimeOptions;

use crate::attach::{self, Target};
use crate::signals;

/// `moat run`'s flags about the container's life.
#[derive(Debug, Clone, Default, Args)]
pub struct LifeArgs {
    /// Run the container in the background and print its id
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Log options of the json-file log: max-size=SIZE, max-file=N
    #[arg(long = "log-opt", value_name = "OPT", value_parser = parse_log_opt)]
    pub log_opt: Vec<(String, String)>,
    /// Signal that stops the container (default: the image's StopSignal, else SIGTERM)
    #[arg(long, value_name = "SIGNAL", value_parser = signals::parse_arg)]
    pub stop_signal: Option<i32>,
    /// Seconds `stop` waits before it kills the container (default 10)
    #[arg(long, value_name = "SECS")]
    pub stop_timeout: Option<u32>,
}

fn parse_log_opt(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("invalid log option {text:?}: expected KEY=VALUE")),
    }
}

/// What `moat run` decided besides the runtime's config.
pub struct RunRequest {
    /// The container.
    pub config: RunConfig,
    /// Its assets.
    pub assets: Assets,
    /// Runtime settings.
    pub options: RuntimeOptions,
    /// The life flags.
    pub life: LifeArgs,
    /// `--rm`.
    pub rm: bool,
    /// The image as named.
    pub image: String,
    /// The image's StopSignal.
    pub image_stop_signal: Option<String>,
    /// A stored image's disk (a link the CLI holds for the time of its own run).
    pub stored_disk: Option<std::path::PathBuf>,
}

fn plan_of(req: RunRequest) -> Result<Plan, ClientError> {
    let stop_signal = match (req.life.stop_signal, &req.image_stop_signal) {
        (Some(s), _) => s,
        (None, Some(name)) => signals::parse(name).ok_or_else(|| ClientError::Failed {
            message: format!("the image's StopSignal {name:?} is not a signal"),
            code: 125,
        })?,
        (None, None) => SIGTERM,
    };
    moat_logs::LogOptions::parse(&req.life.log_opt).map_err(|e| ClientError::Failed {
        message: e.to_string(),
        code: 125,
    })?;
    let command = req
        .config
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    Ok(Plan {
        long_id: record::long_id(),
        image: req.image,
        command,
        auto_remove: req.rm || !req.life.detach,
        stop_signal,
        stop_timeout: req.life.stop_timeout.unwrap_or(10),
        log_options: req.life.log_opt,
        oci_bundle: None,
        config: req.config,
        assets: req.assets,
        options: req.options,
    })
}

/// The stop signal when neither the flag nor the image names one.
const SIGTERM: i32 = 15;

/// Runs the container of `req`; the exit code `moat run` exits with.
pub fn run(req: RunRequest) -> anyhow::Result<i32> {
    let (detach, interactive, tty) = (req.life.detach, req.config.interactive, req.config.tty);
    let stored_disk = req.stored_disk.clone();
    let mut plan = plan_of(req)?;
    if stored_disk.is_some() {
        plan.assets.image = Some(moat_runtime::sandbox::remove::image_link(&plan));
    }
    let dir = store::reserve(&plan.options.state_root, &plan)?;
    if let Some(disk) = stored_disk {
        if let Err(e) = moat_runtime::sandbox::remove::link_image(&disk, &plan) {
            forget(&dir);
            return Err(e.into());
        }
    }
    let name = plan.config.id.clone();
    let target = attach::forward_signals()?;
    let exe = std::env::current_exe()?;
    let on_spawn = |pid: u32| attach::set_target(&target, Target::Pid(pid));
    let mut child = match client::spawn_supervisor(&exe, &dir, &on_spawn, !detach) {
        Ok(child) => child,
        Err(e) => {
            forget(&dir);
            return Err(e.into());
        }
    };
    if detach {
        let reply = client::request(&dir, &name, &Request::Start)?;
        if let Reply::Error { message, code } = reply {
            let _ = client::request(&dir, &name, &Request::Remove);
            let _ = child.wait();
            return Err(ClientError::Failed { message, code }.into());
        }
        println!("{}", plan.long_id);
        return Ok(0);
    }
    let stdio = StdioSpec {
        stdin: interactive,
        tty,
        tied: false,
        events: false,
    };
    let stream = attach::open_with_stdio(&dir, &name, &Request::Attach(stdio), interactive)?;
    attach::target_conn(&target, &stream);
    let _raw = if tty && interactive {
        moat_runtime::terminal::RawMode::enter().ok().flatten()
    } else {
        None
    };
    if tty {
        attach::send_size(&stream);
    }
    let started = client::request(&dir, &name, &Request::Start);
    let code = attach::wait_exit(&stream);
    drop(_raw);
    let _ = child.wait();
    match started {
        Ok(Reply::Error { message, code }) => Err(ClientError::Failed { message, code }.into()),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(code?),
    }
}

/// Removes what is left of a container whose supervisor failed to create it.
fn forget(dir: &Path) {
    if let Ok(c) = moat_runtime::sandbox::store::Container::load(dir) {
        if !c.supervised {
            store::remove_unsupervised(&c);
        }
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}
