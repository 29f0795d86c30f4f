"""What a bus node reads of its database's standing: standby or primary, its WAL timeline,
and where its history forked when it was promoted."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from writebus.client.log import get_logger
from writebus.client.lsn import parse_lsn

log = get_logger("writebus.bus.standing")

TIMELINE_SQL = "SELECT substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8)"


async def _one(pool: AsyncConnectionPool[Any], sql: str) -> Any:
    async with pool.connection() as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
    return row[0] if row else None


async def in_recovery(pool: AsyncConnectionPool[Any]) -> bool:
    """Whether the database is a standby (``pg_is_in_recovery()``)."""
    return bool(await _one(pool, "SELECT pg_is_in_recovery()"))


async def timeline(pool: AsyncConnectionPool[Any]) -> int | None:
    """The primary's WAL timeline (promotion starts a new one)."""
    name = await _one(pool, TIMELINE_SQL)
    return int(name, 16) if name else None


async def fork(
    pool: AsyncConnectionPool[Any], timeline: int | None, seen: tuple[int, int] | None
) -> int | None:
    """Where the history of ``timeline`` forked from its parent's: the switchpoint in the
    timeline's history file, if this role may read it (``pg_read_server_files``, or EXECUTE on
    ``pg_read_file(text)``); else ``seen``, the fork the replica monitor saw at the promotion,
    if it was onto ``timeline``. None otherwise: a node that did not see the promotion cannot
    know it (the replay position moves, or is gone, when the database restarts)."""
    if timeline is None or timeline < 2:
        return None
    try:
        text = await _one(pool, f"SELECT pg_catalog.pg_read_file('pg_wal/{timeline:08X}.history')")
    except psycopg.Error as exc:
        log.debug("standing.history_unread", timeline=timeline, error=str(exc))
        text = None
    point = switchpoint(text) if text else None
    if point is not None:
        return point
    return seen[0] if seen is not None and seen[1] == timeline else None


def switchpoint(history: str) -> int | None:
    """The switchpoint into a timeline, from its history file (one line per ancestor:
    parent timeline, switchpoint, reason; the last is the switch into this one)."""
    lines = [line.split() for line in history.splitlines() if line.strip()]
    return parse_lsn(lines[-1][1]) if lines and len(lines[-1]) > 1 else None
