#!/usr/bin/env bash
# How long the proxy takes to mark a frozen backend down: one PostgreSQL
# behind pgwarden (health checks with the defaults), then SIGSTOP to its
# postmaster and every backend (a hung host: connections open, nothing
# answers). Prints the seconds until SHOW POOL_NODES says "down".
#
# Usage: bench/frozen_node.sh      (needs target/release/pgwarden: cargo build --release)
set -euo pipefail
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"

FROZEN=""
thaw_then_cleanup() {
  [ -n "$FROZEN" ] && kill -CONT $FROZEN 2>/dev/null || true
  cleanup
}
trap thaw_then_cleanup EXIT

start_pgwarden
wait_port "$PGW_PORT"
status() {
  timeout 2 "$BIN/psql" -h 127.0.0.1 -p "$PGW_PORT" -U postgres -XAtc "SHOW POOL_NODES" pgwarden 2>/dev/null | cut -d'|' -f4 || true
}
for _ in $(seq 1 50); do [ "$(status)" = up ] && break; sleep 0.2; done
echo "before: $(status)"
PM=$(head -1 "$B/pg/postmaster.pid")
FROZEN="$PM $(pgrep -P "$PM" | tr '\n' ' ')"
# shellcheck disable=SC2086
kill -STOP $FROZEN
t0=$(date +%s.%N); s=""
for _ in $(seq 1 200); do s=$(status); [ "$s" = down ] && break; sleep 0.1; done
t1=$(date +%s.%N)
echo "frozen node marked '$s' after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s (health_check_period 0.5 s, timeout 1 s, max_retries 2)"
