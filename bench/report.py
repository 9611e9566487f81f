"""The Markdown report of bench/bench.py: the machine and the tables.

Python 3 standard library only.
"""

import datetime
import os
import platform
import statistics
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- statistics -------------------------------------------------------------------------------


def asset_name(path):
    """The asset's path from its assets folder on (no path of the machine the bench ran on)."""
    parts = os.path.normpath(path).split(os.sep)
    return os.path.join(*parts[-2:]) if len(parts) >= 2 else path


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-p * len(s) // 100) - 1))
    return s[k]


def summary(values):
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": pct(values, 90),
        "min": min(values),
        "max": max(values),
    }


# --- the report -------------------------------------------------------------------------------


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "?"
    return out.splitlines()[0].strip() if out else "?"


def cpu_model():
    """The CPU's model name from /proc/cpuinfo ("?" if it has none)."""
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def machine(setup):
    cpu = cpu_model()
    kvm = [m for m in ("kvm_amd", "kvm_intel", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}")]
    nested = ""
    for m in kvm:
        p = f"/sys/module/{m}/parameters/nested"
        if os.path.exists(p):
            nested = f" nested={open(p, encoding='ascii').read().strip()}"
    where = "nested test host L1 (QEMU TCG, -cpu EPYC,+svm,+npt)"
    if os.environ.get("MOAT_NESTED_L1") != "1":
        where = "native KVM"
    commit = first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return [
        ("where", where),
        ("kernel", f"{platform.release()}, KVM module {','.join(kvm) or '?'}{nested}"),
        ("CPU", f"{cpu}, {os.cpu_count()} CPUs"),
        ("moat commit", commit + (" (with uncommitted changes)" if dirty else "")),
        ("guest kernel", f"{asset_name(setup.kernel)} ({os.path.getsize(setup.kernel) // 1024} KiB)"),
        ("initramfs", f"{asset_name(setup.initramfs)} ({os.path.getsize(setup.initramfs) // 1024} KiB)"),
        ("guest", f"1 vCPU, {setup.guest_mib} MiB, no devices but the serial port (and i8042 in moat)"),
        ("moat-vmm command line", f"`{setup.cmdline}`"),
        ("QEMU command line", f"`{setup.qemu_cmdline}` (microvm has no i8042)"),
        ("QEMU", first_line([setup.qemu, "--version"])),
        ("perf", first_line([setup.perf, "--version"]) if setup.perf else "not installed"),
    ]


def ms(seconds, digits=0):
    return f"{seconds * 1000:.{digits}f}"


def timing_table(rows, digits=0):
    """One row per (name, seconds list); rows with no values are left out."""
    out = ["| what | runs | median ms | p90 ms | min ms | max ms |", "|---|---|---|---|---|---|"]
    for name, times in rows:
        if times:
            s = summary(times)
            cells = [ms(s[k], digits) for k in ("median", "p90", "min", "max")]
            out.append(f"| {name} | {s['n']} | {' | '.join(cells)} |")
    return out


def moat_run_command(flags):
    return " ".join(["moat", "run", *flags, "--", "true"])


def moat_run_rows(runs, key, suffix=""):
    """(row name, values) of each `moat run` variant, in the order measured."""
    return [(f"`{moat_run_command(flags)}`{suffix}", r[key]) for flags, r in runs]


def setup_section(runs):
    """The runtime's Run-to-Started times of the `moat run` variants, and their differences."""
    if not any(r["setup"] for _, r in runs):
        return ["The runtime reported no Run-to-Started times (`setup_us` in its debug log)."]
    lines = [
        "Time from the runtime sending `Run` to its reading `Started` (its debug log's "
        "`setup_us`): the agent's container setup up to the exec of `true`, plus one round trip "
        "on the agent channel; the same runs as above.",
        "",
    ]
    lines += timing_table(moat_run_rows(runs, "setup"), digits=1)
    base = runs[0][1]
    diffs = []
    for flags, r in runs[1:]:
        if base["setup"] and r["setup"] and base["times"] and r["times"]:
            d = statistics.median(r["setup"]) - statistics.median(base["setup"])
            e = statistics.median(r["times"]) - statistics.median(base["times"])
            diffs.append(
                f"- `{' '.join(flags)}` minus the default (medians): {ms(d, 1)} ms of setup, "
                f"{ms(e)} ms end to end."
            )
    return lines + ([""] + diffs if diffs else [])


def own_stats_table(stats):
    if not stats:
        return ["No successful moat-vmm run."]
    keys = [k for k, v in stats[0].items() if isinstance(v, int)]
    out = ["| counter | median | min | max |", "|---|---|---|---|"]
    for k in keys:
        vals = [s[k] for s in stats]
        if max(vals) == 0:
            continue
        out.append(f"| {k} | {statistics.median(vals):.0f} | {min(vals)} | {max(vals)} |")
    return out


def exits_table(vmm, qemu, top=12):
    def total(t):
        return sum(v[0] for v in t.values()) if t else 0

    out = [
        "| exit reason | moat-vmm | QEMU microvm | moat-vmm avg µs | QEMU avg µs |",
        "|---|---|---|---|---|",
        f"| **total** | **{total(vmm):.0f}** | **{total(qemu):.0f}** | | |",
    ]
    reasons = sorted(
        set(vmm or {}) | set(qemu or {}),
        key=lambda r: -max((vmm or {}).get(r, (0,))[0], (qemu or {}).get(r, (0,))[0]),
    )
    for r in reasons[:top]:
        a = (vmm or {}).get(r, (0, 0, 0))
        b = (qemu or {}).get(r, (0, 0, 0))
        out.append(f"| {r} | {a[0]:.0f} | {b[0]:.0f} | {a[2]:.1f} | {b[2]:.1f} |")
    if len(reasons) > top:
        out.append(f"| ({len(reasons) - top} more reasons) | | | | |")
    return out


def mib(kb):
    return f"{kb / 1024:.2f}"


def memory_table(rows):
    out = [
        "| VMM | peak RSS outside guest memory (sampled) | VmHWM − peak guest RSS | "
        "guest memory touched | peak total RSS (wait4, timed runs) |",
        "|---|---|---|---|---|",
    ]
    for name, mems, maxrss in rows:
        mems = [m for m in mems if m]
        if not mems or not maxrss:
            continue
        peak = statistics.median(m["peak_other_kb"] for m in mems)
        hwm = [m["hwm_minus_guest_kb"] for m in mems if m["hwm_minus_guest_kb"] is not None]
        guest = statistics.median(m["peak_guest_kb"] for m in mems)
        hwm_s = f"{mib(statistics.median(hwm))} MiB" if hwm else "?"
        out.append(
            f"| {name} | {mib(peak)} MiB | {hwm_s} | {mib(guest)} MiB | "
            f"{mib(statistics.median(maxrss))} MiB |"
        )
    return out


def report(setup, args, results):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# moat benchmark, {now}", ""]
    lines += [f"- {k}: {v}" for k, v in machine(setup)]
    lines += ["", f"## Wall time (median of {args.runs})", ""]
    lines += timing_table(
        [
            *moat_run_rows(results["moat_runs"], "times", " (end to end)"),
            ("moat-vmm: process start to exit, boot to agent reset", results["vmm_times"]),
            ("QEMU microvm: process start to exit, same boot", results["qemu_times"]),
            ("`runc run` busybox `/bin/true` (shared kernel)", results.get("runc")),
        ]
    )
    if setup.failures:
        lines += ["", "Failed runs (left out of the table above):", ""]
        lines += [f"- {f}" for f in setup.failures]
    if results["moat_runs"]:
        lines += ["", "## Container setup in the guest (`moat run` variants, alternated)", ""]
        lines += setup_section(results["moat_runs"])
    lines += ["", "## VM exits by reason (host kernel's view: `perf kvm stat`)", ""]
    if results["perf_vmm"] or results["perf_qemu"]:
        lines += [f"Median of {args.perf_runs} recorded boots each (separate from the timed runs).", ""]
        lines += exits_table(results["perf_vmm"], results["perf_qemu"])
    else:
        lines.append("perf kvm stat was not available.")
    lines += ["", f"## moat-vmm's own exit counts (`--stats`, {args.runs} runs)", ""]
    lines += own_stats_table(results["vmm_stats"])
    lines += ["", f"## Resident memory (medians; {args.mem_runs} sampled boots each)", ""]
    lines += memory_table(
        [
            ("moat-vmm", results["vmm_mems"], results["vmm_maxrss"]),
            ("QEMU microvm", results["qemu_mems"], results["qemu_maxrss"]),
        ]
    )
    lines.append("")
    return "\n".join(lines)


