#!/usr/bin/env bash
# pgwarden against PgBouncer with their runs interleaved: both poolers run
# at once and take turns (with direct connections to PostgreSQL and the
# floor, crates/floor: the least a transaction pooler can do), so that each
# set of runs sees the same state of a shared, noisy machine (a sequential
# run can give one pooler a quiet minute and the other a busy one). Prints
# the median TPS and CPU per transaction (all, and user space) of each,
# for select-only with and without -C.
#
# Usage: bench/interleaved.sh      (via ./x bench-interleaved, which builds pgwarden and the floor)
#   ROUNDS=5 DURATION=10 CLIENTS=16 THREADS=2 SCALE=10
set -euo pipefail
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"

fresh_data

start_pgwarden
start_pgbouncer
start_floor
wait_port "$PGW_PORT"
wait_port "$PGB_PORT"
wait_port "$FLOOR_PORT"

# utime and stime of one process, in ticks of 1/100 s
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; }

declare -A RES
for conn in 0 1; do
  for r in $(seq 1 "$ROUNDS"); do
    for t in direct:$PG_PORT:- pgwarden:$PGW_PORT:$PGW_PID pgbouncer:$PGB_PORT:$PGB_PID floor:$FLOOR_PORT:$FLOOR_PID; do
      IFS=: read -r name port pid <<<"$t"
      args=(-n -S -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres)
      [ "$conn" = 1 ] && args+=(-C)
      u0=0 s0=0 u1=0 s1=0
      [ "$pid" = - ] || read -r u0 s0 < <(ticks "$pid")
      out=$(as_pg "$BIN/pgbench" "${args[@]}" "$DB" 2>&1) || { echo "$out" >&2; exit 1; }
      [ "$pid" = - ] || read -r u1 s1 < <(ticks "$pid")
      tps=$(echo "$out" | awk '/^tps =/ { print $3; exit }')
      n=$(echo "$out" | awk '/actually processed/ { print $NF; exit }' | cut -d/ -f1)
      line=$(awk -v t="$tps" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" \
        'BEGIN { printf "%.0f %.2f %.2f", t, (u + s) * 10000 / n, u * 10000 / n }')
      RES[$name/$conn]+="$line"$'\n'
      echo "   $name -C=$conn round $r: tps cpu_us/txn user_us/txn = $line" >&2
    done
  done
done

median() { # column of the results
  printf '%s' "$1" | awk -v c="$2" 'NF { print $c }' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
echo
echo "select-only, $CLIENTS clients, $THREADS threads, $ROUNDS rounds of ${DURATION}s, the targets taking turns; medians"
echo "(floor: crates/floor, the least a transaction pooler can do, for what any proxy costs here)"
printf '%-10s %-3s %8s %14s %15s %12s %10s\n' target -C TPS cpu_us/txn user_us/txn vs_pgbouncer vs_direct
# TPS of $tps as a ratio to the median of target $1 with the same -C
ratio() { awk -v a="$tps" -v b="$(median "${RES[$1/$conn]}" 1)" 'BEGIN { printf "%.2fx", a / b }'; }
for conn in 0 1; do
  for name in direct pgwarden pgbouncer floor; do
    k=$name/$conn
    tps=$(median "${RES[$k]}" 1)
    cpu=$(median "${RES[$k]}" 2) user=$(median "${RES[$k]}" 3)
    [ "$name" = direct ] && cpu=- user=-
    printf '%-10s %-3s %8s %14s %15s %12s %10s\n' "$name" "$([ "$conn" = 1 ] && echo yes || echo no)" \
      "$tps" "$cpu" "$user" "$(ratio pgbouncer)" "$(ratio direct)"
  done
done
