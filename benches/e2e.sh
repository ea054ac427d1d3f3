#!/usr/bin/env bash
# benches/e2e.sh: the toy server beside the servers people would otherwise run,
# measured in one run on this machine, over 127.0.0.1 only.
#
#   sudo benches/e2e.sh                 # about 3 minutes, plus a 5-minute soak and
#                                       # its count (16 minutes in all on 2 cores)
#   SOAK=30 sudo benches/e2e.sh         # a shorter soak
#   SOAK=0 sudo benches/e2e.sh          # no soak
#   sudo benches/e2e.sh forward         # relaying instead: toy server against
#                                       # a private Postfix, both passing mail
#                                       # on to smtp-sink (about 1 minute with
#                                       # DURATION=5)
#   sudo benches/e2e.sh smtp-source     # Postfix's smtp-source instead of
#                                       # postamt-load (about 2 minutes)
#   sudo benches/e2e.sh postgres        # smtp-source into Maildir and into
#                                       # PostgreSQL (fsync on), directly and
#                                       # through HAProxy with one and two
#                                       # front ends
#
# Needs root on Debian (or alike): it installs postfix and dovecot-pop3d with
# apt-get when they are missing, and runs them as private instances whose whole
# configuration, queue, mail and logs live in a temporary folder. The system's
# own Postfix and Dovecot (if any) are neither used nor touched.
#
# Started here, each on a free loopback port above 20000:
#   smtp-sink      Postfix's SMTP test server: accepts and discards (reference
#                  for the toy server with the memory store)
#   postfix        a private Postfix instance (postfix -c DIR start): smtpd,
#                  cleanup, qmgr and virtual(8) delivering into Maildir folders
#                  (reference for the toy server with Maildir)
#   dovecot        Dovecot's POP3 with a passwd-file and Maildir folders
#                  (reference for POP3)
#   toy-server     twice: --memory and --maildir DIR
# Each is measured with postamt-load at concurrency 1, 10 and 50; SMTP sends
# 10 KiB messages over one connection per client, POP3 sessions are connect,
# USER/PASS, STAT, RETR 1, QUIT with one login per client (a maildrop is locked
# to one session). One table is printed with a ratio column against the
# reference. Then a soak (SOAK seconds, default 300): mixed SMTP and POP3 load
# against the toy server with Maildir, and a count check sent = stored = fetched.
#
# Mode smtp-source: Postfix's own load generator instead, one 1 KiB message
# per connection (how most mail arrives: a connection is opened, greeted and
# closed for every message), at 1, 10, 50 and 200 concurrent sessions against
# smtp-sink and the toy server --memory, and at 1, 10 and 50 against the
# private Postfix and the toy server --maildir. The rate is messages per
# second of wall-clock time for SRC_COUNT messages (SRC_COUNT_MAILDIR for
# the two that write to disk); each toy server cell runs right after its
# reference's at the same concurrency. Beside the two 50-client Maildir cells,
# postamt-noop is one more session on the same server sending NOOP every
# 10 ms for as long as smtp-source runs; its reply times (p50, p99, max) are
# printed in a second table, with the target for the toy server (p99 under
# 5 ms: nothing waits behind an fsync). Dovecot is not started and there is
# no soak.
# The toy servers run without the per-client cap (every session comes from
# 127.0.0.1), as smtp-sink and Postfix's mynetworks do; the one with the
# memory store also without its mailbox and memory limits (smtp-sink keeps
# nothing; one client's 10 KiB messages would fill a 50 MiB mailbox in
# seconds); the Maildir one keeps its default mailbox limit in mode
# smtp-source (1 KiB messages stay under it) and goes without it otherwise.
#
# Knobs (environment): SOAK (s, default 300, 0 skips), DURATION (s per
# measurement, default 5), COUNT (transactions/sessions per measurement at most,
# default 20000), PREFILL (messages per POP3 maildrop, default 20),
# SRC_COUNT (messages per smtp-source cell, default 3000), SRC_COUNT_MAILDIR
# (default 2000: a few seconds of load, a few hundred NOOPs beside it),
# KEEP=1 keeps the temporary folder (logs) after the run.
# Every process started here is stopped by its pid when the script ends.

set -euo pipefail

# load (the default): postamt-load and the soak; forward: relaying;
# smtp-source: Postfix's load generator, one message per connection;
# postgres: smtp-source into Maildir, PostgreSQL and HAProxy (postgres_mode).
MODE=${1:-load}
case $MODE in
load | forward | smtp-source | postgres) ;;
*) echo "usage: e2e.sh [load | forward | smtp-source | postgres]" >&2; exit 2 ;;
esac
SOAK=${SOAK:-300}
DURATION=${DURATION:-5}
COUNT=${COUNT:-20000}
PREFILL=${PREFILL:-20}
KEEP=${KEEP:-0}
SRC_COUNT=${SRC_COUNT:-3000}
SRC_COUNT_MAILDIR=${SRC_COUNT_MAILDIR:-2000}
LEVELS=(1 10 50)
SRC_LEVELS=(1 10 50 200)
USERS=50 # load1..50 (POP3, pre-filled), bulk1..50 (SMTP targets), soak1..8

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'e2e.sh: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts Postfix and Dovecot)"
[[ $SOAK =~ ^[0-9]+$ ]] || die "SOAK must be a whole number of seconds"

# ---------------------------------------------------------------------------
# Installing and building

