"""Turning the running stack's replica into a synchronous standby for a while."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql

from writebus.bus.embedded.stack import Stack

REMOTE_APPLY = "SET synchronous_commit = remote_apply"


async def _sync_state(conn: psycopg.AsyncConnection[Any], name: str) -> str | None:
    cur = await conn.execute(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", [name]
    )
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def _wait_state(
    conn: psycopg.AsyncConnection[Any], name: str, *, sync: bool, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while (await _sync_state(conn, name) == "sync") != sync:
        if time.monotonic() > deadline:
            raise TimeoutError(f"standby {name!r} did not become {'sync' if sync else 'async'}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def synchronous_standby(stack: Stack, *, timeout: float = 30.0) -> AsyncIterator[None]:
    """Make the replica the primary's synchronous standby; undo it on exit.

    The replica connects with ``application_name`` = its server name, which is what
    ``synchronous_standby_names`` lists. Every commit on the primary then waits for it (at the
    level the committing session's ``synchronous_commit`` asks for). The name is double-quoted
    in the setting because it holds a ``-``.
    """
    name = stack.replica.name
    async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(f'"{name}"'))
        )
        await conn.execute("SELECT pg_reload_conf()")
        try:
            await _wait_state(conn, name, sync=True, timeout=timeout)
            yield
        finally:
            await conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            await conn.execute("SELECT pg_reload_conf()")
            await _wait_state(conn, name, sync=False, timeout=timeout)
