#!/usr/bin/env bash
# The same SysV message-queue program (bench/c/sysv_bench.c) on the kernel and under
# LD_PRELOAD=libipcd-sysv.so against a private ipcd, side by side with the ratio.
#   bash bench/sysv.sh [MESSAGES [ROUNDS]]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-200000}
rounds=${2:-20000}
cargo build --release --quiet -p ipcd -p ipcd-sysv
work=$(mktemp -d)
daemon=
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -Wall -o "$work/sysv_bench" bench/c/sysv_bench.c
target/release/ipcd --socket "$work/ipcd.sock" --state-dir "$work/state" 2>"$work/ipcd.log" &
daemon=$!
for _ in $(seq 100); do [ -S "$work/ipcd.sock" ] && break; sleep 0.05; done
key=$(( ($$ % 100000) + 700000 ))
kernel=$("$work/sysv_bench" "$key" "$messages" "$rounds")
shim=$(IPCD_SOCKET="$work/ipcd.sock" LD_PRELOAD="$PWD/target/release/libipcd_sysv.so" \
    "$work/sysv_bench" "$((key + 1))" "$messages" "$rounds")
figure() { awk -v k="$2" '$1 == k { print $2 }' <<<"$1"; }
printf '%-34s %12s %12s %8s\n' "sysv_bench ($messages msgs, $rounds rounds)" kernel ipcd-shim ratio
for k in streaming pingpong; do
    a=$(figure "$kernel" "$k")
    b=$(figure "$shim" "$k")
    unit=$([ "$k" = streaming ] && echo "msg/s" || echo "µs/round trip")
    printf '%-34s %12s %12s %8.2f\n' "$k, $unit" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { print b / a }')"
done
