//! Compiler tests: a small classic-BPF interpreter runs `seccomp_data` samples through the
//! compiled programs; it panics on any jump out of the program or unknown opcode.

use super::*;
use crate::bpf::{ALU_AND_K, JMP_JA, LD_W_ABS, RET_K};
use crate::DockerProfile;

const ALLOW: u32 = 0x7fff_0000;
const ERRNO: u32 = 0x0005_0000;

/// `struct seccomp_data` for x86_64.
fn data(nr: u32, args: [u64; 6]) -> Vec<u8> {
    let mut d = Vec::with_capacity(64);
    d.extend_from_slice(&nr.to_le_bytes());
    d.extend_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
    d.extend_from_slice(&0x4000_1000_u64.to_le_bytes());
    for a in args {
        d.extend_from_slice(&a.to_le_bytes());
    }
    d
}

/// Runs `prog` on `data` like the kernel's classic BPF for seccomp; returns the `ret` value.
fn run(prog: &[SockFilter], data: &[u8]) -> u32 {
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let insn = prog
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} ran off a program of {}", prog.len()));
        pc += 1;
        let skip = |cond: bool| usize::from(if cond { insn.jt } else { insn.jf });
        match insn.code {
            LD_W_ABS => {
                let at = usize::try_from(insn.k).unwrap();
                assert!(at % 4 == 0 && at + 4 <= data.len(), "load at {at}");
                acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            }
            ALU_AND_K => acc &= insn.k,
            JMP_JA => pc += usize::try_from(insn.k).unwrap(),
            JMP_JEQ_K => pc += skip(acc == insn.k),
            JMP_JGT_K => pc += skip(acc > insn.k),
            JMP_JGE_K => pc += skip(acc >= insn.k),
            RET_K => return insn.k,
            code => panic!("unknown opcode {code:#x}"),
        }
    }
}

/// Every jump lands inside the program and every path ends in `ret`.
fn assert_well_formed(prog: &[SockFilter]) {
    assert!(!prog.is_empty() && prog.len() <= BPF_MAXINSNS);
    for (pc, insn) in prog.iter().enumerate() {
        let reach = match insn.code {
            JMP_JA => usize::try_from(insn.k).unwrap(),
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => usize::from(insn.jt.max(insn.jf)),
            _ => 0,
        };
        assert!(
            pc + 1 + reach < prog.len() || insn.code == RET_K,
            "insn {pc} jumps past the end"
        );
    }
    assert_eq!(prog.last().unwrap().code, RET_K);
}

fn docker(caps: &[&str]) -> Program {
    let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
    compile(&DockerProfile::docker_default().to_oci(&caps).unwrap()).unwrap()
}

fn nr(name: &str) -> u32 {
    crate::syscall_number(name).unwrap()
}

#[test]
fn docker_default_program_shape() {
    let prog = docker(&[]);
    assert_well_formed(&prog.filter);
    println!(
        "docker default profile (no caps): {} BPF instructions",
        prog.filter.len()
    );
    let all = docker(&[
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_SYS_BOOT",
        "CAP_SYS_TIME",
        "CAP_BPF",
    ]);
    assert_well_formed(&all.filter);
    println!(
        "docker default profile (many caps): {} BPF instructions",
        all.filter.len()
    );
    assert_eq!(prog.flags, 0);
}

