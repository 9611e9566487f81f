# shellcheck shell=bash
# Starting L1 under QEMU TCG, waiting for it with a timeout, streaming the command's output and
# turning the job directory into an exit status. Sourced by tests/nested/run.

QEMU_PID='' OUT_PID='' ERR_PID='' QEMU_STATUS=''

# Size of L1's data disk: a sparse ext4 file in the job directory, mounted at /var/lib/moat in
# L1, so that moat's writable layers live on a disk (page cache) rather than in L1's memory.
DATA_DISK_SIZE=${MOAT_NESTED_DATA_DISK:-32G}

# Makes the data disk. Prints its path.
make_data_disk() {
  local disk=$JOB_DIR/data.img
  if ! truncate -s "$DATA_DISK_SIZE" "$disk" || ! mkfs.ext4 -q -F -L moat-nested-data "$disk" >&2; then
    die "cannot make the data disk $disk"
  fi
  echo "$disk"
}

# Starts QEMU (L1) and the two streams of the command's output. Arguments: MiB, vCPUs.
start_l1() {
  local console=$JOB_DIR/console.log disk
  disk=$(make_data_disk)
  # No -nographic: with a file serial it would still put the monitor on our stdin.
  # qboot instead of SeaBIOS: a minimal firmware that gets to the kernel sooner.
  # setpriv --pdeathsig: QEMU dies with us even if we are SIGKILLed.
  setpriv --pdeathsig KILL "$QEMU_BIN" \
    -nodefaults -no-user-config -display none -monitor "unix:$JOB_DIR/monitor.sock,server=on,wait=off" \
    -accel "tcg,thread=${MOAT_NESTED_TCG_THREAD:-multi}" -cpu EPYC,+svm,+npt -smp "$2" -m "$1" -no-reboot \
    -bios /usr/share/qemu/qboot.rom -kernel "$L1_KERNEL" -initrd "$L1_INITRD" \
    -append 'console=ttyS0 panic=-1 quiet nokaslr' \
    -serial "file:$console" \
    -drive "file=$disk,if=none,id=data,format=raw,cache=unsafe,discard=unmap" \
    -device virtio-blk-pci,drive=data \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$JOB_DIR,mount_tag=job,security_model=none,multidevs=remap" \
    </dev/null >>"$JOB_DIR/qemu.log" 2>&1 &
  QEMU_PID=$!
  # tail follows until QEMU is gone, then reads what is left: nothing is lost at the end.
  tail -s 0.1 -c +1 -f --pid="$QEMU_PID" "$JOB_DIR/stdout" &
  OUT_PID=$!
  tail -s 0.1 -c +1 -f --pid="$QEMU_PID" "$JOB_DIR/stderr" >&2 &
  ERR_PID=$!
}

# Seconds without a heartbeat from L1 (tests/nested/init) after which L1 counts as frozen.
HEARTBEAT_TIMEOUT=${MOAT_NESTED_HEARTBEAT_TIMEOUT:-120}

# Seconds since the file was last written, or since L1 started if it does not exist yet.
age_of() {
  local now mtime
  now=$(date +%s)
  mtime=$(stat -c %Y "$1" 2>/dev/null) || mtime=$2
  echo $((now - mtime))
}

# Waits for QEMU to exit, the timeout (seconds) to pass, or L1 to freeze (no heartbeat for
# HEARTBEAT_TIMEOUT seconds: QEMU under TCG emulating nested SVM sometimes stops making
# progress, tests/nested/README.md), then for the output streams.
wait_l1() {
  local started status=0
  started=$(date +%s)
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    if (($(date +%s) - started >= $1)); then
      touch "$JOB_DIR/timed-out"
      break
    fi
    if (($(age_of "$JOB_DIR/heartbeat" "$started") >= HEARTBEAT_TIMEOUT)); then
      touch "$JOB_DIR/frozen"
      describe_frozen_l1 >&2
      break
    fi
    sleep 2
  done
  if [[ -e $JOB_DIR/timed-out || -e $JOB_DIR/frozen ]]; then
    kill "$QEMU_PID" 2>/dev/null || true
  fi
  wait "$QEMU_PID" || status=$?
  QEMU_STATUS=$status QEMU_PID=''
  wait "$OUT_PID" "$ERR_PID" || true
  OUT_PID='' ERR_PID=''
  [[ ! -s $JOB_DIR/kallsyms ]] || cp "$JOB_DIR/kallsyms" "$L1_KDIR/kallsyms" 2>/dev/null || true
}

