"""SubjectServer against a real nats-server: how long a request waited is measured from its
arrival, so a backlog is seen and requests whose callers gave up are not run."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats

from writebus.bus.worker import HandleFn, SubjectServer


@contextlib.asynccontextmanager
async def _serving(stack: Any, handle: HandleFn) -> AsyncIterator[tuple[SubjectServer, Any]]:
    """A SubjectServer with one slot on a fresh subject of lax's NATS, and a caller."""
    nc = await nats.connect(stack.nats_url("lax"))
    caller = await nats.connect(stack.nats_url("lax"))
    server = SubjectServer(nc, f"worker.{uuid.uuid4().hex}", "q", handle, concurrency=1)
    await server.start()
    try:
        yield server, caller
    finally:
        await server.stop(timeout=5)
        await caller.close()
        await nc.close()


async def _until_in_flight(server: SubjectServer, n: int) -> None:
    deadline = time.monotonic() + 15  # a bound for a loaded machine, not a target
    while server.in_flight < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def test_a_request_that_waited_past_its_budget_in_a_backlog_is_not_run(stack: Any) -> None:
    """Six requests at once on one slot, each taking 0.3 s, with a budget of 0.5 s: those
    that waited past it for the slot are answered "expired" without running. (The wait was
    measured from when the callback took the message -- after the previous one got its slot
    -- so every one of them ran, for callers long gone.)"""
    ran: list[bytes] = []
    waited: list[float] = []

    async def handle(data: bytes, headers: Any, received: float) -> tuple[bytes, None]:
        waited.append(time.monotonic() - received)
        if time.monotonic() - received > 0.5:
            return b"expired", None
        ran.append(data)
        await asyncio.sleep(0.3)
        return b"ran", None

    async with _serving(stack, handle) as (server, caller):
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.in_flight)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        replies = await asyncio.gather(
            *(caller.request(server.subject, str(i).encode(), timeout=10) for i in range(6))
        )
        watcher.cancel()
    answers = [r.data for r in replies]
    assert answers.count(b"ran") == len(ran) <= 2 and answers.count(b"expired") >= 4
    assert max(waited) >= 0.5
    assert peak >= 5  # the backlog shows: received and not answered, above the one slot


async def test_stop_returns_within_its_timeout_when_a_handler_hangs(stack: Any) -> None:
    """A handler that never returns, and a request waiting behind it: stop(timeout) still
    returns (the drain waited for ever behind the waiting callback)."""
    never = asyncio.Event()

    async def handle(data: bytes, headers: Any, received: float) -> tuple[bytes, None]:
        await never.wait()
        return b"", None

    async with _serving(stack, handle) as (server, caller):
        for i in range(2):
            reply = f"_INBOX.{uuid.uuid4().hex}"
            await caller.publish(server.subject, str(i).encode(), reply=reply)
        await caller.flush()
        await _until_in_flight(server, 2)
        assert server.in_flight == 2
        started = time.monotonic()
        await asyncio.wait_for(server.stop(timeout=1), 10)
        assert time.monotonic() - started < 5


async def test_requests_held_are_bounded_by_their_bytes(
    stack: Any, monkeypatch: Any
) -> None:
    """Past MAX_HELD_BYTES of request bodies waiting for a slot, the callback waits and
    nats-py holds the rest: five requests of 1 KB against a 3 KB budget, one slot, a handler
    that waits -- three are admitted, and all five are answered once it goes on."""
    from writebus.bus import worker as worker_module

    monkeypatch.setattr(worker_module, "MAX_HELD_BYTES", 3 * 1024)
    go = asyncio.Event()

    async def handle(data: bytes, headers: Any, received: float) -> tuple[bytes, None]:
        await go.wait()
        return b"ok", None

    async with _serving(stack, handle) as (server, caller):
        asks = [asyncio.create_task(caller.request(server.subject, bytes(1024), timeout=10))
                for _ in range(5)]  # fmt: skip
        await _until_in_flight(server, 3)
        await asyncio.sleep(0.2)  # time for more to be (wrongly) admitted
        assert server.in_flight == 3
        go.set()
        replies = await asyncio.gather(*asks)
        assert [r.data for r in replies] == [b"ok"] * 5
