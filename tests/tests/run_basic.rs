//! `moat run`: output, exit codes, stdin, a terminal. Each test boots a real microVM.

use moat_tests::{moat, vm_available};

#[test]
fn echo_hello_is_byte_exact() {
    if !vm_available("echo_hello_is_byte_exact") {
        return;
    }
    let o = moat(&["run", "--", "echo", "hello"], None);
    o.expect_code(0);
    assert_eq!(o.stdout, b"hello\n", "{}", o.diagnostics());
}

#[test]
fn exit_code_is_the_commands() {
    if !vm_available("exit_code_is_the_commands") {
        return;
    }
    let o = moat(&["run", "--", "sh", "-c", "exit 7"], None);
    o.expect_code(7);
    assert!(o.stdout.is_empty(), "{}", o.diagnostics());
}

#[test]
fn stdin_reaches_the_command_with_i() {
    if !vm_available("stdin_reaches_the_command_with_i") {
        return;
    }
    let o = moat(&["run", "-i", "--", "cat"], Some(b"data\n"));
    o.expect_code(0);
    assert_eq!(o.stdout, b"data\n", "{}", o.diagnostics());
}

#[test]
fn without_i_stdin_is_empty() {
    if !vm_available("without_i_stdin_is_empty") {
        return;
    }
    let o = moat(&["run", "--", "cat"], Some(b"ignored\n"));
    o.expect_code(0);
    assert!(o.stdout.is_empty(), "{}", o.diagnostics());
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    if !vm_available("stdout_and_stderr_are_kept_apart") {
        return;
    }
    let o = moat(
        &["run", "--", "sh", "-c", "echo out; echo err >&2; echo out2"],
        None,
    );
    o.expect_code(0);
    assert_eq!(o.stdout, b"out\nout2\n", "{}", o.diagnostics());
    assert!(o.err().ends_with("err\n"), "{}", o.diagnostics());
    assert!(!o.err().contains("out"), "{}", o.diagnostics());
}

#[test]
fn env_and_workdir_apply() {
    if !vm_available("env_and_workdir_apply") {
        return;
    }
    let o = moat(
        &[
            "run",
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd",
        ],
        None,
    );
    o.expect_code(0);
    assert_eq!(o.out(), "hi there\n/tmp\n", "{}", o.diagnostics());
}

#[test]
fn user_flag_sets_ids() {
    if !vm_available("user_flag_sets_ids") {
        return;
    }
    let o = moat(&["run", "-u", "1000:1000", "--", "id", "-u"], None);
    o.expect_code(0);
    assert_eq!(o.out(), "1000\n", "{}", o.diagnostics());
}

#[test]
fn user_names_resolve_in_the_image() {
    if !vm_available("user_names_resolve_in_the_image") {
        return;
    }
    // The busybox image's /etc/passwd has user:x:1000:1000 and home /home/user.
    let o = moat(
        &["run", "-u", "user", "--", "sh", "-c", "id; echo $HOME"],
        None,
    );
    o.expect_code(0);
    assert_eq!(
        o.out(),
        "uid=1000(user) gid=1000(user) groups=1000(user)\n/home/user\n",
        "{}",
        o.diagnostics()
    );
    let o = moat(&["run", "-u", "nosuch", "--", "true"], None);
    o.expect_code(125);
    let want = "unable to find user nosuch: no matching entries in passwd file";
    assert!(o.err().contains(want), "{}", o.diagnostics());
}

#[test]
fn killed_by_signal_gives_128_plus_n() {
    if !vm_available("killed_by_signal_gives_128_plus_n") {
        return;
    }
    let o = moat(&["run", "--", "sh", "-c", "kill -9 $$"], None);
    o.expect_code(137);
}

#[test]
fn command_not_found_is_127() {
    if !vm_available("command_not_found_is_127") {
        return;
    }
    let o = moat(&["run", "--", "no-such-command"], None);
    o.expect_code(127);
    assert!(o.err().contains("no-such-command"), "{}", o.diagnostics());
}

#[test]
fn not_executable_is_126() {
    if !vm_available("not_executable_is_126") {
        return;
    }
    let o = moat(&["run", "--", "/etc/passwd"], None);
    o.expect_code(126);
}

#[test]
fn hostname_flag_sets_the_containers_hostname() {
    if !vm_available("hostname_flag_sets_the_containers_hostname") {
        return;
    }
    let o = moat(&["run", "--hostname", "box-1", "--", "hostname"], None);
    o.expect_code(0);
    assert_eq!(o.out(), "box-1\n", "{}", o.diagnostics());
}
