"""What each kind of read costs from ``lax`` (issue #11): ``reads_ms`` in the report.

* ``local`` -- a plain read on the local replica;
* ``token_replayed`` -- ``after=token`` for a token the replica has already replayed (the
  common case: the check is a comparison in this process, no wait);
* ``token_fresh`` -- ``after=token`` right after a write sent with ``await_replication=False``
  (the read waits for replay; the write itself is not timed);
* ``strong`` -- ``consistency="strong"``: ask the primary for its flush position over the bus,
  then wait for the replica to reach it;
* ``bounded`` -- ``max_lag=5``, within the bound (the tracker's lag figure, no wait);
* ``primary_wan`` -- the same query sent to the primary over the WAN.

Every approach reads the same row by primary key.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.harness import INSERT_SQL, READ_SQL
from bench.sampling import Sample
from writebus.client.db import Database

#: The bound of the ``bounded`` reads: far above the replica's lag here.
MAX_LAG = 5.0


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class Read:
    """One kind of local read of the row ``row_id``, with the options of that kind."""

    def __init__(self, name: str, db: Database, row_id: int, **options: Any) -> None:
        self.name = name
        self.db = db
        self.row_id = row_id
        self.options = options

    async def once(self, seq: int) -> Sample:
        """One read."""
        t0 = time.perf_counter()
        row = await self.db.fetchrow(READ_SQL, [self.row_id], **self.options)
        return Sample(_ms(t0), stale=row is None)


class TokenReplayed(Read):
    """``after=`` a token of a write this replica has replayed."""

    def __init__(self, db: Database, row_id: int, token: str) -> None:
        super().__init__("token_replayed", db, row_id, after=token)


class TokenFresh:
    """A write without waiting for replay (not timed), then the read with its token."""

    name = "token_fresh"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def once(self, seq: int) -> Sample:
        """One unwaited write, then the timed read that waits for it."""
        res = await self.db.execute(INSERT_SQL, [self.name, f"read {seq}"],
                                    await_replication=False)  # fmt: skip
        t0 = time.perf_counter()
        row = await self.db.fetchrow(READ_SQL, [res.rows[0][0]], after=res.token)
        return Sample(_ms(t0), stale=row is None)


class PrimaryWan:
    """The read sent to the primary over the WAN."""

    name = "primary_wan"

    def __init__(self, conn: psycopg.AsyncConnection[Any], row_id: int) -> None:
        self.conn = conn
        self.row_id = row_id

    async def once(self, seq: int) -> Sample:
        """One read on the primary."""
        t0 = time.perf_counter()
        cur = await self.conn.execute(READ_SQL, [self.row_id])
        row = await cur.fetchone()
        return Sample(_ms(t0), stale=row is None)


async def approaches(
    db: Database, wan: psycopg.AsyncConnection[Any]
) -> list[Read | TokenFresh | PrimaryWan]:
    """Every kind of read, over a row written (and replayed) first."""
    res = await db.execute(INSERT_SQL, ["reads", "the row read"])
    row_id = res.rows[0][0]
    assert res.token is not None
    return [
        Read("local", db, row_id),
        TokenReplayed(db, row_id, res.token),
        TokenFresh(db),
        Read("strong", db, row_id, consistency="strong"),
        Read("bounded", db, row_id, max_lag=MAX_LAG),
        PrimaryWan(wan, row_id),
    ]
