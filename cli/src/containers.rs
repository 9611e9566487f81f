//! Docker's container verbs on moat's long-running containers (docs/lifecycle.md): `ps`,
//! `stop`, `kill`, `wait`, `rm`, `start`, `restart`, `pause`, `unpause`; `exec`, `logs` and
//! `inspect` live in their own modules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use moat_runtime::sandbox::client::{self, ClientError};
use moat_runtime::sandbox::control::{Reply, Request};
use moat_runtime::sandbox::record::Status;
use moat_runtime::sandbox::store::{self, Container, StoreError};

use crate::signals;
use crate::when;

/// `moat ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones)
    #[arg(short, long)]
    pub all: bool,
    /// Only the ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate ids and commands
    #[arg(long)]
    pub no_trunc: bool,
}

/// Verbs that take containers and nothing else.
#[derive(Debug, Args)]
pub struct NamesArgs {
    /// Containers (name, id or id prefix)
    #[arg(required = true, value_name = "CONTAINER")]
    pub names: Vec<String>,
}

/// `moat stop` and `moat restart`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", alias = "timeout", value_name = "SECS")]
    pub time: Option<u32>,
    /// Containers
    #[arg(required = true, value_name = "CONTAINER")]
    pub names: Vec<String>,
}

/// `moat rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill and remove a running container
    #[arg(short, long)]
    pub force: bool,
    /// Containers
    #[arg(required = true, value_name = "CONTAINER")]
    pub names: Vec<String>,
}

/// The state root: `--root`, else /run/moat.
pub fn state_root(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .unwrap_or_else(|| moat_runtime::state::STATE_ROOT.into())
}

fn find(root: &Path, name: &str) -> anyhow::Result<Container> {
    Ok(store::find(root, name)?)
}

/// The docker-style status of `c`: `Up 5 seconds`, `Exited (0) 3 seconds ago`...
pub fn status_text(c: &Container) -> String {
    if c.is_dead() {
        return "Dead".into();
    }
    let now = moat_runtime::sandbox::record::now();
    let since = |t: Option<u64>| when::human(now.saturating_sub(t.unwrap_or(now)));
    match c.state.status {
        Status::Creating | Status::Created => "Created".into(),
        Status::Running => format!("Up {}", since(c.state.started)),
        Status::Paused => format!("Up {} (Paused)", since(c.state.started)),
        Status::Exited => format!(
            "Exited ({}) {} ago",
            c.state.exit_code.unwrap_or(0),
            since(c.state.finished)
        ),
    }
}

fn quoted_command(c: &Container, full: bool) -> String {
    let text = c.plan.command.join(" ");
    let text = if !full && text.chars().count() > 20 {
        let cut: String = text.chars().take(19).collect();
        format!("{cut}…")
    } else {
        text
    };
    format!("\"{text}\"")
}

