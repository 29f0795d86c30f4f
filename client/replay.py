"""Reading the local database's replay position on a connection of its own.

The tracker (:mod:`writebus.client.tracker`) learns positions from broadcasts; it reads them
itself when broadcasts stop (its fallback) and, once, when a write's reply finds the position
not yet known (its probe). Both read here, one query at a time on one connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from writebus.client.errors import TrackerError
from writebus.client.lsn import parse_lsn

# After a failover the local database may have been promoted: its replay LSN then freezes, but
# it now holds every commit itself, so its own flush position is the one that counts.
# Its timeline tells which promotion that position belongs to.
REPLAY_SQL = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_flush_lsn() END::text, pg_is_in_recovery(), "
    "CASE WHEN NOT pg_is_in_recovery() "
    "THEN substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8) END"
)


class ReplayReader:
    """Reads ``pg_last_wal_replay_lsn()`` (or, on a primary, its flush position) from
    ``url``, connecting on first use and again after an error."""

    def __init__(self, url: str | None) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        connected = self._conn is not None and not self._conn.closed
        return f"<ReplayReader connected={connected}>"

    async def read(self) -> tuple[int | None, bool, int | None]:
        """The position now (None when the server has none), whether the server is a standby
        (false: promoted, or a primary), and a primary's timeline. Raises
        :class:`TrackerError` without a database URL, and psycopg's errors (the connection is
        then dropped)."""
        if not self._url:
            raise TrackerError("no DATABASE_URL to read replay progress from")
        async with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=2
                )
            try:
                cur = await conn.execute(REPLAY_SQL)
                row = await cur.fetchone()
            except psycopg.Error:
                await conn.close()
                self._conn = None
                raise
        if row is None:
            return None, False, None
        lsn = parse_lsn(row[0]) if row[0] is not None else None
        return lsn, bool(row[1]), int(row[2], 16) if row[2] else None

    async def close(self) -> None:
        """Close the connection, if one is open."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
