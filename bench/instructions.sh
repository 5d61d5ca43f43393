#!/usr/bin/env bash
# Instructions each pooler executes per transaction, counted by callgrind
# (pgwarden, PgBouncer, and the floor: crates/floor, the least a pooler can
# do): a figure a noisy, shared machine cannot move (timings on 2 shared
# cores vary by 10-20% from run to run). Each pooler runs under callgrind
# twice, once with a warm-up only and once with the warm-up and
# TX transactions per client; the difference, divided by the transactions,
# is the cost of one. Select-only, with and without -C. The instructions
# are also split by where they run: the tokio runtime and mio
# (the event loop), pgwarden's own crates, the allocator, libc, the rest.
#
# Callgrind runs a program one thread at a time, and about 50 times slower:
# the counts are exact, the pattern of wake-ups is not the one at full
# speed, so they vary by a few percent between runs.
#
# Usage: bench/instructions.sh     (via ./x bench-instructions, which builds pgwarden and the floor)
#   TX=1000 (select-only, per client)  TX_C=100 (with -C, per client)  CLIENTS=16 THREADS=2
set -euo pipefail
shopt -s inherit_errexit
TX=${TX:-1000}; TX_C=${TX_C:-100}
# shellcheck source=bench/common.sh
. "$(dirname "$0")/common.sh"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
fresh_data
start_pgbouncer # writes its configuration; this instance is not profiled
start_pgwarden
wait_port "$PGB_PORT"; wait_port "$PGW_PORT"
kill "$PGB_PID" "$PGW_PID"; wait "$PGB_PID" "$PGW_PID" 2>/dev/null || true
pids=()
OUT=$B/callgrind; mkdir -p "$OUT"; chmod 777 "$OUT"

# One run under callgrind; sets PROFILE to the profile's file. $1 pooler,
# $2 -C or "", $3 transactions per client (0: the warm-up only). The
# warm-up opens as many clients as the run, so that both runs of a pair
# open the same server connections.
profile() {
  local name=$1 conn=$2 n=$3 port pid i up=0
  PROFILE="$OUT/$name${conn:+-C}.$n.out"
  rm -f "$PROFILE" "$B/pgbouncer/pgbouncer.pid"
  if [ "$name" = pgwarden ]; then
    port=$PGW_PORT
    valgrind --tool=callgrind --callgrind-out-file="$PROFILE" "$PGWARDEN" proxy \
      --config "$B/pgwarden.toml" --log warn >/dev/null 2>>"$OUT/valgrind.log" &
  elif [ "$name" = floor ]; then
    port=$FLOOR_PORT
    valgrind --tool=callgrind --callgrind-out-file="$PROFILE" "$FLOOR" "${FLOOR_ARGS[@]}" \
      >/dev/null 2>>"$OUT/valgrind.log" &
  else
    port=$PGB_PORT
    setpriv --reuid=postgres --regid=postgres --init-groups -- valgrind --tool=callgrind \
      --callgrind-out-file="$PROFILE" pgbouncer "$B/pgbouncer/pgbouncer.ini" \
      >/dev/null 2>>"$OUT/valgrind.log" &
  fi
  pid=$!; pids+=("$pid")
  for i in $(seq 1 120); do
    if as_pg "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -Xqc "select 1" "$DB" >/dev/null 2>&1; then
      up=1; break
    fi
    sleep 0.5
  done
  [ "$up" = 1 ] || { echo "$name did not answer under callgrind within 60 s" >&2; exit 1; }
  as_pg "$BIN/pgbench" -n -S ${conn:+"$conn"} -c "$CLIENTS" -j "$THREADS" -t 20 \
    -h 127.0.0.1 -p "$port" -U postgres "$DB" >/dev/null
  if [ "$n" -gt 0 ]; then
    as_pg "$BIN/pgbench" -n -S ${conn:+"$conn"} -c "$CLIENTS" -j "$THREADS" -t "$n" \
      -h 127.0.0.1 -p "$port" -U postgres "$DB" >/dev/null
  fi
  # pgwarden and the floor stop on SIGTERM, PgBouncer on SIGINT; callgrind
  # writes the profile as the program exits.
  if [ "$name" = pgbouncer ]; then kill -INT "$pid"; else kill -TERM "$pid"; fi
  wait "$pid" 2>/dev/null || true
  [ -s "$PROFILE" ] || { echo "callgrind wrote no profile for $name" >&2; exit 1; }
}

