//! The generated program run by a small interpreter of the instructions it uses, on Docker's
//! default rules, `--privileged` and overlapping rules.

use oci_spec::runtime::LinuxDeviceCgroup;

use super::*;
use crate::cgroup::CgroupError;

/// Runs `prog` on a `bpf_cgroup_dev_ctx`; returns r0. Panics on anything the kernel's verifier
/// would refuse that the interpreter can see (unknown opcode, jump out of the program).
fn run(prog: &[Insn], dev_type: u32, access: u32, major: u32, minor: u32) -> u64 {
    let ctx = [(access << 16) | dev_type, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    loop {
        let i = prog
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} ran off the program"));
        let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
        let imm = i64::from(i.imm) as u64; // sign-extended, as the kernel does
        pc += 1;
        match i.code {
            LDX_MEM_W => {
                assert_eq!(src, 1, "loads only from the context");
                r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
            }
            ALU64_MOV_K => r[dst] = imm,
            ALU64_AND_K => r[dst] &= imm,
            ALU64_AND_X => r[dst] &= r[src],
            ALU64_OR_K => r[dst] |= imm,
            ALU64_XOR_K => r[dst] ^= imm,
            ALU64_RSH_K => r[dst] >>= imm,
            JMP_JNE_K | JMP_JEQ_K => {
                if (r[dst] != imm) == (i.code == JMP_JNE_K) {
                    pc = pc.checked_add_signed(isize::from(i.off)).unwrap();
                }
            }
            JMP_EXIT => return r[0],
            other => panic!("unknown opcode {other:#x}"),
        }
    }
}

fn oci(json: &str) -> Vec<LinuxDeviceCgroup> {
    serde_json::from_str(json).expect("device rules json")
}

fn compile(json: &str) -> Vec<Insn> {
    program(&rules(&oci(json)).expect("rules"))
}

const R: u32 = ACC_READ;
const W: u32 = ACC_WRITE;
const M: u32 = ACC_MKNOD;
const RW: u32 = R | W;
const RWM: u32 = R | W | M;

/// Docker's default device rules (deny all, then its allowlist), as containerd/dockerd put
/// them into the spec.
const DOCKER: &str = r#"[
    {"allow": false, "access": "rwm"},
    {"allow": true, "type": "c", "access": "m"},
    {"allow": true, "type": "b", "access": "m"},
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": true, "type": "c", "major": 136, "access": "rwm"},
    {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
]"#;

#[test]
fn docker_defaults() {
    let p = compile(DOCKER);
    let allowed = [
        (DEV_CHAR, RW, 1, 3),   // /dev/null
        (DEV_CHAR, R, 1, 5),    // /dev/zero
        (DEV_CHAR, RWM, 1, 7),  // /dev/full
        (DEV_CHAR, R, 1, 8),    // /dev/random
        (DEV_CHAR, R, 1, 9),    // /dev/urandom
        (DEV_CHAR, RW, 5, 0),   // /dev/tty
        (DEV_CHAR, RW, 5, 1),   // /dev/console
        (DEV_CHAR, RW, 5, 2),   // /dev/ptmx
        (DEV_CHAR, RW, 136, 0), // a pty
        (DEV_CHAR, RW, 136, 77),
        (DEV_CHAR, RW, 10, 200), // /dev/net/tun
        (DEV_CHAR, M, 4, 64),    // mknod of any char device
        (DEV_BLOCK, M, 254, 0),  // mknod of any block device
    ];
    for (t, a, maj, min) in allowed {
        assert_eq!(
            run(&p, t, a, maj, min),
            1,
            "{t} {a} {maj}:{min} should be allowed"
        );
    }
    let denied = [
        (DEV_BLOCK, R, 254, 0), // /dev/vda
        (DEV_BLOCK, RW, 254, 16),
        (DEV_CHAR, R, 1, 1), // /dev/mem
        (DEV_CHAR, W, 1, 11),
        (DEV_CHAR, RW, 10, 229), // /dev/fuse
        (DEV_CHAR, R, 4, 1),     // a tty, no access beyond mknod
        (DEV_CHAR, RM, 4, 1),
        (DEV_BLOCK, RW, 1, 3), // the null device's numbers, but a block device
        (DEV_CHAR, RW, 137, 0),
    ];
    for (t, a, maj, min) in denied {
        assert_eq!(
            run(&p, t, a, maj, min),
            0,
            "{t} {a} {maj}:{min} should be denied"
        );
    }
}

const RM: u32 = R | M;

