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

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
