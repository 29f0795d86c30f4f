"""``writebus demo``: two regions on this machine, writes from the replica region.

Starts a Postgres primary (``syd``) and a streaming replica (``lax``), a nats-server per region
joined by a gateway, a simulated WAN between the regions, and a bus node per region. A client in
``lax`` then writes through the bus and reads each write back from its local replica at once,
printing where the time went and counting stale reads (there must be none).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import psycopg

from writebus.bus.embedded.stack import Stack
from writebus.client.db import Database
from writebus.client.settings import Settings

DEMO_TABLE = "writebus_demo_notes"


def _p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def run_demo(*, writes: int = 20, delay_ms: float = 25.0, fsync: bool = False) -> int:
    """Run the demo; returns the process exit code (non-zero on any stale read)."""
    print(f"writebus demo: primary region syd, replica region lax, one-way WAN delay {delay_ms} ms")
    t0 = time.monotonic()
    stack = Stack(one_way_delay_ms=delay_ms, fsync=fsync)
    await asyncio.to_thread(stack.start)
    try:
        buses = [stack.start_bus("syd", log_name="bus-syd"), stack.start_bus("lax",
                                                                             log_name="bus-lax")]
        for bus in buses:
            await asyncio.to_thread(bus.wait_ready, 30)
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {DEMO_TABLE} "
                "(id bigserial PRIMARY KEY, body text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            )
        await asyncio.to_thread(stack.wait_replica_caught_up, 30)
        print(f"stack up in {time.monotonic() - t0:.1f} s "
              f"(Postgres primary + replica, 2 nats-servers with gateway, 2 bus nodes)\n")
        return await _write_and_read(stack, writes, delay_ms)
    finally:
        await asyncio.to_thread(stack.stop)


async def _write_and_read(stack: Stack, writes: int, delay_ms: float) -> int:
    settings = Settings.from_env(stack.env("lax"))
    forward: list[float] = []
    commit: list[float] = []
    replay: list[float] = []
    total: list[float] = []
    stale = 0
    async with Database(settings) as db:
        for _ in range(3):  # warm up connections and the gateway's interest graph
            await db.execute(f"INSERT INTO {DEMO_TABLE}(body) VALUES ('warm-up')")
        print(f"{'#':>3}  {'id':>5}  {'forward':>9}  {'commit':>8}  {'replay wait':>11}  "
              f"{'total':>8}  read-back")
        for i in range(writes):
            res = await db.execute(
                f"INSERT INTO {DEMO_TABLE}(body) VALUES (%s) RETURNING id", [f"note {i}"]
            )
            row_id = res.rows[0][0]
            row = await db.fetchrow(f"SELECT body FROM {DEMO_TABLE} WHERE id = %s", [row_id])
            ok = row is not None and row[0] == f"note {i}"
            stale += not ok
            t = res.timings
            forward.append(t.forward_ms)
            commit.append(t.commit_ms)
            replay.append(t.replication_ms or 0.0)
            total.append(t.total_ms)
            print(f"{i:>3}  {row_id:>5}  {t.forward_ms:7.1f}ms  {t.commit_ms:6.1f}ms  "
                  f"{t.replication_ms or 0.0:9.1f}ms  {t.total_ms:6.1f}ms  "
                  f"{'ok' if ok else 'STALE'}")
    print(
        f"\nmedians over {writes} writes from lax: forward {_p50(forward):.1f} ms, "
        f"commit {_p50(commit):.1f} ms, replay wait {_p50(replay):.1f} ms, "
        f"total {_p50(total):.1f} ms (WAN round trip {2 * delay_ms:.0f} ms)"
    )
    print(f"stale reads: {stale} of {writes}")
    print(WATCH_HINT)
    return 1 if stale else 0


#: How to go on from the demo: a stack that stays up, and the two live views of it.
WATCH_HINT = """
To watch a stack live, keep one running and look at it:
  writebus dev up          # two regions that stay up; prints each region's `export` lines
  # then, in another terminal, paste one region's export lines and run
  writebus top             # live terminal view: role, lag, requests/s, p99, errors
  writebus dashboard       # the same with lag charts, in a browser at http://127.0.0.1:8080
Each bus node also serves /metrics, /healthz and /readyz?max_lag=1 (its address is in the log)."""
