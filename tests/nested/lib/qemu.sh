# shellcheck shell=bash
# Starting L1 under QEMU TCG, waiting for it with a timeout, streaming the command's output and
# turning the job directory into an exit status. Sourced by tests/nested/run.

QEMU_PID='' OUT_PID='' ERR_PID='' TIMER_PID='' QEMU_STATUS=''

# Starts QEMU (L1) and the two streams of the command's output. Arguments: MiB, vCPUs.
start_l1() {
  local console=$JOB_DIR/console.log
  # No -nographic: with a file serial it would still put the monitor on our stdin.
  # qboot instead of SeaBIOS: a minimal firmware that gets to the kernel sooner.
  # setpriv --pdeathsig: QEMU dies with us even if we are SIGKILLed.
  setpriv --pdeathsig KILL qemu-system-x86_64 \
    -nodefaults -no-user-config -display none -monitor none \
    -accel tcg,thread=multi -cpu EPYC,+svm,+npt -smp "$2" -m "$1" -no-reboot \
    -bios /usr/share/qemu/qboot.rom -kernel "$L1_KERNEL" -initrd "$L1_INITRD" \
    -append 'console=ttyS0 panic=-1 quiet' \
    -serial "file:$console" \
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

# Waits for QEMU to exit or for the timeout (seconds) to pass, then for the output streams.
wait_l1() {
  local done_pid='' status=0
  sleep "$1" &
  TIMER_PID=$!
  wait -n -p done_pid "$QEMU_PID" "$TIMER_PID" || status=$?
  if [[ $done_pid == "$TIMER_PID" ]]; then
    touch "$JOB_DIR/timed-out"
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  else
    QEMU_STATUS=$status
    kill "$TIMER_PID" 2>/dev/null || true
    wait "$TIMER_PID" 2>/dev/null || true
  fi
  QEMU_PID='' TIMER_PID=''
  wait "$OUT_PID" "$ERR_PID" || true
  OUT_PID='' ERR_PID=''
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
  [[ ! -s $JOB_DIR/error ]] || l1_failed "L1 could not run the command: $(cat "$JOB_DIR/error")"
  [[ -s $JOB_DIR/status ]] ||
    l1_failed "L1 stopped without reporting the command's exit status (QEMU exit $QEMU_STATUS)"
  status=$(cat "$JOB_DIR/status")
  [[ $status =~ ^[0-9]+$ ]] || l1_failed "bad exit status from L1: $status"
  exit "$status"
}

kill_children() {
  local pid
  for pid in $QEMU_PID $TIMER_PID $OUT_PID $ERR_PID; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  QEMU_PID='' TIMER_PID='' OUT_PID='' ERR_PID=''
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
