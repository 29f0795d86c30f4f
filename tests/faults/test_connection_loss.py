"""Connections to the primary cut under a write: the write still succeeds, and applies once.

The small, deterministic form of the primary-restart scenario. Postgres ends a session
(``pg_terminate_backend``: SQLSTATE 57P01, as in a fast shutdown) either while it is idle in a
pool -- the pool finds out on next use -- or in the middle of a statement. Either must read as
"connection lost, nothing applied, retry", never as a rejected write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from writebus.client import Database
from tests.faults.conftest import Rig


def _terminate_client_backends(primary_url: str) -> int:
    """End every client session on the primary but this one; return how many."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _terminate_running(primary_url: str, marker: str, timeout: float = 10.0) -> None:
    """Wait until a statement containing ``marker`` runs on the primary, then end its session."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(primary_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE state = 'active' AND pid <> pg_backend_pid() AND strpos(query, %s) > 0",
                [marker],
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            assert time.monotonic() < deadline, f"no statement with {marker!r} ran"
            time.sleep(0.01)


#: A write that spends a while inside its statement, so it can be cut there.
SLOW_INSERT = "INSERT INTO {table}(key, region) SELECT %s, %s FROM pg_sleep(0.3) /* cut-me */"


def _count(primary_url: str, table: str, key: str) -> Any:
    with psycopg.connect(primary_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE key = %s", [key]).fetchone()
    return row[0] if row else None


async def test_direct_write_retries_a_connection_cut_while_idle(rig: Rig) -> None:
    """In the primary region, a write handed a connection the server has ended is run again on
    a fresh one (it was not applied) and succeeds; the row is there once."""
    async with Database(rig.settings("syd"), min_size=1, max_size=1) as db:
        await db.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('warm', 'syd')")
        assert _terminate_client_backends(rig.stack.primary.url) >= 1
        res = await db.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('cut', 'syd')")
    assert res.timings.attempts == 2
    assert _count(rig.stack.primary.url, rig.table, "cut") == 1


async def test_bus_write_retries_when_the_workers_connections_are_cut(rig: Rig) -> None:
    """A worker whose pooled connections were ended answers "unavailable" (retryable), not
    "rejected"; the lax client retries with the same id and the write applies once."""
    await rig.start_buses("syd", "lax")
    await rig.open_clients()
    await rig.lax.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('warm', 'lax')")
    assert _terminate_client_backends(rig.stack.primary.url) >= 2
    res = await rig.lax.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('cut', 'lax')")
    assert res.timings.attempts >= 2
    assert _count(rig.stack.primary.url, rig.table, "cut") == 1


async def test_direct_write_cut_mid_statement_is_retried(rig: Rig) -> None:
    """In the primary region, a write whose session is ended mid-statement is not reported as
    rejected: it was not applied, so it runs again and succeeds; the row is there once."""
    async with Database(rig.settings("syd"), max_size=2) as db:
        write = asyncio.create_task(
            db.execute(SLOW_INSERT.format(table=rig.table), ["mid", "syd"])
        )
        await asyncio.to_thread(_terminate_running, rig.stack.primary.url, "cut-me")
        res = await write
    assert res.timings.attempts == 2
    assert _count(rig.stack.primary.url, rig.table, "mid") == 1


async def test_bus_write_cut_mid_statement_is_retried(rig: Rig) -> None:
    """A worker whose session is ended mid-statement does not answer "rejected" (SQLSTATE
    57P01): it runs the request again on a fresh connection -- safe, because the request id is
    claimed in the write's own transaction -- so the client needs no retry and the write
    applies once."""
    await rig.start_buses("syd", "lax")
    await rig.open_clients()
    write = asyncio.create_task(
        rig.lax.execute(SLOW_INSERT.format(table=rig.table), ["mid", "lax"])
    )
    await asyncio.to_thread(_terminate_running, rig.stack.primary.url, "cut-me")
    res = await write
    assert res.timings.attempts == 1 and not res.duplicate
    assert _count(rig.stack.primary.url, rig.table, "mid") == 1
