#!/usr/bin/env bash
# Builds target/debian/ipcd_<version>_<arch>.deb: release binaries, the SysV shim
# (/usr/lib/ipcd/libipcd-sysv.so), man pages (from
# `ipcctl man`), the systemd units, the sysusers entry and the example configuration.
# Needs cargo-deb (`cargo install cargo-deb`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p ipcd -p ipcctl -p ipcd-sysv
rm -rf target/release/man
target/release/ipcctl man target/release/man
cargo deb -p ipcd --no-build --locked
ls -1 target/debian/*.deb
