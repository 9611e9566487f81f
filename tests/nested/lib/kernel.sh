# shellcheck shell=bash
# The L1 kernel: Debian's generic 6.1 kernel package, downloaded once with apt and unpacked
# into the cache. Sourced by tests/nested/run.
#
# Sets: L1_KVER (kernel release, e.g. 6.1.0-56-amd64), L1_KDIR (the unpacked package),
#       L1_KERNEL (what QEMU boots: the uncompressed ELF vmlinux, booted through its PVH entry,
#       which saves the seconds TCG spends decompressing the bzImage; the bzImage if the
#       extraction failed).

# Prints the newest linux-image-6.1.0-<N>-amd64-unsigned package apt knows about.
newest_kernel_package() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
    awk '{print $1}' | sort -V | tail -n 1
}

# Prints the newest kernel release already unpacked in the cache, if any.
newest_cached_kernel() {
  local d
  for d in "$NESTED_CACHE"/6.1.0-*-amd64/.complete; do
    if [[ -e $d ]]; then basename "$(dirname "$d")"; fi
  done | sort -V | tail -n 1
}

# Downloads and unpacks the newest kernel package into the cache. Prints its release.
download_kernel() {
  local pkg kver tmp
  pkg=$(newest_kernel_package)
  if [[ -z $pkg ]]; then
    log "no linux-image-6.1 package known to apt; running apt-get update"
    apt-get update -qq >&2
    pkg=$(newest_kernel_package)
  fi
  [[ -n $pkg ]] || die "apt knows no linux-image-6.1.0-<N>-amd64-unsigned package"
  kver=${pkg#linux-image-}
  kver=${kver%-unsigned}
  tmp=$(mktemp -d "$NESTED_CACHE/.download.XXXXXX")
  log "downloading $pkg (once; cached in $NESTED_CACHE/$kver)"
  if ! (cd "$tmp" && apt-get download -qq "$pkg" >&2 2>/dev/null); then
    apt-get update -qq >&2
    (cd "$tmp" && apt-get download -qq "$pkg" >&2) || die "apt-get download $pkg failed"
  fi
  dpkg -x "$tmp"/"$pkg"_*.deb "$tmp/root" || die "dpkg -x of $pkg failed"
  # The package ships no modules.dep; generate it so modprobe works (here and inside L1).
  depmod -b "$tmp/root" "$kver" || die "depmod for $kver failed"
  rm -f "$tmp"/*.deb
  rm -rf "${NESTED_CACHE:?}/$kver"
  mv "$tmp/root" "$NESTED_CACHE/$kver"
  rmdir "$tmp"
  touch "$NESTED_CACHE/$kver/.complete"
  echo "$kver"
}

# Unpacks the xz-compressed vmlinux (an ELF with a PVH note) from bzImage $1 into $2.
extract_vmlinux() {
  local off
  while IFS=: read -r off _; do
    tail -c +$((off + 1)) "$1" | xz -dcq >"$2.tmp" 2>/dev/null || true # trailing data
    if [[ $(head -c 4 "$2.tmp") == $'\x7fELF' ]]; then
      mv "$2.tmp" "$2"
      return 0
    fi
  done < <(LC_ALL=C grep -abo $'\xfd7zXZ' "$1")
  rm -f "$2.tmp"
  return 1
}

# Makes sure an L1 kernel is in the cache and sets L1_KVER, L1_KDIR, L1_KERNEL.
ensure_kernel() {
  local vmlinuz
  L1_KVER=$(newest_cached_kernel)
  if [[ -z $L1_KVER ]]; then
    L1_KVER=$(download_kernel) || exit 125
  fi
  L1_KDIR=$NESTED_CACHE/$L1_KVER
  vmlinuz=$L1_KDIR/boot/vmlinuz-$L1_KVER
  [[ -r $vmlinuz ]] || die "$vmlinuz is missing (remove $L1_KDIR to download again)"
  L1_KERNEL=$L1_KDIR/boot/vmlinux-$L1_KVER
  if [[ ! -e $L1_KERNEL && ! -e $L1_KERNEL.failed ]] &&
    ! extract_vmlinux "$vmlinuz" "$L1_KERNEL"; then
    log "cannot unpack vmlinux from $vmlinuz; booting the bzImage (slower)"
    touch "$L1_KERNEL.failed"
  fi
  [[ -e $L1_KERNEL ]] || L1_KERNEL=$vmlinuz
}
