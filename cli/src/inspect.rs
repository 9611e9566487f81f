//! `moat inspect`: a container as JSON, docker's field names where docker has them, plus `VM`:
//! what runs it on the host (vCPUs, memory, the VMM's pid, uid and cgroup, its logs).

use std::path::Path;

use moat_runtime::sandbox::record::Status;
use moat_runtime::sandbox::store::{self, Container};
use serde_json::{json, Value};

use crate::when::rfc3339;

/// The `Uid:` line's real uid of process `pid`.
fn proc_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The cgroup v2 path of process `pid`.
fn proc_cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

fn status_word(c: &Container) -> &'static str {
    if c.is_dead() {
        return "dead";
    }
    match c.state.status {
        Status::Creating | Status::Created => "created",
        Status::Running => "running",
        Status::Paused => "paused",
        Status::Exited => "exited",
    }
}

/// The JSON of one container.
pub fn describe(c: &Container) -> Value {
    let plan = &c.plan;
    let live = c.is_live();
    let vmm = c.state.vmm_pid.filter(|_| live);
    let process = plan.config.spec.process().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let time = |t: Option<u64>| t.map_or_else(|| "0001-01-01T00:00:00Z".to_owned(), rfc3339);
    let console = if live {
        c.dir.join("root/console.log")
    } else {
        c.dir.join(moat_runtime::state::CONSOLE_COPY)
    };
    json!({
        "Id": plan.long_id,
        "Name": format!("/{}", c.name()),
        "Created": rfc3339(c.state.created),
        "Path": args.first().cloned().unwrap_or_default(),
        "Args": args.iter().skip(1).collect::<Vec<_>>(),
        "Image": plan.image,
        "State": {
            "Status": status_word(c),
            "Running": live && matches!(c.state.status, Status::Running | Status::Paused),
            "Paused": live && c.state.status == Status::Paused,
            "Dead": c.is_dead(),
            "Pid": vmm.unwrap_or(0),
            "GuestPid": c.state.guest_pid.filter(|_| live).unwrap_or(0),
            "ExitCode": c.state.exit_code.unwrap_or(0),
            "Error": c.state.error.clone().unwrap_or_default(),
            "StartedAt": time(c.state.started),
            "FinishedAt": time(c.state.finished),
        },
        "RestartCount": c.state.starts.saturating_sub(1),
        "LogPath": c.dir.join(format!("{}-json.log", c.name())),
        "HostConfig": {
            "AutoRemove": plan.auto_remove,
            "LogConfig": {"Type": "json-file", "Config": plan.log_options.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()},
        },
        "Config": {
            "Env": process.env().clone().unwrap_or_default(),
            "WorkingDir": process.cwd(),
            "Tty": plan.config.tty,
            "OpenStdin": plan.config.interactive,
            "StopSignal": plan.stop_signal,
            "StopTimeout": plan.stop_timeout,
        },
        "VM": {
            "Cpus": plan.config.cpus,
            "MemoryMiB": plan.config.memory_mib,
            "VmmPid": vmm,
            "Uid": vmm.and_then(proc_uid),
            "Cgroup": vmm.and_then(proc_cgroup),
            "SupervisorPid": c.state.supervisor_pid.filter(|_| live),
            "Jailed": plan.options.jail,
            "StateDir": c.dir,
            "ConsoleLog": console,
            "VmmLog": c.dir.join("vmm.log"),
        },
    })
}

/// `moat inspect NAME...`: a JSON array; an unknown name fails after the others are printed.
pub fn inspect(root: &Path, names: &[String]) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut missing = None;
    for name in names {
        match store::find(root, name) {
            Ok(c) => found.push(describe(&c)),
            Err(e) => missing = missing.or(Some(e)),
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    match missing {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
