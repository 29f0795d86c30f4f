"""The dashboard's HTTP side without a browser: the page, the event stream, shutdown.

A :class:`~writebus.bus.watch.Watch` listens on an in-memory NATS fed with real encoded
messages (msgpack progress, JSON status), so what the stream sends is what the command would
send for the same broadcasts. Requests go through aiohttp's own test client.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils

from tests.support.fake_nats import FakeNats, FakeServer
from writebus.bus.dashboard import DashboardServer, ListenError
from writebus.bus.watch import Watch
from writebus.client.lsn import format_lsn
from writebus.client.protocol import JSON, Status, encode, lsn_update

PREFIX = "dash<test>"


def _status(region: str, role: str, *, served: int, lsn: int) -> Status:
    return Status(
        region=region, replica_id=f"{region}-1", role=role, version="0.1.0", time=time.time(),
        uptime=5.0, interval=1.0, served=served, served_interval=served, errors={},
        errors_interval={}, p50_ms=1.5, p99_ms=4.0, in_flight=1, concurrency=32, pool_size=2,
        pool_available=1, pool_max=4, pool_waiting=0, lsn=format_lsn(lsn), lsn_int=lsn,
        lag_bytes=0, lag_seconds=0.0,
    )


class Deployment:
    """Publishes a primary in syd and a replica in lax on the in-memory NATS."""

    def __init__(self, nc: FakeNats) -> None:
        self.nc = nc

    async def progress(self, region: str, lsn: int) -> None:
        """A progress broadcast (msgpack) from ``region``'s node."""
        role = "primary" if region == "syd" else "replica"
        upd = lsn_update(
            region=region, replica_id=f"{region}-1", lsn=lsn, role=role,
            in_recovery=role == "replica", lag_seconds=0.0,
        )
        await self.nc.publish(f"{PREFIX}.lsn.{region}", encode(upd))

    async def status(self, region: str, *, served: int, lsn: int) -> None:
        """A status message (JSON) from ``region``'s node."""
        role = "primary" if region == "syd" else "replica"
        body = encode(_status(region, role, served=served, lsn=lsn), JSON)
        await self.nc.publish(f"{PREFIX}.status.{region}", body, headers={"Content-Type": JSON})


async def _eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def watched() -> AsyncIterator[tuple[Watch, Deployment]]:
    """A started Watch on ``PREFIX`` and a deployment that has announced both regions."""
    server = FakeServer()
    watch = Watch(server.client(), prefix=PREFIX)  # type: ignore[arg-type]
    await watch.start()
    dep = Deployment(server.client())
    await dep.progress("syd", 0x3000)
    await dep.progress("lax", 0x2000)
    await dep.status("syd", served=12, lsn=0x3000)
    await _eventually(lambda: len(watch.snapshot().rows) == 2, "both nodes")
    await _eventually(lambda: watch.snapshot().writes_per_s > 0, "syd's status")
    try:
        yield watch, dep
    finally:
        await watch.stop()


async def _next_event(content: aiohttp.StreamReader) -> dict[str, Any]:
    """The next ``data:`` event on an SSE stream, decoded; other fields are skipped."""
    while True:
        line = await asyncio.wait_for(content.readline(), 5)
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            assert (await content.readline()) == b"\n", "an event ends with a blank line"
            return json.loads(line[len(b"data: "):])  # type: ignore[no-any-return]


async def test_index_serves_the_self_contained_page(watched: tuple[Watch, Deployment]) -> None:
    """``/`` answers 200 text/html: the page with the elements tests and scripts find it by,
    the prefix escaped into its title, an EventSource on ``events``, and no outside resource
    (no URL with a scheme; the only src/href is the inline empty icon)."""
    watch, _ = watched
    app = DashboardServer(("127.0.0.1", 0), snapshot=watch.snapshot, prefix=PREFIX).app
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        resp = await client.get("/")
        text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    for marker in ('id="writes-per-s"', 'id="lag-chart"', 'id="lag-legend"', 'id="nodes"'):
        assert marker in text
    assert "<title>writebus dashboard · dash&lt;test&gt;</title>" in text
    assert 'new EventSource("events")' in text
    assert "://" not in text
    assert all(url.startswith("data:") for url in re.findall(r'(?:src|href)="([^"]*)"', text))


