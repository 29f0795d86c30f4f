"""What a bus node reads of its database's standing: standby or primary, and its WAL
timeline."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

#: A primary's WAL timeline, in hex: the first eight digits of its current WAL file's name.
TIMELINE_HEX = "substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8)"


async def _one(pool: AsyncConnectionPool[Any], sql: str) -> Any:
    async with pool.connection() as conn:
        cur = await conn.execute(sql)
        row = await cur.fetchone()
    return row[0] if row else None


async def in_recovery(pool: AsyncConnectionPool[Any]) -> bool:
    """Whether the database is a standby (``pg_is_in_recovery()``)."""
    return bool(await _one(pool, "SELECT pg_is_in_recovery()"))


async def standby_if_known(pool: AsyncConnectionPool[Any]) -> bool:
    """Whether the database is a standby; False when that cannot be read (not reachable)."""
    try:
        return await in_recovery(pool)
    except Exception:
        return False


async def timeline(pool: AsyncConnectionPool[Any]) -> int | None:
    """The primary's WAL timeline (promotion starts a new one)."""
    name = await _one(pool, f"SELECT {TIMELINE_HEX}")
    return int(name, 16) if name else None