/// `moat ps`.
pub fn ps(root: &Path, args: &PsArgs) -> anyhow::Result<()> {
    let shown: Vec<Container> = store::list(root)
        .into_iter()
        .filter(|c| args.all || c.is_live() && c.state.status != Status::Created)
        .collect();
    let id = |c: &Container| {
        if args.no_trunc {
            c.plan.long_id.clone()
        } else {
            c.plan.long_id[..12].to_owned()
        }
    };
    if args.quiet {
        for c in &shown {
            println!("{}", id(c));
        }
        return Ok(());
    }
    let now = moat_runtime::sandbox::record::now();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|c| {
            vec![
                id(c),
                c.plan.image.clone(),
                quoted_command(c, args.no_trunc),
                format!("{} ago", when::human(now.saturating_sub(c.state.created))),
                status_text(c),
                String::new(),
                c.name().to_owned(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ];
    print_table(&header, &rows);
    Ok(())
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] + 3 - cell.chars().count();
                out.push_str(&" ".repeat(pad));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Runs `each` on every name, printing what it returns; the first failure fails the command
/// after every name was tried (docker's way).
fn for_each(
    names: &[String],
    mut each: impl FnMut(&str) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<()> {
    let mut first_error = None;
    for name in names {
        match each(name) {
            Ok(Some(line)) => println!("{line}"),
            Ok(None) => {}
            Err(e) => {
                eprintln!("moat: {}", crate::one_line(&format!("{e:#}")));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // Already printed: exit with the error's code and print nothing more.
        Some(e) => Err(crate::Reported(crate::exit_code_of(&e)).into()),
        None => Ok(()),
    }
}

fn check(reply: Reply) -> anyhow::Result<Reply> {
    match reply {
        Reply::Error { message, code } => Err(ClientError::Failed { message, code }.into()),
        other => Ok(other),
    }
}

/// Stops `c` (its stop signal, SIGKILL after `time`) if it runs; a stopped one is fine.
fn stop_if_live(c: &Container, time: Option<u32>) -> anyhow::Result<()> {
    if c.is_live() {
        check(client::request(
            &c.dir,
            c.name(),
            &Request::Stop { timeout: time },
        )?)?;
    }
    Ok(())
}

/// `moat stop`.
pub fn stop(root: &Path, args: &StopArgs) -> anyhow::Result<()> {
    for_each(&args.names, |name| {
        stop_if_live(&find(root, name)?, args.time)?;
        Ok(Some(name.to_owned()))
    })
}

/// `moat kill`.
pub fn kill(root: &Path, names: &[String], signo: i32) -> anyhow::Result<()> {
    for_each(names, |name| {
        let c = find(root, name)?;
        if !c.is_live() {
            bail!(
                "Cannot kill container: {name}: Container {} is not running",
                c.plan.long_id
            );
        }
        check(client::request(
            &c.dir,
            c.name(),
            &Request::Signal { signo, all: false },
        )?)?;
        Ok(Some(name.to_owned()))
    })
}

/// `moat wait`: prints each container's exit code once it has ended.
pub fn wait(root: &Path, names: &[String]) -> anyhow::Result<()> {
    for_each(names, |name| {
        let c = find(root, name)?;
        if c.is_live() {
            match client::request(&c.dir, c.name(), &Request::Wait) {
                Ok(Reply::Exited { code }) => return Ok(Some(code.to_string())),
                Ok(other) => {
                    check(other)?;
                }
                Err(ClientError::NotRunning(_) | ClientError::Gone) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let c = find(root, name)?;
        let code = c
            .state
            .exit_code
            .unwrap_or(if c.is_dead() { 255 } else { 0 });
        Ok(Some(code.to_string()))
    })
}

/// `moat rm`.
pub fn rm(root: &Path, args: &RmArgs) -> anyhow::Result<()> {
    for_each(&args.names, |name| {
        let c = match store::find(root, name) {
            Ok(c) => c,
            Err(StoreError::NotFound(_)) => return remove_unreadable(root, name),
            Err(e) => return Err(e.into()),
        };
        if c.is_live() {
            if !args.force {
                bail!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    c.plan.long_id
                );
            }
            match client::request(&c.dir, c.name(), &Request::Remove) {
                Ok(reply) => {
                    check(reply)?;
                }
                // It ended meanwhile: remove what it left.
                Err(ClientError::NotRunning(_) | ClientError::Gone) => {
                    remove_left(root, name)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else if !store::remove_unsupervised(&c) {
            bail!("No such container: {name}");
        }
        Ok(Some(name.to_owned()))
    })
}

/// `rm` of a name whose state directory cannot be read: removed with a warning line, else
/// docker's "No such container".
fn remove_unreadable(root: &Path, name: &str) -> anyhow::Result<Option<String>> {
    match store::remove_unreadable(root, name) {
        Some(why) => {
            eprintln!(
                "moat: {name}: its state could not be read ({why}); removed its state directory"
            );
            Ok(Some(name.to_owned()))
        }
        None => bail!("No such container: {name}"),
    }
}

fn remove_left(root: &Path, name: &str) -> anyhow::Result<()> {
    match store::find(root, name) {
        Ok(c) if !c.is_live() => {
            store::remove_unsupervised(&c);
            Ok(())
        }
        Ok(_) => bail!("container {name} started again meanwhile"),
        Err(_) => Ok(()),
    }
}

/// Boots a stopped container again (its writable layer as it was) and starts it.
pub fn start_one(c: &Container) -> anyhow::Result<()> {
    let _op = moat_runtime::sandbox::lock::op_lock(&c.dir).context("locking the container")?;
    let c = Container::load(&c.dir)?;
    if c.is_live() {
        // Created but never started (its `run -d` died before asking): its supervisor starts it.
        if matches!(c.state.status, Status::Creating | Status::Created) {
            check(client::request(&c.dir, c.name(), &Request::Start)?)?;
        }
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let child = client::spawn_supervisor(&exe, &c.dir, &|_| {}, false)?;
    drop(child);
    check(client::request(&c.dir, c.name(), &Request::Start)?)?;
    Ok(())
}

/// `moat start`.
pub fn start(root: &Path, names: &[String]) -> anyhow::Result<()> {
    for_each(names, |name| {
        start_one(&find(root, name)?)?;
        Ok(Some(name.to_owned()))
    })
}

/// `moat restart`.
pub fn restart(root: &Path, args: &StopArgs) -> anyhow::Result<()> {
    for_each(&args.names, |name| {
        stop_if_live(&find(root, name)?, args.time)?;
        start_one(&find(root, name)?)?;
        Ok(Some(name.to_owned()))
    })
}

/// `moat pause` / `moat unpause`.
pub fn pause(root: &Path, names: &[String], pause: bool) -> anyhow::Result<()> {
    for_each(names, |name| {
        let c = find(root, name)?;
        if !c.is_live() {
            bail!("Container {} is not running", c.plan.long_id);
        }
        let req = if pause {
            Request::Pause
        } else {
            Request::Resume
        };
        check(client::request(&c.dir, c.name(), &req)?)?;
        Ok(Some(name.to_owned()))
    })
}

/// Parses `moat kill`'s signal flag.
pub fn kill_signal(text: Option<&str>) -> anyhow::Result<i32> {
    match text {
        None => Ok(9),
        Some(t) => signals::parse(t).ok_or_else(|| anyhow::anyhow!("invalid signal: {t}")),
    }
}

/// `moat system prune`: removes every container that is not running (exited, or dead because
/// its supervisor was killed) with everything it had on the host, and the cached image layers
/// of Docker bundles whose layers are gone.
pub fn prune(root: &Path, data_root: &Path) -> anyhow::Result<()> {
    let mut removed = 0;
    for c in store::list(root) {
        if !c.is_live() && store::remove_unsupervised(&c) {
            println!("{}", c.plan.long_id);
            removed += 1;
        }
    }
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if store::remove_unreadable(root, &name).is_some() {
            println!("{name}");
            removed += 1;
        }
    }
    println!("Deleted Containers: {removed}");
    let layers = moat_runtime::layers::prune(data_root);
    if layers > 0 {
        println!("Deleted cached layer images: {layers}");
    }
    Ok(())
}
