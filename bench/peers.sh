#!/usr/bin/env bash
# ipc-bench with its peers: the full table with Redis and NATS columns beside ipcd, the
# kernel's queues and plain sockets, all in one run on this machine.
#
# Run from anywhere:
#
#     bash bench/peers.sh [ipc-bench arguments, e.g. --messages 100000]
#
# Each streaming and batched figure is the median of three runs (--rounds 3; a
# --rounds given here wins), the transports taking turns: single runs of one cell move
# 20-30% on a shared machine.
#
# It needs the Debian packages redis-server and nats-server; run as root it installs
# whichever is missing with apt-get, otherwise it says what to install and exits 1.
#
# Then it builds ipc-bench (release) and starts private instances of both servers under
# a temporary directory in $TMPDIR (else /tmp):
#   redis-server  on a Unix socket in that directory, no TCP port, no persistence
#                 (--save '' --appendonly no), in the foreground of its own process;
#   nats-server   on 127.0.0.1 at a port the kernel picks (-p -1), read back from the
#                 ports file the server writes once it listens — no window in which
#                 another process could take a port picked here first.
# Each runs in the background with its pid remembered; on exit both are stopped by that
# pid and the directory is removed.
#
# The packages' own services are never used or touched. Installing redis-server may
# start the system-wide Redis service (127.0.0.1:6379), and nats-server's package enables
# one too; they may be running during the bench and compete for the CPU, so stop them
# yourself for clean figures if you do not need them.

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Longest wait for a server to listen, in seconds.
deadline_s=30

# The servers' binaries: nats-server goes to /usr/sbin, which a user's PATH may lack.
find_bin() {
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true
}

missing=()
[[ -n $(find_bin redis-server) ]] || missing+=(redis-server)
[[ -n $(find_bin nats-server) ]] || missing+=(nats-server)
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "== installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "peers.sh: missing ${missing[*]}; install them first (as root:" \
            "apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
redis_server=$(find_bin redis-server)
nats_server=$(find_bin nats-server)

echo "== building ipc-bench (release)"
cargo build --release --quiet -p ipc-bench
bench=${CARGO_TARGET_DIR:-$root/target}/release/ipc-bench

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ipc-bench-peers.XXXXXX")
redis_pid=
nats_pid=

# stop PID: SIGTERM, up to 5 s to exit, then SIGKILL. Only our own children are passed.
stop() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop "$redis_pid"
    stop "$nats_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for NAME PID LOG TEST...: returns once the command TEST succeeds; fails with the
# server's log if the server exits first or the deadline passes.
wait_for() {
    local name=$1 pid=$2 log=$3
    shift 3
    local until=$((SECONDS + deadline_s))
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before listening; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        if ((SECONDS > until)); then
            echo "$name did not listen within ${deadline_s}s; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

redis_sock=$tmp/redis.sock
"$redis_server" --port 0 --unixsocket "$redis_sock" --unixsocketperm 700 \
    --dir "$tmp" --save '' --appendonly no --daemonize no \
    >"$tmp/redis.log" 2>&1 &
redis_pid=$!

"$nats_server" -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
nats_pid=$!

wait_for redis-server "$redis_pid" "$tmp/redis.log" test -S "$redis_sock"
nats_ports=$tmp/$(basename "$nats_server")_$nats_pid.ports
wait_for nats-server "$nats_pid" "$tmp/nats.log" test -s "$nats_ports"
# {"nats":["nats://127.0.0.1:PORT"]}
nats_addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$nats_ports" | head -n1)
if [[ -z $nats_addr ]]; then
    echo "no 127.0.0.1 address in nats-server's ports file: $(cat "$nats_ports")" >&2
    exit 1
fi

echo "== $("$redis_server" --version | cut -d' ' -f1-3) on $redis_sock (pid $redis_pid)"
echo "== nats-server $("$nats_server" --version | grep -o 'v[0-9][0-9.]*') on $nats_addr (pid $nats_pid)"
# Other work on the machine skews every figure: the load average is printed before and
# after so that a run on a busy machine can be recognised.
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bench" --peers "redis=$redis_sock,nats=$nats_addr" --rounds 3 "$@"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
