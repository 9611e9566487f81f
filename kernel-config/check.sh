#!/usr/bin/env bash
# Boots a moat guest kernel under plain QEMU TCG (no KVM, no moat-vmm) with a throwaway busybox
# initramfs, and checks from inside the guest the features moat.config promises.
#
# Usage: kernel-config/check.sh [VMLINUX]   (default: target/release/moat-assets/vmlinux)
# Needs: qemu-system-x86, busybox-static, cpio, e2fsprogs (scripts/deps.sh installs them).
# Env: CHECK_CPUS (default 2), CHECK_TIMEOUT seconds (default 120), CHECK_KEEP=1 keeps the
# work dir (console log, initramfs) and prints its path.
#
# The VM mirrors moat-vmm's: QEMU "microvm" without ACPI or PCI, an 8250 UART, an i8042 whose
# reset line ends the VM (reboot=k), virtio-mmio devices announced on the kernel command line
# (QEMU appends the virtio_mmio.device= entries), the architecture's base command line.
# vsock: only the guest driver's registration is checked, as the host here has no vhost-vsock.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kernel=${1:-$(dirname "$here")/target/release/moat-assets/vmlinux}
cpus=${CHECK_CPUS:-2}
timeout_s=${CHECK_TIMEOUT:-120}
cmdline="console=ttyS0 reboot=k panic=-1 pci=off nomodule quiet 8250.nr_uarts=1"

die() {
  printf 'check: error: %s\n' "$*" >&2
  exit 1
}

[[ -r $kernel ]] || die "no kernel at $kernel (run kernel-config/build.sh first)"
for t in qemu-system-x86_64 cpio mkfs.ext4 timeout; do
  command -v "$t" >/dev/null || die "missing $t (run scripts/deps.sh)"
done
busybox=$(command -v busybox) || die "missing busybox (install busybox-static)"
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' || die "$busybox is not static"

work=$(mktemp -d /tmp/moat-kcheck.XXXXXX)
if [[ ${CHECK_KEEP:-0} == 1 ]]; then
  echo "check: work dir $work"
else
  trap 'rm -rf "$work"' EXIT
fi

# The guest's /init: every result is one "CHECK <name> <value>" line on the console.
write_init() {
  cat >"$1" <<'EOF'
#!/bin/sh
export PATH=/bin
say() { echo "CHECK $*"; }
yes_no() { if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }
mount -t proc proc /proc
say uptime-at-init "$(cut -d' ' -f1 /proc/uptime)"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t mqueue mqueue /dev/mqueue
mount -t cgroup2 cgroup2 /sys/fs/cgroup
say kernel "$(uname -r)"
say nproc "$(nproc)"
say filesystems $(awk '{print $NF}' /proc/filesystems)
say controllers "$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "+cpu +cpuset +io +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/t
say cg-memory-max "$(yes_no sh -c 'echo 64M >/sys/fs/cgroup/t/memory.max')"
say cg-pids-max "$(yes_no sh -c 'echo 100 >/sys/fs/cgroup/t/pids.max')"
say cg-cpu-max "$(yes_no sh -c 'echo "50000 100000" >/sys/fs/cgroup/t/cpu.max')"
say cg-cpuset "$(yes_no sh -c 'echo 0 >/sys/fs/cgroup/t/cpuset.cpus')"
say cg-io-max "$(yes_no sh -c "echo '$(cat /sys/block/vda/dev) rbps=1048576' >/sys/fs/cgroup/t/io.max")"
say cg-move "$(yes_no sh -c 'echo $$ >/sys/fs/cgroup/t/cgroup.procs')"
say namespaces $(ls /proc/self/ns)
say unshare-all "$(yes_no unshare -m -u -i -n -p -f -r true)"
say seccomp "$(grep -c '^Seccomp_filters:' /proc/self/status)"
say keys "$(yes_no test -e /proc/keys)"
say bpf-syscall "$(yes_no test -e /proc/sys/kernel/unprivileged_bpf_disabled)"
say sysvipc "$(yes_no test -d /proc/sysvipc)"
say ptmx "$(yes_no test -c /dev/pts/ptmx)"
say inotify "$(yes_no test -d /proc/sys/fs/inotify)"
say ipv6 "$(yes_no test -e /proc/net/if_inet6)"
say netdevs $(ls /sys/class/net)
say virtio-drivers $(ls /sys/bus/virtio/drivers)
say vda "$(yes_no test -b /dev/vda)"
mkdir -p /mnt/ro /mnt/t /mnt/o
mount -t ext4 -o ro /dev/vda /mnt/ro
say ext4-marker "$(cat /mnt/ro/marker)"
mount -t tmpfs tmpfs /mnt/t
mkdir /mnt/t/u /mnt/t/w
mount -t overlay -o lowerdir=/mnt/ro,upperdir=/mnt/t/u,workdir=/mnt/t/w overlay /mnt/o
echo written >/mnt/o/new
say overlay "$(cat /mnt/o/marker)+$(cat /mnt/t/u/new)"
say tmpfs-xattr "$(yes_no test -d /mnt/t/w/work)"
say script-binfmt "$(/bin/hello.sh)"
say uptime-at-end "$(cut -d' ' -f1 /proc/uptime)"
say end-of-init ok
sync
reboot -f
EOF
  chmod 755 "$1"
}