# Prints where L1's vCPUs are, from QEMU's monitor, with L1 kernel symbols when known.
describe_frozen_l1() {
  local syms=$L1_KDIR/kallsyms
  [[ -s $syms ]] || syms=$JOB_DIR/kallsyms
  echo "nested: L1 froze: no heartbeat for ${HEARTBEAT_TIMEOUT}s; its vCPUs:"
  python3 - "$JOB_DIR/monitor.sock" "$syms" <<'PY' 2>&1 | sed 's/^/  | /' || true
import bisect, socket, sys, time

s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"info registers -a\n")
time.sleep(1)
out = b""
try:
    while chunk := s.recv(65536):
        out += chunk
except OSError:
    pass
syms = []
try:
    for line in open(sys.argv[2]):
        addr, _, name = line.split()[:3]
        syms.append((int(addr, 16), name))
except OSError:
    pass
syms.sort()
addrs = [a for a, _ in syms]
if b"RIP=" not in out:
    print("(QEMU's monitor did not answer: QEMU itself is stuck, not only L1's kernel)")
for line in out.decode(errors="replace").splitlines():
    if line.startswith("CPU#"):
        print(line)
    elif line.startswith("RIP="):
        rip = int(line[4:20], 16)
        i = bisect.bisect_right(addrs, rip) - 1
        where = f" ({syms[i][1]}+{rip - syms[i][0]:#x})" if i >= 0 else ""
        print(line + where)
PY
}

# Reports why L1 did not deliver a status, with the end of its console, and exits 125.
l1_failed() {
  echo "nested: error: $*" >&2
  echo "nested: last lines of the L1 console (MOAT_NESTED_CONSOLE=FILE keeps all of it):" >&2
  if [[ -s $JOB_DIR/console.log ]]; then
    tail -n 25 "$JOB_DIR/console.log" | sed 's/^/  | /' >&2
  else
    echo "  (empty: L1 died before its kernel printed anything)" >&2
  fi
  if grep -qv 'warning: TCG doesn.t support requested feature' "$JOB_DIR/qemu.log"; then
    echo "nested: QEMU said:" >&2
    grep -v 'warning: TCG doesn.t support requested feature' "$JOB_DIR/qemu.log" | tail -n 10 |
      sed 's/^/  | /' >&2
  fi
  exit 125
}

# Exits with the command's status. Argument: the timeout, for the message.
exit_with_result() {
  local status
  [[ ! -e $JOB_DIR/timed-out ]] || l1_failed "timeout: L1 was killed after $1 s"
  [[ ! -e $JOB_DIR/frozen ]] || l1_failed "L1 froze: no heartbeat for ${HEARTBEAT_TIMEOUT}s"
  [[ ! -s $JOB_DIR/error ]] || l1_failed "L1 could not run the command: $(cat "$JOB_DIR/error")"
  [[ -s $JOB_DIR/status ]] ||
    l1_failed "L1 stopped without reporting the command's exit status (QEMU exit $QEMU_STATUS)"
  status=$(cat "$JOB_DIR/status")
  [[ $status =~ ^[0-9]+$ ]] || l1_failed "bad exit status from L1: $status"
  exit "$status"
}

kill_children() {
  local pid
  for pid in $QEMU_PID $OUT_PID $ERR_PID; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  QEMU_PID='' OUT_PID='' ERR_PID=''
}

on_signal() {
  log "got SIG$1: stopping L1"
  trap - EXIT
  kill_children
  rm -rf "$JOB_DIR"
  exit "$2"
}

cleanup() {
  kill_children
  # A copy of the console stays when asked for.
  if [[ -n ${MOAT_NESTED_CONSOLE:-} && -e $JOB_DIR/console.log ]]; then
    cp "$JOB_DIR/console.log" "$MOAT_NESTED_CONSOLE" || true
  fi
  rm -rf "$JOB_DIR"
}
