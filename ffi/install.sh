#!/usr/bin/env bash
# Builds libgraft (release) and installs the C library under PREFIX:
#   PREFIX/include/graft.h, graft.hpp
#   PREFIX/lib/libgraft.so.<ABI major> (+ libgraft.so link), libgraft.a
#   PREFIX/lib/pkgconfig/graft.pc
#   PREFIX/lib/cmake/graft/graftConfig.cmake, graftConfigVersion.cmake
# Usage: ffi/install.sh [PREFIX]   (default /usr/local)
set -euo pipefail
prefix="${1:-/usr/local}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
target="${CARGO_TARGET_DIR:-$root/target}"

cargo build --release -p graft-ffi --manifest-path "$root/Cargo.toml"

version="$(sed -n 's/^#define GRAFT_VERSION "\(.*\)"$/\1/p' "$here/include/graft.h")"
abi_major="$(sed -n 's/^#define GRAFT_ABI_MAJOR \([0-9]*\)$/\1/p' "$here/include/graft.h")"
[ -n "$version" ] && [ -n "$abi_major" ] || { echo "cannot read versions from graft.h" >&2; exit 1; }

mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/lib/cmake/graft"
prefix="$(cd "$prefix" && pwd)"
install -m 644 "$here/include/graft.h" "$here/include/graft.hpp" "$prefix/include/"
install -m 755 "$target/release/libgraft.so" "$prefix/lib/libgraft.so.$abi_major"
ln -sf "libgraft.so.$abi_major" "$prefix/lib/libgraft.so"
install -m 644 "$target/release/libgraft.a" "$prefix/lib/libgraft.a"
subst() {
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" \
      -e "s|@VERSION_MAJOR@|${version%%.*}|g" -e "s|@ABI_MAJOR@|$abi_major|g" "$1" > "$2"
}
subst "$here/graft.pc.in" "$prefix/lib/pkgconfig/graft.pc"
subst "$here/cmake/graftConfig.cmake.in" "$prefix/lib/cmake/graft/graftConfig.cmake"
subst "$here/cmake/graftConfigVersion.cmake.in" "$prefix/lib/cmake/graft/graftConfigVersion.cmake"
echo "installed graft $version (C ABI $abi_major) under $prefix"
