#!/usr/bin/env bash
# How long the proxy takes to mark a frozen backend down: one PostgreSQL
# behind pgwarden (health checks with the defaults), then SIGSTOP to its
# postmaster and every backend (a hung host: connections open, nothing
# answers). Prints the seconds until SHOW POOL_NODES says "down".
#
# Usage: bench/frozen_node.sh      (needs target/release/pgwarden: cargo build --release)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGWARDEN="${PGWARDEN:-$ROOT/target/release/pgwarden}"
BIN="$(pg_config --bindir)"
D=/tmp/pgwarden-frozen; PG_PORT=25499; PGW_PORT=26499
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
PM=""; KIDS=""; PGW_PID=""
cleanup() {
  [ -n "$PM" ] && kill -CONT $PM $KIDS 2>/dev/null || true
  [ -n "$PGW_PID" ] && kill "$PGW_PID" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$D/pg" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$D"; mkdir -p "$D"; chown postgres:postgres "$D"
as_pg "$BIN/initdb" -D "$D/pg" -U postgres -A trust --no-instructions >/dev/null
printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$PG_PORT" "$D" >>"$D/pg/postgresql.conf"
as_pg "$BIN/pg_ctl" -D "$D/pg" -l "$D/pg.log" -w start >/dev/null
cat >"$D/pgwarden.toml" <<EOC
[proxy]
listen = "127.0.0.1:$PGW_PORT"
hba = ["host all all 127.0.0.1/32 trust"]
admin_users = ["postgres"]
[[backends]]
host = "127.0.0.1"
port = $PG_PORT
EOC
"$PGWARDEN" proxy --config "$D/pgwarden.toml" --log warn 2>"$D/pgwarden.log" & PGW_PID=$!
status() {
  timeout 2 "$BIN/psql" -h 127.0.0.1 -p $PGW_PORT -U postgres -XAtc "SHOW POOL_NODES" pgwarden 2>/dev/null | cut -d'|' -f4 || true
}
for _ in $(seq 1 50); do [ "$(status)" = up ] && break; sleep 0.2; done
echo "before: $(status)"
PM=$(head -1 "$D/pg/postmaster.pid"); KIDS=$(pgrep -P "$PM" | tr '\n' ' ')
kill -STOP "$PM" $KIDS
t0=$(date +%s.%N); s=""
for _ in $(seq 1 200); do s=$(status); [ "$s" = down ] && break; sleep 0.1; done
t1=$(date +%s.%N)
echo "frozen node marked '$s' after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s (health_check_period 0.5 s, timeout 1 s, max_retries 2)"
