#!/usr/bin/env bash
# Builds moat's built-in default image: Debian's busybox-static with a symlink for every applet,
# a few /etc files and the usual empty directories, as a journal-less ext4 filesystem.
#
#   rootfs/build-image.sh OUTDIR   -> OUTDIR/images/busybox.ext4
#
# Run as root (the files are copied with their owners; as root they are 0:0). The result is
# reproducible except for inode change times: fixed UUID, hash seed, mtimes and superblock
# times ($SOURCE_DATE_EPOCH, default 1).
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
outdir=$1
busybox=${BUSYBOX:-/bin/busybox}
epoch=${SOURCE_DATE_EPOCH:-1}
if ! file -L "$busybox" | grep -q 'statically linked'; then
  echo "$0: $busybox is not a static busybox (apt-get install busybox-static)" >&2
  exit 1
fi
if ((EUID != 0)); then
  echo "$0: warning: not root, files in the image will be owned by uid $EUID" >&2
fi

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,var,home/user,root,tmp}
chmod 0700 "$tree/root"
chmod 1777 "$tree/tmp"
install -m 0755 "$busybox" "$tree/bin/busybox"
# --list-full names every applet with its directory, busybox itself included: skip that one so
# the symlink does not replace the binary.
"$tree/bin/busybox" --list-full | while read -r applet; do
  [[ $applet == bin/busybox || -e $tree/$applet ]] && continue
  ln -s /bin/busybox "$tree/$applet"
done

cat >"$tree/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$tree/etc/group" <<'GROUP'
root:x:0:
tty:x:5:
users:x:100:
user:x:1000:
nogroup:x:65534:
GROUP
cat >"$tree/etc/hosts" <<'HOSTS'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
HOSTS
echo moat >"$tree/etc/hostname"
chown 1000:1000 "$tree/home/user"
find "$tree" -exec touch -h -d "@$epoch" {} +

# Size: the content plus a quarter and 1 MiB of slack, in KiB.
kib=$(du -sk --apparent-size "$tree" | cut -f1)
kib=$((kib + kib / 4 + 1024))
mkdir -p "$outdir/images"
img=$(mktemp "$outdir/images/.busybox.XXXXXX")
trap 'rm -rf "$tree" "$img"' EXIT
E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -d "$tree" -L busybox -O ^has_journal \
  -U 0b6d6f61-7400-4000-8000-000000000001 \
  -E root_owner=0:0,hash_seed=0b6d6f61-7400-4000-8000-000000000002 \
  "$img" "${kib}k"
chmod 0644 "$img"
mv "$img" "$outdir/images/busybox.ext4"
