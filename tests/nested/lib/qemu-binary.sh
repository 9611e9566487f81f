# shellcheck shell=bash
# The QEMU that runs L1: QEMU 10 or newer. With QEMU 7.2, L1 froze in about one long test run in
# five (tests/nested/README.md). The system's qemu-system-x86_64 when it is new enough (a machine
# whose QEMU comes from bookworm-backports, scripts/deps.sh); otherwise Debian's
# bookworm-backports build, unpacked once into the cache and run from there, with the system's
# older QEMU left installed as it is. MOAT_NESTED_QEMU=PATH picks another QEMU. Sourced by
# tests/nested/run.
#
# Sets: QEMU_BIN.

QEMU_RELEASE=bookworm-backports
QEMU_MIN_MAJOR=10

# Prints the system's qemu-system-x86_64 when its major version is QEMU_MIN_MAJOR or newer.
system_qemu() {
  local major
  major=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
  [[ -n $major ]] && ((major >= QEMU_MIN_MAJOR)) && command -v qemu-system-x86_64
}

# Downloads and unpacks qemu-system-x86 from QEMU_RELEASE into the cache. Prints the binary.
download_qemu() {
  local tmp deb version
  tmp=$(mktemp -d "$NESTED_CACHE/.qemu.XXXXXX")
  log "downloading qemu-system-x86 from $QEMU_RELEASE (once; cached in $NESTED_CACHE)"
  if ! (cd "$tmp" && apt-get download -qq -t "$QEMU_RELEASE" qemu-system-x86 >&2 2>/dev/null); then
    apt-get update -qq >&2 || true
    (cd "$tmp" && apt-get download -qq -t "$QEMU_RELEASE" qemu-system-x86 >&2 2>/dev/null) || {
      rm -rf "$tmp"
      return 1
    }
  fi
  deb=$(echo "$tmp"/qemu-system-x86_*.deb)
  version=$(dpkg-deb -f "$deb" Version | tr ':~+' '___')
  if ! dpkg -x "$deb" "$tmp/root" || ! "$tmp/root/usr/bin/qemu-system-x86_64" --version >/dev/null; then
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "${NESTED_CACHE:?}/qemu-$version"
  mv "$tmp/root" "$NESTED_CACHE/qemu-$version"
  rm -rf "$tmp"
  touch "$NESTED_CACHE/qemu-$version/.complete"
  echo "$NESTED_CACHE/qemu-$version/usr/bin/qemu-system-x86_64"
}

ensure_qemu() {
  local done_file
  QEMU_BIN=${MOAT_NESTED_QEMU:-}
  [[ -z $QEMU_BIN ]] || return 0
  QEMU_BIN=$(system_qemu) && return 0
  for done_file in "$NESTED_CACHE"/qemu-*/.complete; do
    [[ -e $done_file ]] && QEMU_BIN=$(dirname "$done_file")/usr/bin/qemu-system-x86_64
  done
  [[ -z $QEMU_BIN ]] || return 0
  QEMU_BIN=$(download_qemu) && return 0
  log "warning: no qemu-system-x86 from $QEMU_RELEASE (is it in apt's sources?); using the" \
    "system's $(qemu-system-x86_64 --version | head -n 1)"
  QEMU_BIN=qemu-system-x86_64
}
