"""Open N idle, logged-in client connections to a PostgreSQL-protocol port.

Speaks just enough of the protocol (startup packet, trust authentication)
to log in, then holds every connection open until the file STOPFILE
exists (or 300 s pass). Prints "ready N" once all are logged in.
Usage: idle_clients.py PORT N USER DB STOPFILE
"""
import asyncio
import os
import struct
import sys

port, n, user, db, stopfile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


def startup():
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", db)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def one(sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(startup())
        await w.drain()
        buf = b""
        while True:
            chunk = await r.read(4096)
            if not chunk:
                raise RuntimeError("closed during login")
            buf += chunk
            if b"E" == buf[:1]:
                raise RuntimeError(f"login error: {buf!r}")
            if len(buf) >= 6 and buf[-6:-5] == b"Z":
                return r, w


async def main():
    sem = asyncio.Semaphore(200)
    conns = await asyncio.gather(*(one(sem) for _ in range(n)))
    print(f"ready {len(conns)}", flush=True)
    for _ in range(3000):
        if os.path.exists(stopfile):
            break
        await asyncio.sleep(0.1)
    for _, w in conns:
        w.close()


asyncio.run(main())
