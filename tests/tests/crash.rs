//! Crash safety (docs/lifecycle.md): `kill -9` of the CLI, the supervisor or `moat-vmm` while a
//! container boots and while it stops, then `moat ps -a` tells the truth and `moat rm -f`
//! leaves nothing. (Killing them while the container runs: lifecycle.rs.)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_tests::{
    assert_nothing_left, moat, moat_bin, processes_mentioning, unique_name, vm_available,
    vmm_processes_mentioning, wait_with_timeout,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A container process that ignores SIGTERM, so that `stop` waits out its grace period.
const STUBBORN: &str = "trap '' TERM; echo started; while true; do sleep 0.2; done";

/// The `settled` state of a container that `ps -a` no longer lists.
const GONE: &str = "(gone)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Cli,
    Supervisor,
    Vmm,
}

fn kill9(pids: &[u32]) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

fn spawn_moat(args: &[&str]) -> Child {
    Command::new(moat_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moat")
}

/// Waits until `find` returns pids; panics after two minutes.
#[track_caller]
fn wait_for_pids(what: &str, find: impl Fn() -> Vec<u32>) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pids = find();
        if !pids.is_empty() {
            return pids;
        }
        assert!(Instant::now() < deadline, "no {what} appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn supervisors(name: &str) -> Vec<u32> {
    processes_mentioning("__supervise", &format!("/run/moat/{name}"))
}

/// The first of `settled` that `moat ps -a`'s line for `name` shows, within a minute.
#[track_caller]
fn settled_status(name: &str, settled: &[&'static str]) -> &'static str {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = moat(&["ps", "-a"], None);
        ps.expect_code(0);
        let out = ps.out();
        let line = out
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == name));
        let found = match line {
            Some(l) => settled.iter().find(|s| l.contains(**s)),
            None => settled.iter().find(|s| **s == GONE),
        };
        if let Some(found) = found {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: expected one of {settled:?}: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What `ps` says must hold: an `Up` container answers `exec`, a `Created` one starts, and
/// every state is removable.
#[track_caller]
fn check_truthful_then_remove(name: &str, status: &str) {
    if status == GONE {
        return assert_nothing_left(name);
    }
    if status == "Created" {
        moat(&["exec", name, "true"], None).expect_code(125);
        moat(&["start", name], None).expect_code(0);
        moat(&["exec", name, "true"], None).expect_code(0);
    } else if status.starts_with("Up") {
        moat(&["exec", name, "true"], None).expect_code(0);
    } else {
        let exec = moat(&["exec", name, "true"], None);
        assert_ne!(exec.code, 0, "{name} is {status:?} but exec ran");
    }
    moat(&["rm", "-f", name], None).expect_code(0);
    assert_nothing_left(name);
    let ps = moat(&["ps", "-a"], None);
    assert!(
        !ps.out().contains(name),
        "{name} still listed: {}",
        ps.out()
    );
}

/// `kill -9` of `victim` once the VM of a new container exists but (on a nested host at least)
/// before its agent is ready.
fn kill_during_boot(victim: Victim, detached: bool) {
    let name = unique_name(&format!("boot-{victim:?}").to_lowercase());
    let mut args = vec!["run", "--name", &name];
    if detached {
        args.push("-d");
    }
    args.extend_from_slice(&["--", "sh", "-c", "echo started; exec sleep 600"]);
    let mut cli = spawn_moat(&args);
    let vmm = wait_for_pids("moat-vmm", || vmm_processes_mentioning(&name));
    match victim {
        Victim::Cli => kill9(&[cli.id()]),
        Victim::Supervisor => kill9(&supervisors(&name)),
        Victim::Vmm => kill9(&vmm),
    }
    let code = wait_with_timeout(&mut cli, Duration::from_secs(120));
    let settled: &[&'static str] = match victim {
        // The supervisor outlives its CLI, attached or not, and finishes the boot; the
        // container starts unless the CLI died before asking (docker's `create` then `start`).
        Victim::Cli => {
            // A fast host may finish `run -d` before the kill.
            assert!(
                code == 137 || detached && code == 0,
                "{name}: the killed CLI ended with {code}"
            );
            &["Up", "Created"]
        }
        // The waiting `run -d` fails and removes what it created, or leaves a dead one.
        Victim::Supervisor | Victim::Vmm => {
            assert_ne!(
                code, 0,
                "{name}: a boot whose {victim:?} was killed succeeded"
            );
            &["Dead", "Exited", GONE]
        }
    };
    let status = settled_status(&name, settled);
    check_truthful_then_remove(&name, status);
}

/// `kill -9` of `victim` while `moat stop -t 60` waits out the grace period of a process that
/// ignores SIGTERM.
fn kill_during_stop(victim: Victim) {
    let name = unique_name(&format!("stop-{victim:?}").to_lowercase());
    let run = moat(
        &["run", "-d", "--name", &name, "--", "sh", "-c", STUBBORN],
        None,
    );
    run.expect_code(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !moat(&["logs", &name], None).out().contains("started") {
        assert!(Instant::now() < deadline, "{name} never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut stop = spawn_moat(&["stop", "-t", "60", &name]);
    // SIGTERM is sent and ignored; the grace period has 60 s to go.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        stop.try_wait().expect("try_wait").is_none(),
        "stop ended early"
    );
    match victim {
        Victim::Cli => kill9(&[stop.id()]),
        Victim::Supervisor => kill9(&supervisors(&name)),
        Victim::Vmm => kill9(&vmm_processes_mentioning(&name)),
    }
    let code = wait_with_timeout(&mut stop, Duration::from_secs(120));
    let settled: &[&'static str] = match victim {
        // The stop was the CLI's request: the container keeps running, still stoppable.
        Victim::Cli => {
            assert_eq!(code, 137);
            &["Up"]
        }
        Victim::Supervisor => &["Dead", "Exited"],
        Victim::Vmm => &["Exited"],
    };
    let status = settled_status(&name, settled);
    if victim == Victim::Cli {
        // The grace period ends with SIGKILL only when a stop waits for it.
        moat(&["stop", "-t", "1", &name], None).expect_code(0);
        let status = settled_status(&name, &["Exited (137)"]);
        return check_truthful_then_remove(&name, status);
    }
    check_truthful_then_remove(&name, status);
}

#[test]
fn kill_nine_during_boot_leaves_a_truthful_removable_container() {
    if !vm_available("kill_nine_during_boot_leaves_a_truthful_removable_container") {
        return;
    }
    kill_during_boot(Victim::Cli, true);
    kill_during_boot(Victim::Cli, false);
    kill_during_boot(Victim::Supervisor, true);
    kill_during_boot(Victim::Vmm, true);
}

#[test]
fn kill_nine_during_stop_leaves_a_truthful_removable_container() {
    if !vm_available("kill_nine_during_stop_leaves_a_truthful_removable_container") {
        return;
    }
    for victim in [Victim::Cli, Victim::Supervisor, Victim::Vmm] {
        kill_during_stop(victim);
    }
}
