"""A late PONG does not stop a connection's reading (real nats-server).

The server is paused (SIGSTOP) so a flush's PONG comes after its timeout; on a nats-py
connection without :func:`~writebus.client.pongs.guard_pongs`, that PONG stops the client's
read loop and nothing arrives on the connection afterwards. And a server that stops answering
is given up in seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from tests.support.stack import settings_for
from writebus.bus.embedded.nats import NatsServer
from writebus.client import tracker as tracker_module
from writebus.client.connect import connect_nats
from writebus.client.db import Database
from writebus.client.protocol import encode, lsn_update
from writebus.client.settings import Settings
from writebus.client.tracker import LsnTracker

# The module, not the function writebus.client exports under the same name.
connect_module = importlib.import_module("writebus.client.connect")


@pytest.fixture
def server(lone_nats: NatsServer) -> NatsServer:
    return lone_nats


def _all_stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in tasks.iterdir())


@contextlib.contextmanager
def _paused(server: NatsServer) -> Iterator[None]:
    """SIGSTOP the server, and wait until every thread of it has stopped (a signal reaches a
    thread running on another core a moment later)."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(500):
            if _all_stopped(pid):
                break
            time.sleep(0.002)
        else:
            raise AssertionError("nats-server did not stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _settings(server: NatsServer) -> Settings:
    return Settings.from_env({"NATS_URL": server.url})


@pytest.fixture
async def connections(server: NatsServer) -> AsyncIterator[tuple[Any, Any]]:
    """A connection as writebus makes them, and a plain one to publish from."""
    nc = await connect_nats(_settings(server), name="pongs-test")
    other = await nats.connect(server.url)
    try:
        yield nc, other
    finally:
        await other.close()
        await nc.close()


async def _echo(nc: Any) -> bytes | None:
    """Publish to a fresh subject and return what ``nc``'s own subscription got (None: nothing
    within 3 s)."""
    subject = f"echo.{uuid.uuid4().hex}"
    sub = await nc.subscribe(subject)
    await nc.publish(subject, b"ping")
    try:
        msg = await sub.next_msg(timeout=3)
    except nats.errors.TimeoutError:
        return None
    return bytes(msg.data)


async def _flush_times_out(server: NatsServer, nc: Any) -> None:
    with _paused(server), pytest.raises(nats.errors.FlushTimeoutError):
        await nc.flush(timeout=1)


async def test_a_timed_out_flush_leaves_the_connection_reading(
    server: NatsServer, connections: tuple[Any, Any]
) -> None:
    """As nats-py's own flushes (a subscription's drain, a service's start, a reconnect)."""
    nc, _ = connections
    await _flush_times_out(server, nc)
    await nc.flush(timeout=5)  # the late PONG went to the placeholder; this one gets its own
    assert await _echo(nc) == b"ping"
    assert nc.is_connected


async def test_a_connection_handed_to_a_database_is_guarded(server: NatsServer) -> None:
    """The app's own connection, given to Database(nats=...), is guarded when it opens."""
    nc = await nats.connect(server.url)
    try:
        settings = _settings(server).replace(primary_region="local", database_url=None)
        async with Database(settings, nats=nc, local_pool=False):
            await _flush_times_out(server, nc)
            assert await _echo(nc) == b"ping"
    finally:
        await nc.close()


async def test_a_tracker_started_on_a_stalled_server_still_hears_broadcasts(
    stack: Any,
    server: NatsServer,
    connections: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start() gives up waiting for the server's confirmation; once the server answers again,
    the tracker hears the region's broadcasts (it was deaf for good before)."""
    nc, publisher = connections
    monkeypatch.setattr(tracker_module, "START_FLUSH_TIMEOUT", 1)
    prefix = f"trk{uuid.uuid4().hex[:8]}"
    tracker = LsnTracker(settings_for(stack, "lax", prefix=prefix), nc, probe=False)
    try:
        with _paused(server):
            await tracker.start()
        update = lsn_update(region="lax", replica_id="r1", lsn=77, role="replica",
                            in_recovery=True)  # fmt: skip
        for _ in range(100):  # the SUB reaches the server with the next flush of the buffer
            await publisher.publish(f"{prefix}.lsn.lax", encode(update))
            if tracker.replayed == 77:
                break
            await asyncio.sleep(0.05)
        assert tracker.replayed == 77
    finally:
        await tracker.close()


async def test_a_server_that_stops_answering_is_given_up_in_seconds(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PINGs go unanswered: the connection counts as lost after a few intervals (a request on
    it then fails at once as not sent, instead of waiting out its budget as "unknown"), and
    comes back when the server does."""
    monkeypatch.setattr(connect_module, "PING_INTERVAL", 0.5)
    nc = await connect_nats(_settings(server), name="pongs-stale")
    try:
        assert nc.options["ping_interval"] == 0.5
        assert nc.options["max_outstanding_pings"] == connect_module.MAX_OUTSTANDING_PINGS
        with _paused(server):
            deadline = time.monotonic() + 10
            while nc.is_connected and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not nc.is_connected
        deadline = time.monotonic() + 10
        while not nc.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert nc.is_connected and await _echo(nc) == b"ping"
    finally:
        await nc.close()


def test_connections_ping_every_few_seconds() -> None:
    assert connect_module.PING_INTERVAL * (connect_module.MAX_OUTSTANDING_PINGS + 1) <= 15
