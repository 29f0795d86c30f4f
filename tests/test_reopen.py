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

import psycopg
import pytest

from writebus.bus.embedded.nats import NatsServer
from writebus.client.db import Database
from writebus.client.errors import (
    DisconnectedError,
    NoWorkerError,
    Outcome,
    ReplicationTimeoutError,
    WriteBusError,
)
from writebus.client.lsn import parse_lsn
from writebus.client.reads import VERIFY_AFTER
from writebus.client.settings import Settings
from writebus.client.tokens import make_token


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


def _lax(stack: Any, server: NatsServer) -> Settings:
    return Settings.from_env({
        "NATS_URL": server.url, "FLY_REGION": "lax", "PRIMARY_REGION": "syd",
        "WRITEBUS_RPC_TIMEOUT": "1", "WRITEBUS_CONNECT_TIMEOUT": "1",
        "DATABASE_URL": stack.env("lax")["DATABASE_URL"],
    })  # fmt: skip


async def test_callers_waiting_on_the_old_tracker_wait_on_the_new_one(
    stack: Any, server: NatsServer, table: str
) -> None:
    """Two callers wait for replay when a write reopens the connection: they wait on the new
    tracker, within their own deadlines -- one is released once the replica has its LSN (read
    from the replica: nobody broadcasts on this server), the other times out at its own 3 s,
    naming them. Both got TrackerError ("the LSN tracker was closed") before."""
    async with Database(_lax(stack, server)) as db, await psycopg.AsyncConnection.connect(
        stack.primary.url, autocommit=True
    ) as primary:
        first, old = db.nats, db.tracker
        assert first is not None and old is not None
        row = await (await primary.execute("SELECT pg_current_wal_flush_lsn()::text")).fetchone()
        assert row is not None
        lsn = parse_lsn(row[0])
        started = time.monotonic()
        soon = asyncio.create_task(db.wait_for_lsn(lsn + 1, 10))
        never = asyncio.create_task(db.wait_for_lsn(lsn + 10**12, 3))
        await asyncio.sleep(0.1)
        assert old.waiting >= 1 and not never.done()
        await first.close()
        with pytest.raises(NoWorkerError):
            await db.execute("SELECT 1")  # sent on a new connection
        assert db.tracker is not old and old._closed
        await primary.execute(f"INSERT INTO {table}(body) VALUES ('after the reopen')")
        assert await asyncio.wait_for(soon, 10) >= lsn + 1
        with pytest.raises(ReplicationTimeoutError) as info:
            await never
        assert info.value.timeout == 3 and 2.9 <= time.monotonic() - started < 6
        assert db.tracker is not None and db.tracker.waiting == 0


async def test_a_strong_read_reopens_a_connection_closed_for_good(
    stack: Any, server: NatsServer
) -> None:
    """A strong read needs the bus (it asks the primary's node for its position): on a
    connection closed for good it reopens it, as a write does, and its ping goes out (no
    worker here: NoWorkerError). It failed "not connected" until a write came."""
    async with Database(_lax(stack, server)) as db:
        first = db.nats
        assert first is not None
        await first.close()
        with pytest.raises(NoWorkerError):
            await db.fetch("SELECT 1", consistency="strong")
        assert db.nats is not first and db.nats is not None and db.nats.is_connected


async def test_a_token_read_across_a_reopen_waits_on_the_new_tracker(
    stack: Any, server: NatsServer, table: str
) -> None:
    """A read for a token not yet replayed waits in steps (it checks the token between
    them): one step on the old tracker, handed over when a write reopens the connection, the
    next on the new one -- it got TrackerError from the closed tracker at its second step."""
    async with Database(_lax(stack, server)) as db, await psycopg.AsyncConnection.connect(
        stack.primary.url, autocommit=True
    ) as primary:
        first = db.nats
        assert first is not None
        row = await (await primary.execute("SELECT pg_current_wal_flush_lsn()::text")).fetchone()
        assert row is not None
        read = asyncio.create_task(db.fetch("SELECT 1", after=make_token(parse_lsn(row[0]) + 1)))
        await asyncio.sleep(0.1)
        await first.close()
        with pytest.raises(NoWorkerError):
            await db.execute("SELECT 1")  # sent on a new connection
        await asyncio.sleep(VERIFY_AFTER + 0.3)  # past the first step (not asserted pending:
        # WAL from elsewhere may reach the token first, which proves nothing but is no error)
        await primary.execute(f"INSERT INTO {table}(body) VALUES ('after the reopen')")
        assert await asyncio.wait_for(read, 10) == [(1,)]


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