need_pkgs=()
[[ -x /usr/sbin/postfix && -x /usr/sbin/smtp-sink ]] || need_pkgs+=(postfix)
[[ -x /usr/sbin/dovecot && -e /usr/lib/dovecot/pop3 ]] || need_pkgs+=(dovecot-pop3d)
if ((${#need_pkgs[@]})); then
    say "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
for u in postfix dovecot dovenull nobody; do
    id "$u" >/dev/null 2>&1 || die "user $u missing (postfix and dovecot-pop3d create it)"
done

say "building postamt-load and the toy server (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
(cd "$REPO" &&
    cargo build --quiet --release -p postamt-benches --bin postamt-load --bin postamt-noop &&
    cargo build --quiet --release -p postamt-examples --example toy-server --example fetch-mail)
LOAD=$CARGO_TARGET_DIR/release/postamt-load
NOOP=$CARGO_TARGET_DIR/release/postamt-noop
TOY=$CARGO_TARGET_DIR/release/examples/toy-server
FETCH=$CARGO_TARGET_DIR/release/examples/fetch-mail

# ---------------------------------------------------------------------------
# Processes and clean-up

T=$(mktemp -d /tmp/postamt-e2e.XXXXXX)
chmod 755 "$T"
PIDS=()
PF_DIR=""
PF_STARTED=0

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if ((PF_STARTED)); then
        local master
        master=$(cat "$T/pf/queue/pid/master.pid" 2>/dev/null | tr -d ' ' || true)
        postfix -c "$PF_DIR" stop >/dev/null 2>&1 || true
        [[ -n $master ]] && PIDS+=("$master")
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == 1 ]]; then
        echo "kept $T" >&2
    else
        rm -rf "$T"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
# Below the ephemeral range (32768 and up), where a socket of another program
# could take a port between the check and our bind.
NEXT_PORT=$((20000 + RANDOM % 10000))
free_port() { # VAR: sets VAR to a port nobody listens on (and not handed out before)
    while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    printf -v "$1" '%s' "$NEXT_PORT"
    NEXT_PORT=$((NEXT_PORT + 1))
}

wait_listen() { # PORT WHAT LOG
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    [[ -n ${3:-} && -f $3 ]] && tail -20 "$3" >&2
    die "$2 does not listen on 127.0.0.1:$1"
}

# ---------------------------------------------------------------------------
# Accounts and mail

# The master.cf services both private Postfix instances run (chroot off,
# column 5 = n: a chroot would need copies of /etc files in the queue); each
# adds its smtpd line and its delivery agents.
postfix_services() {
    cat <<'PFEOF'
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
PFEOF
}

seqs() { seq -f "$1%g" 1 "$2"; }
LOAD_LOGINS=() BULK_TO=()
for u in $(seqs load "$USERS"); do LOAD_LOGINS+=(--login "$u:pw-$u"); done
for u in $(seqs bulk "$USERS"); do BULK_TO+=(--to "$u@kolleg.de"); done

# The message the POP3 maildrops are pre-filled with: 10 KiB, the shape of
# postamt-load's own.
MSG=$T/message.eml
{
    printf 'From: <anna@kolleg.de>\r\nTo: <load@kolleg.de>\r\nSubject: postamt-e2e\r\n\r\n'
    for n in $(seq 0 139); do printf '%08d %s\r\n' "$n" "$(printf 'x%.0s' $(seq 62))"; done
} >"$MSG"

# Maildir folder DIR for each user load1..N, each with PREFILL messages in new/.
prefill_maildir() { # ROOT NAME-SUFFIX
    local root=$1 suffix=$2 u i
    for u in $(seqs load "$USERS"); do
        mkdir -p "$root/$u$suffix"/{tmp,new,cur}
        for i in $(seq "$PREFILL"); do
            cp "$MSG" "$root/$u$suffix/new/$((1700000000 + i)).M${i}P$$.e2e"
        done
    done
}

# ---------------------------------------------------------------------------
# Measuring

RESULTS=$T/results # server|protocol|concurrency|rate|p50|p99|errors
: >"$RESULTS"

# measure SERVER PROTO CONCURRENCY postamt-load-args...
measure() {
    local server=$1 proto=$2 c=$3 out line
    shift 3
    out=$("$LOAD" --concurrency "$c" --count "$COUNT" --duration "$DURATION" \
        --timeout 10 "$@" 2>&1) || true
    line=$(grep -E "^$proto: " <<<"$out" | head -1 || true)
    if [[ -z $line ]]; then
        printf '%s\n' "$out" >&2
        echo "$server|$proto|$c|0|-|-|failed" >>"$RESULTS"
        return
    fi
    local rate p50 p99 errs
    rate=$(sed -E 's/.*: ([0-9.]+) messages\/s.*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50 ([0-9.]+) ms.*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99 ([0-9.]+) ms.*/\1/' <<<"$line")
    errs=$(sed -E 's/.*errors ([0-9]+).*/\1/' <<<"$line")
    echo "$server|$proto|$c|$rate|$p50|$p99|$errs" >>"$RESULTS"
    say "$server $proto c=$c: $rate/s p50 $p50 ms p99 $p99 ms errors $errs"
    grep -E "^  $proto error: " <<<"$out" | head -3 >&2 || true
}

# Warm up a server (first sessions make indexes, start processes); not measured.
warm() { "$LOAD" --concurrency 50 --count 100 --duration 5 --timeout 10 "$@" >/dev/null 2>&1 || true; }

# measure_src SERVER CONCURRENCY MESSAGES PORT: Postfix's smtp-source, one
# 1 KiB message per connection; the rate is over the whole run's wall clock.
measure_src() {
    local server=$1 c=$2 n=$3 port=$4 start end out rc=0 rate errs
    start=$(date +%s%N)
    out=$(/usr/sbin/smtp-source -4 -s "$c" -m "$n" -l 1024 -M e2e.kolleg.de \
        -f anna@kolleg.de -t bulk1@kolleg.de "127.0.0.1:$port" 2>&1) || rc=$?
    end=$(date +%s%N)
    errs=$(grep -ciE 'error|fatal|warning' <<<"$out" || true)
    if ((rc != 0)); then
        printf '%s\n' "$out" | head -5 >&2
        echo "$server|smtp-source|$c|0|-|-|failed" >>"$RESULTS"
        say "$server smtp-source c=$c: failed (exit $rc)"
        return
    fi
    rate=$(awk -v n="$n" -v ns="$((end - start))" 'BEGIN {printf "%.1f", n * 1e9 / ns}')
    echo "$server|smtp-source|$c|$rate|-|-|$errs" >>"$RESULTS"
    say "$server smtp-source c=$c: $rate messages/s ($n in $(((end - start) / 1000000)) ms) errors $errs"
}

# measure_src_probed SERVER CONCURRENCY MESSAGES PORT: measure_src with
# postamt-noop beside it, one more session on the same server sending NOOP
# every 10 ms for as long as smtp-source runs; its reply times go to
# $PROBES as SERVER|c|replies|p50|p99|max|errors.
PROBES=$T/probes
: >"$PROBES"
measure_src_probed() {
    local server=$1 c=$2 stop=$T/noop-stop out line n p50 p99 max errs
    rm -f "$stop"
    "$NOOP" --smtp "127.0.0.1:$4" --interval-ms 10 --duration 600 --stop-file "$stop" \
        >"$T/noop.out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    measure_src "$@"
    touch "$stop"
    wait "$pid" || true
    out=$(cat "$T/noop.out")
    line=$(grep -E '^noop: ' <<<"$out" | head -1 || true)
    if [[ -z $line ]]; then
        printf '%s\n' "$out" >&2
        echo "$server|$c|0|-|-|-|failed" >>"$PROBES"
        return
    fi
    n=$(sed -E 's/^noop: ([0-9]+) replies.*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50 ([0-9.]+) ms.*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99 ([0-9.]+) ms.*/\1/' <<<"$line")
    max=$(sed -E 's/.*max ([0-9.]+) ms.*/\1/' <<<"$line")
    errs=$(sed -E 's/.*errors ([0-9]+).*/\1/' <<<"$line")
    echo "$server|$c|$n|$p50|$p99|$max|$errs" >>"$PROBES"
    say "$server c=$c, NOOP beside it: $n replies, p50 $p50 ms, p99 $p99 ms, max $max ms, errors $errs"
}

# Postfix keeps delivering after smtpd said 250; let the queue drain so that
# the next measurement has the machine to itself.
pf_drain() {
    for _ in $(seq 600); do
        [[ -z $(find "$T/pf/queue/incoming" "$T/pf/queue/active" "$T/pf/queue/maildrop" -type f 2>/dev/null | head -1) ]] && return
        sleep 0.1
    done
    say "postfix queue not empty after 60 s"
}

# ---------------------------------------------------------------------------
# smtp-sink

free_port SINK_PORT
/usr/sbin/smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 >"$T/smtp-sink.log" 2>&1 &
PIDS+=($!)
wait_listen "$SINK_PORT" smtp-sink "$T/smtp-sink.log"

# ---------------------------------------------------------------------------
# forward: the toy server and a private Postfix as relays, both passing every
# message on to a fresh smtp-sink that writes each one to a file; each cell
# (server, clients) gets its own server, queue and sink, stopped afterwards,
# so no message of one cell reaches the next one's count.

FW=$T/fw
FW_RESULTS=$FW/results # server|c|accepted|acc_rate|forwarded|fwd_rate|p50|p99|errors
mkdir -p "$FW"
: >"$FW_RESULTS"
FW_TO=()
for n in $(seq 50); do FW_TO+=(--to "far$n@far.example"); done

fw_postfix_start() { # DIR SMTP-PORT SINK-PORT: a private Postfix relaying all to the sink
    local d=$1 port=$2 sink=$3
    mkdir -p "$d/etc" "$d/queue" "$d/data"
    chown postfix:postfix "$d/data"
    cat >"$d/etc/main.cf" <<PFEOF
compatibility_level = 3.6
queue_directory = $d/queue
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.kolleg.de
mydomain = kolleg.de
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost = [127.0.0.1]:$sink
local_transport = error:local delivery is off
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtp_dns_support_level = disabled
maillog_file = $d/maillog
maillog_file_prefixes = $T
syslog_name = postfix-e2e-fw
biff = no
PFEOF
    {
        echo "127.0.0.1:$port inet n - n - - smtpd"
        postfix_services
        cat <<PFEOF
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
PFEOF
    } >"$d/etc/master.cf"
    PF_DIR=$d/etc
    postfix -c "$PF_DIR" check >"$d/check.log" 2>&1 && postfix -c "$PF_DIR" start >"$d/start.log" 2>&1 ||
        { cat "$d/check.log" "$d/start.log" >&2; return 1; }
    PF_STARTED=1
    # The clean-up at exit looks for the master's pid here.
    mkdir -p "$T/pf/queue/pid" && cp "$d/queue/pid/master.pid" "$T/pf/queue/pid/master.pid"
    wait_listen "$port" "postfix smtpd (relay)" "$d/maillog"
}

fw_postfix_stop() {
    postfix -c "$PF_DIR" stop >/dev/null 2>&1 || true
    PF_STARTED=0
    local master
    master=$(tr -d ' ' <"$T/pf/queue/pid/master.pid" 2>/dev/null || true)
    for _ in $(seq 100); do
        [[ -n $master ]] && kill -0 "$master" 2>/dev/null || break
        sleep 0.1
    done
}

# fw_cell SERVER C: one measurement; SERVER is toy or postfix.
fw_cell() {
    local server=$1 c=$2 cell=$FW/$1-c$2 sink port pop pid="" out line
    mkdir -p "$cell/dump"
    chown nobody "$cell/dump"
    free_port sink
    /usr/sbin/smtp-sink -u nobody -d "$cell/dump/%H%M%S." "127.0.0.1:$sink" 256 >"$cell/sink.log" 2>&1 &
    local sink_pid=$!
    PIDS+=("$sink_pid")
    wait_listen "$sink" smtp-sink "$cell/sink.log"
    free_port port
    if [[ $server == toy ]]; then
        free_port pop
        "$TOY" --maildir "$cell/mail" --smtp-port "$port" --pop3-port "$pop" \
            --relay-from 127.0.0.0/8 --relay-host "127.0.0.1:$sink" --relay-tls off \
            >"$cell/toy.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_listen "$port" "toy-server (relay)" "$cell/toy.log"
    else
        fw_postfix_start "$cell/pf" "$port" "$sink" || return 0
    fi
    local t0
    t0=$(date +%s.%N)
    out=$("$LOAD" --smtp "127.0.0.1:$port" --concurrency "$c" --count "$COUNT" --duration "$DURATION" \
        --timeout 10 --from anna@kolleg.de "${FW_TO[@]}" --stamps "$cell/stamps" 2>&1) || true
    line=$(grep -E '^smtp: ' <<<"$out" | head -1 || true)
    local accepted acc_rate errs
    accepted=$(sed -nE 's/^smtp: ([0-9]+) transactions.*/\1/p' <<<"$line")
    acc_rate=$(sed -nE 's/.*: ([0-9.]+) messages\/s.*/\1/p' <<<"$line")
    errs=$(sed -nE 's/.*errors ([0-9]+).*/\1/p' <<<"$line")
    # Wait (at most 60 s) until the sink has every accepted message.
    local got=0
    for _ in $(seq 600); do
        got=$(find "$cell/dump" -type f | wc -l)
        ((got >= ${accepted:-0})) && break
        sleep 0.1
    done
    sleep 0.2
    got=$(find "$cell/dump" -type f | wc -l)
    # Each dump file's last change (the sink's 250 follows it) against the
    # time our client got its 250, by the message's X-Postamt-Load id.
    find "$cell/dump" -type f -printf '%p %T@\n' >"$cell/mtimes"
    grep -r -m1 -H '^X-Postamt-Load: ' "$cell/dump" | sed 's/:X-Postamt-Load: / /' >"$cell/ids" || true
    awk 'FNR==NR {m[$1]=$2; next} {print $2, m[$1]}' "$cell/mtimes" "$cell/ids" >"$cell/sink-times"
    awk 'FNR==NR {s[$1]=$2; next} ($1 in s) {printf "%.3f\n", ($2 - s[$1]) * 1000}' \
        "$cell/stamps" "$cell/sink-times" | sort -n >"$cell/latency"
    local n p50 p99 last fwd_rate
    n=$(wc -l <"$cell/latency")
    p50=$(awk -v n="$n" 'NR == (int(n*0.50) < n*0.50 ? int(n*0.50)+1 : int(n*0.50)) {print}' "$cell/latency")
    p99=$(awk -v n="$n" 'NR == (int(n*0.99) < n*0.99 ? int(n*0.99)+1 : int(n*0.99)) {print}' "$cell/latency")
    last=$(cut -d' ' -f2 "$cell/mtimes" | sort -n | tail -1)
    fwd_rate=$(awk -v n="$got" -v a="$t0" -v b="${last:-0}" 'BEGIN {d = b - a; printf "%.1f", (d > 0 ? n / d : 0)}')
    echo "$server|$c|${accepted:-0}|${acc_rate:-0}|$got|$fwd_rate|${p50:--}|${p99:--}|${errs:-?}" >>"$FW_RESULTS"
    say "forward $server c=$c: accepted ${accepted:-0} (${acc_rate:-0}/s), at the sink $got (${fwd_rate}/s), our 250 -> sink p50 ${p50:--} ms p99 ${p99:--} ms, errors ${errs:-?}"
    if [[ $server == toy ]]; then
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    else
        fw_postfix_stop
    fi
    kill "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
}

forward_mode() {
    for c in "${LEVELS[@]}"; do fw_cell toy "$c"; done
    for c in "${LEVELS[@]}"; do fw_cell postfix "$c"; done
    fwd() { awk -F'|' -v s="$1" -v c="$2" '$1==s && $2==c {print $6}' "$FW_RESULTS"; }
    echo
    echo "postamt e2e forward: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d), DURATION=${DURATION}s COUNT=$COUNT per cell, 10 KiB messages to 50 recipients round robin"
    echo "accepted: transactions/s our clients got 250 for; forwarded: messages at smtp-sink / seconds from the load's start to the last one;"
    echo "latency: from the client's 250 to the sink's copy of the message (file time, a few ms resolution)"
    echo
    printf '| %-24s | %4s | %9s | %11s | %9s | %12s | %8s | %8s | %6s | %-24s |\n' \
        relay c accepted "accepted/s" "at sink" "forwarded/s" "p50 ms" "p99 ms" errors "forwarded/s vs postfix"
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------------------------- ------ ----------- ------------- ----------- -------------- ---------- ---------- -------- --------------------------
    local ALL=1
    while IFS='|' read -r server c accepted acc_rate got fwd_rate p50 p99 errs; do
        local name ratio=reference ref
        if [[ $server == toy ]]; then
            name="toy-server --maildir"
            ref=$(fwd postfix "$c")
            if [[ -n $ref && $ref != 0* ]]; then
                ratio=$(awk -v a="$fwd_rate" -v b="$ref" 'BEGIN {printf "%.2fx", a/b}')
                awk -v a="$fwd_rate" -v b="$ref" 'BEGIN {exit !(a >= b)}' || ALL=0
            else
                ratio="(postfix not measured)"
            fi
            [[ $got == "$accepted" && $errs == 0 ]] || ALL=0
        else
            name="postfix (relayhost)"
        fi
        printf '| %-24s | %4s | %9s | %11s | %9s | %12s | %8s | %8s | %6s | %-24s |\n' \
            "$name" "$c" "$accepted" "$acc_rate" "$got" "$fwd_rate" "$p50" "$p99" "$errs" "$ratio"
    done <"$FW_RESULTS"
    echo
    if ((ALL)); then
        echo "forward target (at least Postfix's forwarded/s at every concurrency, every message at the sink): met"
    else
        echo "forward target (at least Postfix's forwarded/s at every concurrency, every message at the sink): NOT met"
    fi
}

if [[ $MODE == forward ]]; then
    forward_mode
    exit 0
fi

# ---------------------------------------------------------------------------
# postgres: deliveries per second into PostgreSQL beside Maildir, and through
# HAProxy (issue 15). A private PostgreSQL cluster (.ci/postgres.sh with
# PG_FSYNC=on unless set otherwise: fsync and synchronous_commit on, so each
# 250 waits for its COMMIT's WAL on disk), one fresh database per set-up,
# cloned from one holding the users bulk1..50. Postfix's smtp-source, one
# 1 KiB message per connection as in mode smtp-source, at 1, 10 and 50
# sessions into, one set-up after the other, each with servers of its own
# (stopped by pid after its three cells):
#   toy-server --maildir DIR
#   toy-server --postgres URL, clients connecting to it directly
#   HAProxy (mode tcp, send-proxy-v2, check-send-proxy) in front of one
#     toy-server --postgres URL --proxy-from 127.0.0.1/32
#   the same in front of two such, each on its own ports (roundrobin)
# Every toy server runs with --max-connections-per-client 0 (all sessions
# come from 127.0.0.1). A cell is PG_COUNT messages (default 600); its rate is messages per second of its wall clock; a
# cell running longer than PG_TIMEOUT seconds (default 120) is stopped and
# counted as failed. PG_RCPTS (default 1, as mode smtp-source): the cell's
# messages go to this many mailboxes, bulk1..N, one smtp-source per mailbox
# with the sessions split among them. After each set-up the mail stored
# (files in new/, rows in postamt_mailbox_messages) is counted against the
# messages sent.
PGB_SRC=() # smtp-source processes running now (stopped at exit)
postgres_mode() {
    local count=${PG_COUNT:-600} timeout=${PG_TIMEOUT:-120} rcpts=${PG_RCPTS:-1}
    [[ $count =~ ^[1-9][0-9]*$ && $timeout =~ ^[1-9][0-9]*$ && $rcpts =~ ^[1-9][0-9]*$ ]] && ((rcpts <= USERS)) ||
        die "PG_COUNT, PG_TIMEOUT and PG_RCPTS must be whole numbers above 0 (PG_RCPTS at most $USERS)"
    command -v haproxy >/dev/null || die "haproxy missing (apt-get install haproxy)"
    command -v psql >/dev/null || die "psql missing (apt-get install postgresql)"
    local pg=$T/pg results=$T/pg/results warm=50
    mkdir -p "$pg"
    : >"$results" # setup|c|rate|errors|sessions per front end

    PG_FSYNC=${PG_FSYNC:-on}
    # shellcheck source=../.ci/postgres.sh
    source "$REPO/.ci/postgres.sh" start >"$pg/start.log" 2>&1 ||
        { cat "$pg/start.log" >&2; die "PostgreSQL did not start"; }
    # At any exit the load and the cluster go first (the cluster by its pid,
    # a fast shutdown), then everything else (cleanup); the exit status is
    # kept. set +e: a failing step here must not skip cleanup.
    trap 'pgb_rc=$?; set +e; for p in "${PGB_SRC[@]}"; do kill "$p" 2>/dev/null; done; [[ -f $PG_DIR/server.log ]] && cp "$PG_DIR/server.log" "$T/pg/"; pg_stop "$PG_DIR" >/dev/null 2>&1; (exit $pgb_rc); cleanup' EXIT
    local base=$POSTAMT_TEST_POSTGRES
    say "PostgreSQL (pid $PG_PID): $base, fsync $(psql -XAtq "$base" -c 'SHOW fsync'), synchronous_commit $(psql -XAtq "$base" -c 'SHOW synchronous_commit')"
    pgb_sql() { psql -XAtq -v ON_ERROR_STOP=1 "$base" -c "$1"; }
    for u in $(seqs bulk "$USERS"); do echo "$u@kolleg.de pw-$u"; done >"$pg/users"
    pgb_sql "CREATE DATABASE postamt_users" || die "CREATE DATABASE failed"
    "$TOY" --postgres "${base/dbname=postgres/dbname=postamt_users}" import-users "$pg/users" >"$pg/import.log" 2>&1 ||
        { cat "$pg/import.log" >&2; die "import-users failed"; }
    PGB_URL=""
    pgb_db() { # NAME: a fresh database with the users; its URL in PGB_URL
        pgb_sql "CREATE DATABASE $1 TEMPLATE postamt_users" || die "CREATE DATABASE $1 failed"
        PGB_URL=${base/dbname=postgres/dbname=$1}
    }

    local running=() # this set-up's servers
    PGB_PORT=""
    pgb_toy() { # LOG TOY-ARGS...: a toy server; its SMTP port in PGB_PORT
        local log=$1 smtp pop
        shift
        free_port smtp
        free_port pop
        "$TOY" "$@" --smtp-port "$smtp" --pop3-port "$pop" --max-connections 1000 \
            --max-connections-per-client 0 >"$log" 2>&1 &
        PIDS+=($!)
        running+=($!)
        wait_listen "$smtp" "toy-server $1" "$log"
        PGB_PORT=$smtp
    }
    PGB_STATS=""
    pgb_haproxy() { # SMTP-PORT...: HAProxy in front of these; its port in PGB_PORT, stats in PGB_STATS
        local front stats cfg=$pg/haproxy-$#.cfg n=0 p
        free_port front
        free_port stats
        {
            printf 'global\n    maxconn 4000\n'
            printf 'defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n'
            printf 'listen stats\n    mode http\n    bind 127.0.0.1:%s\n    stats enable\n    stats uri /\n' "$stats"
            printf 'frontend smtp\n    bind 127.0.0.1:%s\n    default_backend fronts\n' "$front"
            printf 'backend fronts\n    balance roundrobin\n'
            for p; do
                # The health checks send a PROXY header too (a v2 LOCAL one).
                printf '    server fe%s 127.0.0.1:%s send-proxy-v2 check check-send-proxy inter 1s\n' "$n" "$p"
                n=$((n + 1))
            done
        } >"$cfg"
        haproxy -c -f "$cfg" >"$cfg.check" 2>&1 || { cat "$cfg.check" >&2; die "haproxy: $cfg is refused"; }
        haproxy -db -f "$cfg" >"$pg/haproxy-$#.log" 2>&1 &
        PIDS+=($!)
        running+=($!)
        wait_listen "$front" haproxy "$pg/haproxy-$#.log"
        PGB_PORT=$front
        PGB_STATS=$stats
        # Every front end up (its health check passed) before the load.
        for _ in $(seq 100); do
            [[ $(pgb_up) == "$#" ]] && return 0
            sleep 0.1
        done
        die "haproxy: not all $# front ends came up ($(pgb_stat 18))"
    }
    pgb_stat() { # FIELD: that column of the front ends' rows of HAProxy's CSV stats, space-separated
        curl -fs "http://127.0.0.1:$PGB_STATS/;csv" | awk -F, -v f="$1" '$1 == "fronts" && $2 ~ /^fe/ {printf "%s%s", s, $f; s = " "}'
    }
    pgb_up() { pgb_stat 18 | tr ' ' '\n' | grep -cx UP || true; }
    pgb_stop() { # this set-up's servers, by pid, the last started first (HAProxy before its
        # front ends); SIGINT: a clean stop, SIGKILL after 10 s
        local p i
        for ((i = ${#running[@]} - 1; i >= 0; i--)); do
            p=${running[i]}
            kill -INT "$p" 2>/dev/null || true
            for _ in $(seq 100); do
                kill -0 "$p" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        done
        running=()
    }
    pgb_source() { # PORT SESSIONS MESSAGES TAG: smtp-source, MESSAGES over PG_RCPTS mailboxes; status: its worst
        local port=$1 c=$2 n=$3 tag=$4 k i rc=0 r p
        k=$((c < rcpts ? c : rcpts))
        PGB_SRC=()
        for ((i = 1; i <= k; i++)); do
            timeout "$timeout" /usr/sbin/smtp-source -4 -s "$((c / k + (i <= c % k)))" \
                -m "$((n / k + (i <= n % k)))" -l 1024 -M e2e.kolleg.de -f anna@kolleg.de \
                -t "bulk$i@kolleg.de" "127.0.0.1:$port" >"$pg/$tag-$i.out" 2>&1 &
            PGB_SRC+=($!)
        done
        for p in "${PGB_SRC[@]}"; do
            r=0
            wait "$p" || r=$?
            ((r > rc)) && rc=$r
        done
        PGB_SRC=()
        return "$rc"
    }
    pgb_cell() { # SETUP C: one measurement against PGB_PORT
        local setup=$1 c=$2 tag start end rc=0 rate errs before="" after="" split=-
        tag=$(tr -c 'A-Za-z0-9\n' '-' <<<"$setup")-c$c
        [[ -n $PGB_STATS ]] && before=$(pgb_stat 8)
        start=$(date +%s%N)
        pgb_source "$PGB_PORT" "$c" "$count" "$tag" || rc=$?
        end=$(date +%s%N)
        errs=$(cat "$pg/$tag"-*.out | grep -ciE 'error|fatal|warning' || true)
        if [[ -n $PGB_STATS ]]; then
            # Sessions each front end got in this cell (HAProxy's stot).
            after=$(pgb_stat 8)
            split=$(paste -d' ' <(tr ' ' '\n' <<<"$before") <(tr ' ' '\n' <<<"$after") |
                awk '{printf "%s%d", s, $2 - $1; s = "/"}')
        fi
        if ((rc != 0)); then
            head -5 "$pg/$tag"-*.out >&2
            echo "$setup|$c|0|failed (exit $rc)|$split" >>"$results"
            say "$setup c=$c: failed (exit $rc$( ((rc == 124)) && echo ": over PG_TIMEOUT=${timeout}s"))"
            return
        fi
        rate=$(awk -v n="$count" -v ns="$((end - start))" 'BEGIN {printf "%.1f", n * 1e9 / ns}')
        echo "$setup|$c|$rate|$errs|$split" >>"$results"
        say "$setup c=$c: $rate messages/s ($count in $(((end - start) / 1000000)) ms), errors $errs, sessions per front end $split"
    }
    STORED=()
    pgb_syncs() { pgb_sql "SELECT wal_sync FROM pg_stat_wal" 2>/dev/null || echo 0; }
    pgb_setup() { # SETUP COUNT-COMMAND: warm up, the three cells, the stored count, stop
        local setup=$1 counter=$2 c stored sent=$((warm + ${#LEVELS[@]} * count)) syncs
        syncs=$(pgb_syncs)
        # Not measured: the first sessions open the pool's connections.
        pgb_source "$PGB_PORT" 10 "$warm" warm || die "$setup: the warm-up failed (see $pg/warm-*.out)"
        for c in "${LEVELS[@]}"; do pgb_cell "$setup" "$c"; done
        stored=$($counter)
        pgb_stop
        PGB_STATS=""
        # The WAL's fsyncs meanwhile (pg_stat_wal, flushed by the backends
        # as the servers closed their connections): fewer than the messages
        # when commits shared them.
        syncs=$(($(pgb_syncs) - syncs))
        STORED+=("$setup: sent $sent, stored $stored, WAL fsyncs $syncs")
        [[ $stored == "$sent" ]] || say "$setup: sent $sent, stored $stored"
    }
    pgb_count_db() { psql -XAtq "$PGB_URL" -c "SELECT count(*) FROM postamt_mailbox_messages" 2>/dev/null || echo "?"; }

    say "toy-server --maildir"
    local td=$pg/maildir
    pgb_toy "$pg/toy-maildir.log" --maildir "$td" --users "$pg/users"
    pgb_count_maildir() { find "$td" -path '*/new/*' -type f | wc -l; }
    pgb_setup "toy-server --maildir" pgb_count_maildir

    say "toy-server --postgres, direct"
    pgb_db postamt_direct
    pgb_toy "$pg/toy-pg-direct.log" --postgres "$PGB_URL"
    pgb_setup "toy-server --postgres" pgb_count_db

    local n fronts
    for n in 1 2; do
        say "HAProxy in front of $n toy-server --postgres"
        pgb_db "postamt_fronts$n"
        fronts=()
        for i in $(seq "$n"); do
            pgb_toy "$pg/toy-pg-fronts$n-$i.log" --postgres "$PGB_URL" --proxy-from 127.0.0.1/32
            fronts+=("$PGB_PORT")
        done
        pgb_haproxy "${fronts[@]}"
        pgb_setup "HAProxy, $n front end$( ((n > 1)) && echo s)" pgb_count_db
    done
    cp "$PG_DIR/server.log" "$pg/" 2>/dev/null || true
    pg_stop "$PG_DIR" >/dev/null 2>&1 || true

    # The table: one row per concurrency.
    pgb_rate() { awk -F'|' -v s="$1" -v c="$2" '$1==s && $2==c {print $3}' "$results"; }
    pgb_field() { awk -F'|' -v s="$1" -v c="$2" -v f="$3" '$1==s && $2==c {print $f}' "$results"; }
    pgb_ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else print "-"}'; }
    echo
    echo "postamt e2e postgres: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d), PG_COUNT=$count messages per cell, 1 KiB, one per connection, to $rcpts mailbox(es)"
    echo "PostgreSQL $(psql --version | awk '{print $3}') (fsync=$PG_FSYNC, synchronous_commit=$([[ $PG_FSYNC == on ]] && echo on || echo default)), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'); messages/s (smtp-source, wall clock)"
    echo
    printf '| %4s | %10s | %10s | %9s | %13s | %14s | %9s | %13s | %-16s |\n' \
        c maildir postgres "pg/maild" "HAProxy+1 fe" "HAProxy+2 fe" "two/one" "HAProxy+1/pg" "sessions fe0/fe1"
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------ ------------ ------------ ----------- --------------- ---------------- ----------- --------------- ------------------
    local m p h1 h2 errs
    for c in "${LEVELS[@]}"; do
        m=$(pgb_rate "toy-server --maildir" "$c")
        p=$(pgb_rate "toy-server --postgres" "$c")
        h1=$(pgb_rate "HAProxy, 1 front end" "$c")
        h2=$(pgb_rate "HAProxy, 2 front ends" "$c")
        printf '| %4s | %10s | %10s | %9s | %13s | %14s | %9s | %13s | %-16s |\n' "$c" "${m:--}" "${p:--}" \
            "$(pgb_ratio "$p" "$m")" "${h1:--}" "${h2:--}" "$(pgb_ratio "$h2" "$h1")" "$(pgb_ratio "$h1" "$p")" \
            "$(pgb_field "HAProxy, 2 front ends" "$c" 5)"
    done
    echo
    errs=$(awk -F'|' '$4 != 0 {print $1 " c=" $2 ": " $4}' "$results")
    echo "smtp-source errors: ${errs:-none}"
    printf 'stored: %s\n' "${STORED[@]}"
}

if [[ $MODE == postgres ]]; then
    postgres_mode
    exit 0
fi

# ---------------------------------------------------------------------------
# A private Postfix: smtpd -> cleanup -> qmgr -> virtual(8) into Maildir

free_port PF_PORT
PF_DIR=$T/pf/etc
mkdir -p "$PF_DIR" "$T/pf/queue" "$T/pf/data" "$T/vmail"
chown nobody:nogroup "$T/vmail"
chown postfix:postfix "$T/pf/data"
for u in $(seqs bulk "$USERS"); do echo "$u@kolleg.de $u/"; done >"$PF_DIR/vmailbox"
cat >"$PF_DIR/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $T/pf/queue
data_directory = $T/pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.kolleg.de
mydomain = kolleg.de
myorigin = kolleg.de
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relayhost =
local_transport = error:local delivery is off
alias_maps =
alias_database =
virtual_mailbox_domains = kolleg.de
virtual_mailbox_base = $T/vmail
virtual_mailbox_maps = texthash:$PF_DIR/vmailbox
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
virtual_minimum_uid = 100
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# postamt-noop's session sends a NOOP every 10 ms: past 100 of them the
# default counts each as an error and answers it after a 1 s pause.
smtpd_junk_command_limit = 1000000
smtpd_tls_security_level = none
smtp_tls_security_level = none
maillog_file = $T/pf/maillog
maillog_file_prefixes = $T
syslog_name = postfix-e2e
biff = no
EOF
{
    echo "127.0.0.1:$PF_PORT inet n - n - - smtpd"
    postfix_services
    cat <<EOF
proxywrite unix -       -       n       -       1       proxymap
virtual   unix  -       n       n       -       -       virtual
EOF
} >"$PF_DIR/master.cf"
if postfix -c "$PF_DIR" check >"$T/pf/check.log" 2>&1 &&
    postfix -c "$PF_DIR" start >"$T/pf/start.log" 2>&1; then
    PF_STARTED=1
    wait_listen "$PF_PORT" "postfix smtpd" "$T/pf/maillog"
    PIDS+=("$(tr -d ' ' <"$T/pf/queue/pid/master.pid")")
else
    cat "$T/pf/check.log" "$T/pf/start.log" >&2
    say "POSTFIX NOT MEASURED: the private instance did not start (see above)"
fi

# ---------------------------------------------------------------------------
# Dovecot POP3
# (load mode only: smtp-source measures SMTP alone)
if [[ $MODE == load ]]; then

    free_port DC_PORT
    DC=$T/dovecot
    mkdir -p "$DC/run" "$DC/state" "$DC/mail"
    prefill_maildir "$DC/mail" ""
    chown -R dovecot:dovecot "$DC/mail"
    for u in $(seqs load "$USERS"); do
        echo "$u:{PLAIN}pw-$u:$(id -u dovecot):$(id -g dovecot)::$DC/mail/$u::"
    done >"$DC/users"
    cat >"$DC/dovecot.conf" <<EOF
protocols = pop3
listen = 127.0.0.1
base_dir = $DC/run
state_dir = $DC/state
log_path = $DC/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:$DC/mail/%u
pop3_uidl_format = %08Xu%08Xv
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DC/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $DC/users
}
service pop3-login {
  inet_listener pop3 {
    port = $DC_PORT
  }
  inet_listener pop3s {
    port = 0
  }
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
EOF
    /usr/sbin/dovecot -F -c "$DC/dovecot.conf" </dev/null >"$DC/stdout.log" 2>&1 &
    PIDS+=($!)
    wait_listen "$DC_PORT" dovecot "$DC/dovecot.log"
fi

# ---------------------------------------------------------------------------
# The toy server, with the memory store and with Maildir

{
    for u in $(seqs load "$USERS") $(seqs bulk "$USERS") $(seqs soak 8); do
        echo "$u@kolleg.de pw-$u"
    done
} >"$T/toy-users"
# Every session comes from 127.0.0.1 (smtp-source: up to 200 at a time).
# (A POP3 client that reconnects right after QUIT can find its last session
# still counted, so 50 clients against the cap of 50 would be refused now
# and then.)
TOY_LIMITS=(--max-connections 1000 --max-connections-per-client 0)
# The memory store keeps every message, smtp-sink none: without these its
# mailbox limit (50 MiB) refuses a single client's recipient after a few
# seconds, and the cell measures refusals.
TOY_MEMORY_LIMITS=(--mailbox-size-limit 0 --memory-limit 0)
# postamt-load's 10 KiB messages fill the Maildir one's too once its size
# check is quick (1000 a second to one mailbox: 50 MiB in 5 s); Postfix's
# virtual(8) keeps no such limit here. smtp-source's 1 KiB messages stay
# under it, so that mode keeps the limit and measures its check.
TOY_MAILDIR_LIMITS=()
[[ $MODE == smtp-source ]] || TOY_MAILDIR_LIMITS=(--mailbox-size-limit 0)
free_port TM_SMTP; free_port TM_POP3
"$TOY" --memory --users "$T/toy-users" --smtp-port "$TM_SMTP" --pop3-port "$TM_POP3" "${TOY_LIMITS[@]}" "${TOY_MEMORY_LIMITS[@]}" \
    >"$T/toy-memory.log" 2>&1 &
PIDS+=($!)
free_port TD_SMTP; free_port TD_POP3
TD_MAIL=$T/toy-maildir
"$TOY" --maildir "$TD_MAIL" --users "$T/toy-users" --smtp-port "$TD_SMTP" --pop3-port "$TD_POP3" "${TOY_LIMITS[@]}" "${TOY_MAILDIR_LIMITS[@]}" \
    >"$T/toy-maildir.log" 2>&1 &
PIDS+=($!)
wait_listen "$TM_SMTP" "toy-server --memory (SMTP)" "$T/toy-memory.log"
wait_listen "$TM_POP3" "toy-server --memory (POP3)" "$T/toy-memory.log"
wait_listen "$TD_SMTP" "toy-server --maildir (SMTP)" "$T/toy-maildir.log"
wait_listen "$TD_POP3" "toy-server --maildir (POP3)" "$T/toy-maildir.log"

if [[ $MODE == smtp-source ]]; then
    # Each server right after its reference at the same concurrency, so that
    # a neighbour's burst on a shared machine falls on both alike.
    for c in "${SRC_LEVELS[@]}"; do
        measure_src smtp-sink "$c" "$SRC_COUNT" "$SINK_PORT"
        measure_src "toy-server --memory" "$c" "$SRC_COUNT" "$TM_SMTP"
    done
    for c in "${LEVELS[@]}"; do
        src=measure_src
        ((c == 50)) && src=measure_src_probed
        if ((PF_STARTED)); then
            "$src" "postfix smtpd (Maildir)" "$c" "$SRC_COUNT_MAILDIR" "$PF_PORT"
            pf_drain
        fi
        "$src" "toy-server --maildir" "$c" "$SRC_COUNT_MAILDIR" "$TD_SMTP"
    done
else
    # The toy servers' POP3 maildrops get the same PREFILL messages per user as
    # Dovecot's: written as files for Maildir, sent over SMTP for memory.
    say "pre-filling the POP3 maildrops"
    prefill_maildir "$TD_MAIL" "@kolleg.de"
    for u in $(seqs load "$USERS"); do
        "$LOAD" --smtp "127.0.0.1:$TM_SMTP" --concurrency 1 --count "$PREFILL" \
            --duration 30 --to "$u@kolleg.de" >/dev/null
    done

    # ---------------------------------------------------------------------------
    # The measurements

    for c in "${LEVELS[@]}"; do
        measure smtp-sink smtp "$c" --smtp "127.0.0.1:$SINK_PORT" "${BULK_TO[@]}"
    done
    for c in "${LEVELS[@]}"; do
        measure "toy-server --memory" smtp "$c" --smtp "127.0.0.1:$TM_SMTP" "${BULK_TO[@]}"
    done
    if ((PF_STARTED)); then
        for c in "${LEVELS[@]}"; do
            measure "postfix smtpd (Maildir)" smtp "$c" --smtp "127.0.0.1:$PF_PORT" "${BULK_TO[@]}"
            pf_drain
        done
    fi
    for c in "${LEVELS[@]}"; do
        measure "toy-server --maildir" smtp "$c" --smtp "127.0.0.1:$TD_SMTP" "${BULK_TO[@]}"
    done
    warm --pop3 "127.0.0.1:$DC_PORT" "${LOAD_LOGINS[@]}"
    for c in "${LEVELS[@]}"; do
        measure "dovecot pop3 (Maildir)" pop3 "$c" --pop3 "127.0.0.1:$DC_PORT" "${LOAD_LOGINS[@]}"
    done
    warm --pop3 "127.0.0.1:$TD_POP3" "${LOAD_LOGINS[@]}"
    for c in "${LEVELS[@]}"; do
        measure "toy-server --maildir" pop3 "$c" --pop3 "127.0.0.1:$TD_POP3" "${LOAD_LOGINS[@]}"
    done
    warm --pop3 "127.0.0.1:$TM_POP3" "${LOAD_LOGINS[@]}"
    for c in "${LEVELS[@]}"; do
        measure "toy-server --memory" pop3 "$c" --pop3 "127.0.0.1:$TM_POP3" "${LOAD_LOGINS[@]}"
    done
fi

# ---------------------------------------------------------------------------
# The table

reference() { # SERVER PROTO -> reference server name (empty: is one)
    case "$1|$2" in
    "toy-server --memory|smtp"*) echo smtp-sink ;;
    "toy-server --maildir|smtp"*) echo "postfix smtpd (Maildir)" ;;
    "toy-server --"*"|pop3") echo "dovecot pop3 (Maildir)" ;;
    esac
}
target() { # SERVER PROTO -> required ratio
    case "$1|$2" in
    "toy-server --memory|smtp") echo 1 ;;
    "toy-server --maildir|smtp") echo 2 ;;
    "toy-server --"*"|pop3") echo 15 ;;
    "toy-server --memory|smtp-source") echo 1 ;;
    "toy-server --maildir|smtp-source") echo 3 ;;
    esac
}
lookup() { awk -F'|' -v s="$1" -v p="$2" -v c="$3" '$1==s && $2==p && $3==c {print $4}' "$RESULTS"; }

