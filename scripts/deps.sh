#!/usr/bin/env bash
# Installs the Debian packages moat needs to build and test. Idempotent; run as root.
#
# QEMU comes from one release, the one the machine's QEMU packages already come from: a machine
# that has any QEMU package from bookworm-backports (e.g. qemu-utils 10) gets qemu-system-x86
# from bookworm-backports too (bookworm's 7.2 cannot be installed beside qemu-utils 10); a plain
# Debian 12 gets bookworm's. Nothing installed is downgraded or removed. The nested test host
# needs QEMU 10 and unpacks bookworm-backports' build into its cache where the system's is older
# (tests/nested/lib/qemu-binary.sh), so the backports source is added in both cases, with the
# mirror and keyring of the machine's own bookworm source, at backports' default priority (apt
# installs nothing from it unless asked to).
#
# The image tests' tools: curl, docker-registry (distribution 2.8, run by tests/src/registry.rs on a
# free loopback port), skopeo and umoci, htpasswd (apache2-utils) and openssl. docker-registry's
# postinst starts its init script through invoke-rc.d; no service is started here: while
# packages install, a policy-rc.d that denies every start is in place (the machine's own, or a
# temporary one removed afterwards).
#
# The docker tests' daemon: docker.io (dockerd and CLI 20.10, with containerd 1.6 and runc as
# dependencies). Its postinst would start docker.service/docker.socket; the same policy-rc.d denies
# that (on a machine with systemd the units stay enabled for the next boot). tests/src/docker.rs
# runs its own dockerd and containerd under a temp dir, never the system's.
#
# The CRI test (tests/tests/cri_pod.rs): containernetworking-plugins (the bridge and host-local
# CNI plugins containerd's CRI plugin runs) and protobuf-compiler (protoc, which the k8s-cri
# crate's build runs to generate the CRI client).
set -euo pipefail

packages=(
  apache2-utils
  bc
  binutils
  bison
  busybox-static
  containernetworking-plugins
  cpio
  curl
  docker-registry
  docker.io
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
  openssl
  procps
  protobuf-compiler
  runc
  shellcheck
  skopeo
  strace
  umoci
  xz-utils
)
qemu_packages=(qemu-system-x86)
backports_file=/etc/apt/sources.list.d/moat-bookworm-backports.sources

say() { echo "deps: $*"; }
die() { echo "deps: $*" >&2; exit 1; }

# Installs a policy-rc.d that denies service starts unless the machine has one; removed on exit.
deny_service_starts() {
  local policy=/usr/sbin/policy-rc.d
  [[ -e $policy ]] && return 0
  printf '#!/bin/sh\n# Added by moat scripts/deps.sh while packages install.\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  # shellcheck disable=SC2064 # the path is expanded now, while $policy is set
  trap "rm -f '$policy'" EXIT
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Prints "URI<TAB>Signed-By" of the first configured source that serves the suite bookworm, from
# one-line sources.list files and deb822 .sources files alike.
bookworm_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    # deb [options] URI SUITE COMPONENTS...
    awk '$1 == "deb" {
           opts = ""; i = 2
           if ($2 ~ /^\[/) { while (i <= NF) { opts = opts " " $i; if ($i ~ /\]$/) break; i++ }; i++ }
           if ($(i + 1) == "bookworm") {
             key = ""
             if (match(opts, /signed-by=[^] ]+/)) key = substr(opts, RSTART + 10, RLENGTH - 10)
             print $i "\t" key; exit
           }
         }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f && $f != "$backports_file" ]] || continue
    # Stanzas are separated by blank lines; fields are "Name: value".
    awk 'function flush() {
           if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ / bookworm /) {
             split(uris, u, " "); print u[1] "\t" key; found = 1; exit
           }
           types = uris = suites = key = enabled = ""
         }
         /^[ \t]*#/ { next }
         /^[ \t]*$/ { flush(); next }
         { name = tolower($1); sub(/:$/, "", name); $1 = ""; sub(/^ +/, "")
           if (name == "types") types = $0
           else if (name == "uris") uris = $0
           else if (name == "suites") suites = $0
           else if (name == "signed-by") key = $0
           else if (name == "enabled") enabled = tolower($0) }
         END { if (!found) flush() }' "$f"
  done
}

# Adds bookworm-backports (same mirror and keyring as the machine's bookworm source) unless some
# configured source already serves it. Prints 1 when it added the source.
ensure_backports_source() {
  local mirror uri key
  if grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ --exclude="$(basename "$backports_file")"; then
    rm -f "$backports_file"
    return 0
  fi
  [[ -f $backports_file ]] && return 0
  mirror=$(bookworm_mirror | head -n 1)
  [[ -n $mirror ]] || die "no apt source for bookworm found in /etc/apt/sources.list{,.d}; cannot add bookworm-backports"
  uri=${mirror%%$'\t'*}
  key=${mirror#*$'\t'}
  [[ $key == /* ]] || key= # an inline (multi-line) key is not copied; apt's default keyring applies
  {
    echo "# Added by moat's scripts/deps.sh (the nested test host's QEMU); same mirror as bookworm."
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    [[ -z $key ]] || echo "Signed-By: $key"
  } >"$backports_file"
  echo 1
}

# Prints the release to take QEMU from: bookworm-backports when an installed QEMU package is
# version 8 or newer (only backports has those for bookworm), bookworm otherwise.
qemu_release() {
  local version
  while read -r version; do
    [[ -n $version ]] || continue
    if dpkg --compare-versions "$version" ge 1:8; then
      echo bookworm-backports
      return
    fi
  done < <(dpkg-query -W -f='${db:Status-Status} ${Version}\n' 'qemu-*' 2>/dev/null |
    awk '$1 == "installed" { print $2 }')
  echo bookworm
}

added=$(ensure_backports_source)
release=$(qemu_release)

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
missing_qemu=()
for p in "${qemu_packages[@]}"; do
  installed "$p" || missing_qemu+=("$p")
done

say "QEMU from $release ($(
  if installed qemu-system-x86; then
    echo "qemu-system-x86 $(dpkg-query -W -f='${Version}' qemu-system-x86) installed"
  else
    echo "to install"
  fi
))"

export DEBIAN_FRONTEND=noninteractive
if [[ -n $added ]] || ((${#missing[@]} + ${#missing_qemu[@]})); then
  apt-get update -qq
fi
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  deny_service_starts
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((${#missing_qemu[@]})); then
  say "installing ${missing_qemu[*]} from $release"
  target=()
  [[ $release == bookworm ]] || target=(-t "$release")
  apt-get install -y -qq --no-install-recommends "${target[@]}" "${missing_qemu[@]}"
fi
