#!/usr/bin/env bash
# Builds libipc_client (release) and installs it under PREFIX (default /usr/local):
#   lib/libipc_client.so  lib/libipc_client.a  include/ipc_client.h
#   lib/pkgconfig/ipc_client.pc
# With DESTDIR set, the files go under $DESTDIR$PREFIX while ipc_client.pc still names
# PREFIX, as a package build wants.
#
#   capi/install.sh                  # /usr/local (as root)
#   capi/install.sh "$HOME/.local"   # then PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig
set -euo pipefail

prefix=${1:-/usr/local}
case $prefix in
/*) ;;
*) echo "install.sh: PREFIX must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
dest=${DESTDIR:-}$prefix
cd "$(dirname "$0")/.."

cargo build --release --locked -p ipc-client-c --lib
# Where cargo put it: target/, unless CARGO_TARGET_DIR or a config says otherwise.
target=$(cargo metadata --format-version 1 --no-deps --locked |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
release=$target/release
# `path+file:///…/capi#ipc-capi@0.1.0` (older cargo: `file:///…/capi#0.1.0`).
pkgid=$(cargo pkgid -p ipc-capi)
version=${pkgid##*[#@]}

install -d "$dest/lib/pkgconfig" "$dest/include"
install -m 0755 "$release/libipc_client.so" "$dest/lib/libipc_client.so"
install -m 0644 "$release/libipc_client.a" "$dest/lib/libipc_client.a"
install -m 0644 capi/include/ipc_client.h "$dest/include/ipc_client.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" capi/ipc_client.pc.in \
    >"$dest/lib/pkgconfig/ipc_client.pc"
chmod 0644 "$dest/lib/pkgconfig/ipc_client.pc"
echo "installed libipc_client $version under $dest"
