#!/usr/bin/env python3
"""moat image benchmarks: pulling and converting a ~100 MiB image, and running it.

Everything talks to one local `docker-registry` (plain HTTP on 127.0.0.1, its own storage) that
holds one generated image (see `make_image`: static busybox plus ~100 MiB of files, cached under
~/.cache/moat/bench-image/<parameters' hash>/ as an OCI layout). Two parts:

--host  (default; no KVM needed) `moat pull` into an empty data root against the peer
        `skopeo copy docker://... oci:DIR` + `umoci unpack`, alternated, N runs each.
--vm    (KVM that boots guests: natively or in the nested test host L1) `moat run IMAGE -- true`
        with an empty data root (pull + convert + boot), the same again with the image stored
        (boot only), and `moat run -- true` (built-in busybox), N rounds.
--prepare only makes (or finds) the cached image and prints its directory.

Progress goes to stderr, the Markdown report to stdout. Python 3 standard library only.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_NAME = "bench/big"
TAG = "1"
BUSYBOX = "/bin/busybox"
REGISTRY_START_TIMEOUT = 60

# What the generated image is made of. Any change here (or of /bin/busybox) names a new cache
# directory; bump "version" when the generator's code changes what it writes.
GENERATOR = {
    "version": 1,
    "seed": 20261202,
    # The content layers' shares of the content, bottom first (layer 1 is busybox).
    "layers": [0.5, 0.3, 0.2],
    "content_mib": 100,
    # File sizes: log-normal around a median, clamped.
    "median_file_bytes": 6000,
    "size_sigma": 1.5,
    "min_file_bytes": 16,
    "max_file_bytes": 8 << 20,
    # Kinds of file by count: word-like text (compresses ~3x), machine-code-like binary (runs of
    # zeros, repeated motifs, random stretches), and random bytes (already-compressed assets).
    "kinds": {"text": 0.45, "binary": 0.35, "random": 0.20},
    "gzip_level": 6,
    "mtime": 1700000000,
}

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
APPLETS = ("sh", "true", "false", "ls", "cat", "echo", "env", "sleep")

FLATTENED = re.compile(r"filesystem ready in ([\d.]+)s")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- the image --------------------------------------------------------------------------------


class HashingWriter:
    """A write-only file object that hashes and counts what passes through to `out`."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self):
        self.out.flush()

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


