"""Bounded write probe: one INSERT every INTERVAL seconds through the proxy,
each on a fresh connection in a fresh transaction, until STOPFILE exists or
DURATION seconds pass. Logs: seq start_ms end_ms OK|FAIL [error].
Usage: write_probe.py PORT DURATION INTERVAL LOG STOPFILE
"""
import os
import sys
import time

import psycopg

port, duration, interval, log, stopfile = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
end = time.time() + duration
seq = 0
with open(log, "w") as out:
    while time.time() < end and not os.path.exists(stopfile):
        seq += 1
        s = time.time()
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2", autocommit=True) as c:
                got = c.execute("INSERT INTO probe (seq) VALUES (%s) RETURNING seq", (seq,)).fetchone()[0]
            ok = got == seq
            err = ""
        except Exception as e:  # noqa: BLE001 - every failure is a data point
            ok, err = False, str(e).replace("\n", " ")[:120]
        e = time.time()
        out.write(f"{seq} {int(s * 1000)} {int(e * 1000)} {'OK' if ok else 'FAIL'} {err}\n")
        out.flush()
        time.sleep(max(0.0, interval - (e - s)))
