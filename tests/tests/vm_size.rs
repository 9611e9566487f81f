//! The VM has the vCPUs and memory asked for (`--vm-cpus`, `--vm-memory`), or enough for the
//! container's limits (`--cpus`, `--memory`).

use moat_tests::{moat, vm_available};

fn nproc_and_memtotal_kib(cpus: &str, memory: &str) -> (u32, u64) {
    vm_of(&["--vm-cpus", cpus, "--vm-memory", memory])
}

/// `nproc` and MemTotal in a VM made with `flags`.
fn vm_of(flags: &[&str]) -> (u32, u64) {
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", "nproc; grep MemTotal /proc/meminfo"]);
    let o = moat(&args, None);
    o.expect_code(0);
    let out = o.out();
    let mut lines = out.lines();
    let nproc = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let mem = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (nproc, mem)
}

#[test]
fn one_vcpu_and_256_mib() {
    if !vm_available("one_vcpu_and_256_mib") {
        return;
    }
    let (nproc, mem) = nproc_and_memtotal_kib("1", "256m");
    assert_eq!(nproc, 1);
    // MemTotal is RAM minus what the kernel reserves for itself: within 256 MiB, above 200 MiB.
    assert!(
        mem <= 256 * 1024 && mem > 200 * 1024,
        "MemTotal {mem} KiB for 256m"
    );
}

#[test]
fn two_vcpus() {
    if !vm_available("two_vcpus") {
        return;
    }
    let (nproc, _) = nproc_and_memtotal_kib("2", "256m");
    assert_eq!(nproc, 2);
}

#[test]
fn four_vcpus_and_512_mib() {
    if !vm_available("four_vcpus_and_512_mib") {
        return;
    }
    let (nproc, mem) = nproc_and_memtotal_kib("4", "512m");
    assert_eq!(nproc, 4);
    assert!(
        mem <= 512 * 1024 && mem > 450 * 1024,
        "MemTotal {mem} KiB for 512m"
    );
}

#[test]
fn sized_from_the_container_limits() {
    if !vm_available("sized_from_the_container_limits") {
        return;
    }
    // --cpus 1.5 needs 2 vCPUs; --memory 512m gets a VM of 512 + 96 MiB.
    let (nproc, mem) = vm_of(&["--cpus", "1.5", "--memory", "512m"]);
    assert_eq!(nproc, 2);
    assert!(
        mem <= 608 * 1024 && mem > 540 * 1024,
        "MemTotal {mem} KiB for a 512m limit"
    );
}