class Content:
    """Pseudo-random file contents of three kinds, from one seeded generator."""

    def __init__(self, rng):
        self.rng = rng
        # Word-like text: a vocabulary used with Zipf-like frequencies, in lines.
        letters = "etaoinshrdlcumwfgypbvkjxqz_"
        vocab = [
            "".join(rng.choices(letters, k=rng.randint(2, 11))) for _ in range(3000)
        ]  # fmt: skip
        weights = [1 / (r + 1) for r in range(len(vocab))]
        words = rng.choices(vocab, weights=weights, k=700_000)
        for i in range(0, len(words), 12):
            words[i] += "\n"
        self.text = " ".join(words).encode()
        # Machine-code-like: blocks of random bytes, zero runs, and short motifs repeated with
        # a few bytes changed.
        parts, size = [], 0
        while size < 4 << 20:
            kind = rng.random()
            n = rng.randint(64, 4096)
            if kind < 0.45:
                block = rng.randbytes(n)
            elif kind < 0.65:
                block = bytes(n)
            else:
                motif = bytearray(rng.randbytes(rng.randint(4, 48)) * (n // 4 + 1))[:n]
                for _ in range(n // 32):
                    motif[rng.randrange(n)] = rng.randrange(256)
                block = bytes(motif)
            parts.append(block)
            size += n
        self.binary = b"".join(parts)

    def _slice(self, pool, n):
        out = []
        while n > 0:
            k = min(n, len(pool) // 2)
            start = self.rng.randrange(len(pool) - k)
            out.append(pool[start : start + k])
            n -= k
        return b"".join(out)

    def make(self, kind, n):
        if kind == "text":
            return self._slice(self.text, n)
        if kind == "binary":
            return self._slice(self.binary, n)
        return self.rng.randbytes(n)


def tar_entry(name, kind=tarfile.REGTYPE, mode=0o644, size=0, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = GENERATOR["mtime"]
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def write_layer(blobs, fill):
    """Writes one gzip layer into blobs/; fill(add) adds its entries, add(info, data=None).
    Returns (descriptor, diff ID, uncompressed size)."""
    tmp = os.path.join(blobs, f".layer-{os.getpid()}")
    with open(tmp, "wb") as raw:
        packed = HashingWriter(raw)
        gz = gzip.GzipFile(
            filename="", fileobj=packed, mode="wb", compresslevel=GENERATOR["gzip_level"], mtime=0
        )
        plain = HashingWriter(gz)
        tar = tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT)
        dirs = set()

        def add(info, data=None):
            parent = os.path.dirname(info.name)
            missing = []
            while parent and parent not in dirs:
                missing.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(missing):
                dirs.add(d)
                tar.addfile(tar_entry(d + "/", tarfile.DIRTYPE, 0o755))
            if info.type == tarfile.DIRTYPE:
                dirs.add(info.name.rstrip("/"))
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        fill(add)
        tar.close()
        gz.close()
    digest = packed.digest()
    os.rename(tmp, os.path.join(blobs, digest.split(":")[1]))
    desc = {"mediaType": LAYER_TYPE, "digest": digest, "size": packed.size}
    return desc, plain.digest(), plain.size


def busybox_layer(add):
    data = open(BUSYBOX, "rb").read()
    add(tar_entry("bin/busybox", mode=0o755, size=len(data)), data)
    for applet in APPLETS:
        add(tar_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
    add(tar_entry("etc/passwd", size=len(PASSWD)), PASSWD.encode())
    add(tar_entry("etc/group", size=len(GROUP)), GROUP.encode())
    add(tar_entry("tmp", tarfile.DIRTYPE, 0o1777))
    for d in ("proc", "sys", "dev", "root"):
        add(tar_entry(d, tarfile.DIRTYPE, 0o755 if d != "root" else 0o700))


# Where each content layer puts its files, bottom first (an OS, its libraries, an application).
LAYER_ROOTS = (
    ("usr/lib/x86_64-linux-gnu", "usr/share/doc", "usr/share/locale", "usr/bin"),
    ("usr/local/lib/python3/site-packages", "usr/local/share"),
    ("app/lib", "app/assets", "app/bin"),
)


def content_layer(index, budget, content, stats):
    g = GENERATOR
    rng = content.rng
    roots = LAYER_ROOTS[index % len(LAYER_ROOTS)]
    kinds = list(g["kinds"])
    kind_weights = [g["kinds"][k] for k in kinds]
    mu = math.log(g["median_file_bytes"])
    suffix = {"text": ".txt", "binary": ".so", "random": ".gz"}

    def fill(add):
        written, serial = 0, 0
        while written < budget:
            kind = rng.choices(kinds, weights=kind_weights)[0]
            n = int(rng.lognormvariate(mu, g["size_sigma"]))
            n = max(g["min_file_bytes"], min(g["max_file_bytes"], n, budget - written))
            root = rng.choice(roots)
            d = f"{root}/d{rng.randrange(40):02d}/s{rng.randrange(8)}"
            name = f"{d}/f{serial:05d}{suffix[kind]}"
            serial += 1
            mode = 0o755 if kind == "binary" and rng.random() < 0.3 else 0o644
            add(tar_entry(name, mode=mode, size=n), content.make(kind, n))
            if kind == "binary" and rng.random() < 0.1:
                # Versioned-library style links.
                add(tar_entry(f"{name}.1", tarfile.SYMTYPE, 0o777, link=os.path.basename(name)))
            written += n
            stats["files"] += 1
            stats["file_bytes"] += n

    return fill


def image_dir():
    cache = os.environ.get("MOAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache/moat")
    with open(BUSYBOX, "rb") as f:
        busybox_sha = hashlib.sha256(f.read()).hexdigest()
    key = json.dumps({"generator": GENERATOR, "busybox": busybox_sha}, sort_keys=True)
    return os.path.join(cache, "bench-image", hashlib.sha256(key.encode()).hexdigest()[:16])


def make_image():
    """The generated image's OCI layout directory (tag TAG) and its info.json, made if missing."""
    final = image_dir()
    info_path = os.path.join(final, "info.json")
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            return final, json.load(f)
    if os.environ.get("MOAT_NESTED_L1") == "1":
        log("the image is not in the cache: making it in L1 (slow; lost when L1 ends)")
    log(f"making the benchmark image in {final}")
    start = time.monotonic()
    os.makedirs(os.path.dirname(final), exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=os.path.dirname(final))
    os.chmod(work, 0o755)
    try:
        blobs = os.path.join(work, "blobs/sha256")
        os.makedirs(blobs)
        rng = random.Random(GENERATOR["seed"])
        content = Content(rng)
        stats = {"files": 0, "file_bytes": 0}
        layers = [write_layer(blobs, busybox_layer)]
        total = GENERATOR["content_mib"] << 20
        for i, share in enumerate(GENERATOR["layers"]):
            layers.append(write_layer(blobs, content_layer(i, int(total * share), content, stats)))
            log(f"layer {i + 2}: {layers[-1][0]['size'] >> 20} MiB compressed")
        created = datetime.datetime.fromtimestamp(GENERATOR["mtime"], datetime.timezone.utc)
        created = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        config = {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff, _ in layers]},
            "history": [
                {"created": created, "created_by": f"moat bench/images.py layer {i + 1}"}
                for i in range(len(layers))
            ],
        }
        config_desc = write_json_blob(blobs, config, CONFIG_TYPE)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": config_desc,
            "layers": [desc for desc, _, _ in layers],
        }
        manifest_desc = write_json_blob(blobs, manifest, MANIFEST_TYPE)
        manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": TAG}
        index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [manifest_desc]}
        with open(os.path.join(work, "index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f)
        with open(os.path.join(work, "oci-layout"), "w", encoding="utf-8") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        info = {
            "layers": len(layers),
            "compressed_bytes": sum(desc["size"] for desc, _, _ in layers),
            "uncompressed_bytes": sum(size for _, _, size in layers),
            "content_files": stats["files"],
            "content_bytes": stats["file_bytes"],
            "manifest": manifest_desc["digest"],
            "generator": GENERATOR,
        }
        with open(os.path.join(work, "info.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"image made in {time.monotonic() - start:.1f} s: {info['compressed_bytes'] >> 20} MiB "
        f"compressed, {info['uncompressed_bytes'] >> 20} MiB of tar")  # fmt: skip
    return final, info


def write_json_blob(blobs, value, media_type):
    data = json.dumps(value, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest.split(":")[1]), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


# --- processes --------------------------------------------------------------------------------


class Runner:
    """Runs commands one at a time, each in its own session, killed (with its session) on
    timeout or when the bench is interrupted; keeps their output in the work dir."""

    def __init__(self, work, timeout):
        self.work = work
        self.timeout = timeout
        self.serial = 0
        self.current = None

    def run(self, cmd, env=None, sync=True):
        """Returns (seconds, exit status, output). sync: write back dirty pages first, so that
        one run's leftovers are not written during the next."""
        if sync:
            os.sync()
        self.serial += 1
        out_path = os.path.join(self.work, f"out-{self.serial}-{os.path.basename(cmd[0])}")
        with open(out_path, "wb") as out:
            start = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
            self.current = proc
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                log(f"{' '.join(cmd[:2])} still running after {self.timeout} s: killing it")
                self.kill()
                rc = proc.wait()
            except BaseException:
                # Interrupted (SIGTERM, ^C): the command is in a session of its own, so it
                # would live on; it must be gone before the work dir is removed.
                self.kill()
                proc.wait()
                raise
            finally:
                self.current = None
            seconds = time.monotonic() - start
        with open(out_path, "rb") as f:
            text = f.read().decode(errors="replace")
        if rc != 0:
            log(f"{' '.join(cmd[:2])} exited {rc} after {seconds:.1f} s: {text[-600:].strip()}")
        return seconds, rc, text

    def kill(self):
        """SIGKILLs the running command's session."""
        if self.current and self.current.poll() is None:
            try:
                os.killpg(self.current.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry serving plain HTTP on 127.0.0.1:PORT from a storage dir of its own."""

    def __init__(self, work):
        self.dir = os.path.join(work, "registry")
        os.makedirs(self.dir)
        self.proc = None
        self.addr = None
        self.log_path = os.path.join(self.dir, "registry.log")

    def start(self):
        binary = os.environ.get("MOAT_DOCKER_REGISTRY", "/usr/bin/docker-registry")
        for _ in range(5):
            port = free_port()
            config = os.path.join(self.dir, "config.yml")
            with open(config, "w", encoding="utf-8") as f:
                f.write(
                    "version: 0.1\n"
                    "log:\n  level: warn\n  formatter: text\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/storage\n"
                    "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n  secret: moat-bench-secret\n"
                )
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(
                    [binary, "serve", config], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True,
                )  # fmt: skip
            self.addr = f"127.0.0.1:{port}"
            if self.wait_ready():
                return
            self.stop()
            text = open(self.log_path, encoding="utf-8", errors="replace").read()
            if "address already in use" not in text:
                sys.exit(f"bench: docker-registry did not start:\n{text[-2000:]}")
            log(f"port {port} was taken: trying another")
        sys.exit("bench: docker-registry: no free port after 5 tries")

    def wait_ready(self):
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=5) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def image(self):
        return f"{self.addr}/{REPO_NAME}:{TAG}"


def skopeo(*args):
    return ["skopeo", "--insecure-policy", *args]


def push(runner, registry, layout):
    seconds, rc, _ = runner.run(skopeo("copy", "--preserve-digests", "--dest-tls-verify=false",
                                       "--dest-no-creds", f"oci:{layout}:{TAG}",
                                       f"docker://{registry.image()}"))  # fmt: skip
    if rc != 0:
        sys.exit("bench: pushing the image failed")
    log(f"pushed {registry.image()} in {seconds:.1f} s")


# --- sizes and cleanup ------------------------------------------------------------------------


def tree_size(path):
    """(apparent bytes, allocated bytes) under path, each inode counted once."""
    apparent = allocated = 0
    seen = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def store_sizes(data_root):
    """Sizes of a moat data root's flattened filesystems and blobs (apparent, allocated)."""
    out = {}
    for what, sub in (("ext4", "images/rootfs"), ("blobs", "images/blobs")):
        apparent = allocated = 0
        d = os.path.join(data_root, sub)
        if what == "ext4":
            if os.path.isdir(d):
                for name in os.listdir(d):
                    if name.endswith(".ext4"):
                        st = os.stat(os.path.join(d, name))
                        apparent += st.st_size
                        allocated += st.st_blocks * 512
        elif os.path.isdir(d):
            apparent, allocated = tree_size(d)
        out[what] = (apparent, allocated)
    return out


def unmount_under(path):
    """Lazily unmounts anything mounted at or below path (nothing should be)."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p == path or p.startswith(path + "/")), reverse=True):
        log(f"unmounting {p}, left mounted")
        subprocess.run(["umount", "-l", p], check=False)


def remove(path):
    if os.path.lexists(path):
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


# --- the machine ------------------------------------------------------------------------------


def version(cmd):
    """First line of a tool's version output (stdout, else stderr)."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (r.stdout.strip() or r.stderr.strip()).splitlines()
    return text[0].strip() if text else "?"


def machine(moat, peers):
    cpu = report.cpu_model()
    where = "this machine (not the nested test host)"
    if os.environ.get("MOAT_NESTED_L1") == "1":
        where = "nested test host L1 (QEMU TCG, -cpu EPYC,+svm,+npt)"
    commit = report.first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    lines = [
        ("where", where),
        ("CPU", f"{cpu}, nproc {os.cpu_count()}"),
        ("kernel", platform.release()),
        ("moat", f"{version([moat, '--version'])}, commit {commit}"
                 + (" (with uncommitted changes)" if dirty else "")),  # fmt: skip
        ("mkfs.ext4", version(["mkfs.ext4", "-V"])),
        ("docker-registry", version([os.environ.get("MOAT_DOCKER_REGISTRY", "docker-registry"),
                                     "--version"])),  # fmt: skip
    ]
    lines += [(name, version(cmd)) for name, cmd in peers]
    return [f"- {k}: {v}" for k, v in lines]


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def image_lines(info, layout):
    return [
        f"- image: `{REPO_NAME}:{TAG}`, generated by `bench/images.py` "
        f"(cache `{os.path.basename(layout)}`): {info['layers']} gzip layers (static busybox, "
        f"then {info['content_files']} files of word-like text, machine-code-like and random "
        f"bytes), {mib(info['compressed_bytes'])} compressed, {mib(info['uncompressed_bytes'])} "
        f"of tar ({mib(info['content_bytes'])} of file content)",
    ]


# --- the host part: pull and convert ----------------------------------------------------------


def measure_host(args, runner, registry, work):
    moat = os.path.join(os.path.abspath(args.bin_dir), "moat")
    image = registry.image()
    r = {"moat": [], "flatten": [], "peer": [], "copy": [], "unpack": [], "sizes": [],
         "bundle": [], "failures": []}  # fmt: skip
    for i in range(args.runs):
        def moat_pull():
            root = os.path.join(work, f"moat-root-{i}")
            env = dict(os.environ, MOAT_DATA_ROOT=root)
            seconds, rc, out = runner.run([moat, "pull", image], env)
            if rc != 0:
                r["failures"].append(f"`moat pull` #{i + 1}: exit {rc} after {seconds:.1f} s")
            else:
                r["moat"].append(seconds)
                m = FLATTENED.search(out)
                if m:
                    r["flatten"].append(float(m.group(1)))
                r["sizes"].append(store_sizes(root))
                log(f"moat pull #{i + 1}: {seconds:.2f} s (flattening {m and m.group(1)} s)")
            remove(root)

        def peer():
            layout = os.path.join(work, f"skopeo-{i}")
            bundle = os.path.join(work, f"bundle-{i}")
            s1, rc1, _ = runner.run(skopeo("copy", "--src-tls-verify=false", "--src-no-creds",
                                           f"docker://{image}", f"oci:{layout}:{TAG}"))  # fmt: skip
            s2, rc2 = 0.0, 1
            if rc1 == 0:
                s2, rc2, _ = runner.run(["umoci", "unpack", "--image", f"{layout}:{TAG}", bundle],
                                        sync=False)  # fmt: skip
            if rc1 != 0 or rc2 != 0:
                r["failures"].append(f"skopeo copy + umoci unpack #{i + 1}: exit {rc1}/{rc2}")
            else:
                r["copy"].append(s1)
                r["unpack"].append(s2)
                r["peer"].append(s1 + s2)
                r["bundle"].append(tree_size(os.path.join(bundle, "rootfs")))
                log(f"skopeo copy + umoci unpack #{i + 1}: {s1:.2f} + {s2:.2f} s")
            remove(layout)
            remove(bundle)

        for once in (moat_pull, peer) if i % 2 == 0 else (peer, moat_pull):
            once()
    return r


def host_report(args, info, layout, r):
    lines = [
        f"Each of {args.runs} rounds, alternating which goes first: `moat pull "
        f"127.0.0.1:PORT/{REPO_NAME}:{TAG}` "
        "into an empty data root (download, digest checks, layers applied and packed into one "
        "ext4 file), against `skopeo copy docker://... oci:DIR` followed by `umoci unpack` "
        "(download into an OCI layout, then the layers applied into a directory tree). Both "
        "from the same `docker-registry` on 127.0.0.1 (plain HTTP, its storage in the page "
        "cache); dirty pages are written back (`sync`) before each run and its output removed "
        "after it. Both check each layer's digest; umoci 0.4 also writes an mtree manifest of "
        "the unpacked tree holding every file's SHA-256; moat hashes each uncompressed layer "
        "against its diff ID.",
        "",
    ]
    lines += report.timing_table([
        ("`moat pull` (download + verify + flatten into ext4)", r["moat"]),
        ("of which: flattening (moat's `filesystem ready in`)", r["flatten"]),
        ("`skopeo copy` + `umoci unpack`", r["peer"]),
        ("of which: `skopeo copy docker://... oci:DIR`", r["copy"]),
        ("of which: `umoci unpack --image DIR:1 BUNDLE`", r["unpack"]),
    ])  # fmt: skip
    if r["moat"] and r["peer"]:
        ratio = statistics.median(r["moat"]) / statistics.median(r["peer"])
        lines += ["", f"moat / peer (medians): {ratio:.2f}x."]
    lines += ["", "| size | apparent | allocated |", "|---|---|---|"]
    lines.append(f"| image, compressed (layers) | {mib(info['compressed_bytes'])} | |")
    lines.append(f"| image, uncompressed (layer tars) | {mib(info['uncompressed_bytes'])} | |")
    for label, key in (("moat: flattened ext4 (`images/rootfs/*.ext4`)", "ext4"),
                       ("moat: blobs (`images/blobs`)", "blobs")):  # fmt: skip
        vals = [s[key] for s in r["sizes"]]
        if vals:
            a = statistics.median(v[0] for v in vals)
            b = statistics.median(v[1] for v in vals)
            lines.append(f"| {label} | {mib(a)} | {mib(b)} |")
    if r["bundle"]:
        a = statistics.median(v[0] for v in r["bundle"])
        b = statistics.median(v[1] for v in r["bundle"])
        lines.append(f"| umoci: bundle `rootfs/` tree | {mib(a)} | {mib(b)} |")
    if r["failures"]:
        lines += ["", "Failed runs (left out of the tables):", ""]
        lines += [f"- {f}" for f in r["failures"]]
    lines.append("")
    return lines


# --- the VM part: moat run IMAGE --------------------------------------------------------------


def vm_env(args):
    """moat and the environment naming its VMM, kernel and initramfs; exits if one is missing."""
    bin_dir = os.path.abspath(args.bin_dir)
    moat = os.path.join(bin_dir, "moat")
    assets = os.environ.get("MOAT_ASSETS_DIR") or os.path.join(bin_dir, "moat-assets")
    base_env = dict(os.environ, MOAT_ASSETS_DIR=assets)
    base_env.setdefault("MOAT_VMM", os.path.join(bin_dir, "moat-vmm"))
    base_env.setdefault("MOAT_KERNEL", os.path.join(assets, "vmlinux"))
    base_env.setdefault("MOAT_INITRAMFS", os.path.join(assets, "initramfs.cpio"))
    busybox = os.path.join(assets, "images/busybox.ext4")
    for what in (moat, base_env["MOAT_VMM"], base_env["MOAT_KERNEL"], base_env["MOAT_INITRAMFS"],
                 busybox):  # fmt: skip
        if not os.path.isfile(what):
            sys.exit(f"bench: {what} is missing (run scripts/build, or set --bin-dir)")
    return moat, base_env


def measure_vm(args, runner, registry, work):
    moat, base_env = vm_env(args)
    image = registry.image()
    r = {"cold": [], "flatten": [], "warm": [], "busybox": [], "failures": []}

    def run(key, label, root, cmd):
        env = dict(base_env, MOAT_DATA_ROOT=root)
        seconds, rc, out = runner.run(cmd, env)
        if rc != 0:
            r["failures"].append(f"`{label}` #{i + 1}: exit {rc} after {seconds:.1f} s")
            return False
        r[key].append(seconds)
        m = FLATTENED.search(out)
        if key == "cold" and m:
            r["flatten"].append(float(m.group(1)))
        log(f"{label} #{i + 1}: {seconds:.2f} s")
        return True

    # Not counted: brings the kernel, initramfs and binaries into the page cache.
    i = -1
    warm_root = os.path.join(work, "moat-root-warmup")
    ok = run("busybox", "warm-up moat run -- true", warm_root, [moat, "run", "--", "true"])
    r["busybox"].clear()
    remove(warm_root)
    if not ok:
        sys.exit("bench: the uncounted `moat run -- true` failed: not measuring")

    for i in range(args.runs):
        def image_runs():
            root = os.path.join(work, f"moat-root-{i}")
            cmd = [moat, "run", image, "--", "true"]
            if run("cold", "moat run IMAGE -- true (empty store)", root, cmd):
                run("warm", "moat run IMAGE -- true (stored)", root, cmd)
            remove(root)

        def busybox():
            root = os.path.join(work, f"moat-root-busybox-{i}")
            run("busybox", "moat run -- true", root, [moat, "run", "--", "true"])
            remove(root)

        for once in (image_runs, busybox) if i % 2 == 0 else (busybox, image_runs):
            once()
    return r


def vm_report(args, r):
    lines = [
        f"Each of {args.runs} rounds, alternating which goes first: `moat run "
        f"127.0.0.1:PORT/{REPO_NAME}:{TAG} -- true` with an empty data root (pull, flatten, "
        "boot, run), then the same command again on that data root (image stored: boot and "
        "run only), and `moat run -- true` (built-in busybox) with an empty data root. One "
        "uncounted `moat run -- true` first (page cache).",
        "",
    ]
    lines += report.timing_table([
        ("`moat run IMAGE -- true`, empty store (pull + convert + boot)", r["cold"]),
        ("of which: flattening (`filesystem ready in`)", r["flatten"]),
        ("`moat run IMAGE -- true`, image stored (boot only)", r["warm"]),
        ("`moat run -- true` (built-in busybox)", r["busybox"]),
    ])  # fmt: skip
    if r["warm"] and r["busybox"]:
        d = statistics.median(r["warm"]) - statistics.median(r["busybox"])
        lines += ["", f"Stored image minus built-in busybox (medians): {report.ms(d)} ms."]
    if r["cold"] and r["warm"]:
        d = statistics.median(r["cold"]) - statistics.median(r["warm"])
        lines.append(f"Empty store minus stored (medians; pull and conversion): {report.ms(d)} ms.")
    if r["failures"]:
        lines += ["", "Failed runs (left out of the table):", ""]
        lines += [f"- {f}" for f in r["failures"]]
    lines.append("")
    return lines


# --- main -------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--host", action="store_true", help="moat pull vs skopeo + umoci (default)")
    mode.add_argument("--vm", action="store_true", help="moat run IMAGE (KVM that boots guests)")
    mode.add_argument("--prepare", action="store_true", help="only make or find the image")
    p.add_argument("--runs", type=int, default=5, help="rounds of each (default 5)")
    p.add_argument("--bin-dir", default=os.path.join(REPO, "target/release"))
    p.add_argument("--work-dir", help="parent of the temporary dir (default: $TMPDIR; in L1 "
                   "/var/lib/moat, its data disk)")  # fmt: skip
    p.add_argument("--timeout", type=int, default=900, help="seconds one command may take")
    p.add_argument("--no-title", action="store_true", help="leave out the report's title line")
    args = p.parse_args()
    if args.runs < 1:
        sys.exit("bench: --runs must be at least 1")
    if os.geteuid() != 0 and not args.prepare:
        sys.exit("bench: run as root (moat pull and umoci unpack apply layers as root)")

    if args.vm:
        vm_env(args)
    layout, info = make_image()
    if args.prepare:
        print(layout)
        return

    parent = args.work_dir
    if not parent and os.environ.get("MOAT_NESTED_L1") == "1":
        parent = "/var/lib/moat"
    work = tempfile.mkdtemp(prefix="moat-bench-images.", dir=parent)
    runner = Runner(work, args.timeout)
    registry = Registry(work)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        log(f"work dir {work}; {args.runs} runs each")
        registry.start()
        log(f"docker-registry at {registry.addr}")
        push(runner, registry, layout)
        if args.vm:
            r = measure_vm(args, runner, registry, work)
        else:
            r = measure_host(args, runner, registry, work)
    finally:
        runner.kill()
        registry.stop()
        remove(work)

    moat = os.path.join(os.path.abspath(args.bin_dir), "moat")
    lines = []
    if not args.no_title:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"# moat image benchmark, {now}", ""]
    if args.vm:
        lines += ["## `moat run IMAGE -- true`", ""]
        lines += machine(moat, []) + image_lines(info, layout) + [""]
        lines += vm_report(args, r)
    else:
        lines += ["## Pull and convert (no VM)", ""]
        lines += machine(moat, [("skopeo", ["skopeo", "--version"]),
                                ("umoci", ["umoci", "--version"])])  # fmt: skip
        lines += image_lines(info, layout) + [""]
        lines += host_report(args, info, layout, r)
    print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
