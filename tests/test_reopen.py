"""A NATS connection closed for good is reopened by the next write (real nats-server).

nats-py closes a connection for good on most ``-ERR`` lines from the server (an expired JWT:
"User Authentication Expired"); the test closes it the same way, with ``close()``, since a
plain nats-server reload that revokes a password only drops the connection (nats-py then
reconnects by itself, and a write meanwhile is not sent: DisconnectedError)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from writebus.bus.embedded.nats import NatsServer
from writebus.client.db import Database
from writebus.client.errors import DisconnectedError, NoWorkerError, Outcome, WriteBusError
from writebus.client.settings import Settings


@pytest.fixture
def server(lone_nats: NatsServer) -> NatsServer:
    return lone_nats


async def test_a_connection_closed_for_good_is_reopened_by_the_next_write(
    stack: Any, server: NatsServer
) -> None:
    """The next write goes out on a new connection (no worker listens on this server:
    NoWorkerError, so it was sent and answered) and the tracker moved onto it -- before,
    every write said "not connected" for the life of the process. While no server accepts,
    a write is not sent: DisconnectedError, not applied."""
    env = {"NATS_URL": server.url, "FLY_REGION": "lax", "PRIMARY_REGION": "syd",
           "WRITEBUS_RPC_TIMEOUT": "1", "WRITEBUS_CONNECT_TIMEOUT": "1",
           "DATABASE_URL": stack.env("lax")["DATABASE_URL"]}  # fmt: skip
    async with Database(Settings.from_env(env)) as db:
        first, tracker = db.nats, db.tracker
        assert first is not None and tracker is not None
        await first.close()
        with pytest.raises(NoWorkerError):
            await db.execute("SELECT 1")
        second = db.nats
        assert second is not first and second is not None and second.is_connected
        assert db.tracker is not tracker and db.tracker is not None and tracker._closed
        server.stop()
        await second.close()
        with pytest.raises(DisconnectedError) as refused:
            await db.execute("SELECT 1")
        assert refused.value.outcome is Outcome.NOT_APPLIED


@contextlib.asynccontextmanager
async def _gone(stack: Any, server: NatsServer, region: str) -> AsyncIterator[Database]:
    """A Database in ``region`` whose connection is closed for good, and no server up."""
    env = {"NATS_URL": server.url, "FLY_REGION": region, "PRIMARY_REGION": "syd",
           "WRITEBUS_CONNECT_TIMEOUT": "1", "DATABASE_URL": stack.env(region)["DATABASE_URL"]}
    async with Database(Settings.from_env(env)) as db:
        assert db.nats is not None
        server.stop()
        await db.nats.close()
        yield db


async def test_while_no_server_accepts_concurrent_writes_do_not_queue_connect_timeouts(
    stack: Any, server: NatsServer
) -> None:
    """Ten bus writes at once on a connection closed for good, with no server up: one tries
    to reopen (up to the connect timeout); the others wait for that try and are refused with
    it -- each used to make its own attempt in turn, the last waiting ten timeouts."""
    async with _gone(stack, server, "lax") as db:
        started = time.monotonic()
        results = await asyncio.gather(
            *(db.execute("SELECT 1") for _ in range(10)), return_exceptions=True
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert all(isinstance(r, DisconnectedError) for r in results), results
    assert all(r.outcome is Outcome.NOT_APPLIED for r in results if isinstance(r, WriteBusError))
    assert elapsed < 5  # one connect timeout (1 s) and some; ten would be 10 s and more


async def test_a_primary_region_write_does_not_need_the_connection(
    stack: Any, server: NatsServer, table: str
) -> None:
    """In the primary region a write runs on the local primary: a NATS connection closed for
    good, with no server to reopen it on, does not stop it (it did: the reopen came first)."""
    async with _gone(stack, server, "syd") as db:
        res = await db.execute(f"INSERT INTO {table}(body) VALUES ('direct') RETURNING body")
        assert res.rows == [("direct",)] and not res.via_bus


async def test_close_during_a_reopen_leaves_nothing_open(
    stack: Any, server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Database closes while a write reopens its connection (the new tracker still
    starting): the write is refused as not sent, and the new connection and tracker are let
    go -- the tracker stayed registered, polling on a dead connection, before."""
    from writebus.client import trackers
    from writebus.client.tracker import LsnTracker

    real = LsnTracker.start

    async def slow(self: LsnTracker) -> None:  # under the trackers' registry lock
        await asyncio.sleep(0.5)
        await real(self)

    env = {"NATS_URL": server.url, "FLY_REGION": "lax", "PRIMARY_REGION": "syd",
           "DATABASE_URL": stack.env("lax")["DATABASE_URL"]}
    db = Database(Settings.from_env(env))
    await db.open()
    assert db.nats is not None
    await db.nats.close()
    monkeypatch.setattr(LsnTracker, "start", slow)
    write = asyncio.create_task(db.execute("SELECT 1"))
    await asyncio.sleep(0.2)
    await db.close()
    with pytest.raises(WriteBusError) as refused:
        await write
    assert refused.value.outcome is Outcome.NOT_APPLIED
    assert trackers._trackers == {}
