"""psycopg 3 clients with server-side prepared statements, through the proxy.

Many clients share few server connections (transaction mode); each client
prepares its statements (prepare=True) and reuses them across transactions.
Usage: psycopg_clients.py PROXY_PORT   (PSYCOPG_IMPL=python: the system libpq)
Rows are keyed by the run (first or second) so the script can run twice.
"""
import sys
import threading

import psycopg

port = int(sys.argv[1])
errors = []
used_prepared = []


def client(n):
    n += 100 * (1 if psycopg.pq.__impl__ == "python" else 0)
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=app", autocommit=True) as conn:
            for j in range(50):
                k = n * 1000 + j
                conn.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (k, f"item {k}"), prepare=True)
                row = conn.execute("SELECT name FROM items WHERE id = %s", (k,), prepare=True).fetchone()
                assert row[0] == f"item {k}", row
                with conn.transaction():
                    cur = conn.execute("SELECT count(*) FROM items WHERE id >= %s", (n * 1000,), prepare=True)
                    assert cur.fetchone()[0] >= 1
            # psycopg names its prepared statements _pg3_N on the connection
            used_prepared.append(bool(conn._prepared._names))
            # A small cache: psycopg drops the least used statements (with
            # SQL DEALLOCATE before libpq 17, a protocol Close after) and
            # prepares them again later.
            conn.prepared_max = 2
            conn.prepare_threshold = 0
            for j in range(3):
                for q in range(5):
                    row = conn.execute(f"SELECT %s::int + {q}", (j,), prepare=True).fetchone()
                    assert row[0] == j + q, row
            # The same in pipeline mode (what executemany uses): statements
            # dropped inside a pipeline.
            # (a sync lets psycopg see results, and so drop statements,
            # while the pipeline goes on)
            with conn.pipeline() as p:
                curs = []
                for j in range(3):
                    for q in range(5):
                        curs.append(conn.execute(f"SELECT %s::int * {q}", (j,), prepare=True))
                    p.sync()
            got = [c.fetchone()[0] for c in curs]
            assert got == [j * q for j in range(3) for q in range(5)], got
    except Exception as e:  # noqa: BLE001 - report every failure
        errors.append(f"client {n}: {e!r}")


threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("prepared statements used:", "yes" if used_prepared and all(used_prepared) else "no")
print("libpq", psycopg.pq.version())
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
