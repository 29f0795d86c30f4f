"""The measured approaches: each does one operation and times it (``once``).

Read-your-write from ``lax`` (write, then read the row back from the local replica):
:class:`WritebusRyw`, :class:`PollRyw`, :class:`WanRyw` (``direct_wan`` and ``remote_apply``),
and :class:`Floor` (one WAN round trip carrying an autocommit INSERT: the round trip plus the
primary's local commit, no read). A 10-statement change: :class:`WritebusBatch`,
:class:`InteractiveWanBatch`. Primary-region writes: :class:`WritebusLocal`, :class:`DirectLocal`.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.harness import INSERT_NO_ID_SQL, INSERT_SQL, READ_SQL
from bench.polling import ReplayPoller
from bench.sampling import Sample
from writebus.client.db import Database

BATCH_SIZE = 10


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class WritebusRyw:
    """writebus: write through the bus, wait for the tracker, read locally."""

    name = "writebus"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def once(self, seq: int) -> Sample:
        """One write and read-back; the parts are the library's own timings."""
        t0 = time.perf_counter()
        res = await self.db.execute(INSERT_SQL, [self.name, f"ryw {seq}"])
        t1 = time.perf_counter()
        row = await self.db.fetchrow(READ_SQL, [res.rows[0][0]])
        t = res.timings
        return Sample(
            _ms(t0),
            stale=row is None,
            parts={
                "forward": t.forward_ms,
                "commit": t.commit_ms,
                "replication": t.replication_ms or 0.0,
                "read": _ms(t1),
            },
        )


class PollRyw:
    """The same bus, waiting for replay by polling the replica on a timer (fly_postgres).

    Each sample starts at a random point of the poller's period (an untimed pause first):
    otherwise the fixed sequence of interleaved samples locks onto the timer's phase and every
    sample waits about the same, unrepresentative, time.
    """

    def __init__(
        self, name: str, db: Database, poller: ReplayPoller, *, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.db = db
        self.poller = poller
        self.rng = rng or random.Random(name)

    async def once(self, seq: int) -> Sample:
        """One write, a polled wait, and the read-back."""
        await asyncio.sleep(self.rng.uniform(0.0, self.poller.interval))
        t0 = time.perf_counter()
        res = await self.db.execute(INSERT_SQL, [self.name, f"ryw {seq}"], await_replication=False)
        assert res.lsn is not None
        t1 = time.perf_counter()
        await self.poller.wait_for(res.lsn)
        t2 = time.perf_counter()
        row = await self.db.fetchrow(READ_SQL, [res.rows[0][0]])
        return Sample(
            _ms(t0),
            stale=row is None,
            parts={"write": (t1 - t0) * 1000, "replication": (t2 - t1) * 1000, "read": _ms(t2)},
        )


class WanRyw:
    """Write straight to the primary over the WAN on ``conn``, then read the local replica.

    ``direct_wan`` reads at once (some reads are stale); ``remote_apply`` uses a connection whose
    session has ``synchronous_commit = remote_apply`` with the replica as a synchronous standby.
    """

    def __init__(self, name: str, conn: psycopg.AsyncConnection[Any], db: Database) -> None:
        self.name = name
        self.conn = conn
        self.db = db

    async def once(self, seq: int) -> Sample:
        """One write over the WAN and the local read-back."""
        t0 = time.perf_counter()
        cur = await self.conn.execute(INSERT_SQL, [self.name, f"ryw {seq}"])
        row = await cur.fetchone()
        assert row is not None
        t1 = time.perf_counter()
        back = await self.db.fetchrow(READ_SQL, [row[0]])
        return Sample(_ms(t0), stale=back is None, parts={"write": (t1 - t0) * 1000, "read": _ms(t1)})


class Floor:
    """The lower bound: one WAN round trip carrying an autocommit INSERT (so: the round trip
    plus the primary's local commit). Nothing is read."""

    name = "floor"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def once(self, seq: int) -> Sample:
        """One single-round-trip write."""
        t0 = time.perf_counter()
        await self.conn.execute(INSERT_NO_ID_SQL, [self.name, f"ryw {seq}"])
        return Sample(_ms(t0))


class WanRoundTrip:
    """Baseline: ``SELECT 1`` to the primary over the WAN -- one bare TCP round trip."""

    name = "wan_rtt"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def once(self, seq: int) -> Sample:
        """One round trip."""
        t0 = time.perf_counter()
        await self.conn.execute("SELECT 1")
        return Sample(_ms(t0))


class NatsEcho:
    """Baseline: a NATS request from ``lax`` answered at once by a responder in ``syd`` --
    the bus' transport (two nats-servers and their gateway) without a worker or a database."""

    name = "nats_echo"

    def __init__(self, nc: Any, subject: str) -> None:
        self.nc = nc
        self.subject = subject

    async def once(self, seq: int) -> Sample:
        """One request/reply."""
        t0 = time.perf_counter()
        await self.nc.request(self.subject, b"x", timeout=5.0)
        return Sample(_ms(t0))


class LocalRyw:
    """A primary-region app writing and reading its local database (the primary) on ``conn``;
    used to show what a synchronous standby does to writes made in the primary region."""

    def __init__(self, name: str, conn: psycopg.AsyncConnection[Any]) -> None:
        self.name = name
        self.conn = conn

    async def once(self, seq: int) -> Sample:
        """One local write and read-back."""
        t0 = time.perf_counter()
        cur = await self.conn.execute(INSERT_SQL, [self.name, f"ryw {seq}"])
        row = await cur.fetchone()
        assert row is not None
        cur = await self.conn.execute(READ_SQL, [row[0]])
        back = await cur.fetchone()
        return Sample(_ms(t0), stale=back is None)


def _batch(name: str, seq: int) -> list[tuple[str, list[Any]]]:
    return [(INSERT_NO_ID_SQL, [name, f"batch {seq}.{i}"]) for i in range(BATCH_SIZE)]


class WritebusBatch:
    """Ten INSERTs as one bus batch, waiting for local replay (read-your-write included)."""

    name = "writebus"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def once(self, seq: int) -> Sample:
        """One atomic 10-statement change."""
        t0 = time.perf_counter()
        await self.db.batch(_batch("batch_writebus", seq))
        return Sample(_ms(t0))


class InteractiveWanBatch:
    """Ten INSERTs in an interactive transaction on the primary over the WAN (BEGIN, ten
    statements, COMMIT: twelve round trips). It does not wait for the replica."""

    name = "interactive_wan"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def once(self, seq: int) -> Sample:
        """One atomic 10-statement change."""
        t0 = time.perf_counter()
        async with self.conn.transaction():
            for sql, params in _batch("batch_interactive", seq):
                await self.conn.execute(sql, params)
        return Sample(_ms(t0))


class WritebusLocal:
    """A primary-region ``Database``: the write runs directly on the local primary."""

    name = "writebus"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def once(self, seq: int) -> Sample:
        """One INSERT ... RETURNING in its own transaction."""
        t0 = time.perf_counter()
        res = await self.db.execute(INSERT_SQL, ["local_writebus", f"local {seq}"])
        assert res.rows
        return Sample(_ms(t0))


class DirectLocal:
    """Plain psycopg: the same INSERT ... RETURNING in a transaction from a pool."""

    name = "direct"

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def once(self, seq: int) -> Sample:
        """One INSERT ... RETURNING in its own transaction."""
        t0 = time.perf_counter()
        async with self.pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(INSERT_SQL, ["local_direct", f"local {seq}"])
                row = await cur.fetchone()
        assert row is not None
        return Sample(_ms(t0))
