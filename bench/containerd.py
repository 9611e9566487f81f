#!/usr/bin/env python3
"""moat's containerd shim against runc's, in one containerd (bench/run --containerd).

  python3 bench/containerd.py [--runs N] [--idle N] [--bin-dir DIR]   # where VMs boot
  python3 bench/containerd.py --pods N [--members M] [--bin-dir DIR]

Starts a private containerd (root and state on a tmpfs, no CRI) with containerd-shim-moat-v2
on its PATH, imports a busybox image it builds itself, then:
- times N runs (default 10) of `ctr run --rm --runtime R IMAGE ID /bin/true` with
  io.containerd.moat.v2 and io.containerd.runc.v2, interleaved, after one untimed warm-up each;
- starts N idle tasks (default 3, `sleep 100000`) with each runtime and reads the host memory
  each one costs: the PSS (/proc/PID/smaps_rollup) of its shim and of every process below it
  (moat: the supervisor, the jailed moat-vmm with the guest's pages; runc: the container's
  process).
With --pods N instead: N pods per runtime (interleaved), each a `sleep` sandbox and --members
(default 2) `sleep` containers marked as containerd's CRI plugin marks a pod's tasks (one shim,
and for moat one VM, per pod): the start time of the sandbox and of each later container, and
the pod's host memory (PSS of its shim and everything below it) with the sandbox alone and with
its containers: the figure for a RuntimeClass `overhead`.
Prints Markdown tables. Everything it started is stopped and removed.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import hashlib
import io

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "moat-bench/busybox:1"
NS = "moat-bench"
RUNTIMES = {"moat": "io.containerd.moat.v2", "runc": "io.containerd.runc.v2"}


class Containerd:
    """containerd under one temp dir, the shim's directory first on its PATH."""

    def __init__(self, bin_dir):
        self.base = tempfile.mkdtemp(prefix="moat-bench-ctrd.")
        self.fs = os.path.join(self.base, "fs")
        os.makedirs(self.fs)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "moat-bench", self.fs],
                       check=True)
        self.sock = os.path.join(self.base, "containerd.sock")
        toml = os.path.join(self.base, "containerd.toml")
        with open(toml, "w", encoding="utf-8") as f:
            f.write(f'version = 2\nroot = "{self.fs}/root"\nstate = "{self.fs}/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{self.sock}"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.fs}/opt"\n')
        env = dict(os.environ, PATH=os.path.abspath(bin_dir) + os.pathsep + os.environ["PATH"])
        self.log = open(os.path.join(self.base, "containerd.log"), "w", encoding="utf-8")
        self.proc = subprocess.Popen(["containerd", "--config", toml], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 180
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline:
                sys.exit("bench: containerd did not come up")
            time.sleep(0.1)

    def ctr(self, args, check=True):
        rc = subprocess.run(["ctr", "--address", self.sock, "--namespace", NS, *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        if check and rc != 0:
            sys.exit(f"bench: ctr {' '.join(args)} failed (exit {rc})")
        return rc

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["umount", "-R", self.fs])
        shutil.rmtree(self.base, ignore_errors=True)


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs/sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def image_archive(path):
    """An OCI archive of static busybox (bin/busybox, bin/true, bin/sleep) named IMAGE."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        t.add(shutil.which("busybox"), "bin/busybox")
        for applet in ("true", "sleep", "sh"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
    layer = layer.getvalue()
    layout = tempfile.mkdtemp(prefix="moat-bench-oci.")
    os.makedirs(os.path.join(layout, "blobs/sha256"))
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **blob(layout, json.dumps(config).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            **blob(layout, layer)}]}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **blob(layout, json.dumps(manifest).encode()),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": IMAGE}}]}
    with open(os.path.join(layout, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w", encoding="utf-8") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with tarfile.open(path, "w") as t:
        for name in ("oci-layout", "index.json", "blobs"):
            t.add(os.path.join(layout, name), name)
    shutil.rmtree(layout)


def timed(c, args):
    start = time.monotonic()
    c.ctr(args)
    return time.monotonic() - start


def children():
    """Parent pid -> child pids, from /proc."""
    tree = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def shim_of(task_id):
    """The pid of the serving shim of `task_id`: `containerd-shim-* ... -id ID ...`, no action."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:
            continue
        serving = argv[-1] not in ("start", "delete") and "__supervise" not in argv
        if "containerd-shim" in argv[0] and serving and "-id" in argv:
            if argv[argv.index("-id") + 1 :][:1] == [task_id]:
                return int(entry)
    return None


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "?"


def tree_pss(root):
    """The PSS of `root` and every process below it, in KiB, in all and by process name."""
    tree, parts, todo = children(), {}, [root]
    while todo:
        pid = todo.pop()
        name = "shim" if pid == root else comm(pid)
        parts[name] = parts.get(name, 0) + pss_kb(pid)
        todo.extend(tree.get(pid, []))
    return sum(parts.values()), parts


def idle_memory(c, name, runtime, count):
    ids = [f"idle-{name}-{i}" for i in range(count)]
    for task in ids:
        c.ctr(["run", "-d", "--runtime", runtime, IMAGE, task, "sleep", "100000"])
    time.sleep(5)  # let each boot settle
    values = []
    for task in ids:
        shim = shim_of(task)
        values.append(tree_pss(shim) if shim else (0, {}))
    for task in ids:
        c.ctr(["task", "kill", "-s", "SIGKILL", task], check=False)
    time.sleep(3)
    for task in ids:
        c.ctr(["task", "delete", "--force", task], check=False)
        c.ctr(["container", "delete", task], check=False)
    return values


POD_ANNOTATIONS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id")


def pod_task(c, runtime, pod, role, task):
    """`ctr run -d` of a pod's task as containerd's CRI plugin marks it; its time in seconds."""
    kind, sandbox = POD_ANNOTATIONS
    return timed(c, ["run", "-d", "--runtime", runtime, "--annotation", f"{kind}={role}",
                     "--annotation", f"{sandbox}={pod}", IMAGE, task, "sleep", "100000"])


def one_pod(c, name, runtime, members):
    """A pod of a sandbox and `members` containers (`sleep`): the start times, and the pod's
    host memory (PSS of its one shim and everything below it) with the sandbox alone and with
    every member, in KiB."""
    pod = f"pod-{name}-{time.monotonic_ns()}"
    tasks = [pod] + [f"{pod}-m{i}" for i in range(members)]
    try:
        sandbox_s = pod_task(c, runtime, pod, "sandbox", pod)
        time.sleep(3)
        shim = shim_of(pod)
        alone = tree_pss(shim)[0] if shim else 0
        member_s = [pod_task(c, runtime, pod, "container", t) for t in tasks[1:]]
        time.sleep(3)
        full = tree_pss(shim)[0] if shim else 0
    finally:
        for task in reversed(tasks):
            c.ctr(["task", "kill", "-s", "SIGKILL", task], check=False)
        time.sleep(2)
        for task in reversed(tasks):
            c.ctr(["task", "delete", "--force", task], check=False)
            c.ctr(["container", "delete", task], check=False)
    return sandbox_s, member_s, alone, full


def pod_report(results, members):
    rows = []
    for k, pods in results.items():
        rows.append((f"{RUNTIMES[k]}: the pod's sandbox (`ctr run -d`, CRI's annotations)",
                     [p[0] for p in pods]))
        rows.append((f"{RUNTIMES[k]}: a later container of the pod (`ctr run -d`)",
                     [t for p in pods for t in p[1]]))
    print("\n".join(report.timing_table(rows)))
    print()
    print(f"| pod (`sleep` sandbox + {members} `sleep` containers) | pods | host memory, sandbox "
          "alone | with the containers | per later container |")
    print("|---|---|---|---|---|")
    for k, pods in results.items():
        alone = statistics.median(p[2] for p in pods)
        full = statistics.median(p[3] for p in pods)
        print(f"| {RUNTIMES[k]} | {len(pods)} | {report.mib(alone)} MiB | {report.mib(full)} MiB "
              f"| {report.mib((full - alone) / max(members, 1))} MiB |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--idle", type=int, default=3)
    p.add_argument("--bin-dir", default=os.path.join(REPO, "target/release"))
    p.add_argument("--pods", type=int, default=0,
                   help="instead: N pods per runtime, each a sandbox and --members containers")
    p.add_argument("--members", type=int, default=2)
    args = p.parse_args()
    if args.pods:
        return pods_main(args)
    c = Containerd(args.bin_dir)
    try:
        tar = os.path.join(c.base, "busybox.tar")
        image_archive(tar)
        c.ctr(["images", "import", tar])
        cmds = {k: ["run", "--rm", "--runtime", r, IMAGE, f"bench-{k}", "/bin/true"]
                for k, r in RUNTIMES.items()}
        times = {k: [] for k in cmds}
        for cmd in cmds.values():
            timed(c, cmd)
        for _ in range(args.runs):
            for k, cmd in cmds.items():
                times[k].append(timed(c, cmd))
        memory = {k: idle_memory(c, k, r, args.idle) for k, r in RUNTIMES.items()}
    finally:
        c.close()
    rows = [
        ("`ctr run --rm --runtime io.containerd.moat.v2 IMAGE ID true` (VM per task)",
         times["moat"]),
        ("`ctr run --rm --runtime io.containerd.runc.v2 IMAGE ID true` (shared kernel)",
         times["runc"]),
    ]
    print("\n".join(report.timing_table(rows)))
    print()
    print("| idle task (`sleep`) | tasks | host memory per task (PSS: shim and everything below it) |")
    print("|---|---|---|")
    for k, values in memory.items():
        totals = [t for t, _ in values]
        shown = ", ".join(f"{report.mib(v)}" for v in totals)
        names = sorted({n for _, parts in values for n in parts})
        split = ", ".join(
            f"{n} {report.mib(statistics.median(p.get(n, 0) for _, p in values))}" for n in names)
        print(f"| {RUNTIMES[k]} | {len(values)} | median {report.mib(statistics.median(totals))} "
              f"MiB ({shown}); by process, MiB: {split} |")
    sys.stdout.flush()


def pods_main(args):
    c = Containerd(args.bin_dir)
    try:
        tar = os.path.join(c.base, "busybox.tar")
        image_archive(tar)
        c.ctr(["images", "import", tar])
        results = {k: [] for k in RUNTIMES}
        for _ in range(args.pods):
            for k, r in RUNTIMES.items():
                results[k].append(one_pod(c, k, r, args.members))
    finally:
        c.close()
    pod_report(results, args.members)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