echo
if [[ $MODE == smtp-source ]]; then
    echo "postamt e2e smtp-source: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d), SRC_COUNT=$SRC_COUNT (Maildir: $SRC_COUNT_MAILDIR) messages per cell, 1 KiB"
    echo "smtp-source: messages/s, one message per connection, c sessions in parallel"
else
    echo "postamt e2e: $(uname -m), $(nproc) cores, $(date -u +%Y-%m-%d), DURATION=${DURATION}s COUNT=$COUNT per cell, 10 KiB messages"
    echo "smtp: transactions/s (one connection per client); pop3: sessions/s (login, STAT, RETR 1, QUIT)"
fi
echo
printf '| %-23s | %-11s | %4s | %10s | %8s | %8s | %6s | %-58s |\n' \
    server proto c "per second" "p50 ms" "p99 ms" errors "ratio vs reference"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------------- ------------- ------ ------------ ---------- ---------- -------- ------------------------------------------------------------
ALL_MET=1
MISSED=()
while IFS='|' read -r server proto c rate p50 p99 errs; do
    ref=$(reference "$server" "$proto")
    ratio=""
    if [[ -n $ref ]]; then
        refrate=$(lookup "$ref" "$proto" "$c")
        if [[ -n $refrate && $refrate != 0 ]]; then
            ratio=$(awk -v a="$rate" -v b="$refrate" 'BEGIN {printf "%.2fx", a/b}')
            want=$(target "$server" "$proto")
            if [[ -n $want ]]; then
                if awk -v a="$rate" -v b="$refrate" -v w="$want" 'BEGIN {exit !(a >= w*b)}'; then
                    ratio="$ratio (target ${want}x: met)"
                else
                    ratio="$ratio (target ${want}x: NOT met)"
                    ALL_MET=0
                    MISSED+=("$server $proto c=$c")
                fi
            fi
            ratio="$ratio vs $ref"
        else
            ratio="(no reference measured)"
            ALL_MET=0
        fi
    else
        ratio="reference"
    fi
    [[ $errs == 0 || -z $ref ]] || ALL_MET=0
    printf '| %-23s | %-11s | %4s | %10s | %8s | %8s | %6s | %-58s |\n' \
        "$server" "$proto" "$c" "$rate" "$p50" "$p99" "$errs" "$ratio"
