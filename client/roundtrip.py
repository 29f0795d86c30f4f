"""One round trip to the NATS server that a timeout does not break.

``round_trip(nc, timeout)`` returns once the server has processed everything sent on ``nc``
so far (a PING answered by a PONG) -- a subscription made before it is in place.

It exists because of nats-py (2.16, the newest release): ``Client.flush(timeout)`` cancels its
PONG future when the timeout passes but leaves it queued, and the PONG that arrives later
meets the cancelled future: ``set_result`` raises ``InvalidStateError`` inside the client's
read loop, which stops reading for good. The client still says it is connected; no reply,
request or broadcast arrives on it any more, and nothing reports it until a ping-interval
check notices minutes later. A tracker, bus worker or service whose start-up round trip met a
slow server (a second's stall under load is enough) would be deaf.

So after a timeout the cancelled future is replaced, in the same place of nats-py's queue, by a
fresh one that nobody awaits: the late PONG completes it harmlessly, and the PONGs after it
still meet the PINGs they answer. This reaches into a private attribute; a nats-py without it
(a future release, or a test double) gets the plain ``flush``.
"""

from __future__ import annotations

import asyncio

import nats.errors

from writebus.client.transport import NatsClient


async def round_trip(nc: NatsClient, timeout: int) -> None:
    """Wait until the server has processed everything sent on ``nc`` so far.

    Raises :class:`nats.errors.FlushTimeoutError` after ``timeout`` seconds, with the
    connection still reading (see the module docstring), and what ``flush`` raises otherwise
    (closed, not connected).
    """
    try:
        await nc.flush(timeout=timeout)
    except nats.errors.FlushTimeoutError:
        # Still the step flush() cancelled its future in: no PONG has been read since.
        requeue_cancelled_pongs(nc)
        raise


def requeue_cancelled_pongs(nc: object) -> int:
    """Replace each cancelled future in nats-py's PONG queue with a pending one; returns how
    many were replaced."""
    pongs = getattr(nc, "_pongs", None)
    if not isinstance(pongs, list):
        return 0
    replaced = 0
    for i, fut in enumerate(pongs):
        if isinstance(fut, asyncio.Future) and fut.cancelled():
            pongs[i] = fut.get_loop().create_future()
            replaced += 1
    return replaced
