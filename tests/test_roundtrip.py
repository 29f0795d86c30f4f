"""A NATS round trip that times out leaves the connection reading (real nats-server).

The server is paused (SIGSTOP) so the PONG comes late; with nats-py's plain ``flush`` the late
PONG stops the client's read loop and nothing arrives on the connection afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from writebus.bus import worker as worker_module
from writebus.bus.embedded.nats import NatsServer
from writebus.bus.embedded.ports import free_port
from writebus.bus.worker import SubjectServer
from writebus.client import tracker as tracker_module
from writebus.client.protocol import encode, lsn_update
from writebus.client.roundtrip import round_trip
from writebus.client.tracker import LsnTracker


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(
        name="nats-roundtrip",
        region="x",
        client_port=free_port(),
        gateway_port=free_port(),
        monitor_port=free_port(),
        workdir=tmp_path,
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


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


@pytest.fixture
async def connections(server: NatsServer) -> AsyncIterator[tuple[Any, Any]]:
    nc = await nats.connect(server.url)
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


async def test_a_timed_out_round_trip_leaves_the_connection_reading(
    server: NatsServer, connections: tuple[Any, Any]
) -> None:
    nc, _ = connections
    with _paused(server), pytest.raises(nats.errors.FlushTimeoutError):
        await round_trip(nc, 1)
    await round_trip(nc, 5)  # the late PONG went to the placeholder; this one gets its own
    assert await _echo(nc) == b"ping"
    assert nc.is_connected


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


async def test_a_worker_started_on_a_stalled_server_still_serves(
    server: NatsServer, connections: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bus worker whose start-up round trip timed out answers requests once the server is
    back, instead of holding its queue-group place deaf."""
    nc, caller = connections
    monkeypatch.setattr(worker_module, "FLUSH_TIMEOUT", 1)

    async def handle(data: bytes, headers: Any, received: float) -> tuple[bytes, None]:
        return b"served:" + data, None

    worker = SubjectServer(nc, "rt.work", "q", handle, concurrency=4)
    with _paused(server), pytest.raises(nats.errors.FlushTimeoutError):
        await worker.start()
    reply = await caller.request("rt.work", b"w1", timeout=5)
    assert reply.data == b"served:w1"
    await worker.stop(timeout=5)
