//! Long-running containers (docs/lifecycle.md): `run -d`, `ps`, `exec`, `logs`, `stop`, `kill`,
//! `wait`, `rm`, `start`, `inspect`, through each container's supervisor, with real VMs.

use std::time::{Duration, Instant};

use moat_tests::{assert_nothing_left, moat, processes_mentioning, unique_name, vm_available};

/// A container running `script` in the background; removed (with a leak check) when dropped.
struct Detached {
    name: String,
    id: String,
}

impl Detached {
    #[track_caller]
    fn start(prefix: &str, extra: &[&str], script: &str) -> Self {
        let name = unique_name(prefix);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = moat(&args, None);
        out.expect_code(0);
        let id = out.out().trim().to_owned();
        assert_eq!(id.len(), 64, "run -d prints the id: {}", out.diagnostics());
        Self { name, id }
    }

    fn moat(&self, verb: &[&str]) -> moat_tests::Outcome {
        let mut args = verb.to_vec();
        args.push(&self.name);
        moat(&args, None)
    }

    fn exec(&self, flags: &[&str], command: &[&str], stdin: Option<&[u8]>) -> moat_tests::Outcome {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.push(&self.name);
        args.extend_from_slice(command);
        moat(&args, stdin)
    }

    /// Waits until the container's log has `text`.
    #[track_caller]
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let logs = self.moat(&["logs"]);
            if logs.out().contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} not logged: {}",
                logs.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let out = self.moat(&["rm", "-f"]);
        if !std::thread::panicking() {
            out.expect_code(0);
            assert_nothing_left(&self.name);
        }
    }
}

const SERVICE: &str = "grep -E 'CapEff|Seccomp:|NoNewPrivs' /proc/self/status; echo started; \
    trap 'echo got-term; exit 7' TERM; while true; do sleep 0.2; done";

#[test]
fn detached_container_lives_execs_logs_and_stops() {
    if !vm_available("detached_container_lives_execs_logs_and_stops") {
        return;
    }
    let c = Detached::start("life", &[], SERVICE);
    c.wait_log("started");
    let ps = moat(&["ps"], None);
    ps.expect_code(0);
    let line = ps
        .out()
        .lines()
        .find(|l| l.contains(&c.name))
        .map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("not in ps: {}", ps.diagnostics()));
    assert!(
        line.starts_with(&c.id[..12]) && line.contains("Up"),
        "{line}"
    );
    assert!(moat(&["ps", "-q"], None).out().contains(&c.id[..12]));

    let out = c.exec(&[], &["sh", "-c", "echo inside; exit 3"], None);
    assert_eq!(
        (out.code, out.out().as_str()),
        (3, "inside\n"),
        "{}",
        out.diagnostics()
    );
    let out = c.exec(&["-i"], &["cat"], Some(b"through stdin"));
    assert_eq!(out.out(), "through stdin", "{}", out.diagnostics());
    let out = c.exec(
        &["-e", "FOO=bar", "-w", "/tmp", "-u", "1000:1000"],
        &["sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g)"],
        None,
    );
    assert_eq!(out.out(), "bar /tmp 1000:1000\n", "{}", out.diagnostics());
    // The exec'd process gets the container's own capabilities, no_new_privs and seccomp.
    let exec_status = c.exec(
        &[],
        &[
            "grep",
            "-E",
            "CapEff|Seccomp:|NoNewPrivs",
            "/proc/self/status",
        ],
        None,
    );
    let logs = c.moat(&["logs"]).out();
    let main_status: String = logs
        .lines()
        .filter(|l| !l.contains("started"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        exec_status.out(),
        main_status,
        "{}",
        exec_status.diagnostics()
    );
    assert!(main_status.contains("Seccomp:\t2"), "{main_status}");

    let inspect = c.moat(&["inspect"]);
    inspect.expect_code(0);
    let json: serde_json::Value = serde_json::from_str(&inspect.out()).expect("inspect JSON");
    assert_eq!(json[0]["Id"], c.id.as_str());
    assert_eq!(json[0]["State"]["Status"], "running");
    assert!(
        json[0]["VM"]["VmmPid"].as_u64().is_some_and(|p| p > 0),
        "{json}"
    );
    assert!(
        json[0]["VM"]["Uid"]
            .as_u64()
            .is_some_and(|u| u >= 1_000_000),
        "{json}"
    );

    let rm = c.moat(&["rm"]);
    assert_eq!(rm.code, 125);
    assert!(
        rm.err().contains("You cannot remove a running container"),
        "{}",
        rm.diagnostics()
    );

    c.moat(&["stop"]).expect_code(0);
    assert_eq!(c.moat(&["wait"]).out().trim(), "7");
    assert!(c.moat(&["logs"]).out().contains("got-term"));
    // Stopping a stopped container is not an error; exec into it is.
    c.moat(&["stop"]).expect_code(0);
    let out = c.exec(&[], &["true"], None);
    assert_eq!(out.code, 125, "{}", out.diagnostics());
    assert!(
        out.err().contains("is not running"),
        "{}",
        out.diagnostics()
    );
    let ps = moat(&["ps", "-a"], None).out();
    assert!(
        ps.lines()
            .any(|l| l.contains(&c.name) && l.contains("Exited (7)")),
        "{ps}"
    );
    assert!(!moat(&["ps"], None).out().contains(&c.name));
}

