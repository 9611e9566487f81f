#!/usr/bin/env python3
"""`moat exec` into a running container against `runc exec` (bench/run --exec).

  python3 bench/exec.py --moat [--runs N] [--bin-dir DIR]   # where moat's VMs boot (native or L1)
  python3 bench/exec.py --runc [--runs N]                   # on a host with runc

Each prints Markdown rows: the median, p90 and range of N runs of `exec CONTAINER true`
(default 50), after one untimed warm-up exec.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd):
    start = time.monotonic()
    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode
    return time.monotonic() - start, rc


def series(cmd, runs):
    seconds, rc = timed(cmd)
    if rc != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed (exit {rc})")
    times = []
    for _ in range(runs):
        seconds, rc = timed(cmd)
        if rc != 0:
            sys.exit(f"bench: {' '.join(cmd)} failed (exit {rc})")
        times.append(seconds)
    return times


def moat_exec(bin_dir, runs):
    moat = os.path.join(bin_dir, "moat")
    name = f"bench-exec-{os.getpid()}"
    subprocess.run([moat, "run", "-d", "--name", name, "--", "sleep", "3600"], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        return series([moat, "exec", name, "true"], runs)
    finally:
        subprocess.run([moat, "rm", "-f", name], stdout=subprocess.DEVNULL)


def runc_exec(runs):
    runc, busybox = shutil.which("runc"), shutil.which("busybox")
    if not runc or not busybox:
        sys.exit("bench: runc and busybox are needed (scripts/deps.sh)")
    bundle = tempfile.mkdtemp(prefix="moat-bench-runc-exec.")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for d in ("proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy(busybox, os.path.join(rootfs, "bin/busybox"))
    for tool in ("true", "sleep"):
        os.symlink("busybox", os.path.join(rootfs, "bin", tool))
    subprocess.run([runc, "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sleep", "3600"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    cid = f"moat-bench-exec-{os.getpid()}"
    subprocess.run([runc, "run", "-d", "--bundle", bundle, cid], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return series([runc, "exec", cid, "/bin/true"], runs)
    finally:
        subprocess.run([runc, "delete", "-f", cid], stderr=subprocess.DEVNULL)
        shutil.rmtree(bundle, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--moat", action="store_true")
    p.add_argument("--runc", action="store_true")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--bin-dir", default=os.path.join(REPO, "target/release"))
    args = p.parse_args()
    rows = []
    if args.moat:
        rows.append(("`moat exec C true` (VM per container)", moat_exec(args.bin_dir, args.runs)))
    if args.runc:
        rows.append(("`runc exec C /bin/true` (shared kernel)", runc_exec(args.runs)))
    print("\n".join(report.timing_table(rows)), flush=True)


if __name__ == "__main__":
    main()
