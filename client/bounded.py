"""A primary-region write's run on its database, bounded by the caller's deadline.

The bus path is bounded by its NATS request's timeout; a write run directly on the local
primary had no bound but the pool's wait for a connection, so a statement waiting for a row
lock -- or a connection whose peer went silent -- held the caller for good. :func:`within`
gives the run until the deadline, then cancels it: psycopg then cancels the query on the
server, and the transaction rolls back. Whether COMMIT had been sent is not known here, so
the answer is an unknown outcome (:class:`DatabaseTimeoutError`), settled by sending the
write again under its id. A cancel the server does not answer (a dead network) is not
waited for past :data:`CANCEL_GRACE`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from writebus.client.errors import DatabaseTimeoutError

T = TypeVar("T")

#: Seconds a cancelled run may take to end (the server's answer to the cancel) before it is
#: left to end on its own.
CANCEL_GRACE = 2.0


async def within(run: Awaitable[T], seconds: float, *, request_id: str) -> T:
    """``run``'s result, if it has one within ``seconds``; else cancel it and raise
    :class:`DatabaseTimeoutError`. A result or error that arrives as the run is cancelled
    is its own answer."""
    task = asyncio.ensure_future(run)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
    except BaseException:  # the caller is cancelled: so is its run
        task.cancel()
        raise
    if not done:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
        if not done:  # the server did not answer the cancel: let the run end on its own
            task.cancel()
            task.add_done_callback(_consume)
            raise DatabaseTimeoutError(request_id, seconds, cancelled=False)
    if task.cancelled():
        raise DatabaseTimeoutError(request_id, seconds)
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        task.exception()
