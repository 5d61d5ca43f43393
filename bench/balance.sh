#!/usr/bin/env bash
# Read balancing over a primary and two streaming standbys, in one run:
#  - pgbench select-only (CLIENTS clients) through pgwarden (load_balance,
#    read-your-writes) and through Pgpool-II (load_balance_mode on), with
#    each node's share of the transactions (pg_stat_database on the nodes);
#  - select-only through pgwarden to the primary alone, the classifier on
#    (load_balance = true, no standby) and off: what classifying costs;
#  - TPC-B-like through pgwarden with consistency = read_your_writes and
#    = eventual: what read-your-writes costs a writing workload;
#  - the classifier's own cost per statement (crates/sql timing test) and
#    the proxy's cache hit rate (SHOW STATS).
# Everything runs as OS user postgres under /tmp/pgwarden-balance, on 127.0.0.1.
#
# Usage: bench/balance.sh   (via ./x bench-balance)   ROUNDS=3 DURATION=15 CLIENTS=16 SCALE=10
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGWARDEN="${PGWARDEN:-$ROOT/target/release/pgwarden}"
BIN="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-15}; CLIENTS=${CLIENTS:-16}; THREADS=${THREADS:-2}; SCALE=${SCALE:-10}
B=/tmp/pgwarden-balance; DB=bench
PORTS=(25632 25633 25634); PGW_PORT=26632; PGP_PORT=29996
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
psql_at() { "$BIN/psql" -X -A -t -q -h 127.0.0.1 -p "$1" -U postgres -d "${3:-$DB}" -c "$2"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1
  for i in 0 1 2; do
    [ -f "$B/n$i/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$B/n$i" -m fast -w stop >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

rm -rf "$B"; mkdir -p "$B"; chown postgres:postgres "$B"
echo "== primary on ${PORTS[0]}, standbys on ${PORTS[1]} and ${PORTS[2]} (pgbench scale $SCALE)" >&2
as_pg "$BIN/initdb" -D "$B/n0" -U postgres -A trust --no-instructions >/dev/null
cat >>"$B/n0/postgresql.conf" <<EOC
listen_addresses = '127.0.0.1'
port = ${PORTS[0]}
unix_socket_directories = '$B'
max_connections = 300
shared_buffers = 256MB
wal_level = replica
hot_standby = on
logging_collector = off
EOC
echo "host replication all 127.0.0.1/32 trust" >>"$B/n0/pg_hba.conf"
as_pg "$BIN/pg_ctl" -D "$B/n0" -l "$B/n0.log" -w start >/dev/null
psql_at "${PORTS[0]}" "CREATE DATABASE $DB" postgres
as_pg "$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "${PORTS[0]}" -U postgres "$DB" 2>&1 | tail -1 >&2
for i in 1 2; do
  as_pg "$BIN/pg_basebackup" -D "$B/n$i" -h 127.0.0.1 -p "${PORTS[0]}" -U postgres -R -X stream -c fast
  echo "port = ${PORTS[$i]}" >>"$B/n$i/postgresql.conf"
  as_pg "$BIN/pg_ctl" -D "$B/n$i" -l "$B/n$i.log" -w start >/dev/null
done

# transactions committed in $DB on each node
commits() { for i in 0 1 2; do psql_at "${PORTS[$i]}" "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'"; done; }

start_pgwarden() { # backends(n) load_balance consistency
  local n=$1 lb=$2 cons=$3 backends=""
  for i in $(seq 0 $((n - 1))); do backends+="[[backends]]
host = \"127.0.0.1\"
port = ${PORTS[$i]}
"; done
  cat >"$B/pgwarden.toml" <<EOC
[proxy]
listen = "127.0.0.1:$PGW_PORT"
pool_mode = "transaction"
default_pool_size = 20
max_client_conn = 20000
hba = ["host all all 127.0.0.1/32 trust"]
admin_users = ["postgres"]
load_balance = $lb
consistency = "$cons"
$backends
EOC
  "$PGWARDEN" proxy --config "$B/pgwarden.toml" --log warn 2>"$B/pgwarden.log" &
  PGW_PID=$!; pids+=("$PGW_PID")
  for _ in $(seq 1 100); do psql_at $PGW_PORT "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
  # the standbys seen streaming by the health checks
  for _ in $(seq 1 50); do
    [ "$(psql_at $PGW_PORT "SHOW POOL_NODES" pgwarden | awk -F'|' '$4 == "up"' | wc -l)" -ge "$n" ] && break; sleep 0.2
  done
  sleep 1
}
stop_pgwarden() { kill "$PGW_PID" 2>/dev/null || true; wait "$PGW_PID" 2>/dev/null || true; }

start_pgpool() {
  if ss -ltn | grep -q ":$PGP_PORT "; then echo "port $PGP_PORT is taken (a Pgpool-II left running?)" >&2; exit 1; fi
  mkdir -p "$B/pgpool"
  {
    cat <<EOC
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $PGP_PORT
unix_socket_directories = '$B/pgpool'
pcp_listen_addresses = '127.0.0.1'
pcp_port = 29896
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
EOC
    for i in 0 1 2; do
      printf "backend_hostname%d = '127.0.0.1'\nbackend_port%d = %d\nbackend_weight%d = 1\nbackend_flag%d = 'ALLOW_TO_FAILOVER'\n" \
        "$i" "$i" "${PORTS[$i]}" "$i" "$i"
    done
  } >"$B/pgpool/pgpool.conf"
  echo "postgres:$(printf bench | md5sum | cut -d' ' -f1)" >"$B/pgpool/pcp.conf"
  chown -R postgres:postgres "$B/pgpool"; chmod 600 "$B/pgpool/pcp.conf"
  as_pg pgpool -n -f "$B/pgpool/pgpool.conf" -F "$B/pgpool/pcp.conf" >>"$B/pgpool/pgpool.log" 2>&1 &
  PGP_PID=$!; pids+=("$PGP_PID")
  for _ in $(seq 1 100); do psql_at $PGP_PORT "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
}
# SIGTERM (smart shutdown: pgbench has gone, no client to wait for), then
# SIGQUIT (immediate), then SIGKILL, to Pgpool-II's main process (from its
# pid file: the process started may not be it) and its children. Not
# SIGINT: a script run in the background starts it with SIGINT ignored.
stop_pgpool() {
  local main sig
  main=$( { tr -dc 0-9 <"$B/pgpool/pgpool.pid"; } 2>/dev/null || true); main=${main:-$PGP_PID}
  for sig in TERM QUIT KILL; do
    [ "$sig" = KILL ] && { pkill -KILL -P "$main" 2>/dev/null || true; }
    kill -"$sig" "$main" "$PGP_PID" 2>/dev/null || true
    for _ in $(seq 1 25); do
      ss -ltn | grep -q ":$PGP_PORT " || { wait "$PGP_PID" 2>/dev/null || true; return 0; }
      sleep 0.2
    done
  done
  echo "Pgpool-II still listens on $PGP_PORT" >&2; return 1
}

# Each configuration runs once per round, the rounds one after another,
# so that the machine's drift (it is shared) falls on every configuration
# alike; the table gives each one's median over the rounds, and the
# select-only ratio is the median of the rounds' own ratios (pgwarden and
# Pgpool-II measured minutes apart would compare the machine, not them).
declare -A TPS SHARE ALL
bench() { # label port mode(select|tpcb)
  local label=$1 port=$2 mode=$3 args=(-n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$2" -U postgres)
  [ "$mode" = select ] && args+=(-S)
  local before after tps
  before=$(commits | tr '\n' ' ')
  tps=$("$BIN/pgbench" "${args[@]}" "$DB" 2>/dev/null | awk '/^tps/ { printf "%.0f", $3 }')
  after=$(commits | tr '\n' ' ')
  ALL[$label]+="${tps:-0} "
  SHARE[$label]=$(echo "$before $after" | awk '{ t = 0; for (i = 1; i <= 3; i++) { d[i] = $(i + 3) - $i; t += d[i] }
      printf "%.0f%% / %.0f%% / %.0f%%", 100 * d[1] / t, 100 * d[2] / t, 100 * d[3] / t }')
  echo "  $label: ${tps:-0} tps (primary / standby 1 / standby 2: ${SHARE[$label]})" >&2
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

LABELS=("pgwarden, 3 nodes" "Pgpool-II, 3 nodes" "pgwarden, primary only, classifier on" "pgwarden, primary only, classifier off"
        "pgwarden TPC-B, read_your_writes" "pgwarden TPC-B, eventual")
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS: select-only, $CLIENTS clients, ${DURATION}s each" >&2
  start_pgwarden 3 true read_your_writes
  bench "pgwarden, 3 nodes" $PGW_PORT select
  STATS=$(psql_at $PGW_PORT "SHOW STATS" pgwarden | tr '\n' ' ')
  stop_pgwarden
  start_pgpool
  bench "Pgpool-II, 3 nodes" $PGP_PORT select
  stop_pgpool
  start_pgwarden 1 true read_your_writes
  bench "pgwarden, primary only, classifier on" $PGW_PORT select
  stop_pgwarden
  start_pgwarden 1 false read_your_writes
  bench "pgwarden, primary only, classifier off" $PGW_PORT select
  stop_pgwarden
  echo "== round $round of $ROUNDS: TPC-B-like, $CLIENTS clients" >&2
  start_pgwarden 3 true read_your_writes
  bench "pgwarden TPC-B, read_your_writes" $PGW_PORT tpcb
  stop_pgwarden
  start_pgwarden 3 true eventual
  bench "pgwarden TPC-B, eventual" $PGW_PORT tpcb
  stop_pgwarden
done
for k in "${LABELS[@]}"; do TPS[$k]=$(echo "${ALL[$k]}" | median); done
# the rounds' own ratios: round i of one label against round i of the other
ratios() { paste -d' ' <(echo "${ALL[$1]}" | tr ' ' '\n' | grep -v '^$') <(echo "${ALL[$2]}" | tr ' ' '\n' | grep -v '^$') |
  awk -v pct="${3:-}" '{ if (pct) printf "%.1f ", 100 * (1 - $1 / $2); else printf "%.2f ", $1 / $2 }'; }

echo "== the classifier alone (crates/sql timing test, release build)" >&2
COST=$(cd "$ROOT" && cargo test -q --release -p sql -- --ignored --nocapture classify_cost 2>&1 | grep "^classify" | head -8 || true)

hits=$(echo "$STATS" | grep -o 'classifier_cache_hits|[0-9]*' | cut -d'|' -f2)
misses=$(echo "$STATS" | grep -o 'classifier_cache_misses|[0-9]*' | cut -d'|' -f2)
echo
echo "read balancing, $(nproc) cores shared by everything; pgbench $CLIENTS clients, ${DURATION}s, scale $SCALE; median of $ROUNDS interleaved rounds"
printf '%-42s %10s   %-22s %s\n' target tps "each round" "transactions (last round): primary / standby 1 / standby 2"
for k in "${LABELS[@]}"; do
  printf '%-42s %10s   %-22s %s\n' "$k" "${TPS[$k]%.*}" "${ALL[$k]% }" "${SHARE[$k]}"
done
verdict() { ratios "$@" | median; }
echo "select-only, pgwarden / Pgpool-II: $(verdict "pgwarden, 3 nodes" "Pgpool-II, 3 nodes")x, rounds: $(ratios "pgwarden, 3 nodes" "Pgpool-II, 3 nodes")(target >= 1.5x)"
echo "classifier cost on select-only TPS: $(verdict "pgwarden, primary only, classifier on" "pgwarden, primary only, classifier off" pct)%, rounds: $(ratios "pgwarden, primary only, classifier on" "pgwarden, primary only, classifier off" pct)(target < 5%)"
echo "read-your-writes cost on TPC-B TPS: $(verdict "pgwarden TPC-B, read_your_writes" "pgwarden TPC-B, eventual" pct)%, rounds: $(ratios "pgwarden TPC-B, read_your_writes" "pgwarden TPC-B, eventual" pct)(target < 5%)"
echo "classifier cache during the last 3-node select-only run: $hits hits, $misses misses"
echo "classifier per statement (crates/sql, one thread):"
echo "$COST" | sed 's/^/  /'