# Instructions per transaction by part: "total runtime own alloc libc deps".
# A function counts where its symbol's crate is (with what it inlines);
# PgBouncer and the C libraries, which have no such names here, by object.
per_txn() {
  python3 - "$1" "$2" "$3" <<'EOF'
import re, subprocess, sys
RUNTIME = {"tokio", "tokio_util", "mio"}
OWN = {"proxy", "wire", "config", "pgwarden", "dcs", "ha", "agent", "pg", "pgwarden_floor"}
ALLOC = re.compile(r"(_int_)?(malloc|free|calloc|realloc)$|__libc_(malloc|free|calloc|realloc)$|malloc_consolidate|tcache")
def kind(fn, obj):
    crate = re.match(r"<*([A-Za-z_][A-Za-z0-9_]*)", fn)
    crate = crate.group(1) if crate else ""
    if crate in RUNTIME or "libevent" in obj:
        return "runtime"
    if crate in OWN or obj.endswith("/pgbouncer"):
        return "own"
    if fn.startswith("_rjem") or crate == "tikv_jemallocator" or "jemalloc" in obj:
        return "alloc"
    if "libc.so" in obj:
        return "alloc" if ALLOC.match(fn) else "libc"
    return "deps"
def parts(f):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", f],
                         capture_output=True, text=True, check=True).stdout
    p = dict(total=0, runtime=0, own=0, alloc=0, libc=0, deps=0)
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*?)(?: \[([^\]]*)\])?$", line)
        if not m:
            continue
        n, rest, obj = int(m.group(1).replace(",", "")), m.group(2), m.group(3) or ""
        if rest == "PROGRAM TOTALS":
            p["total"] = n
            continue
        # file:function; a line without an object is code inlined into a
        # function of the pooler's own binary
        fn = rest.split(":", 1)[1] if ":" in rest else rest
        p[kind(fn, obj)] += n
    assert p["total"] > 0, f"no totals in {f}"
    return p
a, b, n = parts(sys.argv[1]), parts(sys.argv[2]), int(sys.argv[3])
print(" ".join(str(round((b[k] - a[k]) / n)) for k in ["total", "runtime", "own", "alloc", "libc", "deps"]))
EOF
}

echo
echo "instructions per select-only transaction (callgrind), $CLIENTS clients, $THREADS threads"
printf '%-10s %-3s %8s %8s %8s %8s %8s %8s\n' pooler -C total runtime own alloc libc deps
for conn in "" -C; do
  n=$TX; [ -n "$conn" ] && n=$TX_C
  for name in pgwarden pgbouncer floor; do
    profile "$name" "$conn" 0; a=$PROFILE
    profile "$name" "$conn" "$n"; b=$PROFILE
    r=$(per_txn "$a" "$b" $((n * CLIENTS)))
    read -r total runtime own alloc libc deps <<<"$r"
    printf '%-10s %-3s %8s %8s %8s %8s %8s %8s\n' "$name" "$([ -n "$conn" ] && echo yes || echo no)" \
      "$total" "$runtime" "$own" "$alloc" "$libc" "$deps"
  done
done
echo "runtime: tokio and mio (pgwarden), libevent (PgBouncer); own: functions of pgwarden's crates (with what they inline), the floor's, or the pgbouncer binary; alloc: jemalloc, or libc's malloc; deps: the rest (std, bytes, memchr, hashbrown, ...)"
