#!/usr/bin/env bash
# Switchovers under load, through the proxy: pgbench TPC-B-like (CLIENTS
# connections kept open, transaction pooling) while `pgwarden ctl
# switchover` hands the leader role around SWITCHOVERS times, and at the
# same time a probe that writes on a fresh connection every 70 ms (the way
# the reference figures for Patroni and pg_auto_failover were taken).
#
# Printed: for each switchover, the longest pause between two committed
# pgbench transactions around it (from pgbench's per-transaction log) and
# the probe's longest gap between successful writes; then their median and
# max, failed pgbench transactions (errors and aborted clients), failed
# probe attempts, and acknowledged writes missing afterwards (pgbench
# transactions logged as committed vs rows of pgbench_history; probe rows).
#
# Usage: bench/switchover.sh   (SWITCHOVERS=5 CLIENTS=8 SCALE=10 PORT=26600)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGWARDEN="${PGWARDEN:-$ROOT/target/release/pgwarden}"
BIN="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
SWITCHOVERS=${SWITCHOVERS:-5}; CLIENTS=${CLIENTS:-8}; SCALE=${SCALE:-10}; PORT=${PORT:-26600}
B=/tmp/pgwarden-switchover
now_ms() { date +%s%3N; }
psql_p() { "$BIN/psql" -X -A -t -q -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql_retry() { for _ in $(seq 1 60); do psql_p "$@" 2>/dev/null && return 0; sleep 0.5; done; psql_p "$@"; }
ctl() { "$PGWARDEN" ctl --dir "$B" "$@"; }

up_pid=""; bench_pid=""; probe_pid=""
cleanup() {
  for p in $bench_pid $probe_pid; do kill "$p" 2>/dev/null || true; done
  [ -n "$up_pid" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
}
trap cleanup EXIT

# every member running: the leader, and each standby streaming
healthy() {
  ctl --json list 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
ms = d["members"]
ok = d.get("leader") and len(ms) >= 3 and all(m["role"] == "leader" or m["state"] == "streaming" for m in ms)
sys.exit(0 if ok else 1)'
}
wait_healthy() {
  for _ in $(seq 1 240); do healthy && return 0; sleep 0.5; done
  echo "cluster not healthy:" >&2; ctl list >&2 || true; return 1
}

rm -rf "$B"; mkdir -p "$B"
"$PGWARDEN" up --dir "$B" --port "$PORT" >"$B/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do grep -q "pgwarden is up" "$B/up.log" && break; sleep 0.2; done
grep -q "pgwarden is up" "$B/up.log" || { cat "$B/up.log" >&2; exit 1; }
wait_healthy
psql_retry -d postgres -c "CREATE DATABASE bench" >/dev/null
"$BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres bench 2>&1 | tail -1 >&2
psql_retry -d postgres -c "CREATE TABLE probe (seq int primary key)"
wait_healthy

duration=$((SWITCHOVERS * 14 + 12))
rm -f "$B/stop"
(cd "$B" && exec "$BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$duration" -l --log-prefix=tx \
  -h 127.0.0.1 -p "$PORT" -U postgres bench >"$B/pgbench.out" 2>"$B/pgbench.err") &
bench_pid=$!
python3 "$ROOT/bench/write_probe.py" "$PORT" "$duration" 0.07 "$B/probe.log" "$B/stop" &
probe_pid=$!
sleep 6
: >"$B/switchovers"
for i in $(seq 1 "$SWITCHOVERS"); do
  before=$(ctl --json list | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
  s=$(now_ms)
  ctl switchover --force >>"$B/ctl.log" 2>&1 || { echo "switchover $i failed:" >&2; tail -3 "$B/ctl.log" >&2; exit 1; }
  e=$(now_ms)
  after=$(ctl --json list | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
  echo "$i $s $e $before $after" >>"$B/switchovers"
  echo "switchover $i: $before -> $after in $(( (e - s) )) ms (ctl's wait)" >&2
  wait_healthy   # the old primary is back as a standby
  sleep 4
done
wait "$bench_pid" || true; bench_pid=""
touch "$B/stop"; wait "$probe_pid" || true; probe_pid=""

history=$(psql_retry -d bench -c "select count(*) from pgbench_history")
present=$(psql_retry -d postgres -c "select seq from probe order by 1" | tr '\n' ' ')
python3 - "$B" "$history" "$present" "$CLIENTS" <<'PY'
import glob, re, statistics, sys
b, history, present, clients = sys.argv[1], int(sys.argv[2]), set(map(int, sys.argv[3].split())), int(sys.argv[4])
done = []          # completion times (ms) of committed pgbench transactions
failed_tx = 0
for f in glob.glob(f"{b}/tx.*"):
    for line in open(f):
        p = line.split()
        if len(p) >= 6 and p[2].isdigit():
            done.append(int(p[4]) * 1000 + int(p[5]) / 1000)
        elif len(p) >= 3:
            failed_tx += 1
done.sort()
err = open(f"{b}/pgbench.err").read()
aborted = len(re.findall(r"client \d+ (?:script \d+ )?aborted", err))
probe = [l.split(maxsplit=4) for l in open(f"{b}/probe.log")]
ok_end = sorted(int(p[2]) for p in probe if p[3] == "OK")
def longest_gap(times, s, e):
    """The longest interval in [s, e] without a completion."""
    inside = [t for t in times if s <= t <= e]
    pts = [s] + inside + [e]
    return max(b - a for a, b in zip(pts, pts[1:]))
rows = []
for line in open(f"{b}/switchovers"):
    i, s, e, before, after = line.split()
    s, e = int(s), int(e)
    # from the request to 1 s after ctl saw the new leader
    pg = longest_gap(done, s, e + 1000)
    pr = longest_gap(ok_end, s, e + 1000)
    pfail = sum(1 for p in probe if p[3] == "FAIL" and s <= int(p[2]) <= e + 5000)
    rows.append((int(i), before, after, pg, pr, pfail, e - s))
print(f"\nswitchovers through the pgwarden proxy: pgbench TPC-B-like, {clients} clients (transaction pooling), plus a write on a fresh connection every 70 ms")
print(f"{'#':>2} {'from':>5} {'to':>5} {'ctl wait ms':>11} {'pgbench pause ms':>16} {'probe gap ms':>12} {'probe fails':>11}")
for i, bf, af, pg, pr, pf, w in rows:
    print(f"{i:>2} {bf:>5} {af:>5} {w:>11} {pg:>16.0f} {pr:>12.0f} {pf:>11}")
steady = longest_gap(done, done[0] + 1000, done[0] + 5000) if done else 0
pauses = [r[3] for r in rows]; gaps = [r[4] for r in rows]
committed = len(done)
lost_tx = max(0, committed - history)
acked = {int(p[0]) for p in probe if p[3] == "OK"}
print()
print(f"pgbench longest pause per switchover: median {statistics.median(pauses):.0f} ms, max {max(pauses):.0f} ms (longest before any switchover: {steady:.0f} ms)")
print(f"probe longest gap per switchover:     median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms")
print(f"pgbench: {committed} transactions committed, {failed_tx} failed, {aborted} clients aborted; pgbench_history has {history} rows: {lost_tx} committed transactions missing")
print(f"probe: {len(acked)} writes acknowledged, {sum(1 for p in probe if p[3] == 'FAIL')} failed, {len(acked - present)} acknowledged writes missing")
print("reference (shared/reference, same kind of machine, probe on a fresh connection every ~70 ms):")
print("  Patroni behind HAProxy, switchover: longest gap 3.3 s, 3-4 failed attempts, every open connection dropped")
print("  pg_auto_failover, switchover:       longest gap 1.9 s, 11 failed attempts")
PY
if grep -q "aborted" "$B/pgbench.err"; then echo "--- pgbench errors:" >&2; grep -m5 -i "error\|abort" "$B/pgbench.err" >&2; fi
