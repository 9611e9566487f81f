//! `moat exec`: another process in a running container, set up as the container's own (its
//! capabilities, no_new_privs, rlimits, seccomp profile, namespaces and cgroup) with docker's
//! `exec` overrides.

use std::path::Path;

use clap::Args;
use moat_runtime::config::{parse_env, parse_workdir, EnvArg};
use moat_runtime::sandbox::control::{Request, StdioSpec};
use moat_runtime::sandbox::record::Status;
use moat_runtime::sandbox::store;

use crate::attach;

/// `moat exec`'s flags.
#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Run in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvArg>,
    /// User and group, names or ids
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long, value_name = "DIR", value_parser = parse_workdir)]
    pub workdir: Option<String>,
    /// The container
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// The command and its arguments
    #[arg(required = true, value_name = "COMMAND", allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs `moat exec`; its exit code.
pub fn exec(root: &Path, args: &ExecArgs) -> anyhow::Result<i32> {
    let c = store::find(root, &args.container)?;
    if !c.is_live() || c.state.status != Status::Running {
        anyhow::bail!("Container {} is not running", c.plan.long_id);
    }
    let mut process = c.plan.config.spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    let mut env = process.env().clone().unwrap_or_default();
    for e in &args.env {
        let (key, value) = match e {
            EnvArg::Set(k, v) => (k.clone(), Some(v.clone())),
            EnvArg::Inherit(k) => (k.clone(), std::env::var(k).ok()),
        };
        env.retain(|kv| kv.split('=').next() != Some(key.as_str()));
        if let Some(v) = value {
            env.push(format!("{key}={v}"));
        }
    }
    process.set_env(Some(env));
    if let Some(dir) = &args.workdir {
        process.set_cwd(dir.into());
    }
    if args.tty {
        let (rows, cols) =
            moat_runtime::terminal::window_size().unwrap_or(moat_runtime::terminal::DEFAULT_SIZE);
        let size = oci_spec::runtime::BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build()
            .ok();
        process.set_console_size(size);
    }
    let user = match &args.user {
        Some(u) => Some(u.clone()),
        None => c
            .plan
            .config
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("org.moat.user").cloned())
            .filter(|u| !u.is_empty()),
    };
    let stdin = args.interactive && !args.detach;
    let req = Request::Exec {
        stdio: StdioSpec {
            stdin,
            tty: args.tty,
            tied: false,
            events: false,
        },
        spec: Box::new(process),
        user,
    };
    let target = attach::forward_signals()?;
    Ok(attach::exec(
        &c.dir,
        c.name(),
        &req,
        stdin,
        args.tty,
        args.detach,
        &target,
    )?)
}
