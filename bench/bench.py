#!/usr/bin/env python3
"""moat benchmarks, run on a host whose KVM boots guests (natively or inside the nested host).

Measures, N times each: `moat run -- true` end to end; moat-vmm and QEMU microvm booting the
same kernel and initramfs until the agent resets the VM (`moat.bench=reset`); VM exits by type
(moat-vmm's own --stats, and the host kernel's view through `perf kvm stat`); the VMMs' resident
memory outside guest memory. Progress goes to stderr, the Markdown report to stdout.
The report's tables are in report.py. Python 3 standard library only.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_MIB = 256
BENCH_WORD = "moat.bench=reset"
SAMPLE_SECONDS = 0.01
RUN_TIMEOUT = 90
# The firmware QEMU boots microvm with (qemu-system-data).
QBOOT = "/usr/share/qemu/qboot.rom"

# The `moat run -- true` variants, alternated round by round: the default container stack, the
# stack without seccomp filter, masked paths or dropped capabilities, with limits written, and
# with a read-only root (no writable layer: no scratch disk to make, mount and unmount).
MOAT_RUN_FLAGS = (
    [],
    ["--privileged"],
    ["--cpus", "1", "-m", "128m", "--pids-limit", "64"],
    ["--read-only"],
)
# The runtime's debug event carrying the time from Run sent to Started read.
SETUP_LOG = "warn,moat_runtime::session=debug"
SETUP_US = re.compile(r"container started.*\bsetup_us=(\d+)")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def base_cmdline():
    """moat-vmm's base kernel command line, read from its source so both VMMs get the same."""
    src = open(os.path.join(REPO, "vmm/src/boot.rs"), encoding="utf-8").read()
    m = re.search(r'BASE_CMDLINE: &str =\s*"([^"]*)"', src)
    if not m:
        sys.exit("bench: BASE_CMDLINE not found in vmm/src/boot.rs")
    return m.group(1)


# --- memory sampling --------------------------------------------------------------------------


def read_smaps(pid):
    """(guest Rss kB, other Rss kB, number of guest mappings) of a live process, or None.

    A guest-memory mapping is one at least as large as the guest's RAM: neither VMM has any
    other mapping that big (thread stacks and malloc arenas are far smaller)."""
    try:
        with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    guest = other = nguest = 0
    size = 0
    for line in text.splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
            if size >= GUEST_MIB * 1024:
                guest += rss
                nguest += 1
            else:
                other += rss
    if guest == 0 and other == 0:
        return None  # a zombie
    return guest, other, nguest


def read_hwm(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def spawn(cmd, env, errlog):
    """Starts cmd in its own session; a timer SIGKILLs that session after RUN_TIMEOUT seconds."""
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, start_new_session=True)  # fmt: skip

    def kill():
        log(f"{os.path.basename(cmd[0])} still running after {RUN_TIMEOUT} s: killing it")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    proc.watchdog = threading.Timer(RUN_TIMEOUT, kill)
    proc.watchdog.start()
    return proc


