//! A bundle's OCI hooks, run on the host as runc runs them: `prestart` and `createRuntime` once
//! `create` has the container (its pid: the relay), `poststart` after `start`, `poststop` after
//! `delete`; each with the container's state JSON on stdin, exactly its own `env`, and its
//! `timeout`. A failed create hook fails `create` (the container goes); a failed poststart or
//! poststop hook is a warning, as the runtime spec says.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::runtime::{Hook, Hooks};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `create`, after the container exists: `prestart` then `createRuntime`.
    Create,
    /// After `start`.
    Poststart,
    /// After `delete`.
    Poststop,
}

/// The hooks of `stage`, in order.
fn of(hooks: &Hooks, stage: Stage) -> Vec<Hook> {
    let lists = match stage {
        Stage::Create => vec![hooks.prestart(), hooks.create_runtime()],
        Stage::Poststart => vec![hooks.poststart()],
        Stage::Poststop => vec![hooks.poststop()],
    };
    lists.into_iter().flatten().flatten().cloned().collect()
}

/// Runs the hooks of `stage` with `state` (the OCI state JSON) on their stdin. Create hooks
/// stop at the first failure and return it; the later stages warn and go on.
pub fn run(hooks: Option<&Hooks>, stage: Stage, state: &serde_json::Value) -> anyhow::Result<()> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    let input = state.to_string();
    for (i, hook) in of(hooks, stage).iter().enumerate() {
        let result = run_one(hook, input.as_bytes()).with_context(|| {
            format!(
                "error running {stage:?} hook #{i} {}",
                hook.path().display()
            )
        });
        match (result, stage) {
            (Ok(()), _) => {}
            (Err(e), Stage::Create) => return Err(e),
            (Err(e), _) => eprintln!("moat: warning: {}", crate::one_line(&format!("{e:#}"))),
        }
    }
    Ok(())
}

/// Runs one hook to its end (killed after its timeout); an error unless it exits 0.
fn run_one(hook: &Hook, input: &[u8]) -> anyhow::Result<()> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some(arg0) = args.first() {
        cmd.arg0(arg0);
    }
    cmd.args(args.iter().skip(1)).env_clear();
    for entry in hook.env().iter().flatten() {
        if let Some((k, v)) = entry.split_once('=') {
            cmd.env(k, v);
        }
    }
    // Its stderr is ours (the shim's log); nothing waits on its pipes, so a hook that leaves
    // a daemon behind cannot hold `create` up.
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start it")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state may close stdin early.
        let _ = stdin.write_all(input);
    }
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {}s", timeout.unwrap_or_default().as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if !status.success() {
        bail!("{status}");
    }
    Ok(())
}
