#!/usr/bin/env bash
# Proxy benchmark: pgbench directly against PostgreSQL, through pgwarden
# (transaction mode), PgBouncer (transaction mode) and Pgpool-II, in one run
# on this machine, plus the resident memory of each pooler holding 10,000
# idle logged-in clients. The floor (crates/floor: the least a transaction
# pooler can do) shows what any proxy costs on this machine.
#
# Each target starts from freshly made pgbench tables.
#
# Usage: bench/proxy.sh            (via ./x bench-proxy, which builds pgwarden and the floor)
#   DURATION=20 REPEAT=1 CLIENTS=16 THREADS=2 IDLE=10000 SCALE=10 TARGETS="direct pgwarden pgbouncer pgpool floor"
# Everything runs as OS user postgres under /tmp/pgwarden-bench, on 127.0.0.1.
set -euo pipefail
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"

declare -A TPS LAT CPU
run_pgbench() { # target port pid mode(select|tpcb) connect(0|1)
  local target=$1 port=$2 pid=$3 mode=$4 conn=$5
  local args=(-n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres)
  [ "$mode" = select ] && args+=(-S)
  [ "$conn" = 1 ] && args+=(-C)
  local results=()
  for r in $(seq 1 "$REPEAT"); do
    local t0=0; [ -n "$pid" ] && t0=$(tree_ticks "$pid")
    local out; out=$(as_pg "$BIN/pgbench" "${args[@]}" "$DB" 2>&1) || { echo "$out" >&2; return 1; }
    local t1=0; [ -n "$pid" ] && t1=$(tree_ticks "$pid")
    local tps lat n
    tps=$(echo "$out" | awk '/^tps =/ { print $3; exit }')
    lat=$(echo "$out" | awk '/latency average/ { print $4; exit }')
    n=$(echo "$out" | awk '/actually processed/ { print $NF; exit }' | cut -d/ -f1)
    local cpu=NA; [ -n "$pid" ] && cpu=$(awk -v d=$((t1 - t0)) -v n="$n" 'BEGIN { printf "%.4f", (d / 100) / n * 1000 }')
    results+=("$tps $lat $cpu")
    echo "   $target $mode C=$conn run $r: tps=$tps lat=${lat}ms cpu_s/1000tx=$cpu" >&2
  done
  # median by TPS
  local med; med=$(printf '%s\n' "${results[@]}" | sort -n -k1 | awk -v n="${#results[@]}" 'NR == int((n + 1) / 2)')
  local key="$target/$mode/$conn"
  TPS[$key]=$(echo "$med" | awk '{ print $1 }'); LAT[$key]=$(echo "$med" | awk '{ print $2 }'); CPU[$key]=$(echo "$med" | awk '{ print $3 }')
}

declare -A RSS0 RSS1
idle_memory() { # target port pid
  local target=$1 port=$2 pid=$3
  RSS0[$target]=$(tree_rss_kb "$pid")
  rm -f "$B/idle.stop"
  python3 "$ROOT/bench/idle_clients.py" "$port" "$IDLE" postgres "$DB" "$B/idle.stop" >"$B/idle.out" 2>&1 &
  local ipid=$!
  for _ in $(seq 1 600); do grep -q ready "$B/idle.out" 2>/dev/null && break; kill -0 $ipid 2>/dev/null || break; sleep 0.2; done
  if grep -q ready "$B/idle.out"; then
    sleep 2
    RSS1[$target]=$(tree_rss_kb "$pid")
  else
    echo "   $target: idle clients failed: $(tail -2 "$B/idle.out")" >&2
    RSS1[$target]=NA
  fi
  touch "$B/idle.stop"; wait $ipid 2>/dev/null || true
  echo "   $target: RSS ${RSS0[$target]} kB before, ${RSS1[$target]} kB with $IDLE idle clients" >&2
}

for t in $TARGETS; do
  echo "== $t" >&2
  fresh_data
  case $t in
    direct) port=$PG_PORT; pid="" ;;
    pgwarden) start_pgwarden; port=$PGW_PORT; pid=$PGW_PID ;;
    pgbouncer) start_pgbouncer; port=$PGB_PORT; pid=$PGB_PID ;;
    pgpool) start_pgpool; port=$PGP_PORT; pid=$PGP_PID ;;
    floor) start_floor; port=$FLOOR_PORT; pid=$FLOOR_PID ;;
  esac
  wait_port "$port"
  for mode in select tpcb; do
    for conn in 0 1; do run_pgbench "$t" "$port" "$pid" "$mode" "$conn"; done
  done
  if [ "$t" = pgwarden ] || [ "$t" = pgbouncer ]; then idle_memory "$t" "$port" "$pid"; fi
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; sleep 1; fi
done

echo
echo "pgbench: $CLIENTS clients, $THREADS threads, ${DURATION}s per run, median of $REPEAT; scale $SCALE; $(nproc) cores shared by everything"
printf '%-10s %-10s %-3s %10s %9s %14s %10s\n' target test -C TPS lat_ms cpu_s/1000tx vs_pgbouncer
for t in $TARGETS; do
  for mode in select tpcb; do
    for conn in 0 1; do
      k="$t/$mode/$conn"; b="pgbouncer/$mode/$conn"
      ratio=NA
      [ -n "${TPS[$b]:-}" ] && [ -n "${TPS[$k]:-}" ] && ratio=$(awk -v a="${TPS[$k]}" -v b="${TPS[$b]}" 'BEGIN { printf "%.2fx", a / b }')
      printf '%-10s %-10s %-3s %10.0f %9s %14s %10s\n' "$t" "$mode" "$([ $conn = 1 ] && echo yes || echo no)" "${TPS[$k]:-0}" "${LAT[$k]:-NA}" "${CPU[$k]:-NA}" "$ratio"
    done
  done
done
echo
printf '%-10s %12s %18s %14s\n' pooler rss_idle_kB "rss_${IDLE}_clients_kB" bytes_per_client
for t in pgwarden pgbouncer; do
  [ -n "${RSS1[$t]:-}" ] || continue
  per=NA; [ "${RSS1[$t]}" != NA ] && per=$(( (RSS1[$t] - RSS0[$t]) * 1024 / IDLE ))
  printf '%-10s %12s %18s %14s\n' "$t" "${RSS0[$t]}" "${RSS1[$t]}" "$per"
done
