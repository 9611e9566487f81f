#!/usr/bin/env bash
# Builds moat's guest kernel (an uncompressed ELF vmlinux) from Debian's linux-source-6.12 and
# kernel-config/moat.config, and caches it by the hash of its inputs.
#
# Usage: kernel-config/build.sh [OUTDIR]      (default OUTDIR: target/release/moat-assets)
#
# Cache: ${MOAT_CACHE_DIR:-$HOME/.cache/moat}/kernel/
#   src/<package version>/linux-source-6.12/   the extracted source, shared by all builds
#   <hash>/vmlinux, <hash>/config, <hash>/inputs, <hash>/build-seconds
# where <hash> = sha256 of: moat.config's bytes, then this script's bytes, then the version of
# the Debian package linux-source-6.12 (dpkg-query -W -f='${Version}'). A second run with the
# same inputs only copies the cached file.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
outdir=${1:-$repo/target/release/moat-assets}
fragment=$here/moat.config
self=$here/build.sh
cache=${MOAT_CACHE_DIR:-$HOME/.cache/moat}/kernel
pkg=linux-source-6.12
tarball=/usr/src/$pkg.tar.xz
start=$SECONDS

log() { printf 'kernel: %s\n' "$*"; }
die() {
  printf 'kernel: error: %s\n' "$*" >&2
  exit 1
}

check_tools() {
  local t missing=()
  for t in make gcc ld bc flex bison perl xz tar sha256sum dpkg-query; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (run scripts/deps.sh)"
  [[ -r /usr/include/libelf.h ]] || die "missing libelf headers (run scripts/deps.sh)"
  [[ -r /usr/include/openssl/ssl.h ]] || die "missing openssl headers (run scripts/deps.sh)"
}

input_hash() {
  { cat "$fragment" "$self"; printf '%s' "$version"; } | sha256sum | cut -d' ' -f1
}

# Extracts the kernel source once per package version; concurrent runs race safely on rename.
extract_source() {
  local dest=$cache/src/$version
  if [[ -f $dest/.moat-complete ]]; then
    src=$dest/$pkg
    return
  fi
  [[ -r $tarball ]] || die "$tarball not found (run scripts/deps.sh)"
  log "extracting $tarball (version $version)"
  mkdir -p "$cache/src"
  local tmp
  tmp=$(mktemp -d "$cache/src/.extract.XXXXXX")
  tar -xJf "$tarball" -C "$tmp"
  [[ -f $tmp/$pkg/Makefile ]] || die "unexpected layout in $tarball"
  touch "$tmp/.moat-complete"
  if ! mv -T "$tmp" "$dest" 2>/dev/null; then
    rm -rf "$tmp"
    [[ -f $dest/.moat-complete ]] || die "cannot move the extracted source to $dest"
  fi
  src=$dest/$pkg
}

kmake() {
  make -C "$src" O="$build" ARCH=x86_64 KBUILD_BUILD_USER=moat KBUILD_BUILD_HOST=moat "$@"
}

# Fails if a line of the fragment did not survive olddefconfig (unmet dependency, typo,
# option forced by another one).
verify_config() {
  local line sym bad=0 config=$build/.config
  while IFS= read -r line; do
    case $line in
      CONFIG_*)
        if ! grep -qxF "$line" "$config"; then
          sym=${line%%=*}
          printf 'kernel: %s did not apply; got: %s\n' "$line" \
            "$(grep "^$sym=" "$config" || echo 'not set')" >&2
          bad=1
        fi
        ;;
      "# CONFIG_"*" is not set")
        sym=${line#\# }
        sym=${sym%% *}
        if grep -q "^$sym=" "$config"; then
          printf 'kernel: %s did not apply; got: %s\n' "$line" "$(grep "^$sym=" "$config")" >&2
          bad=1
        fi
        ;;
    esac
  done <"$fragment"
  ((bad == 0)) || die "moat.config does not apply cleanly to $pkg $version"
}

configure() {
  log "configuring: tinyconfig + moat.config + olddefconfig"
  kmake -s tinyconfig >/dev/null
  "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
  kmake -s olddefconfig
  verify_config
}

# Runs `make -j2 vmlinux`, printing a progress line every 200 objects.
compile() {
  log "building vmlinux with make -j2 (a few minutes; log: $build/make.log)"
  if ! kmake -j2 vmlinux 2>&1 | tee "$build/make.log" | awk '
      /^  (CC|AS|AR|LD)/ { n++; if (n % 200 == 0) { printf "kernel: %d objects built\n", n; fflush() } }'; then
    mkdir -p "$cache"
    cp "$build/make.log" "$cache/last-failure.log"
    tail -n 40 "$build/make.log" >&2
    die "make vmlinux failed (full log: $cache/last-failure.log)"
  fi
}

# The temporary dir is a global: an EXIT trap does not see a function's locals once set -e
# has unwound the function.
build_into_cache() {
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  build=$tmp/build
  mkdir "$build" "$tmp/out"
  configure
  compile
  cp "$build/vmlinux" "$tmp/out/vmlinux"
  cp "$build/.config" "$tmp/out/config"
  printf 'package %s %s\nfragment-sha256 %s\nbuild-sh-sha256 %s\n' "$pkg" "$version" \
    "$(sha256sum <"$fragment" | cut -d' ' -f1)" "$(sha256sum <"$self" | cut -d' ' -f1)" \
    >"$tmp/out/inputs"
  echo $((SECONDS - start)) >"$tmp/out/build-seconds"
  if ! mv -T "$tmp/out" "$result" 2>/dev/null; then
    [[ -f $result/vmlinux ]] || die "cannot move the build result to $result"
    log "another run cached the same kernel first; using it"
  fi
  rm -rf "$tmp"
  trap - EXIT
}

# Hardlinks the cached kernel into OUTDIR (copies across file systems), replacing atomically.
install_output() {
  mkdir -p "$outdir"
  # Already in place (the same hardlinked file): nothing to do.
  [[ "$result/vmlinux" -ef "$outdir/vmlinux" ]] && return 0
  local staged=$outdir/.vmlinux.$$
  ln -f "$result/vmlinux" "$staged" 2>/dev/null || cp "$result/vmlinux" "$staged"
  mv -f "$staged" "$outdir/vmlinux"
}

main() {
  check_tools
  version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
    die "package $pkg is not installed (run scripts/deps.sh)"
  hash=$(input_hash)
  result=$cache/$hash
  if [[ -f $result/vmlinux ]]; then
    log "cached: $result"
  else
    extract_source
    build_into_cache
  fi
  install_output
  local size
  size=$(stat -c %s "$result/vmlinux")
  log "vmlinux: $outdir/vmlinux ($size bytes, $((size / 1048576)) MiB), hash $hash"
  log "build time: $(cat "$result/build-seconds") s; this run: $((SECONDS - start)) s"
}

main "$@"
