#!/usr/bin/env bash
# Boots moat's guest kernel + initramfs (the agent) + an image under QEMU's microvm machine with
# vhost-vsock, plays the runtime with host.py, and runs CMD in the container: a check of the
# agent that needs neither moat-vmm nor moat-runtime. Runs inside the nested test host (L1):
#
#   tests/nested/run -- guest-agent/tests/qemu/boot-qemu.sh VMLINUX INITRAMFS IMAGE CMD [ARG...]
#
# Exit status: the container's (125 when the agent reported an internal error).
set -euo pipefail
(($# >= 4)) || {
  echo "usage: $0 VMLINUX INITRAMFS IMAGE CMD [ARG...]" >&2
  exit 2
}
kernel=$1 initrd=$2 image=$3
shift 3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# vhost-vsock from L1's module tree (tests/nested caches L1's kernel package there).
kdir=$(ls -d "${MOAT_CACHE_DIR:-$HOME/.cache/moat}"/nested/*/lib/modules/*/ | head -1)
kver=$(basename "$kdir")
modprobe -d "${kdir%/lib/modules/*}" -S "$kver" --show-depends vhost_vsock |
  awk '$1 == "insmod" { print $2 }' | while read -r ko; do insmod "$ko" 2>/dev/null || true; done
[[ -c /dev/vhost-vsock ]] || {
  echo "$0: no /dev/vhost-vsock" >&2
  exit 125
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$here/host.py" vsock:1024 "$work/ready" "$@" &
host=$!
for _ in $(seq 600); do [[ -e $work/ready ]] && break; sleep 0.1; done

start=$(date +%s.%N)
timeout 600 qemu-system-x86_64 -accel kvm -M microvm,acpi=off -cpu host -smp 1 -m 256 \
  -nodefaults -no-user-config -display none -monitor none -no-reboot \
  -serial "file:$work/console" -kernel "$kernel" -initrd "$initrd" \
  -append 'console=ttyS0 reboot=k panic=-1 quiet' \
  -drive "id=d0,file=$image,format=raw,if=none,readonly=on" -device virtio-blk-device,drive=d0 \
  -device vhost-vsock-device,guest-cid=3 </dev/null || echo "boot-qemu: qemu exited with $?" >&2
end=$(date +%s.%N)
printf 'boot-qemu: QEMU ran %.1f s; console:\n' "$(echo "$end - $start" | bc)" >&2
cat "$work/console" >&2
wait "$host" && rc=0 || rc=$?
exit "$rc"