done <"$RESULTS"
if [[ $MODE == smtp-source ]]; then
    # The NOOP probe beside the 50-client Maildir runs: a session that asks
    # nothing of the store must not wait behind those that do.
    echo
    echo "NOOP every 10 ms from one more session beside the 50-client Maildir run (reply times in ms):"
    echo
    printf '| %-23s | %4s | %7s | %8s | %8s | %8s | %6s | %-24s |\n' server c replies "p50 ms" "p99 ms" "max ms" errors "target (toy: p99 < 5 ms)"
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ------------------------- ------ --------- ---------- ---------- ---------- -------- --------------------------
    while IFS='|' read -r server c n p50 p99 max errs; do
        verdict=""
        if [[ $server == toy-server* ]]; then
            if [[ $errs == 0 ]] && awk -v p="$p99" 'BEGIN {exit !(p < 5)}'; then
                verdict=met
            else
                verdict="NOT met"
                ALL_MET=0
                MISSED+=("$server NOOP p99 c=$c")
            fi
        fi
        printf '| %-23s | %4s | %7s | %8s | %8s | %8s | %6s | %-24s |\n' "$server" "$c" "$n" "$p50" "$p99" "$max" "$errs" "$verdict"
    done <"$PROBES"
fi
echo
if ((ALL_MET)); then
    echo "targets: all met"
