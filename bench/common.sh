# Shared by the proxy benchmarks (sourced): settings, a fresh PostgreSQL
# with a pgbench database under /tmp/pgwarden-bench (as OS user postgres,
# on 127.0.0.1), starting pgwarden, PgBouncer and Pgpool-II in transaction
# mode, and reading a process tree's CPU ticks and memory.
# shellcheck shell=bash
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGWARDEN="${PGWARDEN:-$ROOT/target/release/pgwarden}"
BIN="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
DURATION=${DURATION:-20}; REPEAT=${REPEAT:-1}; CLIENTS=${CLIENTS:-16}; THREADS=${THREADS:-2}
IDLE=${IDLE:-10000}; SCALE=${SCALE:-10}; TARGETS=${TARGETS:-"direct pgwarden pgbouncer pgpool floor"}
B=/tmp/pgwarden-bench; DB=bench
PG_PORT=25432; PGW_PORT=26432; PGB_PORT=27432; PGP_PORT=29999; FLOOR_PORT=28432
FLOOR="${FLOOR:-$ROOT/target/release/pgwarden-floor}"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  [ -f "$B/pg/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$B/pg" -m fast -w stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$B"; mkdir -p "$B"; chown postgres:postgres "$B"
echo "== PostgreSQL on $PG_PORT (pgbench scale $SCALE, database $DB)" >&2
as_pg "$BIN/initdb" -D "$B/pg" -U postgres -A trust --no-instructions >/dev/null
cat >>"$B/pg/postgresql.conf" <<EOC
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$B'
max_connections = 300
shared_buffers = 256MB
logging_collector = off
EOC
as_pg "$BIN/pg_ctl" -D "$B/pg" -l "$B/pg.log" -w start >/dev/null
as_pg "$BIN/psql" -h 127.0.0.1 -p $PG_PORT -U postgres -Xqc "create database $DB" postgres
# The pgbench tables as pgbench -i makes them, and nothing left to write
# out: TPC-B runs leave dead row versions behind that make the next
# select-only runs slower, so each target starts from the same state.
fresh_data() {
  as_pg "$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p $PG_PORT -U postgres "$DB" 2>&1 | tail -1 >&2
  as_pg "$BIN/psql" -h 127.0.0.1 -p $PG_PORT -U postgres -Xqc checkpoint "$DB"
}

start_pgwarden() {
  cat >"$B/pgwarden.toml" <<EOC
[proxy]
listen = "127.0.0.1:$PGW_PORT"
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 20000
hba = ["host all all 127.0.0.1/32 trust"]
admin_users = ["postgres"]
[[backends]]
host = "127.0.0.1"
port = $PG_PORT
EOC
  "$PGWARDEN" proxy --config "$B/pgwarden.toml" --log warn 2>"$B/pgwarden.log" &
  PGW_PID=$!; pids+=("$PGW_PID")
}

# The floor (crates/floor): the least a transaction pooler can do here
# (one epoll thread, canned login, no checks), to show what any proxy
# costs on this machine before it does anything useful.
FLOOR_ARGS=("$FLOOR_PORT" "$PG_PORT" postgres "$DB" 20) # listen, server, user, database, pool size
start_floor() {
  "$FLOOR" "${FLOOR_ARGS[@]}" 2>"$B/floor.log" &
  FLOOR_PID=$!; pids+=("$FLOOR_PID")
}

start_pgbouncer() {
  mkdir -p "$B/pgbouncer"; chown postgres:postgres "$B/pgbouncer"
  cat >"$B/pgbouncer/pgbouncer.ini" <<EOC
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $B/pgbouncer
auth_type = trust
auth_file = $B/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 20000
logfile = $B/pgbouncer/pgbouncer.log
pidfile = $B/pgbouncer/pgbouncer.pid
admin_users = postgres
log_connections = 0
log_disconnections = 0
EOC
  echo '"postgres" ""' >"$B/pgbouncer/userlist.txt"
  chown postgres:postgres "$B/pgbouncer"/*
  setpriv --reuid=postgres --regid=postgres --init-groups -- pgbouncer "$B/pgbouncer/pgbouncer.ini" >/dev/null 2>&1 &
  PGB_PID=$!; pids+=("$PGB_PID")
}

start_pgpool() {
  mkdir -p "$B/pgpool"
  cat >"$B/pgpool/pgpool.conf" <<EOC
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $PGP_PORT
unix_socket_directories = '$B/pgpool'
pcp_listen_addresses = '127.0.0.1'
pcp_port = 29898
pcp_socket_dir = '$B/pgpool'
enable_pool_hba = off
num_init_children = 32
max_pool = 4
load_balance_mode = on
log_destination = 'stderr'
log_min_messages = error
logdir = '$B/pgpool'
pid_file_name = '$B/pgpool/pgpool.pid'
sr_check_period = 10
sr_check_user = 'postgres'
health_check_period = 0
use_watchdog = off
backend_hostname0 = '127.0.0.1'
backend_port0 = $PG_PORT
backend_weight0 = 1
backend_flag0 = 'ALLOW_TO_FAILOVER'
EOC
  echo "postgres:$(printf bench | md5sum | cut -d' ' -f1)" >"$B/pgpool/pcp.conf"
  chown -R postgres:postgres "$B/pgpool"; chmod 600 "$B/pgpool/pcp.conf"
  setpriv --reuid=postgres --regid=postgres --init-groups -- pgpool -n -f "$B/pgpool/pgpool.conf" -F "$B/pgpool/pcp.conf" >>"$B/pgpool/pgpool.log" 2>&1 &
  PGP_PID=$!; pids+=("$PGP_PID")
}

wait_port() {
  for _ in $(seq 1 100); do
    "$BIN/psql" -h 127.0.0.1 -p "$1" -U postgres -XAtqc 'select 1' "$DB" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "nothing answers on port $1" >&2; return 1
}

# CPU ticks (1/100 s) of a process and its descendants (children already
# reaped are in cutime/cstime).
tree_ticks() {
  local root=$1
  ps -e -o pid=,ppid= | awk -v r="$root" '{ par[$1] = $2; p[NR] = $1 } END {
      want[r] = 1; ch = 1
      while (ch) { ch = 0; for (i in p) { x = p[i]; if (!(x in want) && (par[x] in want)) { want[x] = 1; ch = 1 } } }
      for (x in want) print x }' |
  while read -r p; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 + $14 + $15 }'; done |
  awk '{ s += $1 } END { print s + 0 }'
}

rss_kb() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
tree_rss_kb() {
  local root=$1 total=0
  for p in $root $(pgrep -P "$root" || true); do total=$((total + $(rss_kb "$p" 2>/dev/null || echo 0))); done
  echo "$total"
}