def reap(proc, cmd, errlog):
    """Waits for proc; returns (exit status, peak RSS in KiB from wait4)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(errlog, "rb") as f:
            tail = f.read()[-400:].decode(errors="replace").strip()
        log(f"{os.path.basename(cmd[0])} exited {proc.returncode}: {tail}")
    return proc.returncode, usage.ru_maxrss


def run_timed(cmd, errlog, env=None):
    """Runs cmd, nothing else running beside it; returns (seconds, exit status, peak RSS KiB)."""
    start = time.monotonic()
    proc = spawn(cmd, env, errlog)
    rc, maxrss = reap(proc, cmd, errlog)
    return time.monotonic() - start, rc, maxrss


def run_sampled(cmd, errlog):
    """Runs cmd reading its smaps every SAMPLE_SECONDS; returns (exit status, memory dict)."""
    peak_other = peak_guest = guest_maps = 0
    seen = False
    hwm = None
    proc = spawn(cmd, None, errlog)
    while proc.poll() is None:
        s = read_smaps(proc.pid)
        h = read_hwm(proc.pid)
        if s:
            seen = True
            peak_other = max(peak_other, s[1])
            # Guest memory only grows until the VMM unmaps it on its way out.
            if s[0] > peak_guest:
                peak_guest, guest_maps = s[0], s[2]
        if h:
            hwm = h
        time.sleep(SAMPLE_SECONDS)
    proc.watchdog.cancel()
    rc = proc.returncode
    if rc != 0:
        log(f"{os.path.basename(cmd[0])} exited {rc}")
    if not seen:
        return rc, None
    return rc, {
        "peak_other_kb": peak_other,
        "peak_guest_kb": peak_guest,
        "guest_maps": guest_maps,
        "hwm_minus_guest_kb": hwm - peak_guest if hwm else None,
    }


# --- the commands -----------------------------------------------------------------------------


class Setup:
    def __init__(self, args):
        self.bin_dir = os.path.abspath(args.bin_dir)
        self.moat = os.path.join(self.bin_dir, "moat")
        self.vmm = os.environ.get("MOAT_VMM") or os.path.join(self.bin_dir, "moat-vmm")
        self.assets = os.environ.get("MOAT_ASSETS_DIR") or os.path.join(self.bin_dir, "moat-assets")
        self.kernel = os.environ.get("MOAT_KERNEL") or os.path.join(self.assets, "vmlinux")
        self.initramfs = os.environ.get("MOAT_INITRAMFS") or os.path.join(
            self.assets, "initramfs.cpio"
        )
        self.qemu = shutil.which("qemu-system-x86_64")
        self.perf = shutil.which("perf")
        self.runc = shutil.which("runc")
        self.work = tempfile.mkdtemp(prefix="moat-bench.")
        self.cmdline = f"{base_cmdline()} {BENCH_WORD}"
        # microvm has no i8042: with reboot=k the guest would spin ~650k port reads in its
        # keyboard-controller reset loop before falling back to a triple fault. reboot=t goes
        # straight to the triple fault, which -no-reboot turns into QEMU's exit.
        self.qemu_cmdline = self.cmdline.replace("reboot=k", "reboot=t")
        self.guest_mib = GUEST_MIB
        self.serial = 0
        self.failures = []

    def check(self):
        for what in (self.moat, self.vmm, self.kernel, self.initramfs):
            if not os.path.isfile(what):
                sys.exit(f"bench: {what} is missing (run scripts/build, or set --bin-dir)")
        if not os.path.exists("/dev/kvm"):
            sys.exit("bench: no /dev/kvm")
        if not self.qemu:
            sys.exit("bench: qemu-system-x86_64 not found (apt-get install qemu-system-x86)")

    def next_path(self, stem):
        self.serial += 1
        return os.path.join(self.work, f"{stem}-{self.serial}")

    def moat_run(self, flags):
        env = dict(os.environ, MOAT_VMM=self.vmm, MOAT_ASSETS_DIR=self.assets)
        env.setdefault("MOAT_KERNEL", self.kernel)
        env.setdefault("MOAT_INITRAMFS", self.initramfs)
        env["RUST_LOG"] = SETUP_LOG
        return [self.moat, "run", *flags, "--", "true"], env

    def vmm_boot(self):
        stats = self.next_path("stats") + ".json"
        cmd = [
            self.vmm, "run", "--no-jail", "--kernel", self.kernel, "--initramfs", self.initramfs,
            "--cpus", "1", "--memory-mib", str(GUEST_MIB),
            "--console-log", self.next_path("vmm-console"),
            "--cmdline-extra", BENCH_WORD, "--stats", stats,
        ]  # fmt: skip
        return cmd, stats

    def qemu_boot(self):
        # qboot, as QEMU 7.2's microvm used by default: Debian's QEMU 10 gives microvm SeaBIOS,
        # which with x-option-roms=off cannot load the kernel ("No bootable device").
        return [
            self.qemu, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on",
            "-bios", QBOOT,
            "-accel", "kvm", "-cpu", "host", "-m", str(GUEST_MIB), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", f"file:{self.next_path('qemu-console')}",
            "-kernel", self.kernel, "-initrd", self.initramfs, "-append", self.qemu_cmdline,
        ]  # fmt: skip


# --- perf kvm stat ----------------------------------------------------------------------------

PERF_ROW = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+([\d.]+)%\s+([\d.]+)%\s+\S+\s+\S+\s+([\d.]+)us")


def ensure_tracefs():
    if os.path.isdir("/sys/kernel/tracing/events/kvm"):
        return True
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
    return os.path.isdir("/sys/kernel/tracing/events/kvm")


def perf_exits(setup, cmd):
    """Exits by reason as the host kernel saw them: {reason: (count, time %, avg µs)}."""
    data = setup.next_path("perf") + ".data"
    rec = subprocess.run(
        [setup.perf, "kvm", "stat", "record", "-o", data, "--", *cmd],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    if rec.returncode != 0:
        log(f"perf kvm stat record failed: {rec.stderr.decode(errors='replace')[-400:]}")
        return None
    rep = subprocess.run(
        [setup.perf, "kvm", "-i", data, "stat", "report", "--event=vmexit"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    rows = {}
    for line in rep.stdout.splitlines():  # perf prints its table to stderr
        m = PERF_ROW.match(line)
        if m:
            rows[m.group(1)] = (int(m.group(2)), float(m.group(4)), float(m.group(5)))
    if not rows:
        log(f"perf kvm stat report gave no rows: {rep.stdout[-400:]}")
        return None
    return rows


def median_exits(runs):
    """Per-reason medians over several perf runs (a reason missing from a run counts 0)."""
    reasons = sorted({r for run in runs for r in run})
    return {
        r: (
            statistics.median(run.get(r, (0, 0, 0))[0] for run in runs),
            statistics.median(run.get(r, (0, 0, 0))[1] for run in runs),
            statistics.median(run[r][2] for run in runs if r in run),
        )
        for r in reasons
    }


# --- the measurements -------------------------------------------------------------------------


def setup_seconds(errlog):
    """The runtime's Run-to-Started time from its debug log, or None."""
    with open(errlog, encoding="utf-8", errors="replace") as f:
        m = SETUP_US.search(f.read())
    return int(m.group(1)) / 1e6 if m else None