async def test_events_stream_snapshots_that_follow_the_broadcasts(
    watched: tuple[Watch, Deployment],
) -> None:
    """``/events`` is text/event-stream: a retry hint, then ``data: {json}`` events, each a
    snapshot (rows for syd and lax, the primary's throughput); a newer broadcast from lax shows
    up in a following event without reconnecting."""
    watch, dep = watched
    app = DashboardServer(
        ("127.0.0.1", 0), snapshot=watch.snapshot, prefix=PREFIX, interval=0.05
    ).app
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        resp = await client.get("/events")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert (await resp.content.readline()).startswith(b"retry: ")
        first = await _next_event(resp.content)
        rows = {r["region"]: r for r in first["rows"]}
        assert set(rows) == {"syd", "lax"}
        assert rows["syd"]["role"] == "primary" and rows["syd"]["requests_per_s"] == 12
        assert first["writes_per_s"] == 12 and first["primary_lsn"] == "0/3000"
        assert rows["lax"]["lsn"] == "0/2000" and rows["lax"]["lag_bytes"] == 0x1000
        await dep.progress("lax", 0x3000)
        deadline = time.monotonic() + 5
        while True:
            event = await _next_event(resp.content)
            lax = next(r for r in event["rows"] if r["region"] == "lax")
            if lax["lsn"] == "0/3000":
                break
            assert time.monotonic() < deadline, "lax's new position never reached the stream"
        assert lax["lag_bytes"] == 0
        resp.close()


async def test_snapshot_json_is_the_same_picture(watched: tuple[Watch, Deployment]) -> None:
    """``/snapshot.json`` answers one snapshot as JSON, for scripts."""
    watch, _ = watched
    app = DashboardServer(("127.0.0.1", 0), snapshot=watch.snapshot, prefix=PREFIX).app
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        resp = await client.get("/snapshot.json")
        data = await resp.json()
    assert resp.status == 200
    assert sorted(r["region"] for r in data["rows"]) == ["lax", "syd"]
    assert set(data) == {"time", "rows", "writes_per_s", "primary_lsn"}


async def test_stop_ends_open_streams_and_frees_the_port(
    watched: tuple[Watch, Deployment],
) -> None:
    """With a page's stream open, ``stop()`` returns promptly (it does not wait for the
    browser), the stream ends cleanly, and the port refuses new connections."""
    watch, _ = watched
    server = DashboardServer(("127.0.0.1", 0), snapshot=watch.snapshot, prefix=PREFIX)
    await server.start()
    assert server.port and server.url == f"http://127.0.0.1:{server.port}/"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}events") as resp:
            await _next_event(resp.content)
            started = time.monotonic()
            await asyncio.wait_for(server.stop(), 5)
            assert time.monotonic() - started < 3
            await asyncio.wait_for(resp.content.read(), 5)  # a clean end, not a broken body
            assert resp.content.at_eof()
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(server.url)


async def test_a_port_in_use_is_a_listen_error_naming_the_address(
    watched: tuple[Watch, Deployment],
) -> None:
    """Starting on a port another listener holds raises ListenError with the address and the
    system's reason (the command reports it as a one-line usage error)."""
    watch, _ = watched
    first = DashboardServer(("127.0.0.1", 0), snapshot=watch.snapshot)
    await first.start()
    try:
        assert first.port is not None
        second = DashboardServer(("127.0.0.1", first.port), snapshot=watch.snapshot)
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{first.port}: "):
            await second.start()
    finally:
        await first.stop()
