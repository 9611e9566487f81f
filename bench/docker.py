#!/usr/bin/env python3
"""`docker run --rm --runtime moat` against `docker run --rm` (runc) (bench/run --docker).

  python3 bench/docker.py [--runs N] [--bin-dir DIR]   # where moat's VMs boot (native or L1)

Starts a private containerd and dockerd (data root on a tmpfs, no iptables, no bridge, moat
registered as the runtime `moat`), imports a busybox image, then times N runs (default 10) of
`docker run --rm IMAGE true` with each runtime, interleaved, after one untimed warm-up each.
Prints Markdown rows: median, p90 and range. Everything it started is stopped and removed.
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
IMAGE = "moat-bench/busybox:1"


class Daemons:
    """containerd + dockerd under one temp dir."""

    def __init__(self, moat):
        self.base = tempfile.mkdtemp(prefix="moat-bench-docker.")
        self.fs = os.path.join(self.base, "fs")
        os.makedirs(self.fs)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "moat-bench", self.fs],
                       check=True)
        self.procs = []
        sock = os.path.join(self.base, "containerd.sock")
        toml = os.path.join(self.base, "containerd.toml")
        with open(toml, "w", encoding="utf-8") as f:
            f.write(f'version = 2\nroot = "{self.fs}/ctr-root"\nstate = "{self.fs}/ctr-state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{sock}"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.fs}/opt"\n')
        daemon_json = os.path.join(self.base, "daemon.json")
        with open(daemon_json, "w", encoding="utf-8") as f:
            json.dump({"storage-driver": "overlay2", "runtimes": {"moat": {"path": moat}},
                       "deprecated-key-path": os.path.join(self.base, "key.json")}, f)
        self.log = open(os.path.join(self.base, "daemons.log"), "w", encoding="utf-8")
        self.spawn(["containerd", "--config", toml])
        self.wait(lambda: os.path.exists(sock), "containerd")
        self.host = "unix://" + os.path.join(self.base, "docker.sock")
        self.spawn(["dockerd", "--data-root", f"{self.fs}/docker", "--exec-root",
                    f"{self.base}/exec", "--pidfile", f"{self.base}/dockerd.pid",
                    "--host", self.host, "--containerd", sock, "--config-file", daemon_json,
                    "--iptables=false", "--ip6tables=false", "--bridge=none"])
        self.wait(lambda: self.docker(["info"], check=False) == 0, "dockerd")

    def spawn(self, cmd):
        self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                           stderr=self.log))

    @staticmethod
    def wait(ready, what):
        deadline = time.monotonic() + 180
        while not ready():
            if time.monotonic() > deadline:
                sys.exit(f"bench: {what} did not come up")
            time.sleep(0.2)

    def docker(self, args, check=True):
        env = dict(os.environ, DOCKER_CONFIG=os.path.join(self.base, "cli"))
        rc = subprocess.run(["docker", "-H", self.host, *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        if check and rc != 0:
            sys.exit(f"bench: docker {' '.join(args)} failed (exit {rc})")
        return rc

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-R", self.fs])
        shutil.rmtree(self.base, ignore_errors=True)


def import_busybox(daemons):
    root = tempfile.mkdtemp(prefix="moat-bench-bb.")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy(shutil.which("busybox"), os.path.join(root, "bin/busybox"))
    os.symlink("busybox", os.path.join(root, "bin/true"))
    tar = root + ".tar"
    subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
    daemons.docker(["import", tar, IMAGE])
    shutil.rmtree(root)
    os.unlink(tar)


def timed(daemons, args):
    start = time.monotonic()
    daemons.docker(args)
    return time.monotonic() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--bin-dir", default=os.path.join(REPO, "target/release"))
    args = p.parse_args()
    daemons = Daemons(os.path.abspath(os.path.join(args.bin_dir, "moat")))
    try:
        import_busybox(daemons)
        cmds = {
            "moat": ["run", "--rm", "--runtime", "moat", IMAGE, "/bin/true"],
            "runc": ["run", "--rm", IMAGE, "/bin/true"],
        }
        times = {k: [] for k in cmds}
        for k, cmd in cmds.items():
            timed(daemons, cmd)
        for _ in range(args.runs):
            for k, cmd in cmds.items():
                times[k].append(timed(daemons, cmd))
    finally:
        daemons.close()
    rows = [
        ("`docker run --rm --runtime moat IMAGE true` (VM per container)", times["moat"]),
        ("`docker run --rm IMAGE true` (runc, shared kernel)", times["runc"]),
    ]
    print("\n".join(report.timing_table(rows)), flush=True)


if __name__ == "__main__":
    main()
