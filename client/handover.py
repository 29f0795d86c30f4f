"""Handing a closing tracker's waiters to its successor.

When a :class:`~writebus.client.db.Database` reopens a NATS connection closed for good
(:mod:`writebus.client.reopen`), the region's tracker moves onto the new connection. The
callers still waiting on the old one -- reads for a token, writes for their replay -- wait on
the new one instead, until the deadline each already had: they are not failed for a change of
connection they never saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from writebus.client.errors import ReplicationTimeoutError
from writebus.client.waiters import Waiter
from writebus.client.wakeup import BatchFuture


class Successor(Protocol):
    """What a waiter is handed to: a tracker's ``wait_for``."""

    async def wait_for(self, lsn: int, timeout: float, timeline: int | None = None) -> int: ...


def hand_over(
    waiters: Iterable[Waiter[BatchFuture[int]]],
    successor: Successor,
    loop: asyncio.AbstractEventLoop,
    expired: Callable[[], BaseException],
) -> int:
    """Wait on ``successor`` for each of ``waiters`` still pending, within what is left of its
    deadline (the loop's clock; none: a day), settling its future with the outcome --
    ``expired()`` when that wait times out, so the caller's error names its own timeout.
    A caller that gives up cancels the wait on the successor. Returns how many were handed."""
    handed = 0
    for w in waiters:
        fut = w.payload
        if fut.done():
            continue
        left = w.deadline - loop.time() if w.deadline is not None else 86400.0
        wait = loop.create_task(successor.wait_for(w.lsn, max(0.0, left), w.timeline))
        wait.add_done_callback(lambda t, f=fut: _settle(f, t, expired))  # type: ignore[misc]
        fut.add_done_callback(lambda f, t=wait: t.cancel() if f.cancelled() else None)  # type: ignore[misc]
        handed += 1
    return handed


def _settle(
    fut: BatchFuture[int], wait: asyncio.Task[Any], expired: Callable[[], BaseException]
) -> None:
    exc = None if wait.cancelled() else wait.exception()  # retrieved, even if not needed
    if fut.done():
        return
    if wait.cancelled():
        fut.cancel()
    elif isinstance(exc, ReplicationTimeoutError):
        fut.set_exception(expired())
    elif exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(wait.result())
