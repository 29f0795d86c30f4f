"""Make a late PONG harmless on a nats-py connection.

nats-py (2.16, the newest release) queues one future per PING it sends and completes the
oldest with each PONG. ``Client.flush(timeout)`` cancels its future when the timeout passes
but leaves it queued, and the PONG that arrives later meets the cancelled future:
``set_result`` raises ``InvalidStateError`` inside the client's read loop, which stops reading
for good. The client still says it is connected; no reply, request or broadcast arrives on it
any more, and nothing reports it until the ping-interval check notices. nats-py flushes with a
timeout itself too -- in ``Subscription.drain``, ``Client.drain``, ``nats.micro``'s service
start and after each reconnect -- so one slow second of the server (or of a loaded machine)
while a bus node started, drained a subscription or reconnected left it deaf.

:func:`guard_pongs` wraps the connection's PONG handler: a future already done at the head of
the queue is swapped for a fresh one before nats-py completes it. The late PONG is still
consumed by the PING it answers, so the PONGs after it meet theirs. It wraps, rather than
replaces, nats-py's handler, and leaves a client without one (another release, a test
double) as it is. :func:`~writebus.client.connect.connect_nats` guards every connection it
makes, and a :class:`~writebus.client.db.Database` guards one it is handed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

_GUARDED = "_writebus_pongs_guarded"


def guard_pongs(nc: Any) -> bool:
    """Make a late PONG harmless on ``nc`` (see the module docstring); returns whether ``nc``
    is guarded. Idempotent."""
    if getattr(nc, _GUARDED, False):
        return True
    handler: Callable[[], Awaitable[None]] | None = getattr(nc, "_process_pong", None)
    if handler is None or not isinstance(getattr(nc, "_pongs", None), list):
        return False

    async def process_pong() -> None:
        pongs = nc._pongs
        if pongs and pongs[0].done():
            pongs[0] = asyncio.get_running_loop().create_future()
        await handler()

    nc._process_pong = process_pong
    setattr(nc, _GUARDED, True)
    return True
