"""Reading the replay position on a connection of its own (:mod:`writebus.client.replay`),
against the real primary and its streaming replica."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from writebus.client.errors import TrackerError
from writebus.client.lsn import parse_lsn
from writebus.client.replay import ReplayReader


async def test_the_replica_reads_as_a_standby_and_the_primary_as_not(stack: Any) -> None:
    """The replica: its replay position, standby. The primary: its flush position, not a
    standby (what a promoted replica reads as)."""
    replica = ReplayReader(stack.database_url("lax"))
    primary = ReplayReader(stack.primary.url)
    try:
        with psycopg.connect(stack.primary.url, autocommit=True) as conn:
            flushed = parse_lsn(
                conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
            )
        stack.wait_replica_caught_up(10)
        lsn, standby, timeline = await replica.read()
        assert standby and lsn is not None and lsn >= flushed and timeline is None
        lsn, standby, timeline = await primary.read()
        assert not standby and lsn is not None and lsn >= flushed and timeline == 1
    finally:
        await replica.close()
        await primary.close()


async def test_a_lost_connection_is_dropped_and_the_next_read_reconnects(stack: Any) -> None:
    """The server ends the reader's session: that read raises psycopg's error, the next one
    connects again and answers."""
    reader = ReplayReader(stack.database_url("lax"))
    try:
        await reader.read()
        assert "connected=True" in repr(reader)
        pid = reader._conn.info.backend_pid  # type: ignore[union-attr]
        with psycopg.connect(stack.database_url("lax"), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError):
            await reader.read()
        assert "connected=False" in repr(reader)
        lsn, standby, _ = await reader.read()
        assert standby and lsn is not None
    finally:
        await reader.close()


async def test_without_a_database_url_a_read_is_a_tracker_error() -> None:
    """Nothing to read from: a typed error, not a connection attempt."""
    with pytest.raises(TrackerError, match="DATABASE_URL"):
        await ReplayReader(None).read()
