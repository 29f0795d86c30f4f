"""Benchmark-only: waiting for replay by polling the replica, as fly_postgres does.

fly_postgres (0.2: every 100 ms; 0.3: every 50 ms) runs one reader per node that queries
``pg_last_wal_replay_lsn()`` on a fixed timer and wakes the requests whose LSN it has reached; a
request first checks the last value read. :class:`ReplayPoller` does the same, so the benchmark
compares writebus' push-based tracker with that design on the same bus. Not part of the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg

from writebus.client.lsn import parse_lsn
from writebus.client.waiters import WaiterQueue

_REPLAY_SQL = "SELECT pg_last_wal_replay_lsn()::text"


class ReplayPoller:
    """Reads the replica's replay LSN every ``interval`` seconds and wakes waiters it reached."""

    def __init__(self, dsn: str, *, interval: float) -> None:
        self.dsn = dsn
        self.interval = interval
        self.polls = 0
        self._replayed = 0
        self._queue: WaiterQueue[asyncio.Future[int]] = WaiterQueue()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ReplayPoller every {self.interval * 1000:.0f} ms waiting={len(self._queue)}>"

    async def start(self) -> None:
        """Connect and start the timer."""
        self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self._poll()
        self._task = asyncio.create_task(
            self._run(), name=f"bench-replay-poller-{self.interval * 1000:.0f}ms"
        )

    async def close(self) -> None:
        """Stop polling; fail anyone still waiting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for w in self._queue.drain():
            if not w.payload.done():
                w.payload.set_exception(RuntimeError("poller closed"))
        if self._conn is not None:
            await self._conn.close()

    async def wait_for(self, lsn: int) -> int:
        """Return once a poll has seen the replica at ``lsn`` or later."""
        if self._replayed >= lsn:
            return self._replayed
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiter = self._queue.add(lsn, fut)
        try:
            return await fut
        finally:
            self._queue.discard(waiter)

    async def _poll(self) -> None:
        assert self._conn is not None
        cur = await self._conn.execute(_REPLAY_SQL)
        row = await cur.fetchone()
        self.polls += 1
        if row is not None and row[0] is not None:
            self._replayed = max(self._replayed, parse_lsn(row[0]))
        for w in self._queue.pop_reached(self._replayed):
            if not w.payload.done():
                w.payload.set_result(self._replayed)

    async def _run(self) -> None:
        # A fixed timer (not "sleep after each poll"), so a request waits for the next tick
        # wherever it falls in the period -- the behaviour of a timer-driven reader.
        next_at = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.interval
            await self._poll()