async def test_a_plain_or_token_read_does_not_need_the_connection(
    stack: Any, server: NatsServer
) -> None:
    """Reads that need no bus work on a connection closed for good with no server to reopen
    it on -- a strong read, which does, is refused as not sent."""
    async with _gone(stack, server, "lax") as db:
        assert await db.fetch("SELECT 1") == [(1,)]
        assert await db.fetchval("SELECT 2", after=make_token(1)) == 2
        with pytest.raises(DisconnectedError):
            await db.fetch("SELECT 1", consistency="strong")


async def test_a_primary_region_write_does_not_need_the_connection(
    stack: Any, server: NatsServer, table: str
) -> None:
    """In the primary region a write runs on the local primary: a NATS connection closed for
    good, with no server to reopen it on, does not stop it (it did: the reopen came first)."""
    async with _gone(stack, server, "syd") as db:
        res = await db.execute(f"INSERT INTO {table}(body) VALUES ('direct') RETURNING body")
        assert res.rows == [("direct",)] and not res.via_bus


async def test_a_reopen_takes_no_longer_than_the_call_may_wait(
    stack: Any, server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write with 0.3 s to spend on a connection closed for good, whose reopen takes 2 s
    (the new tracker starts slowly; a slow server, or none, is the same case): the write is
    refused at its 0.3 s as not sent (it waited the reopen out, then ran). The reopen goes
    on for the calls after: the next one is sent on the new connection. Nothing is left
    behind."""
    import importlib

    from writebus.client import trackers
    from writebus.client.tracker import LsnTracker

    connect = importlib.import_module("writebus.client.connect")  # the package's connect() shadows it
    real = LsnTracker.start

    async def slow(self: LsnTracker) -> None:
        await asyncio.sleep(2)
        await real(self)

    async with Database(_lax(stack, server)) as db:
        first = db.nats
        assert first is not None
        await first.close()
        monkeypatch.setattr(LsnTracker, "start", slow)
        me = asyncio.current_task()
        assert me is not None
        me.cancel()  # a cancellation this task swallowed earlier (a write in a `finally`)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        with pytest.raises(DisconnectedError) as refused:  # not that CancelledError
            await db.execute("SELECT 1", rpc_timeout=0.3)
        me.uncancel()
        assert "takes longer than the call may wait (0.3s" in str(refused.value)
        assert refused.value.outcome is Outcome.NOT_APPLIED
        with pytest.raises(NoWorkerError):  # joins the reopen under way, then is sent
            await db.execute("SELECT 1", rpc_timeout=5)
        assert db.nats is not first
    assert trackers._trackers == {} and connect._shared == {}


async def test_close_during_a_reopen_leaves_nothing_open(
    stack: Any, server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Database closes while a write reopens its connection (the new tracker still
    starting): the write is refused as not sent, and the new connection and tracker are let
    go -- the tracker stayed registered, polling on a dead connection, before; later, the
    reopen went on after close() returned."""
    import importlib

    from writebus.client import trackers
    from writebus.client.tracker import LsnTracker

    connect = importlib.import_module("writebus.client.connect")  # the package's connect() shadows it

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
    await db.close()  # stops the reopen under way
    assert write.done()
    with pytest.raises(DisconnectedError) as refused:
        await write
    assert "the Database closed while it reopened" in str(refused.value)
    assert refused.value.outcome is Outcome.NOT_APPLIED
    with pytest.raises(WriteBusError):  # and no new reopen once closed
        await db.execute("SELECT 1")
    assert trackers._trackers == {} and connect._shared == {}
