#!/usr/bin/env bash
# Write unavailability during a failover, measured the way CloudNativePG's
# failover tests do: a client inserts through the proxy every 20 ms, each
# time on a fresh connection; the primary's postmaster is killed (-9), or
# its whole node (agent and postmaster); we report seconds from the kill to
# the first successful write, failed attempts, and acknowledged writes
# missing afterwards. 3-node cluster from `pgwarden up` (local DCS),
# asynchronous and synchronous mode, REPS repetitions each.
#
# Usage: bench/failover.sh   (REPS=5 MODES="async sync" FAULTS="postmaster node")
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PGWARDEN="${PGWARDEN:-$ROOT/target/release/pgwarden}"
BIN="$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
REPS=${REPS:-5}; MODES=${MODES:-"async sync"}; FAULTS=${FAULTS:-"postmaster node"}
PORT=${PORT:-26500}
B=/tmp/pgwarden-failover
now_ms() { date +%s%3N; }
psql_p() { "$BIN/psql" -X -A -t -q -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
# the same, retried for up to 30 s (the cluster may still be settling)
psql_retry() { for _ in $(seq 1 60); do psql_p "$@" 2>/dev/null && return 0; sleep 0.5; done; psql_p "$@"; }

up_pid=""
cleanup() {
  [ -n "$up_pid" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  pkill -TERM -f "agent --config $B/" 2>/dev/null || true
}
trap cleanup EXIT

node_conf_of_port() { grep -l "pg_port = $1$" "$B"/node*.toml | head -1; }

wait_healthy() { # all nodes up, one primary, the proxy writing
  for _ in $(seq 1 300); do
    local n; n=$(psql_p -d pgwarden -c "SHOW POOL_NODES" 2>/dev/null | awk -F'|' '$4 == "up"' | wc -l)
    if [ "$n" -ge 3 ] && psql_p -d postgres -c "select 1" >/dev/null 2>&1; then
      # every member streaming or primary, according to the agents
      local ok; ok=$(curl -s "$(grep -h api_listen "$B"/node0.toml | cut -d'"' -f2 | sed 's|^|http://|')/cluster" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for m in d["members"] if m["role"]=="leader" or m["state"]=="streaming"))' 2>/dev/null || echo 0)
      [ "$ok" -ge 3 ] && return 0
    fi
    sleep 0.5
  done
  echo "cluster not healthy" >&2; return 1
}

results=()
for mode in $MODES; do
  rm -rf "$B"; mkdir -p "$B"
  "$PGWARDEN" up --dir "$B" --port "$PORT" >"$B/up.log" 2>&1 &
  up_pid=$!
  for _ in $(seq 1 600); do grep -q "pgwarden is up" "$B/up.log" && break; sleep 0.2; done
  grep -q "pgwarden is up" "$B/up.log" || { cat "$B/up.log" >&2; exit 1; }
  if [ "$mode" = sync ]; then
    # turn synchronous mode on in the cluster config (DCS) and wait for a sync standby
    python3 - "$B/dcs/pgwarden/config" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["synchronous_mode"] = True
open(p, "w").write(json.dumps(c))
PY
    for _ in $(seq 1 100); do [ -f "$B/dcs/pgwarden/sync" ] && grep -q '"sync_standby":"' "$B/dcs/pgwarden/sync" && break; sleep 0.2; done
  fi
  wait_healthy
  psql_retry -d postgres -c "CREATE TABLE IF NOT EXISTS probe (seq int primary key, ts timestamptz default clock_timestamp())"
  for fault in $FAULTS; do
    for rep in $(seq 1 "$REPS"); do
      wait_healthy
      psql_retry -d postgres -c "TRUNCATE probe"
      rm -f "$B/stop"
      python3 "$ROOT/bench/write_probe.py" "$PORT" 40 0.02 "$B/probe.log" "$B/stop" &
      probe=$!
      sleep 2
      # the lease holder, as the agents see it
      lp=$(curl -s "$(grep -h api_listen "$B"/node0.toml | cut -d'"' -f2 | sed 's|^|http://|')/cluster" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print([m["port"] for m in d["members"] if m["name"] == d["leader"]][0])')
      conf=$(node_conf_of_port "$lp")
      data=$(grep -h '^data_dir' "$conf" | cut -d'"' -f2)
      pm=$(head -1 "$data/postmaster.pid")
      kill_ms=$(now_ms)
      if [ "$fault" = node ]; then
        ag=$(pgrep -f "agent --config $conf")
        kill -9 "$ag" "$pm"
      else
        kill -9 "$pm"
      fi
      # wait for a success that started after the last failure (and not
      # within 300 ms of the kill: a write can still slip through the dying
      # primary's backend), then a little more
      for _ in $(seq 1 600); do
        awk -v k="$kill_ms" '$4 == "FAIL" && $3 >= k { lf = $3 } $4 == "OK" && $2 >= k + 300 && $2 >= lf { f = 1 } END { exit !f }' "$B/probe.log" && break
        sleep 0.05
      done
      sleep 1; touch "$B/stop"; wait "$probe" || true
      [ "$fault" = node ] && { "$PGWARDEN" agent --config "$conf" >>"$B/logs/$(basename "$conf" .toml).restarted.log" 2>&1 & }
      present=$(psql_retry -d postgres -c "select seq from probe order by 1" | tr '\n' ' ')
      # unavailable: from the kill to the end of the first successful write
      # that started after the last failed one (a write can still slip through
      # the dying primary's backend right after the kill: that is no recovery)
      line=$(awk -v k="$kill_ms" -v present="$present" '
        BEGIN { n = split(present, p, " "); for (i = 1; i <= n; i++) have[p[i]] = 1 }
        { s[NR] = $2; e[NR] = $3; st[NR] = $4 }
        $4 == "FAIL" && $3 >= k { failed++; lastfail = $3 }
        $4 == "OK" { acked++; if (!($1 in have)) missing++
                     if ($3 >= k && prevok) { g = $3 - prevok; if (g > maxgap) maxgap = g }
                     prevok = $3 }
        END { for (i = 1; i <= NR; i++) if (st[i] == "OK" && s[i] >= k && s[i] >= lastfail) { first = e[i]; break }
              printf "%.2f %d %d %d %.2f", (first ? (first - k) / 1000 : -1), failed, acked, missing + 0, maxgap / 1000 }' "$B/probe.log")
      echo "$mode $fault rep $rep: unavailable_s failed acked missing max_gap_s = $line" >&2
      results+=("$mode $fault $line")
      # let the restarted primary run > 10 s, so the next crash is not a crash loop
      sleep 12
    done
  done
  kill -INT "$up_pid"; wait "$up_pid" 2>/dev/null || true; up_pid=""
  pkill -TERM -f "agent --config $B/" 2>/dev/null || true; sleep 2
done

echo
echo "write unavailability through the proxy (3 nodes, local DCS, ttl 5 s, loop_wait 1 s; $REPS runs each; $(nproc) cores)"
printf '%-6s %-11s %10s %10s %12s %12s %15s\n' mode fault median_s max_s max_gap_med failed_med lost_acked_max
for mode in $MODES; do
  for fault in $FAULTS; do
    printf '%s\n' "${results[@]}" | awk -v m="$mode" -v f="$fault" '$1 == m && $2 == f { print $3, $4, $6, $7 }' | sort -n |
      awk -v m="$mode" -v f="$fault" '{ u[NR] = $1; fl[NR] = $2; gp[NR] = $4; if ($3 > lost) lost = $3 }
        END { if (!NR) exit; n = NR
              for (i = 2; i <= n; i++) { v = gp[i]; j = i - 1; while (j > 0 && gp[j] > v) { gp[j + 1] = gp[j]; j-- } gp[j + 1] = v }
              printf "%-6s %-11s %10.2f %10.2f %12.2f %12d %15d\n", m, (f == "node" ? "node loss" : "postmaster"), u[int((NR + 1) / 2)], u[NR], gp[int((n + 1) / 2)], fl[int((NR + 1) / 2)], lost }'
  done
done