else
    echo "targets: NOT all met${MISSED:+: ${MISSED[*]}}"
fi
((PF_STARTED)) || echo "postfix smtpd: NOT MEASURED (the private instance did not start)"

# ---------------------------------------------------------------------------
# Soak: mixed SMTP and POP3 against the toy server with Maildir, then
# sent (250) = stored (files in the Maildir) = fetched (POP3 RETR + DELE).

if [[ $MODE == smtp-source ]]; then
    exit 0
fi
if ((SOAK == 0)); then
    echo "soak: skipped (SOAK=0)"
    exit 0
fi
say "soak: ${SOAK}s of SMTP (8 clients to soak1..8) with POP3 fetch-and-delete of soak1..8 and POP3 reads of load1..8"
SOAK_TO=()
for u in $(seqs soak 8); do SOAK_TO+=(--to "$u@kolleg.de"); done
FETCHED=$T/fetched
mkdir -p "$FETCHED"
fetch_round() { # moves soak1..8's mail over POP3 into $FETCHED, deleting it on the server
    local u
    for u in $(seqs soak 8); do
        "$FETCH" --server "127.0.0.1:$TD_POP3" --user "$u" --password "pw-$u" \
            --fetch-to "$FETCHED" --delete >>"$T/fetch.log" 2>&1 || echo "round failed: $u" >>"$T/fetch.log"
    done
}
"$LOAD" --smtp "127.0.0.1:$TD_SMTP" --concurrency 8 --count 100000000 --duration "$SOAK" \
    --timeout 30 "${SOAK_TO[@]}" >"$T/soak-smtp.log" 2>&1 &
