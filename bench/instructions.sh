#!/usr/bin/env bash
# Instructions each pooler executes per transaction, counted by callgrind:
# a figure a noisy, shared machine cannot move (timings on 2 shared cores
# vary by 10-20% from run to run). pgwarden and PgBouncer each run under
# callgrind twice, once with a warm-up only and once with the warm-up and
# TX transactions per client; the difference, divided by the transactions,
# is the cost of one. Select-only, with and without -C. For pgwarden the
# instructions are also split by where they run: the tokio runtime and mio
# (the event loop), pgwarden's own crates, the allocator, libc.
#
# Callgrind runs a program one thread at a time, and about 50 times slower:
# the counts are exact, the pattern of wake-ups is not the one at full
# speed, so they vary by a few percent between runs.
#
# Usage: bench/instructions.sh     (via ./x bench-instructions, which builds pgwarden)
#   TX=1000 (select-only, per client)  TX_C=100 (with -C, per client)  CLIENTS=16 THREADS=2
set -euo pipefail
TX=${TX:-1000}; TX_C=${TX_C:-100}
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
fresh_data
start_pgbouncer # writes its configuration; the instance itself is not used
start_pgwarden
wait_port "$PGB_PORT"; wait_port "$PGW_PORT"
kill "$PGB_PID" "$PGW_PID"; wait "$PGB_PID" "$PGW_PID" 2>/dev/null || true
pids=()
OUT=$B/callgrind; mkdir -p "$OUT"; chmod 777 "$OUT"

# One run under callgrind: prints the profile's file. $1 pooler, $2 -C or
# "", $3 transactions per client (0: the warm-up only).
profile() {
  local name=$1 conn=$2 n=$3 port pid
  local f="$OUT/$name${conn:+-C}.$n.out"
  rm -f "$f" "$B/pgbouncer/pgbouncer.pid"
  if [ "$name" = pgwarden ]; then
    port=$PGW_PORT
    valgrind --tool=callgrind --callgrind-out-file="$f" "$PGWARDEN" proxy \
      --config "$B/pgwarden.toml" --log warn 2>>"$OUT/valgrind.log" &
  else
    port=$PGB_PORT
    setpriv --reuid=postgres --regid=postgres --init-groups -- valgrind --tool=callgrind \
      --callgrind-out-file="$f" pgbouncer "$B/pgbouncer/pgbouncer.ini" 2>>"$OUT/valgrind.log" &
  fi
  pid=$!
  local i
  for i in $(seq 1 120); do
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -Xqc "select 1" "$DB" >/dev/null 2>&1 && break
    sleep 0.5
  done
  as_pg "$BIN/pgbench" -n -S $conn -c 4 -j 1 -t 20 -h 127.0.0.1 -p "$port" -U postgres "$DB" >/dev/null 2>&1
  if [ "$n" -gt 0 ]; then
    as_pg "$BIN/pgbench" -n -S $conn -c "$CLIENTS" -j "$THREADS" -t "$n" \
      -h 127.0.0.1 -p "$port" -U postgres "$DB" >/dev/null 2>&1
  fi
  # pgwarden stops on SIGTERM, PgBouncer on SIGINT; callgrind writes the
  # profile as the program exits.
  if [ "$name" = pgwarden ]; then kill -TERM "$pid"; else kill -INT "$pid"; fi
  wait "$pid" 2>/dev/null || true
  echo "$f"
}

# Instructions per transaction by part: "total runtime own alloc libc other".
per_txn() {
  python3 - "$1" "$2" "$3" <<'EOF'
import re, subprocess, sys
def parts(f):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", f],
                         capture_output=True, text=True, check=True).stdout
    p = dict(total=0, runtime=0, own=0, alloc=0, libc=0, other=0)
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)$", line)
        if not m:
            continue
        n, rest = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in rest:
            p["total"] = n
            continue
        fn = rest.split(":", 1)[-1]
        if re.search(r"\btokio|\bmio::|libevent", rest):
            k = "runtime"
        elif re.search(r"\b(proxy|wire|config|pgwarden)::|/pgbouncer\]", rest):
            k = "own"
        elif re.search(r"rjem|jemalloc|malloc|free", fn):
            k = "alloc"
        elif "libc.so" in rest:
            k = "libc"
        else:
            k = "other"
        p[k] += n
    return p
a, b, n = parts(sys.argv[1]), parts(sys.argv[2]), int(sys.argv[3])
print(" ".join(str(round((b[k] - a[k]) / n)) for k in ["total", "runtime", "own", "alloc", "libc", "other"]))
EOF
}

echo
echo "instructions per select-only transaction (callgrind), $CLIENTS clients, $THREADS threads"
printf '%-10s %-3s %8s %8s %8s %8s %8s %8s\n' pooler -C total runtime own alloc libc std+deps
for conn in "" -C; do
  n=$TX; [ -n "$conn" ] && n=$TX_C
  for name in pgwarden pgbouncer; do
    a=$(profile "$name" "$conn" 0)
    b=$(profile "$name" "$conn" "$n")
    read -r total runtime own alloc libc other < <(per_txn "$a" "$b" $((n * CLIENTS)))
    printf '%-10s %-3s %8s %8s %8s %8s %8s %8s\n' "$name" "$([ -n "$conn" ] && echo yes || echo no)" \
      "$total" "$runtime" "$own" "$alloc" "$libc" "$other"
  done
done
echo "runtime: tokio and mio (pgwarden), libevent (PgBouncer); own: pgwarden's crates (with what they inline), or the pgbouncer binary; std+deps: the rest (std, memchr, hashbrown, ...)"
