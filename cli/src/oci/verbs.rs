//! The OCI verbs on an existing container, with runc's allowed and refused transitions and its
//! words where containerd's shim matches them ("does not exist", "container not running").

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moat_runtime::sandbox::client::{self, ClientError};
use moat_runtime::sandbox::control::{Reply, Request};
use moat_runtime::sandbox::record::Status;
use moat_runtime::sandbox::store::{self as sandbox_store, Container};

use super::{store, Globals, RELAY_PID};

/// `kill`'s arguments.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Every process of the container
    #[arg(short, long)]
    all: bool,
    /// The container's id
    #[arg(value_name = "ID")]
    id: String,
    /// The signal, a name or a number (default SIGTERM)
    #[arg(value_name = "SIGNAL", default_value = "SIGTERM")]
    signal: String,
}

/// `delete`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kill a running container first; an unknown one is no error
    #[arg(short, long)]
    force: bool,
    /// The container's id
    #[arg(value_name = "ID")]
    id: String,
}

/// `list`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// table or json
    #[arg(short, long, default_value = "table")]
    format: String,
    /// Ids only
    #[arg(short, long)]
    quiet: bool,
}

/// `ps`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// table or json
    #[arg(short, long, default_value = "table")]
    format: String,
    /// The container's id
    #[arg(value_name = "ID")]
    id: String,
    /// ps(1) options (table format)
    #[arg(value_name = "PS_ARGS", allow_hyphen_values = true)]
    ps_args: Vec<String>,
}

/// `update`'s arguments.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The new linux.resources as JSON, from this file or `-` (stdin)
    #[arg(short, long, value_name = "FILE")]
    resources: Option<PathBuf>,
    /// The container's id
    #[arg(value_name = "ID")]
    id: String,
}

fn find(g: &Globals, id: &str) -> anyhow::Result<Container> {
    store::find(&g.root, id).ok_or_else(|| anyhow::anyhow!(store::NOT_EXIST))
}

/// runc's name of where `c` is.
fn status_name(c: &Container) -> &'static str {
    if !c.is_live() {
        return "stopped";
    }
    match c.state.status {
        Status::Creating => "creating",
        Status::Created => "created",
        Status::Running => "running",
        Status::Paused => "paused",
        Status::Exited => "stopped",
    }
}

