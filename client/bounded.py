"""A primary-region write's run on its database, bounded by the caller's deadline.

The bus path is bounded by its NATS request's timeout; a write run directly on the local
primary had no bound but the pool's wait for a connection, so a statement waiting for a row
lock -- or a connection whose peer went silent -- held the caller for good. :func:`within`
answers the caller at the deadline with an unknown outcome (:class:`DatabaseTimeoutError`)
and lets the run go on, as a bus worker's run goes on after its caller gave up: it is not
cancelled, because a cancel that lands while COMMIT waits for a synchronous standby leaves
the commit done locally but not on the standby, and the resend the caller is told to make
would then be answered "applied" for a write that promotion could still lose. The resend
waits for the run (its id's lock) and learns what it did. Only a caller that is itself
cancelled cancels its run, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from writebus.client.errors import DatabaseTimeoutError
from writebus.client.log import get_logger

T = TypeVar("T")

log = get_logger("writebus.client.bounded")


async def within(run: Awaitable[T], seconds: float, *, request_id: str) -> T:
    """``run``'s answer, if it has one within ``seconds``; else :class:`DatabaseTimeoutError`,
    and ``run`` goes on (its outcome is logged when it ends)."""
    task = asyncio.ensure_future(run)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
    except BaseException:  # the caller is cancelled: so is its run
        task.cancel()
        raise
    if not done:
        task.add_done_callback(lambda t: _ended_late(t, request_id))
        raise DatabaseTimeoutError(request_id, seconds)
    return task.result()


def _ended_late(task: asyncio.Future[Any], request_id: str) -> None:
    error: BaseException | None = None
    with contextlib.suppress(asyncio.CancelledError):
        error = task.exception()
    log.info("db.direct_run_ended_late", request_id=request_id,
             error=repr(error) if error is not None else None)  # fmt: skip
