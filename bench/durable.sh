#!/usr/bin/env bash
# Durable-mailbox benchmark: send throughput under each fsync policy, and recovery of a
# large log after a crash. Figures for release notes; everything runs on this machine.
#
# Run from anywhere:
#
#     bash bench/durable.sh
#
# It builds release binaries, then runs a private daemon (a socket and state directory
# under a temporary directory in $TMPDIR, else /tmp: put that on the disk you want
# measured, not tmpfs) and removes it all on exit. 64-byte messages throughout.
#
# Throughput cases (each against a fresh daemon on an empty state directory; one line
# each from client-lib/examples/bench_durable.rs, then the summary table):
#   always  1 producer,  pipeline 1   each send waits for its reply, and a reply means
#                                     the message is synced: about one fsync per message.
#   always  8 producers, pipeline 1   8 connections each with one send in flight: what
#                                     group commit makes of concurrent syncs.
#   always  1 producer,  pipeline 64  one connection with 64 sends in flight: group
#                                     commit for a single pipelining client.
#   never   1 producer,  pipeline 64  the same without any sync: the ceiling set by the
#                                     daemon and the socket rather than the disk.
# msg/s is messages divided by the wall time from the moment every producer is connected
# until the last reply. Ratios compare the cases named in the summary.
#
# Recovery: a fresh durable mailbox (fsync never) is filled with RECOVERY_MESSAGES
# (1,000,000) messages, the daemon is killed with SIGKILL, and a new one is started on
# the same state directory.
#   time to serve      from starting the new process until `ipcctl stat` of that
#                      mailbox succeeds and shows every message (polled every 10 ms).
#   daemon's log line  its own "recovered ... in N ms" (reading and replaying the log).
#   state dir          `du` of the state directory the new daemon recovers.
#   RSS                VmRSS (and peak VmHWM) of the new daemon once it serves.
#
# Message counts are picked so that each case takes a few seconds on a 2-core VM with a
# virtio disk; override them for other hardware with the environment variables
# N_ALWAYS_P1, N_ALWAYS_8P, N_ALWAYS_P64, N_NEVER_P64 and RECOVERY_MESSAGES.

set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

size=64
n_always_p1=${N_ALWAYS_P1:-10000}
n_always_8p=${N_ALWAYS_8P:-50000}
n_always_p64=${N_ALWAYS_P64:-250000}
n_never_p64=${N_NEVER_P64:-500000}
recovery_messages=${RECOVERY_MESSAGES:-1000000}
# Longest wait for the daemon to start or to recover before giving up, in seconds.
deadline_s=300

echo "== building (release)"
# --bins for ipcd and ipcctl, --examples for bench_durable.
cargo build --release --quiet -p ipcd -p ipcctl -p ipc-client --bins --examples
target=${CARGO_TARGET_DIR:-$root/target}/release
ipcd=$target/ipcd
ipcctl=$target/ipcctl
bench=$target/examples/bench_durable

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ipcd-bench.XXXXXX")
sock=$tmp/ipcd.sock
state=$tmp/state
daemon_pid=

cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }

# The log without colour codes, whatever the terminal settings.
plain_log() { sed 's/\x1b\[[0-9;]*m//g' "$1"; }

# start_daemon LOG: starts ipcd on $sock and $state, logging to LOG; sets daemon_pid.
start_daemon() {
    : >"$1"
    IPCD_LOG=info NO_COLOR=1 "$ipcd" --socket "$sock" --state-dir "$state" >"$1" 2>&1 &
    daemon_pid=$!
}

# wait_listening LOG: returns once the daemon has logged that it listens.
wait_listening() {
    local until=$((SECONDS + deadline_s))
    until grep -q "listening on" "$1"; do
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "ipcd exited before listening; its log:" >&2
            cat "$1" >&2
            exit 1
        fi
        if ((SECONDS > until)); then
            echo "ipcd did not listen within ${deadline_s}s; its log:" >&2
            cat "$1" >&2
            exit 1
        fi
        sleep 0.01
    done
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || true
    daemon_pid=
}

declare -A rate

