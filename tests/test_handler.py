"""The worker's request handler on the real primary: what it answers when the database
behind its pool changed under it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgpack
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from writebus.bus.handler import Handler
from writebus.client.procedures import PING, Procedures


@pytest.fixture
async def pool(stack: Any) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.primary.url, min_size=3, max_size=3, open=False,
        kwargs={"autocommit": True, "application_name": "wb-ping-test"},
    )  # fmt: skip
    await p.open(wait=True)
    yield p
    await p.close()


async def _ping(handler: Handler) -> dict[str, Any]:
    req = msgpack.packb({"id": "p1", "procedure": PING})
    body, _ = await handler.handle(req, None, write=False, primary=True)
    reply = msgpack.unpackb(body)
    assert reply["ok"] is True
    return reply["value"]  # type: ignore[no-any-return]


async def test_a_ping_after_the_pools_sessions_were_terminated_reports_the_database_ok(
    stack: Any, pool: AsyncConnectionPool[Any]
) -> None:
    """Every idle connection in the pool was cut (a server restart, pg_terminate_backend):
    that says nothing about the database now, so the ping replaces them and reports it."""
    handler = Handler(pool=pool, procedures=Procedures(), region="syd")
    assert (await _ping(handler))["database"] == "ok"
    async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as c:
        cur = await c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'wb-ping-test'"
        )
        assert (await cur.fetchone() or [0])[0] == 3
    value = await _ping(handler)
    assert value["database"] == "ok" and value["in_recovery"] is False
    assert isinstance(value["flush_lsn_int"], int)