#[test]
fn privileged_allows_all() {
    let p = compile(r#"[{"allow": true, "access": "rwm"}]"#);
    for t in [DEV_CHAR, DEV_BLOCK] {
        for a in [R, W, M, RW, RWM] {
            for (maj, min) in [(1, 3), (254, 0), (0, 0), (4095, 1_048_575)] {
                assert_eq!(run(&p, t, a, maj, min), 1, "{t} {a} {maj}:{min}");
            }
        }
    }
}

#[test]
fn no_rules_deny_all() {
    let p = compile("[]");
    assert_eq!(run(&p, DEV_CHAR, R, 1, 3), 0);
    assert_eq!(run(&p, DEV_BLOCK, M, 254, 0), 0);
}

#[test]
fn last_matching_rule_wins_per_access_bit() {
    let p = compile(
        r#"[
        {"allow": true, "type": "a", "access": "rwm"},
        {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"},
        {"allow": true, "type": "c", "major": 1, "access": "r"},
        {"allow": true, "type": "c", "major": 2, "minor": 2, "access": "r"},
        {"allow": false, "type": "c", "major": 2, "access": "rwm"},
        {"allow": true, "type": "c", "major": 2, "minor": 2, "access": "w"}
    ]"#,
    );
    assert_eq!(run(&p, DEV_CHAR, R, 1, 3), 1, "the deny of w leaves r");
    assert_eq!(run(&p, DEV_CHAR, W, 1, 3), 0, "w denied by the later rule");
    assert_eq!(run(&p, DEV_CHAR, RW, 1, 3), 0, "rw needs w too");
    assert_eq!(
        run(&p, DEV_CHAR, RW, 1, 4),
        1,
        "other minors keep the first allow"
    );
    assert_eq!(
        run(&p, DEV_CHAR, R, 2, 2),
        0,
        "r on 2:2 taken away by the deny of major 2"
    );
    assert_eq!(
        run(&p, DEV_CHAR, W, 2, 2),
        1,
        "w on 2:2 granted again by the last rule"
    );
    assert_eq!(
        run(&p, DEV_BLOCK, RWM, 2, 2),
        1,
        "the c rules do not touch block devices"
    );
}

#[test]
fn split_allow_rules_combine() {
    let p = compile(
        r#"[
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "w"}
    ]"#,
    );
    assert_eq!(run(&p, DEV_CHAR, RW, 1, 3), 1);
    assert_eq!(run(&p, DEV_CHAR, M, 1, 3), 0);
}

#[test]
fn wildcards_and_defaults() {
    // No type = all; -1 numbers = any; no access = rwm; "u" = a char device.
    let p = compile(
        r#"[{"allow": true, "major": -1, "minor": 3}, {"allow": true, "type": "u", "major": 9}]"#,
    );
    assert_eq!(run(&p, DEV_BLOCK, RWM, 7, 3), 1);
    assert_eq!(run(&p, DEV_CHAR, RWM, 9, 1), 1);
    assert_eq!(run(&p, DEV_BLOCK, R, 9, 1), 0);
    assert_eq!(run(&p, DEV_CHAR, R, 7, 4), 0);
}

#[track_caller]
fn refused(json: &str, field: &str) {
    match rules(&oci(json)) {
        Err(CgroupError::Refused { field: got, .. }) => assert_eq!(got, field),
        other => panic!("{json}: expected a refusal of {field}, got {other:?}"),
    }
}

#[test]
fn refusals_name_the_rule() {
    let d = "linux.resources.devices";
    refused(
        r#"[{"allow": true}, {"allow": true, "type": "p"}]"#,
        &format!("{d}[1].type"),
    );
    refused(
        r#"[{"allow": true, "access": "rx"}]"#,
        &format!("{d}[0].access"),
    );
    refused(
        r#"[{"allow": true, "major": -7}]"#,
        &format!("{d}[0].major"),
    );
    refused(
        r#"[{"allow": true, "minor": 4294967296}]"#,
        &format!("{d}[0].minor"),
    );
}

#[test]
fn program_shape() {
    // 1 to start, 2 insns per major or minor test + 3 per type test + 1 update per rule, 9 to
    // end.
    let p = compile(DOCKER);
    let tests = 3 * 12 + 2 * (2 * 8 + 1 + 2);
    assert_eq!(p.len(), 1 + tests + 13 + 9);
    assert!(
        p.iter().all(|i| i.code != JMP_JNE_K || i.off > 0),
        "jumps go forward only"
    );
}
