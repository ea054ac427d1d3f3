#!/usr/bin/env bash
# benches/idle.sh: many idle SMTP connections held at once, against smtp-sink
# and against the toy server (--memory), in one run on this machine, over
# 127.0.0.1 only. Run by hand:
#
#   benches/idle.sh             # 10,000 connections (as root: smtp-sink runs as nobody)
#   N=3000 benches/idle.sh      # fewer
#
# For each server, postamt-idle opens N connections one after another (at
# most WINDOW waiting for their greeting at a time) and holds them, then
# times PROBES new clients from connect to the end of their greeting, and
# reads the server's resident memory and thread count from /proc while the
# N are held. Printed: the opening rate (connections greeted per second)
# against both servers and its ratio, the toy server's RSS and threads, and
# the new clients' greeting latency, with the issue's targets (all greeted,
# at least half smtp-sink's opening rate, RSS under 100 MiB, a greeting
# within 50 ms).
#
# It raises its own `ulimit -n` (each side needs N descriptors; above the
# hard limit only root may). Every process started here is stopped by its pid.

set -euo pipefail

N=${N:-10000}
WINDOW=${WINDOW:-64}
PROBES=${PROBES:-20}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'idle.sh: %s\n' "$*" >&2
    exit 1
}
[[ $N =~ ^[0-9]+$ && $N -gt 0 ]] || die "N must be a whole number"
[[ -x /usr/sbin/smtp-sink ]] || die "smtp-sink missing (apt-get install postfix)"

want_fds=$((N + 1024))
if (($(ulimit -n) < want_fds)); then
    if (($(ulimit -Hn) < want_fds)); then
        ulimit -Hn "$want_fds" 2>/dev/null || die "cannot raise the hard limit on open files to $want_fds (run as root)"
    fi
    ulimit -n "$want_fds"
fi

say "building postamt-idle and the toy server (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
(cd "$REPO" &&
    cargo build --quiet --release -p postamt-benches --bin postamt-idle &&
    cargo build --quiet --release -p postamt-examples --example toy-server)
IDLE=$CARGO_TARGET_DIR/release/postamt-idle
TOY=$CARGO_TARGET_DIR/release/examples/toy-server

T=$(mktemp -d /tmp/postamt-idle.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
# Below the ephemeral range (32768 and up), where a client socket (ours:
# N of them) could take a port between the check and the bind.
NEXT_PORT=$((20000 + RANDOM % 10000))
free_port() {
    while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    printf -v "$1" '%s' "$NEXT_PORT"
    NEXT_PORT=$((NEXT_PORT + 1))
}
wait_listen() { # PORT WHAT LOG
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    tail -20 "$3" >&2
    die "$2 does not listen on 127.0.0.1:$1"
}

SINK_USER=()
[[ $(id -u) == 0 ]] && SINK_USER=(-u nobody)
free_port SINK_PORT
/usr/sbin/smtp-sink "${SINK_USER[@]}" -m $((N + 100)) "127.0.0.1:$SINK_PORT" 1024 >"$T/smtp-sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
echo "anna@kolleg.de pw-anna" >"$T/users"
free_port TOY_SMTP
free_port TOY_POP3
"$TOY" --memory --users "$T/users" --smtp-port "$TOY_SMTP" --pop3-port "$TOY_POP3" \
    --max-connections $((N + 100)) --max-connections-per-client 0 >"$T/toy.log" 2>&1 &
TOY_PID=$!
PIDS+=("$TOY_PID")
wait_listen "$SINK_PORT" smtp-sink "$T/smtp-sink.log"
wait_listen "$TOY_SMTP" toy-server "$T/toy.log"

run() { # NAME PORT PID
    say "$1: opening $N connections"
    "$IDLE" --smtp "127.0.0.1:$2" --connections "$N" --window "$WINDOW" --probes "$PROBES" \
        --server-pid "$3" | tee "$T/$1.out" || say "$1: not every connection was greeted"
}
run smtp-sink "$SINK_PORT" "$SINK_PID"
run toy-server "$TOY_SMTP" "$TOY_PID"

rate() { sed -nE 's/^idle: .* ([0-9]+) per second.*/\1/p' "$T/$1.out"; }
greeted() { sed -nE 's/^idle: ([0-9]+) of.*/\1/p' "$T/$1.out"; }
SINK_RATE=$(rate smtp-sink)
TOY_RATE=$(rate toy-server)
TOY_RSS=$(sed -nE 's/^server: .*VmRSS ([0-9.]+) MiB.*/\1/p' "$T/toy-server.out")
TOY_THREADS=$(sed -nE 's/^server: .*threads ([0-9]+).*/\1/p' "$T/toy-server.out")
TOY_MAX=$(sed -nE 's/^probe: .*max ([0-9.]+) ms.*/\1/p' "$T/toy-server.out")
met() { awk "BEGIN {exit !($1)}" && echo met || echo "NOT met"; }

echo
echo "postamt idle: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d), N=$N, WINDOW=$WINDOW"
echo "opening rate: toy-server ${TOY_RATE:-?}/s, smtp-sink ${SINK_RATE:-?}/s: $(awk -v a="${TOY_RATE:-0}" -v b="${SINK_RATE:-0}" 'BEGIN {if (b > 0) printf "%.3fx", a/b; else print "?"}') (target 0.5x: $(met "${TOY_RATE:-0} >= 0.5 * ${SINK_RATE:-1}"))"
echo "greeted: toy-server $(greeted toy-server) of $N ($(met "$(greeted toy-server) == $N")), smtp-sink $(greeted smtp-sink) of $N"
echo "toy-server while holding them: VmRSS ${TOY_RSS:-?} MiB (target < 100: $(met "${TOY_RSS:-1e9} < 100")), threads ${TOY_THREADS:-?}"
echo "new client's greeting, max of $PROBES: ${TOY_MAX:-?} ms (target < 50: $(met "${TOY_MAX:-1e9} < 50"))"