def moat_run_once(setup, flags, i, out):
    cmd, env = setup.moat_run(flags)
    name = " ".join(cmd[1:])
    errlog = setup.next_path("moat-err")
    seconds, rc, _ = run_timed(cmd, errlog, env)
    if rc != 0:
        setup.failures.append(f"`moat {name}` #{i + 1}: exit {rc} after {seconds:.1f} s")
        return
    out["times"].append(seconds)
    setup_s = setup_seconds(errlog)
    if setup_s is None:
        log(f"moat {name} #{i + 1}: no setup_us in the runtime's log")
    else:
        out["setup"].append(setup_s)
    log(f"moat {name} #{i + 1}: {seconds:.3f} s, Run to Started {setup_s} s")


def measure_moat_runs(setup, n):
    """Each variant of MOAT_RUN_FLAGS n times, after one uncounted run (page cache); round i
    starts with variant i mod their number, so that load drift hits all alike.
    Returns [(flags, {"times": [s], "setup": [s]})]."""
    runs = [(flags, {"times": [], "setup": []}) for flags in MOAT_RUN_FLAGS]
    cmd, env = setup.moat_run([])
    seconds, rc, _ = run_timed(cmd, setup.next_path("moat-err"), env)
    log(f"warm-up moat run -- true (not counted): {seconds:.3f} s, exit {rc}")
    for i in range(n):
        k = i % len(runs)
        for flags, out in runs[k:] + runs[:k]:
            moat_run_once(setup, flags, i, out)
    return runs


def vmm_once(setup, i, out):
    cmd, stats_path = setup.vmm_boot()
    seconds, rc, maxrss = run_timed(cmd, setup.next_path("vmm-err"))
    if rc != 0:
        setup.failures.append(f"moat-vmm boot #{i + 1}: exit {rc} after {seconds:.1f} s")
        return
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)
    out["vmm_times"].append(seconds)
    out["vmm_maxrss"].append(maxrss)
    out["vmm_stats"].append(stats)
    log(
        f"moat-vmm boot #{i + 1}: {seconds:.3f} s, {stats['total_exits']} exits (own count), "
        f"peak RSS {maxrss} KiB"
    )


def qemu_once(setup, i, out):
    seconds, rc, maxrss = run_timed(setup.qemu_boot(), setup.next_path("qemu-err"))
    if rc != 0:
        setup.failures.append(f"QEMU microvm boot #{i + 1}: exit {rc} after {seconds:.1f} s")
        return
    out["qemu_times"].append(seconds)
    out["qemu_maxrss"].append(maxrss)
    log(f"QEMU microvm boot #{i + 1}: {seconds:.3f} s, peak RSS {maxrss} KiB")


