#!/usr/bin/env bash
# Builds the guest initramfs: an uncompressed newc cpio whose /init is the static moat-agent,
# plus the directories it mounts on and a /dev/console node (so the kernel can give /init a
# console before devtmpfs exists).
#
#   rootfs/build-initramfs.sh OUTDIR [AGENT]   -> OUTDIR/initramfs.cpio
#
# AGENT defaults to a fresh static release build of moat-agent. The archive is written by this
# script itself (no root needed for the device node), with fixed owners (0:0) and mtimes
# ($SOURCE_DATE_EPOCH, default 0), so the same agent gives the same bytes.
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 OUTDIR [AGENT]" >&2
  exit 2
fi
outdir=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=x86_64-unknown-linux-gnu

if (($# == 2)); then
  agent=$2
else
  (cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release -p moat-agent --target "$target")
  agent=${CARGO_TARGET_DIR:-$repo/target}/$target/release/moat-agent
fi
if ! file -L "$agent" | grep -Eq 'static(ally|-pie) linked'; then
  echo "$0: $agent is not a static executable" >&2
  exit 1
fi

mkdir -p "$outdir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Symbols are of no use in the guest and cost unpacking time at every boot.
strip -o "$work/init" "$agent"

mtime=${SOURCE_DATE_EPOCH:-0}
ino=1
out=

# entry NAME MODE(octal) [FILE] [RDEVMAJOR RDEVMINOR]: appends one newc record to $out.
entry() {
  local name=$1 mode=$2 file=${3:-} rmaj=${4:-0} rmin=${5:-0} size=0 namesize pad
  [[ -n $file ]] && size=$(stat -L -c %s "$file")
  namesize=$((${#name} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$ino" "$((8#$mode))" 0 0 1 "$mtime" "$size" 0 0 "$rmaj" "$rmin" "$namesize" 0 >>"$out"
  printf '%s\0' "$name" >>"$out"
  pad=$(((4 - (110 + namesize) % 4) % 4))
  head -c "$pad" /dev/zero >>"$out"
  if [[ -n $file ]]; then
    cat "$file" >>"$out"
    head -c "$(((4 - size % 4) % 4))" /dev/zero >>"$out"
  fi
  ino=$((ino + 1))
}

out=$work/initramfs.cpio
for dir in dev newroot proc run sys; do
  entry "$dir" 040755
done
entry tmp 041777
entry dev/console 020600 "" 5 1
entry init 0100755 "$work/init"
entry TRAILER!!! 0
# Pad the archive to a multiple of 512 bytes, as cpio(1) does.
size=$(stat -c %s "$out")
head -c "$(((512 - size % 512) % 512))" /dev/zero >>"$out"
mv "$out" "$outdir/initramfs.cpio"