#[test]
fn docker_default_answers() {
    let prog = docker(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
    let ask = |name: &str, args: [u64; 6]| run(&prog.filter, &data(nr(name), args));
    let eperm = ERRNO | 1;
    assert_eq!(ask("read", [0; 6]), ALLOW);
    assert_eq!(ask("getpid", [0; 6]), ALLOW);
    assert_eq!(ask("mseal", [0; 6]), ALLOW);
    assert_eq!(ask("mount", [0; 6]), eperm);
    assert_eq!(ask("keyctl", [0; 6]), eperm);
    assert_eq!(ask("add_key", [0; 6]), eperm);
    assert_eq!(ask("reboot", [0; 6]), eperm);
    assert_eq!(ask("clone3", [0; 6]), ERRNO | 38);
    assert_eq!(ask("socket", [1, 1, 0, 0, 0, 0]), ALLOW);
    assert_eq!(ask("socket", [40, 1, 0, 0, 0, 0]), eperm);
    assert_eq!(
        ask("socket", [40 | 1 << 32, 1, 0, 0, 0, 0]),
        ALLOW,
        "NE compares all 64 bits"
    );
    assert_eq!(ask("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(ask("personality", [8, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(ask("personality", [0x0040000, 0, 0, 0, 0, 0]), eperm);
    assert_eq!(
        ask("clone", [0x0001_1200, 0, 0, 0, 0, 0]),
        ALLOW,
        "fork-like clone"
    );
    assert_eq!(
        ask("clone", [0x1000_0000, 0, 0, 0, 0, 0]),
        eperm,
        "CLONE_NEWUSER"
    );
    assert_eq!(
        ask("clone", [0x0002_0000, 0, 0, 0, 0, 0]),
        eperm,
        "CLONE_NEWNS"
    );
    assert_eq!(
        ask("clone", [1 << 40, 0, 0, 0, 0, 0]),
        ALLOW,
        "mask has no high bits"
    );
    assert_eq!(ask("ptrace", [0; 6]), ALLOW, "minKernel 4.8 <= 6.12");
    assert_eq!(ask("arch_prctl", [0; 6]), ALLOW, "includes arches amd64");
}

#[test]
fn caps_open_the_conditional_groups() {
    let prog = docker(&["CAP_SYS_ADMIN", "CAP_SYS_BOOT"]);
    let ask = |name: &str, args: [u64; 6]| run(&prog.filter, &data(nr(name), args));
    assert_eq!(ask("mount", [0; 6]), ALLOW);
    assert_eq!(ask("unshare", [0x1000_0000, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(ask("clone", [0x1000_0000, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(ask("clone3", [0; 6]), ALLOW);
    assert_eq!(ask("reboot", [0; 6]), ALLOW);
    assert_eq!(ask("keyctl", [0; 6]), ERRNO | 1);
}

#[test]
fn wrong_arch_and_x32_are_refused() {
    let prog = docker(&[]);
    let mut d = data(nr("read"), [0; 6]);
    d[4..8].copy_from_slice(&0x4000_0003_u32.to_le_bytes());
    assert_eq!(run(&prog.filter, &d), RET_KILL_PROCESS);
    assert_eq!(run(&prog.filter, &data(0x4000_0000, [0; 6])), ERRNO | 1);
    assert_eq!(run(&prog.filter, &data(9999, [0; 6])), ERRNO | 1);
}

/// A profile with one rule on `read`'s first argument.
fn one_arg(op: &str, value: u64, value_two: u64) -> Program {
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":9,
        "args":[{{"index":0,"value":{value},"valueTwo":{value_two},"op":"{op}"}}]}}]}}"#
    );
    compile(&serde_json::from_str(&json).unwrap()).unwrap()
}

#[test]
fn comparisons_are_64_bit() {
    let samples = [
        0,
        1,
        5,
        0xffff_ffff,
        1 << 32,
        (1 << 32) + 5,
        (5 << 32) + 1,
        u64::MAX,
    ];
    let pivots = [0, 5, 1 << 32, (1 << 32) + 5, u64::MAX];
    type Check = fn(u64, u64) -> bool;
    let ops: [(&str, Check); 6] = [
        ("SCMP_CMP_EQ", |a, v| a == v),
        ("SCMP_CMP_NE", |a, v| a != v),
        ("SCMP_CMP_LT", |a, v| a < v),
        ("SCMP_CMP_LE", |a, v| a <= v),
        ("SCMP_CMP_GT", |a, v| a > v),
        ("SCMP_CMP_GE", |a, v| a >= v),
    ];
    for (op, holds) in ops {
        for v in pivots {
            let prog = one_arg(op, v, 0);
            assert_well_formed(&prog.filter);
            for a in samples {
                let want = if holds(a, v) { ERRNO | 9 } else { ALLOW };
                assert_eq!(
                    run(&prog.filter, &data(0, [a, 0, 0, 0, 0, 0])),
                    want,
                    "{op} {a:#x} vs {v:#x}"
                );
            }
        }
    }
    let prog = one_arg("SCMP_CMP_MASKED_EQ", 0xff00_0000_00ff, 0x1200_0000_0034);
    for (a, hit) in [
        (0x1200_0000_0034, true),
        (0x12ab_cdef_9934, true),
        (0x1300_0000_0034, false),
        (0x34, false),
    ] {
        let want = if hit { ERRNO | 9 } else { ALLOW };
        assert_eq!(
            run(&prog.filter, &data(0, [a, 0, 0, 0, 0, 0])),
            want,
            "masked {a:#x}"
        );
    }
}

#[test]
fn rules_are_ordered_and_anded() {
    let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
        {"names":["write"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":2,"value":10,"op":"SCMP_CMP_LT"}]},
        {"names":["write"],"action":"SCMP_ACT_TRAP","args":[{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
        {"names":["write"],"action":"SCMP_ACT_LOG"},
        {"names":["getppid"],"action":"SCMP_ACT_KILL"}]}"#;
    let prog = compile(&serde_json::from_str(json).unwrap()).unwrap();
    let ask = |args: [u64; 6]| run(&prog.filter, &data(nr("write"), args));
    assert_eq!(ask([1, 0, 9, 0, 0, 0]), ALLOW);
    assert_eq!(ask([1, 0, 10, 0, 0, 0]), 0x7ffc_0000);
    assert_eq!(ask([2, 0, 0, 0, 0, 0]), 0x0003_0000);
    assert_eq!(run(&prog.filter, &data(nr("getppid"), [0; 6])), 0);
    assert_eq!(run(&prog.filter, &data(nr("read"), [0; 6])), ERRNO | 1);
}

#[test]
fn every_syscall_number_is_found() {
    // A profile naming every x86_64 syscall, each answering its own errno: the search tree
    // must find each one (and jumps must stay in range for the largest possible set).
    let names: Vec<u32> = (0..=462).filter(|n| !(336..424).contains(n)).collect();
    let rules: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                r#"{{"names":["{}"],"action":"SCMP_ACT_ERRNO","errnoRet":{}}}"#,
                name_of(*n),
                n + 1
            )
        })
        .collect();
    let json = format!(
        r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{}]}}"#,
        rules.join(",")
    );
    let prog = compile(&serde_json::from_str(&json).unwrap()).unwrap();
    assert_well_formed(&prog.filter);
    for n in names {
        assert_eq!(
            run(&prog.filter, &data(n, [0; 6])),
            ERRNO | (n + 1),
            "syscall {n}"
        );
    }
    assert_eq!(run(&prog.filter, &data(400, [0; 6])), ALLOW);
}

fn name_of(nr: u32) -> &'static str {
    crate::syscalls::name_of(nr).unwrap()
}

#[test]
fn notify_is_refused() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#;
    let err = compile(&serde_json::from_str(json).unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(err, "linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY is not supported (moat has no seccomp notify agent)");
}