def measure_boots(setup, n, out):
    """Alternates the two VMMs (starting with each in turn) so that load drift hits both alike."""
    for key in ("vmm_times", "vmm_maxrss", "vmm_stats", "qemu_times", "qemu_maxrss"):
        out[key] = []
    for i in range(n):
        order = (vmm_once, qemu_once) if i % 2 == 0 else (qemu_once, vmm_once)
        for once in order:
            once(setup, i, out)


def measure_memory(setup, n, out):
    """Boots each VMM n more times while sampling its smaps (not timed: sampling costs CPU)."""
    out["vmm_mems"], out["qemu_mems"] = [], []
    for i in range(n):
        rc, mem = run_sampled(setup.vmm_boot()[0], setup.next_path("vmm-err"))
        if rc == 0:
            out["vmm_mems"].append(mem)
        rc, mem = run_sampled(setup.qemu_boot(), setup.next_path("qemu-err"))
        if rc == 0:
            out["qemu_mems"].append(mem)
        log(f"memory sampling #{i + 1}: moat-vmm {out['vmm_mems'][-1:]}, QEMU {out['qemu_mems'][-1:]}")


def measure_perf(setup, n):
    if not setup.perf or n == 0:
        return None, None
    if not ensure_tracefs():
        log("no kvm tracepoints (tracefs): skipping perf kvm stat")
        return None, None
    vmm_runs, qemu_runs = [], []
    for i in range(n):
        r = perf_exits(setup, setup.vmm_boot()[0])
        if r:
            vmm_runs.append(r)
        r = perf_exits(setup, setup.qemu_boot())
        if r:
            qemu_runs.append(r)
        log(f"perf kvm stat #{i + 1} done")
    return (
        median_exits(vmm_runs) if vmm_runs else None,
        median_exits(qemu_runs) if qemu_runs else None,
    )


def measure_runc(n):
    """`runc run` of a busybox bundle running /bin/true: the shared-kernel baseline."""
    runc = shutil.which("runc")
    busybox = shutil.which("busybox")
    if not runc or not busybox or os.environ.get("MOAT_NESTED_L1") == "1":
        return None
    bundle = tempfile.mkdtemp(prefix="moat-bench-runc.")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for d in ("proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy(busybox, os.path.join(rootfs, "bin/busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin/true"))
    subprocess.run([runc, "spec"], cwd=bundle, check=True)
    spec_path = os.path.join(bundle, "config.json")
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    times = []
    for i in range(n):
        cmd = [runc, "run", "--bundle", bundle, f"moat-bench-{os.getpid()}-{i}"]
        seconds, rc, _ = run_timed(cmd, os.path.join(bundle, "stderr"))
        if rc != 0:
            log("runc run failed; skipping the runc baseline")
            return None
        times.append(seconds)
    shutil.rmtree(bundle, ignore_errors=True)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs of each (default 10)")
    p.add_argument("--perf-runs", type=int, default=3, help="perf kvm stat runs (default 3)")
    p.add_argument("--mem-runs", type=int, default=3, help="smaps-sampled runs (default 3)")
    p.add_argument("--bin-dir", default=os.path.join(REPO, "target/release"))
    p.add_argument("--skip-moat-run", action="store_true", help="leave out the `moat run` rows")
    p.add_argument(
        "--runc-only", action="store_true", help="only the `runc run` baseline (on the host)"
    )
    args = p.parse_args()
    if args.runs < 1:
        sys.exit("bench: --runs must be at least 1")
    if args.runc_only:
        times = measure_runc(args.runs)
        if times:
            lines = ["", f"## Shared-kernel baseline on the outer host ({platform.release()})", ""]
            lines += report.timing_table([("`runc run` busybox `/bin/true`", times)])
            print("\n".join(lines) + "\n", flush=True)
        return
    setup = Setup(args)
    setup.check()
    log(f"work dir {setup.work}; {args.runs} runs each")
    results = {"moat_runs": []}
    if not args.skip_moat_run:
        results["moat_runs"] = measure_moat_runs(setup, args.runs)
    measure_boots(setup, args.runs, results)
    measure_memory(setup, args.mem_runs, results)
    results["perf_vmm"], results["perf_qemu"] = measure_perf(setup, args.perf_runs)
    results["runc"] = measure_runc(args.runs)
    print(report.report(setup, args, results), flush=True)
    shutil.rmtree(setup.work, ignore_errors=True)


if __name__ == "__main__":
    main()