# run_case KEY FSYNC PRODUCERS PIPELINE MESSAGES
run_case() {
    local key=$1 fsync=$2 producers=$3 pipeline=$4 messages=$5 line
    rm -rf "$state"
    start_daemon "$tmp/ipcd-$key.log"
    wait_listening "$tmp/ipcd-$key.log"
    line=$("$bench" --socket "$sock" --mailbox "bench-$key" --producers "$producers" \
        --messages "$messages" --size "$size" --fsync "$fsync" --pipeline "$pipeline")
    echo "$line"
    rate[$key]=$(sed -n 's/.*msg_per_s=\([0-9]*\).*/\1/p' <<<"$line")
    stop_daemon
}

# Other work on the machine skews every figure: the load average is printed before and
# after so that a run on a busy machine can be recognised.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== throughput: $size-byte messages, durable mailbox ($(nproc) cores, state in $tmp)"
run_case always-p1 always 1 1 "$n_always_p1"
run_case always-8p always 8 1 "$n_always_8p"
run_case always-p64 always 1 64 "$n_always_p64"
run_case never-p64 never 1 64 "$n_never_p64"

echo "== recovery: $recovery_messages messages of $size bytes, then kill -9"
rm -rf "$state"
start_daemon "$tmp/ipcd-fill.log"
wait_listening "$tmp/ipcd-fill.log"
"$bench" --socket "$sock" --mailbox recovery --messages "$recovery_messages" \
    --size "$size" --fsync never --fill
kill -KILL "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=
state_bytes=$(du -sb "$state" | cut -f1)
state_human=$(du -sh "$state" | cut -f1)

log=$tmp/ipcd-recover.log
started=$(now_ns)
start_daemon "$log"
served=
while ((($(now_ns) - started) / 1000000000 < deadline_s)); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "ipcd exited during recovery; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    # Exit 69 (not reachable) until the new daemon has bound its socket; a connection
    # made while it recovers is answered once it serves.
    if out=$(timeout "$deadline_s" "$ipcctl" --socket "$sock" --json stat recovery 2>/dev/null); then
        count=$(grep -o '"messages":[0-9]*' <<<"$out" | cut -d: -f2)
        if [[ $count == "$recovery_messages" ]]; then
            served=$(now_ns)
            break
        fi
        echo "ipcctl stat shows $count messages, not $recovery_messages" >&2
        exit 1
    fi
    sleep 0.01
done
if [[ -z $served ]]; then
    echo "the recovered mailbox was not served within ${deadline_s}s; the daemon's log:" >&2
    cat "$log" >&2
    exit 1
fi
serve_ms=$(((served - started) / 1000000))
recovered_line=$(plain_log "$log" | grep -m1 "recovered " || echo "(no \"recovered\" line in the log)")
rss=$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$daemon_pid/status")
hwm=$(awk '/^VmHWM/ {print $2 " " $3}' "/proc/$daemon_pid/status")
echo "time to serve: $serve_ms ms"
echo "daemon: ${recovered_line#*INFO }"
stop_daemon

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }

echo
echo "== summary ($size-byte messages, durable mailbox)"
printf '%-8s %10s %9s %10s %12s\n' fsync producers pipeline messages msg/s
printf '%-8s %10s %9s %10s %12s\n' always 1 1 "$n_always_p1" "${rate[always-p1]}"
printf '%-8s %10s %9s %10s %12s\n' always 8 1 "$n_always_8p" "${rate[always-8p]}"
printf '%-8s %10s %9s %10s %12s\n' always 1 64 "$n_always_p64" "${rate[always-p64]}"
printf '%-8s %10s %9s %10s %12s\n' never 1 64 "$n_never_p64" "${rate[never-p64]}"
echo
echo "always, 8 producers vs 1 producer (pipeline 1):  $(ratio "${rate[always-8p]}" "${rate[always-p1]}")"
echo "always, pipeline 64 vs pipeline 1 (1 producer):  $(ratio "${rate[always-p64]}" "${rate[always-p1]}")"
echo "never vs always (1 producer, pipeline 64):       $(ratio "${rate[never-p64]}" "${rate[always-p64]}")"
echo
echo "recovery of $recovery_messages messages after kill -9:"
echo "  time to serve (process start to full stat): $serve_ms ms"
echo "  daemon's log: ${recovered_line#*INFO }"
echo "  state dir: $state_human ($state_bytes bytes)"
echo "  daemon RSS after recovery: $rss (peak $hwm)"
echo "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
