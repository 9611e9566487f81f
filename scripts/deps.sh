#!/usr/bin/env bash
# Installs the Debian packages moat needs to build and test. Idempotent; run as root.
set -euo pipefail

packages=(
  bc
  binutils
  bison
  busybox-static
  cpio
  e2fsprogs
  file
  flex
  gcc
  kmod
  libc6-dev
  libelf-dev
  libseccomp-dev
  libssl-dev
  linux-perf
  linux-source-6.12
  make
  procps
  qemu-system-x86
  runc
  shellcheck
  strace
  xz-utils
)

# The nested test host runs QEMU from bookworm-backports (tests/nested/lib/qemu-binary.sh); the
# source is added at the default backports priority, so nothing is installed from it.
backports=/etc/apt/sources.list.d/moat-bookworm-backports.list
new_source=
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$backports"
  new_source=1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ -n $new_source ]] && ((${#missing[@]} == 0)); then
  apt-get update -qq
fi
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
