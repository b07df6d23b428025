#!/usr/bin/env bash
# Instructions per message, counted rather than timed: ipc-bench's 64 B streaming case
# under callgrind, with the daemon's share (its connections' tasks, `ipcd::peer::serve`)
# apart from the clients'.
#
#     bash bench/instructions.sh [--pairs N] [--messages N] [--size N] [--bin PATH]
#
# On a shared or virtual machine a timed rate moves by 20-30% between runs; a count of
# instructions moves by 1-2% (the threads' interleaving still varies under valgrind:
# how many receives wait for their message, printed as "blocked", is the main cause).
# It is how small changes to the hot path are compared: run it for each build, a few
# times, and compare at similar "blocked" counts. It says nothing of system calls,
# cache misses or wake-ups; the timed bench remains the measure of speed.
#
# --bin measures an ipc-bench binary built earlier (keep a copy of
# target/release/ipc-bench to compare builds); without it, the working tree is built.
# It needs valgrind (Debian package valgrind): run as root it installs it with apt-get,
# otherwise it says what to install and exits 1.

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

pairs=1 messages=200000 size=64 bin=
while (($# > 0)); do
    case $1 in
    --pairs) pairs=$2 ;;
    --messages) messages=$2 ;;
    --size) size=$2 ;;
    --bin) bin=$2 ;;
    *)
        echo "instructions.sh: unknown argument $1 (use --pairs, --messages, --size, --bin)" >&2
        exit 2
        ;;
    esac
    shift 2
done

if ! command -v valgrind >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "== installing valgrind"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    else
        echo "instructions.sh: valgrind is missing; install it first (as root:" \
            "apt-get install valgrind)" >&2
        exit 1
    fi
fi

if [[ -z $bin ]]; then
    cargo build --release --quiet -p ipc-bench
    bin=target/release/ipc-bench
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

valgrind --tool=callgrind --callgrind-out-file="$work/out" "$bin" --only ipcd \
    --section streaming --size "$size" --window 64 --pairs "$pairs" \
    --messages "$messages" >"$work/bench" 2>"$work/valgrind" || {
    echo "instructions.sh: the bench failed under valgrind:" >&2
    tail -5 "$work/valgrind" "$work/bench" >&2
    exit 1
}
callgrind_annotate --inclusive=yes "$work/out" 2>/dev/null | tr -d , >"$work/inclusive"
callgrind_annotate --tree=caller "$work/out" 2>/dev/null | tr -d , >"$work/callers"

total=$(awk '/PROGRAM TOTALS/ { print $1; exit }' "$work/inclusive")
daemon=$(awk '/ipcd::peer::serve::\{\{closure\}\} \[/ { print $1; exit }' "$work/inclusive")
if [[ -z $total || -z $daemon ]]; then
    echo "instructions.sh: callgrind's report names no ipcd::peer::serve; was $bin built" \
        "with symbols (the release profile keeps them)?" >&2
    exit 1
fi
# Every waiting receive is taken out of its mailbox's waiter index once.
blocked=$(grep -m1 -o '< .*WaiterIndex<W>::remove ([0-9]*x)' "$work/callers" |
    grep -o '([0-9]*x)' | tr -d '(x)' || echo 0)

echo "ipcd ${pairs}→${pairs} ${size} B, window 64, ${messages} messages, under callgrind"
echo "  instructions per message: daemon $((daemon / messages)), whole process $((total / messages))"
echo "  blocked receives: ${blocked:-0} of ${messages}"
