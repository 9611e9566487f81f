# shellcheck shell=bash
# The L1 initramfs: static busybox, the kernel modules L1 needs before it can mount the host's
# root over 9p (plus KVM), and tests/nested/init. Built into the cache, keyed by a hash of all
# of its inputs. Sourced by tests/nested/run after lib/kernel.sh.
#
# Sets: L1_INITRD (path of the newc cpio archive).

# Modules /init loads, with their dependencies resolved by modprobe from the depmod data that
# lib/kernel.sh generated. virtio_pci and the 9p stack reach the host's files, overlay makes the
# root writable in L1, kvm-amd (nested=1) gives the real /dev/kvm, virtio_blk and ext4 mount the
# data disk (lib/qemu.sh) at /var/lib/moat.
L1_MODULES=(virtio_pci 9pnet_virtio 9p overlay kvm-amd virtio_blk ext4)

# busybox applets /init uses (never "busybox" itself: that link would replace the binary).
L1_APPLETS=(cat chroot echo ifconfig insmod mkdir mount mv poweroff sh sleep sync)

# Prints "file.ko [params]" lines in load order, each module once.
module_load_list() {
  local m
  for m in "${L1_MODULES[@]}"; do
    modprobe -d "$L1_KDIR" -S "$L1_KVER" --show-depends "$m" ||
      die "modprobe cannot resolve module $m for $L1_KVER"
  done | awk '$1 == "insmod" && !seen[$2]++ {
    n = split($2, parts, "/"); name = parts[n]
    params = (name == "kvm-amd.ko") ? " nested=1" : ""
    print $2 "\t" name params
  }'
}

# Prints a hash of everything that goes into the initramfs.
initramfs_hash() {
  {
    echo "$L1_KVER"
    sha256sum /bin/busybox "$NESTED_DIR/init" "$NESTED_DIR/lib/initramfs.sh"
    printf '%s\n' "${L1_APPLETS[@]}"
    module_load_list
  } | sha256sum | cut -c1-16
}

# Builds the archive into $1.
build_initramfs() {
  local out=$1 tree path line a
  tree=$(mktemp -d "$NESTED_CACHE/.initramfs.XXXXXX")
  mkdir -p "$tree"/{bin,dev,proc,sys,modules,hostroot,job,rw,newroot}
  cp /bin/busybox "$tree/bin/busybox"
  for a in "${L1_APPLETS[@]}"; do ln -s busybox "$tree/bin/$a"; done
  install -m 0755 "$NESTED_DIR/init" "$tree/init"
  module_load_list | while IFS=$'\t' read -r path line; do
    cp "$path" "$tree/modules/"
    echo "$line" >>"$tree/modules/load.list"
  done
  (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$out.tmp" ||
    die "cpio failed"
  mv "$out.tmp" "$out"
  rm -rf "$tree"
}

# Makes sure the initramfs for the current kernel and init script is built; sets L1_INITRD.
ensure_initramfs() {
  local hash
  if ! file -b /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    die "/bin/busybox is missing or not static (apt-get install busybox-static)"
  fi
  hash=$(initramfs_hash) || exit 125
  L1_INITRD=$NESTED_CACHE/initramfs/$hash.cpio
  if [[ ! -e $L1_INITRD ]]; then
    mkdir -p "$NESTED_CACHE/initramfs"
    log "building L1 initramfs $L1_INITRD"
    build_initramfs "$L1_INITRD"
  fi
}