/// The relay's pid while the container lives (0 after, as runc shows a stopped one).
fn relay_pid(c: &Container) -> i64 {
    if !c.is_live() {
        return 0;
    }
    std::fs::read_to_string(c.dir.join(RELAY_PID))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn reply_ok(reply: Reply) -> anyhow::Result<()> {
    match reply {
        Reply::Error { message, code } => Err(ClientError::Failed { message, code }.into()),
        _ => Ok(()),
    }
}

/// `start`.
pub fn start(g: &Globals, id: &str) -> anyhow::Result<()> {
    let c = find(g, id)?;
    match (c.is_live(), c.state.status) {
        (true, Status::Created) => {}
        (true, Status::Running) => bail!("cannot start an already running container"),
        (true, status) if status != Status::Exited => {
            bail!("cannot start a container in the {} state", status_name(&c))
        }
        _ => bail!("cannot start a container that has stopped"),
    }
    reply_ok(client::request(&c.dir, c.name(), &Request::Start)?)?;
    if let Some(hooks) = &c.plan.config.hooks {
        let mut state = state_json(id, &c);
        state["status"] = "running".into();
        super::hooks::run(Some(hooks), super::hooks::Stage::Poststart, &state)?;
    }
    Ok(())
}

/// The OCI state of `c` (with runc's extra fields).
pub(super) fn state_json(id: &str, c: &Container) -> serde_json::Value {
    let rootfs = c
        .plan
        .config
        .spec
        .root()
        .as_ref()
        .map(|r| c.plan.oci_bundle.clone().unwrap_or_default().join(r.path()));
    serde_json::json!({
        "ociVersion": c.plan.config.spec.version(),
        "id": id,
        "pid": relay_pid(c),
        "status": status_name(c),
        "bundle": c.plan.oci_bundle,
        "rootfs": rootfs,
        "created": crate::when::rfc3339(c.state.created),
        "owner": "",
        "annotations": c.plan.config.spec.annotations().clone().unwrap_or_default(),
    })
}

/// `state`.
pub fn state(g: &Globals, id: &str) -> anyhow::Result<()> {
    let c = find(g, id)?;
    println!("{}", serde_json::to_string_pretty(&state_json(id, &c))?);
    Ok(())
}

/// `kill`.
pub fn kill(g: &Globals, a: &KillArgs) -> anyhow::Result<()> {
    let signo = crate::signals::parse(&a.signal)
        .ok_or_else(|| anyhow::anyhow!("unknown signal {:?}", a.signal))?;
    let c = find(g, &a.id)?;
    if !c.is_live() {
        bail!("container not running");
    }
    let req = Request::Signal { signo, all: a.all };
    match client::request(&c.dir, c.name(), &req) {
        Ok(reply) => reply_ok(reply),
        Err(ClientError::NotRunning(_) | ClientError::Gone) => bail!("container not running"),
        Err(e) => Err(e.into()),
    }
}

/// `delete`: a stopped or created container goes; a running one only with `--force`.
pub fn delete(g: &Globals, a: &DeleteArgs) -> anyhow::Result<()> {
    let Some(c) = store::find(&g.root, &a.id) else {
        if a.force {
            store::unlink(&g.root, &a.id);
            return Ok(());
        }
        bail!(store::NOT_EXIST);
    };
    let running = c.is_live() && matches!(c.state.status, Status::Running | Status::Paused);
    if running && !a.force {
        bail!(
            "cannot delete container {} that is not stopped: {}",
            a.id,
            status_name(&c)
        );
    }
    let mut last_state = state_json(&a.id, &c);
    last_state["status"] = "stopped".into();
    if c.is_live() {
        match client::request(&c.dir, c.name(), &Request::Remove) {
            Ok(reply) => reply_ok(reply)?,
            Err(ClientError::NotRunning(_) | ClientError::Gone) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Ok(c) = Container::load(&c.dir) {
        if !c.supervised {
            sandbox_store::remove_unsupervised(&c);
        }
    }
    // The relays share a bundle's cgroup with the VM: the supervisor may have found it busy.
    moat_runtime::sandbox::remove::remove_cgroup(&c.plan);
    store::unlink(&g.root, &a.id);
    super::hooks::run(
        c.plan.config.hooks.as_ref(),
        super::hooks::Stage::Poststop,
        &last_state,
    )
}

/// `delete --force ID`: the container goes whatever its state (the shim's delete).
pub(crate) fn remove(g: &Globals, id: &str) -> anyhow::Result<()> {
    let args = DeleteArgs {
        force: true,
        id: id.to_owned(),
    };
    delete(g, &args)
}

/// `list`.
pub fn list(g: &Globals, a: &ListArgs) -> anyhow::Result<()> {
    let all = store::list(&g.root);
    if a.quiet {
        for (id, _) in &all {
            println!("{id}");
        }
        return Ok(());
    }
    match a.format.as_str() {
        "json" => {
            let states: Vec<_> = all.iter().map(|(id, c)| state_json(id, c)).collect();
            println!("{}", serde_json::to_string(&states)?);
        }
        "table" => {
            println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
            for (id, c) in &all {
                let bundle = c.plan.oci_bundle.clone().unwrap_or_default();
                let created = crate::when::rfc3339(c.state.created);
                let (pid, status) = (relay_pid(c), status_name(c));
                println!(
                    "{id}\t{pid}\t{status}\t{}\t{created}\troot",
                    bundle.display()
                );
            }
        }
        other => bail!("invalid format option {other:?}: table or json"),
    }
    Ok(())
}

/// The host pids of `c`: its relay and its VMM.
fn host_pids(c: &Container) -> Vec<i64> {
    let mut pids = vec![relay_pid(c)];
    pids.extend(c.state.vmm_pid.map(i64::from));
    pids.retain(|p| *p > 0);
    pids
}

/// `ps`.
pub fn ps(g: &Globals, a: &PsArgs) -> anyhow::Result<()> {
    let c = find(g, &a.id)?;
    let pids = if c.is_live() {
        host_pids(&c)
    } else {
        Vec::new()
    };
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID\tCMD");
            for pid in pids {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                println!("{pid}\t{}", comm.trim());
            }
        }
        other => bail!("invalid format option {other:?}: table or json"),
    }
    Ok(())
}

/// `pause` / `resume`.
pub fn pause(g: &Globals, id: &str, pause: bool) -> anyhow::Result<()> {
    let c = find(g, id)?;
    let (status, live) = (c.state.status, c.is_live());
    let req = match (pause, live, status) {
        (true, true, Status::Running) => Request::Pause,
        (true, _, _) => bail!("container not running"),
        (false, true, Status::Paused) => Request::Resume,
        (false, _, _) => bail!("container not paused"),
    };
    reply_ok(client::request(&c.dir, c.name(), &req)?)
}

/// `update --resources F|-`.
pub fn update(g: &Globals, a: &UpdateArgs) -> anyhow::Result<()> {
    let Some(path) = &a.resources else {
        bail!("update needs --resources FILE (or - for stdin): moat takes linux.resources JSON");
    };
    let text = read_arg_file(path)?;
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_str(&text).context("--resources")?;
    let c = find(g, &a.id)?;
    if !c.is_live() {
        bail!("container not running");
    }
    reply_ok(client::request(
        &c.dir,
        c.name(),
        &Request::Update(Box::new(resources)),
    )?)
}

fn read_arg_file(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text)
}

/// `features`: what moat supports, in the OCI features schema.
pub fn features() -> anyhow::Result<()> {
    let caps: Vec<String> = moat_spec::caps::ALL
        .iter()
        .map(|c| format!("CAP_{}", c.to_string().trim_start_matches("CAP_")))
        .collect();
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "tmpcopyup"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": true, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"org.moat.vm": "each container in its own KVM microVM"},
    });
    println!("{}", serde_json::to_string_pretty(&features)?);
    Ok(())
}
