"""Plays moat's runtime for one run, to test the agent without moat's own VMM and runtime.

usage: host.py LISTEN READY_FILE CMD [ARG...]
  LISTEN is vsock:PORT (AF_VSOCK, e.g. QEMU's vhost-vsock) or unix:PATH (a hybrid-vsock UDS).
Creates READY_FILE once listening, sends Run (busybox image on /dev/vda), prints the process's
stdout/stderr and the agent's messages, sends Shutdown, exits with the process's status.
"""
import json
import socket
import struct
import sys

CONTROL, STDIN, STDOUT, STDERR = 1, 2, 3, 4


def listen(spec):
    kind, _, where = spec.partition(":")
    if kind == "unix":
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(where)
    else:
        srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        srv.bind((socket.VMADDR_CID_ANY, int(where)))
    srv.listen(1)
    srv.settimeout(600)
    return srv


def main():
    srv = listen(sys.argv[1])
    open(sys.argv[2], "w").close()
    conn, _ = srv.accept()
    conn.settimeout(600)

    def read_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError("agent closed the stream")
            buf += chunk
        return buf

    def recv():
        length, kind = struct.unpack("<IB", read_exact(5))
        return kind, read_exact(length)

    def control(msg):
        payload = json.dumps(msg).encode()
        conn.sendall(struct.pack("<IB", len(payload), CONTROL) + payload)

    print("host: agent says", recv()[1].decode(), flush=True)
    control({"type": "run", "id": "smoke", "volumes": [],
             "rootfs": {"device": "/dev/vda", "fstype": "ext4", "upper_mib": 64},
             "spec": {"ociVersion": "1.2.0", "hostname": "smoke",
                      "root": {"path": "rootfs", "readonly": False},
                      "process": {"args": sys.argv[3:], "cwd": "/", "user": {"uid": 0, "gid": 0},
                                  "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
                                  "terminal": False}}})
    control({"type": "stdin_eof"})
    code = None
    while code is None:
        kind, payload = recv()
        if kind == STDOUT:
            sys.stdout.buffer.write(payload)
            sys.stdout.flush()
        elif kind == STDERR:
            sys.stderr.buffer.write(payload)
            sys.stderr.flush()
        else:
            msg = json.loads(payload)
            print("host: agent says", json.dumps(msg), flush=True)
            if msg["type"] == "exited":
                status = msg["status"]
                code = status.get("code", 128 + status.get("signo", 0))
            elif msg["type"] == "error":
                code = {"not_found": 127, "not_executable": 126}.get(msg["kind"], 125)
    control({"type": "shutdown"})
    try:
        recv()
    except EOFError:
        pass
    sys.exit(code)


main()
