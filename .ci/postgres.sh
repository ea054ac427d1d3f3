#!/usr/bin/env bash
# A private PostgreSQL cluster for the store's tests, in a temporary folder.
#
#   source .ci/postgres.sh start   # sets POSTAMT_TEST_POSTGRES, PG_PID, PG_DIR
#   .ci/postgres.sh stop [PG_DIR]  # stops the cluster by its pid, removes PG_DIR
#
# The server listens on a free loopback port and on a unix socket in its
# folder; the test user `postamt` may create databases. As root the server
# runs as the `postgres` user (PostgreSQL refuses to run as root).
#
# PG_FSYNC=off (the default) runs it with fsync=off: fast, and enough for
# tests. PG_FSYNC=on keeps fsync and synchronous_commit on (PostgreSQL's
# defaults), so that each COMMIT waits for the WAL on disk, as a benchmark
# of durable deliveries needs.

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$PG_OWNER" -- "$@"
  else
    "$@"
  fi
}

pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_start() {
  local bin port durability
  case "${PG_FSYNC:-off}" in
    off) durability="-c fsync=off" ;;
    on) durability="-c fsync=on -c synchronous_commit=on" ;;
    *) echo "postgres.sh: PG_FSYNC must be on or off" >&2; return 1 ;;
  esac
  bin=$(pg_bin) || { echo "postgres.sh: no initdb found (install postgresql)" >&2; return 1; }
  PG_OWNER=postgres
  getent passwd postgres >/dev/null || PG_OWNER=nobody
  PG_DIR=$(mktemp -d /tmp/postamt-pg.XXXXXX)
  chmod 755 "$PG_DIR"
  [ "$(id -u)" = 0 ] && chown "$PG_OWNER" "$PG_DIR"
  pg_as_owner "$bin/initdb" -D "$PG_DIR/data" -U postamt --auth=trust -E UTF8 --no-sync >"$PG_DIR/initdb.log" 2>&1 \
    || { echo "postgres.sh: initdb failed:" >&2; cat "$PG_DIR/initdb.log" >&2; return 1; }
  port=$(pg_free_port)
  pg_as_owner "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR $durability -c max_connections=400" start >/dev/null \
    || { echo "postgres.sh: the server did not start:" >&2; cat "$PG_DIR/server.log" >&2; return 1; }
  PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
  POSTAMT_TEST_POSTGRES="host=127.0.0.1 port=$port user=postamt dbname=postgres"
  export PG_DIR PG_PID POSTAMT_TEST_POSTGRES
  echo "postgres.sh: PostgreSQL (pid $PG_PID, fsync ${PG_FSYNC:-off}) at $POSTAMT_TEST_POSTGRES"
}

pg_stop() {
  local dir=${1:-${PG_DIR:-}} pid i
  [ -n "$dir" ] && [ -f "$dir/data/postmaster.pid" ] || { echo "postgres.sh: no cluster to stop" >&2; return 0; }
  pid=$(head -1 "$dir/data/postmaster.pid")
  # SIGINT: the fast shutdown (clients are disconnected, nothing is waited for).
  kill -INT "$pid" 2>/dev/null
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  case "$dir" in /tmp/postamt-pg.*) rm -rf "$dir" ;; esac
}

case "${1:-}" in
  start) pg_start ;;
  stop) pg_stop "${2:-}" ;;
  *) echo "usage: source .ci/postgres.sh start | .ci/postgres.sh stop [PG_DIR]" >&2; false ;;
esac