build_initramfs() {
  local root=$work/root
  mkdir -p "$root"/{bin,dev,proc,sys,mnt,tmp}
  cp "$busybox" "$root/bin/busybox"
  local a
  for a in $("$busybox" --list); do
    [[ $a == busybox ]] || ln -s busybox "$root/bin/$a"
  done
  printf '#!/bin/sh\necho hello-from-script\n' >"$root/bin/hello.sh"
  chmod 755 "$root/bin/hello.sh"
  write_init "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initramfs.cpio"
}

build_disk() {
  mkdir -p "$work/disk"
  echo moat-disk-ok >"$work/disk/marker"
  mkfs.ext4 -q -F -d "$work/disk" "$work/disk.ext4" 8M
}

# Runs QEMU, time-stamping the console lines (wall seconds since QEMU started).
run_vm() {
  local t0=$EPOCHREALTIME line rc=0
  timeout "$timeout_s" qemu-system-x86_64 \
    -M microvm,x-option-roms=off,rtc=off,acpi=off -accel tcg -cpu max -m 256 -smp "$cpus" \
    -nodefaults -no-user-config -nographic -no-reboot -serial stdio -device i8042 \
    -kernel "$kernel" -initrd "$work/initramfs.cpio" -append "$cmdline" \
    -drive id=d0,file="$work/disk.ext4",format=raw,if=none,readonly=on \
    -device virtio-blk-device,drive=d0 \
    -netdev user,id=n0 -device virtio-net-device,netdev=n0 </dev/null 2>&1 |
    while IFS= read -r line; do
      line=${line%$'\r'}
      printf '%s\n' "$line" >>"$work/console.log"
      if [[ $line == "CHECK uptime-at-init "* ]]; then
        printf 'CHECK wall-to-init %.2f\n' "$(bc <<<"${EPOCHREALTIME} - $t0")" >>"$work/console.log"
      fi
    done || rc=$?
  ((rc == 0)) || echo "check: qemu exited with status $rc (124: timed out after ${timeout_s} s)"
  echo "CHECK qemu-exit $rc" >>"$work/console.log"
  printf 'CHECK wall-total %.2f\n' "$(bc <<<"${EPOCHREALTIME} - $t0")" >>"$work/console.log"
}

value() { sed -n "s/^CHECK $1 //p" "$work/console.log" | head -n 1; }

expect() { # name, expected (a glob), description
  local got
  got=$(value "$1")
  # shellcheck disable=SC2053 # $2 is a glob on purpose
  if [[ $got == $2 ]]; then
    printf 'ok    %-15s %s\n' "$1" "$got"
  else
    printf 'FAIL  %-15s got "%s", want %s (%s)\n' "$1" "$got" "$2" "$3"
    failed=1
  fi
}

report() {
  failed=0
  expect end-of-init ok "the guest reached the end of /init"
  expect nproc "$cpus" "SMP from the MP table"
  expect filesystems "*ext4*" "ext4"
  expect filesystems "*overlay*" "overlayfs"
  expect filesystems "*tmpfs*devpts*" "tmpfs, devpts"
  expect filesystems "*cgroup2*mqueue*" "cgroup2, mqueue"
  expect controllers "*cpuset*cpu*io*memory*pids*" "cgroup v2 controllers"
  local c
  for c in cg-memory-max cg-pids-max cg-cpu-max cg-cpuset cg-io-max cg-move unshare-all keys \
    bpf-syscall sysvipc ptmx inotify ipv6 vda tmpfs-xattr; do
    expect "$c" yes "see /init"
  done
  expect namespaces "cgroup ipc mnt net pid pid_for_children time time_for_children user uts" \
    "all namespace types"
  expect seccomp 1 "seccomp filters (Seccomp_filters in /proc/self/status)"
  expect netdevs "*eth0*" "virtio-net"
  expect virtio-drivers "*virtio_blk*virtio_net*vmw_vsock_virtio_transport*" "virtio drivers"
  expect ext4-marker moat-disk-ok "ext4 on virtio-blk"
  expect overlay "moat-disk-ok+written" "overlay of tmpfs on ext4"
  expect script-binfmt hello-from-script "#! scripts"
  expect qemu-exit 0 "reboot=k: the i8042 reset ends QEMU (-no-reboot)"
  printf 'info  kernel %s; guest uptime at /init %s s, at end %s s; wall to /init %s s, total %s s\n' \
    "$(value kernel)" "$(value uptime-at-init)" "$(value uptime-at-end)" \
    "$(value wall-to-init)" "$(value wall-total)"
  if ((failed)); then
    echo "check: FAILED; console log:" >&2
    grep -v '^CHECK ' "$work/console.log" | tail -n 40 >&2
    exit 1
  fi
  echo "check: all passed"
}

build_initramfs
build_disk
echo "check: booting $kernel under QEMU TCG (${cpus} vCPUs)"
run_vm
report
