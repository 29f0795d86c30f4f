"""The exactly-once table's hourly partitions: which must exist, making them, dropping them.

``writebus.applied`` (:mod:`writebus.bus.idempotency`) is range-partitioned by ``applied_at``
into hours (:data:`PARTITION_SPAN`, the same for every worker whatever its window, so their
ranges never overlap). :func:`maintain` makes the current hour's partition and the next
:data:`PARTITIONS_AHEAD`, and drops those entirely older than the window.

How each step locks the table, which every write uses:

* **Making a partition** creates a plain table like the parent and attaches it
  (:func:`create_partitions`). ``ATTACH PARTITION`` takes SHARE UPDATE EXCLUSIVE on the
  parent, which neither writes (ROW EXCLUSIVE) nor reads nor a ``pg_dump`` (ACCESS SHARE)
  conflict with: a partition is made while any of those run, however long, and no write waits
  for it. (``CREATE TABLE ... PARTITION OF`` takes ACCESS EXCLUSIVE: behind an hours-long
  dump it could not be made, and once the partitions made ahead ran out every write would be
  refused.)
* **Dropping a partition** needs ACCESS EXCLUSIVE on the parent, and Postgres queues every
  later write behind a waiting request for it. So the drops run in a transaction of their own,
  waiting at most :data:`MAINTENANCE_LOCK_TIMEOUT`, and are otherwise left to the next pass:
  dropping late costs only disk. Behind a transaction long under way (a dump) they do not ask
  for the lock at all: that wait would hold every write up at every pass.

Several workers, and applications writing directly in the primary region, may do this at once:
every step that makes partitions holds the advisory lock :data:`SCHEMA_LOCK`, and a drop pass
takes another one and skips when it is held.

Making a partition still waits for what conflicts with SHARE UPDATE EXCLUSIVE: a ``VACUUM`` or
``ANALYZE`` of the table (a database-wide ``vacuumdb``), an index build, other DDL. Those end;
maintenance gives up after :data:`MAINTENANCE_LOCK_TIMEOUT` and tries at the next pass.

The drops' check of the holders reads their transactions' age from ``pg_stat_activity``,
which shows it for another role's sessions only to a role with ``pg_read_all_stats`` (or
``pg_monitor``): without it, a dump run as another role is not seen as long, and the drops
ask for the lock -- waiting at most the lock timeout -- as they would without the check.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from writebus.bus.pg import lock_holders
from writebus.client.log import get_logger

# Its events belong to the exactly-once table, under the logger operators already filter on.
log = get_logger("writebus.bus.idempotency")

#: Seconds each partition covers. Fixed: partitions of different spans would overlap.
PARTITION_SPAN: Final = 3600.0
#: Partitions made ahead of the current one (:func:`partition_bounds`).
PARTITIONS_AHEAD: Final = 2
#: How long maintenance waits for a lock: the drops' ACCESS EXCLUSIVE on the table (every
#: write queued behind it waits too), or another worker making partitions. Past it, the pass
#: is left to the next one.
MAINTENANCE_LOCK_TIMEOUT: Final = "200ms"
#: A transaction on the table this long under way holds up the drops without their lock
#: being asked for (:func:`long_holders`).
LONG_TRANSACTION_S: Final = 1.0
#: Held by every transaction of this version that makes partitions (or the table), so they
#: never race each other. An older worker's maintenance (before 7ae74c1) made them under the
#: other lock: a race with one ends in DuplicateTable or UniqueViolation for the loser, which
#: looks again (:func:`~writebus.bus.idempotency.ensure_schema`) or leaves it to its next pass.
SCHEMA_LOCK: Final = 0x77726974
_DROP_LOCK: Final = 0x77726975
#: ISO dates in the transaction: psycopg and partition bounds' parsing read no other style.
ISO_DATES: Final = "SET LOCAL DateStyle = 'ISO'"


async def begin_schema_step(conn: psycopg.AsyncConnection[Any], lock_timeout: str) -> None:
    """Begin a step that makes partitions (or the table), in the caller's transaction: wait
    at most ``lock_timeout`` for any lock, read dates as ISO (:data:`ISO_DATES`), and hold
    :data:`SCHEMA_LOCK` -- taken qualified and typed, so that no function on the session's
    ``search_path`` matching an ``int4`` better can stand in for it."""
    await conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'; {ISO_DATES}")
    await conn.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(%s::pg_catalog.int8)", [SCHEMA_LOCK]
    )


def partition_bounds(
    now: datetime.datetime,
    *,
    ahead: int = PARTITIONS_AHEAD,
    since: datetime.datetime | None = None,
) -> list[tuple[datetime.datetime, datetime.datetime]]:
    """The ``[start, end)`` ranges of the partitions that must exist at ``now``: the current
    one and ``ahead`` more (and, with ``since``, every one back to it). Ranges are whole hours
    since the epoch, so every worker computes the same ones."""
    span = PARTITION_SPAN
    base = now.timestamp() // span * span
    first = 0 if since is None else -int((base - since.timestamp()) // span + 1)
    epoch = datetime.datetime.fromtimestamp(0, datetime.UTC)
    return [
        (
            epoch + datetime.timedelta(seconds=base + k * span),
            epoch + datetime.timedelta(seconds=base + (k + 1) * span),
        )
        for k in range(min(first, 0), ahead + 1)
    ]


def partition_name(start: datetime.datetime) -> str:
    """The name of the partition starting at ``start``."""
    return "applied_" + start.astimezone(datetime.UTC).strftime("%Y%m%d_%H%M%S")


async def create_partitions(
    conn: psycopg.AsyncConnection[Any],
    bounds: Sequence[tuple[datetime.datetime, datetime.datetime]],
) -> None:
    """Make the partitions of ``bounds`` that are missing, in the caller's transaction (which
    holds :data:`SCHEMA_LOCK`). One that exists is not touched -- nor locked: a role that does
    not own the table (an application's) gets through when they all exist."""
    names = [partition_name(start) for start, _ in bounds]
    cur = await conn.execute(
        "SELECT c.relname, c.relispartition FROM pg_class c "
        "WHERE c.relnamespace = 'writebus'::pg_catalog.regnamespace::pg_catalog.oid "
        "AND c.relname::pg_catalog.text = ANY(%s)",
        [names],
    )
    found = dict(await cur.fetchall())
    for name, (start, end) in zip(names, bounds, strict=True):
        if found.get(name):
            continue
        if name not in found:
            # DDL takes no bind parameters: the bounds are rendered as literals.
            await conn.execute(
                sql.SQL("CREATE TABLE writebus.{} (LIKE writebus.applied INCLUDING DEFAULTS)")
                .format(sql.Identifier(name))
            )
        await conn.execute(
            sql.SQL(
                "ALTER TABLE writebus.applied ATTACH PARTITION writebus.{} "
                "FOR VALUES FROM ({}) TO ({})"
            ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(end))
        )


async def database_now(conn: psycopg.AsyncConnection[Any]) -> datetime.datetime:
    """The database's clock: records are placed in partitions by it (``now()``), so that is
    what creating and dropping them is measured by -- a worker whose clock runs ahead of the
    database's would drop records still inside the window, and one behind make partitions
    too late."""
    cur = await conn.execute("SELECT pg_catalog.statement_timestamp()")
    row = await cur.fetchone()
    assert row is not None
    return row[0].astimezone(datetime.UTC)  # type: ignore[no-any-return]


async def maintain(
    conn: psycopg.AsyncConnection[Any], window: float, *, now: datetime.datetime | None = None
) -> int:
    """Make the partitions needed soon, then drop those past the window; return how many were
    dropped. Each step is a transaction of its own. A step that cannot get its lock within
    :data:`MAINTENANCE_LOCK_TIMEOUT` is left to the next pass (warning
    ``idempotency.maintenance_deferred``); the drops are skipped while another worker drops.
    Partitions are made hours ahead, so a pass can wait for the next. ``now`` (for tests)
    defaults to the database's clock, which places the records."""
    now = now or await database_now(conn)
    step = "create"
    try:
        async with conn.transaction():
            await begin_schema_step(conn, MAINTENANCE_LOCK_TIMEOUT)
            await create_partitions(conn, partition_bounds(now))
        step = "drop"
        return await _drop_expired(conn, now - datetime.timedelta(seconds=window))
    except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
        log.info(  # an older worker made the same partition meanwhile: the next pass is clean
            "idempotency.maintenance_deferred",
            step=step,
            reason="another worker made the same partition at the same moment",
        )
        return 0
    except psycopg.errors.LockNotAvailable:
        log.warning(
            "idempotency.maintenance_deferred",
            step=step,
            reason=f"a lock on writebus.applied was not free within {MAINTENANCE_LOCK_TIMEOUT} "
            "(a long transaction on it, or another worker's schema step); the next pass tries "
            "again",
        )
        return 0


async def maintain_forever(pool: AsyncConnectionPool[Any], window: float) -> None:
    """:func:`maintain` every tenth of the window (1 s to 60 s), on a connection of ``pool``:
    a primary node's task."""
    interval = min(60.0, max(1.0, window / 10))
    while True:
        await asyncio.sleep(interval)
        try:
            async with pool.connection() as conn:
                n = await maintain(conn, window)
            if n:
                log.info("bus.idempotency_partitions_dropped", count=n)
        except Exception as exc:
            log.warning("bus.idempotency_expiry_failed", error=str(exc))


async def _drop_expired(conn: psycopg.AsyncConnection[Any], horizon: datetime.datetime) -> int:
    """Drop the partitions whose range ends at or before ``horizon`` -- unless a transaction
    long under way holds the table (:func:`long_holders`): then the lock is not even asked
    for, since the request would queue every write behind it for the whole lock timeout, at
    every pass, for as long as that transaction runs (a ``pg_dump``: hours)."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT pg_catalog.pg_try_advisory_xact_lock(%s::pg_catalog.int8)", [_DROP_LOCK]
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            return 0
        await conn.execute(f"SET LOCAL lock_timeout = '{MAINTENANCE_LOCK_TIMEOUT}'; {ISO_DATES}")
        cur = await conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'writebus.applied'::pg_catalog.regclass::pg_catalog.oid"
        )
        expired = [
            name
            for name, bound in await cur.fetchall()
            if (upper := _upper_bound(bound)) is not None and upper <= horizon
        ]
        if not expired:
            return 0
        busy = long_holders(await lock_holders(conn, "writebus.applied"))
        if busy:
            log.warning(
                "idempotency.maintenance_deferred",
                step="drop",
                reason=f"writebus.applied is held by a transaction {LONG_TRANSACTION_S:g} s or "
                "more under way; its lock is not asked for, which would hold up every write, "
                "until that transaction ends",
                holders=busy,
                expired=len(expired),
            )
            return 0
        for name in expired:
            await conn.execute(sql.SQL("DROP TABLE writebus.{}").format(sql.Identifier(name)))
    return len(expired)


def long_holders(holders: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lock ``holders`` (:func:`~writebus.bus.pg.lock_holders`) whose transaction has run
    :data:`LONG_TRANSACTION_S` or more: unlikely to end within the lock timeout."""
    return [h for h in holders if (h.get("transaction_s") or 0.0) >= LONG_TRANSACTION_S]


def _upper_bound(bound: str) -> datetime.datetime | None:
    """The ``TO`` of a range partition bound (``FOR VALUES FROM ('...') TO ('...')``), as
    ``pg_get_expr`` prints it under :data:`ISO_DATES`."""
    marker = " TO ('"
    if marker not in bound:
        return None
    text = bound.split(marker, 1)[1].split("')", 1)[0]
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


async def size_bytes(conn: psycopg.AsyncConnection[Any]) -> int:
    """Bytes the table and its indexes take (every partition)."""
    cur = await conn.execute(
        "SELECT coalesce(sum(pg_catalog.pg_total_relation_size(i.inhrelid::pg_catalog.regclass)), "
        "0) FROM pg_inherits i "
        "WHERE i.inhparent = 'writebus.applied'::pg_catalog.regclass::pg_catalog.oid"
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0