SOAK_SMTP=$!
PIDS+=("$SOAK_SMTP")
"$LOAD" --pop3 "127.0.0.1:$TD_POP3" --concurrency 8 --count 100000000 --duration "$SOAK" \
    --timeout 30 "${LOAD_LOGINS[@]:0:16}" >"$T/soak-pop3.log" 2>&1 &
SOAK_POP3=$!
PIDS+=("$SOAK_POP3")
ROUNDS=0
while kill -0 "$SOAK_SMTP" 2>/dev/null; do
    fetch_round
    ROUNDS=$((ROUNDS + 1))
    sleep 1
done
wait "$SOAK_SMTP" || true
wait "$SOAK_POP3" || true
count_files() { find "$@" -type f 2>/dev/null | wc -l; }
SOAK_DIRS=()
for u in $(seqs soak 8); do SOAK_DIRS+=("$TD_MAIL/$u@kolleg.de/new" "$TD_MAIL/$u@kolleg.de/cur"); done
SENT=$(sed -nE 's/^smtp: ([0-9]+) transactions.*/\1/p' "$T/soak-smtp.log")
SMTP_ERR=$(sed -nE 's/^smtp: .*errors ([0-9]+).*/\1/p' "$T/soak-smtp.log")
# Nothing is fetching now: what is on disk plus what was already fetched is
# what was stored.
STORED=$(($(count_files "${SOAK_DIRS[@]}") + $(count_files "$FETCHED")))
fetch_round
ROUNDS=$((ROUNDS + 1))
FETCHED_N=$(count_files "$FETCHED")
LEFT=$(count_files "${SOAK_DIRS[@]}")
TMP_LEFT=$(count_files "$TD_MAIL"/*/tmp)
BAD=$(find "$FETCHED" -type f -print0 | xargs -0 -r grep -L 'Subject: postamt-load' | wc -l)
echo
echo "soak (${SOAK}s, toy-server --maildir): $(sed -nE 's/^(smtp: .*)/\1/p' "$T/soak-smtp.log")"
echo "soak (${SOAK}s, toy-server --maildir): $(sed -nE 's/^(pop3: .*)/\1/p' "$T/soak-pop3.log")"
echo "soak: sent with 250: ${SENT:-?} (SMTP errors ${SMTP_ERR:-?}); stored: $STORED; fetched and deleted over POP3: $FETCHED_N in $ROUNDS rounds; left on the server: $LEFT; in tmp/: $TMP_LEFT; fetched files not ours: $BAD"
if [[ -n $SENT && $SENT -gt 0 && $SENT == "$STORED" && $STORED == "$FETCHED_N" && $LEFT == 0 && $TMP_LEFT == 0 && $BAD == 0 && ${SMTP_ERR:-1} == 0 ]]; then
    echo "soak: PASS (sent = stored = fetched = $SENT)"
else
    echo "soak: FAIL"
    exit 1
fi
