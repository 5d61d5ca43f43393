#!/usr/bin/env bash
# psycopg 3.3.4's own test suite through pgwarden, in session and in
# transaction mode, against a fresh PostgreSQL.
#   conformance/run.sh [session|transaction|balanced|direct ...]   (default: session transaction)
# balanced: transaction mode with read balancing over the primary and a
# streaming standby (read_your_writes_scope = "cluster").
# Session mode must pass every test; transaction mode may fail only the tests
# listed in conformance/psycopg-transaction-expected-failures.txt (each with
# its reason). Any other failure or error fails the run; listed tests that
# now pass are reported. Each mode prints its counts and run time.
# The suite's runner is /work/shared/conformance/psycopg/run.sh, found as
# ../shared/conformance/psycopg/run.sh beside the repository, or at
# $PSYCOPG_SUITE. Needs PostgreSQL's binaries, python3 (with venv) and
# network access to PyPI on first use (the runner makes its virtualenv).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUITE="${PSYCOPG_SUITE:-$ROOT/../shared/conformance/psycopg/run.sh}"
EXPECTED="$ROOT/conformance/psycopg-transaction-expected-failures.txt"
PGWARDEN="${PGWARDEN:-$ROOT/target/release/pgwarden}"
BIN="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PG_PORT=${CONFORMANCE_PG_PORT:-25532}
PX_PORT=${CONFORMANCE_PROXY_PORT:-26532}
W=/tmp/pgwarden-conformance
MODES=("$@"); [ ${#MODES[@]} -gt 0 ] || MODES=(session transaction)

if [ ! -x "$SUITE" ]; then
  # The suite is the team's shared copy, not part of this repository: a
  # checkout without it beside it cannot run this check, and says so.
  echo "conformance: SKIPPED, no psycopg suite runner at $SUITE (set PSYCOPG_SUITE)" >&2
  exit 0
fi
if [ ! -x "$PGWARDEN" ]; then (cd "$ROOT" && cargo build --release -q -p pgwarden); fi
as_pg() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }

proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  [ -f "$W/pg/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$W/pg" -m immediate -w stop >/dev/null 2>&1 || true
  [ -f "$W/standby/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$W/standby" -m immediate -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$W"; mkdir -p "$W"
[ "$(id -u)" -ne 0 ] || chown postgres: "$W"
as_pg "$BIN/initdb" -D "$W/pg" -U postgres -A trust --no-instructions >/dev/null
cat >>"$W/pg/postgresql.conf" <<EOC
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$W'
max_connections = 200
logging_collector = off
EOC
as_pg "$BIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -w start >/dev/null

# balanced: a streaming standby beside the primary, reads balanced over
# both, every read seeing every write made through the proxy before it.
start_standby() {
  as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$W/standby" -R -X stream >/dev/null
  cat >>"$W/standby/postgresql.conf" <<EOC
port = $((PG_PORT + 1))
EOC
  as_pg "$BIN/pg_ctl" -D "$W/standby" -l "$W/standby.log" -w start >/dev/null
}

start_proxy() { # mode [extra [[proxy]] settings and backends]
  cat >"$W/proxy-$1.toml" <<EOC
[proxy]
listen = "127.0.0.1:$PX_PORT"
pool_mode = "${1%-balanced}"
default_pool_size = 40
hba = ["host all all 127.0.0.1/32 trust"]
${2:-}
[[backends]]
host = "127.0.0.1"
port = $PG_PORT
${3:-}
EOC
  "$PGWARDEN" proxy --config "$W/proxy-$1.toml" --log warn 2>"$W/proxy-$1.log" &
  proxy_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PX_PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "conformance: the proxy did not start (see $W/proxy-$1.log)" >&2; exit 1
}

status=0
for mode in "${MODES[@]}"; do
  port=$PX_PORT; extra=()
  case "$mode" in
    direct) port=$PG_PORT ;;
    session) start_proxy session ;;
    # Tests expected to fail leave connections open; their ResourceWarnings
    # would otherwise surface in whichever later test the collector runs in.
    transaction) start_proxy transaction; extra=(-p no:unraisableexception) ;;
    balanced)
      [ -f "$W/standby/postmaster.pid" ] || start_standby
      start_proxy transaction-balanced "load_balance = true
read_your_writes_scope = \"cluster\"" "[[backends]]
host = \"127.0.0.1\"
port = $((PG_PORT + 1))"
      extra=(-p no:unraisableexception) ;;
    *) echo "conformance: unknown mode $mode" >&2; exit 2 ;;
  esac
  log="$W/psycopg-$mode.log"
  echo "== psycopg suite, $mode" >&2
  start=$(date +%s)
  set +e
  # CONFORMANCE_ARGS: more pytest arguments, e.g. "-k test_wait_remote_closed"
  read -r -a more <<< "${CONFORMANCE_ARGS:-}"
  timeout 900 "$SUITE" "host=127.0.0.1 port=$port user=postgres dbname=postgres" -rfE "${extra[@]}" "${more[@]}" >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$log" | tail -1 | sed 's/=//g')
  echo "$mode: ${summary:-no summary (exit $rc)}; ${secs}s wall" >&2
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""; fi
  [ -n "$summary" ] || { echo "$mode: the suite did not finish (see $log)" >&2; status=1; continue; }
  grep -E '^(FAILED|ERROR) ' "$log" | awk '{print $2}' | sort -u >"$W/failed-$mode.txt" || true
  if [ "$mode" = transaction ] || [ "$mode" = balanced ]; then
    lists=("$EXPECTED"); [ "$mode" = balanced ] && lists+=("$ROOT/conformance/psycopg-balanced-expected-failures.txt")
    cat "${lists[@]}" | grep -v '^#' | awk 'NF {print $1}' | sort -u >"$W/expected.txt"
  else
    : >"$W/expected.txt"
  fi
  unexpected=$(comm -23 "$W/failed-$mode.txt" "$W/expected.txt")
  fixed=$(comm -13 "$W/failed-$mode.txt" "$W/expected.txt")
  if [ -n "$unexpected" ]; then
    echo "$mode: unexpected failures:" >&2; echo "$unexpected" | sed 's/^/  /' >&2
    status=1
  fi
  if [ -n "$fixed" ]; then
    echo "$mode: listed as expected failures but passed (update $EXPECTED):" >&2
    echo "$fixed" | sed 's/^/  /' >&2
  fi
done
exit $status