#[test]
fn stop_kills_after_the_grace_period_and_start_keeps_the_files() {
    if !vm_available("stop_kills_after_the_grace_period_and_start_keeps_the_files") {
        return;
    }
    let c = Detached::start(
        "grace",
        &[],
        "trap '' TERM; echo started; while true; do sleep 0.2; done",
    );
    c.wait_log("started");
    c.exec(&[], &["sh", "-c", "echo kept > /data"], None)
        .expect_code(0);
    let begin = Instant::now();
    c.moat(&["stop", "-t", "2"]).expect_code(0);
    assert!(
        begin.elapsed() >= Duration::from_secs(2),
        "stop did not wait for the grace period"
    );
    assert_eq!(c.moat(&["wait"]).out().trim(), "137");
    c.moat(&["start"]).expect_code(0);
    let out = c.exec(&[], &["cat", "/data"], None);
    assert_eq!(out.out(), "kept\n", "{}", out.diagnostics());
    c.moat(&["kill", "-s", "KILL"]).expect_code(0);
    assert_eq!(c.moat(&["wait"]).out().trim(), "137");
}

#[test]
fn logs_follow_kill_signal_and_parallel_execs() {
    if !vm_available("logs_follow_kill_signal_and_parallel_execs") {
        return;
    }
    let c = Detached::start(
        "follow",
        &[],
        "trap 'echo usr1; exit 5' USR1; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    );
    c.wait_log("tick 2");
    let execs: Vec<_> = (0..10)
        .map(|i| {
            let name = c.name.clone();
            std::thread::spawn(move || {
                let text = format!("exec {i}");
                let out = moat(
                    &["exec", &name, "sh", "-c", &format!("sleep 1; echo {text}")],
                    None,
                );
                (out.code, out.out(), text)
            })
        })
        .collect();
    for e in execs {
        let (code, out, text) = e.join().expect("exec thread");
        assert_eq!((code, out), (0, format!("{text}\n")));
    }
    let name = c.name.clone();
    let follower = std::thread::spawn(move || moat(&["logs", "-f", "--tail", "1", &name], None));
    std::thread::sleep(Duration::from_secs(2));
    c.moat(&["kill", "-s", "USR1"]).expect_code(0);
    let followed = follower.join().expect("follower");
    followed.expect_code(0);
    let text = followed.out();
    assert!(
        text.ends_with("usr1\n") && text.lines().count() >= 3,
        "{text}"
    );
    assert_eq!(c.moat(&["wait"]).out().trim(), "5");
}

#[test]
fn racing_removals_leave_one_result() {
    if !vm_available("racing_removals_leave_one_result") {
        return;
    }
    let c = Detached::start("race", &[], "echo started; exec sleep 600");
    c.wait_log("started");
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let name = c.name.clone();
            std::thread::spawn(move || moat(&["rm", "-f", &name], None))
        })
        .collect();
    let codes: Vec<i32> = racers
        .into_iter()
        .map(|r| r.join().expect("racer").code)
        .collect();
    assert!(codes.contains(&0), "{codes:?}");
    assert_nothing_left(&c.name);
    // Already gone: the drop's rm -f fails, which the drop tolerates only if we forget it.
    std::mem::forget(c);
}

#[test]
fn a_killed_supervisor_or_vmm_leaves_a_container_rm_can_remove() {
    if !vm_available("a_killed_supervisor_or_vmm_leaves_a_container_rm_can_remove") {
        return;
    }
    for victim in ["supervisor", "vmm"] {
        let c = Detached::start("crash", &[], "echo started; exec sleep 600");
        c.wait_log("started");
        let pids = match victim {
            "supervisor" => processes_mentioning("__supervise", &format!("/run/moat/{}", c.name)),
            _ => moat_tests::vmm_processes_mentioning(&c.name),
        };
        assert!(!pids.is_empty(), "no {victim} for {}", c.name);
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let expected = if victim == "supervisor" {
            "Dead"
        } else {
            "Exited"
        };
        loop {
            let ps = moat(&["ps", "-a"], None).out();
            if ps
                .lines()
                .any(|l| l.contains(&c.name) && l.contains(expected))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after killing the {victim}: {ps}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Dropping runs rm -f and the leak check.
    }
}

#[test]
fn bad_input_is_one_line_and_125() {
    if !vm_available("bad_input_is_one_line_and_125") {
        return;
    }
    for args in [
        &["exec", "no-such-container-x", "true"][..],
        &["stop", "no-such-container-x"],
        &["logs", "no-such-container-x"],
        &["rm", "no-such-container-x"],
    ] {
        let out = moat(args, None);
        assert_eq!(out.code, 125, "{args:?}: {}", out.diagnostics());
        assert_eq!(
            out.err(),
            "moat: No such container: no-such-container-x\n",
            "{args:?}"
        );
    }
    let c = Detached::start("taken", &[], "echo started; exec sleep 600");
    let out = moat(&["run", "-d", "--name", &c.name, "--", "true"], None);
    assert_eq!(out.code, 125, "{}", out.diagnostics());
    assert!(
        out.err().contains("is already in use by container"),
        "{}",
        out.diagnostics()
    );
    let out = c.exec(&[], &["/no/such/binary"], None);
    assert_eq!(out.code, 127, "{}", out.diagnostics());
}
