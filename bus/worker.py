"""Serving a subject: NATS messages in, bounded concurrent handling, replies out.

nats-py runs one subscription's callbacks one at a time, and reads on into the subscription's
queue while one waits. So the callback notes when the message came and spawns a named task at
once; the task waits for one of ``concurrency`` slots. The handler then sees how long the
request really waited -- a request whose caller has given up is answered "not run" instead of
being run for nobody -- and the queue wait and the backlog (``in_flight`` above
``concurrency``) are measured. Past :data:`MAX_WAITING` requests, or :data:`MAX_HELD_BYTES`
of their bodies, the callback itself waits, holding further messages in nats-py's queue
(back-pressure: memory stays bounded, as nats-py's own pending limits bound that queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from writebus.client.log import get_logger

log = get_logger("writebus.bus.worker")

#: Requests received and not answered, beyond the slots, at most, before the callback waits.
MAX_WAITING = 8192
#: ... and the bytes of their bodies: a request up to the NATS max payload (1 MB, or more)
#: each, 8,192 of them would be gigabytes.
MAX_HELD_BYTES = 64 * 1024 * 1024

#: ``(body, headers, received)`` -> ``(reply body, reply headers)``; ``received`` is the
#: monotonic time the message reached this process, before it waited for a slot.
HandleFn = Callable[
    [bytes, dict[str, str] | None, float], Awaitable[tuple[bytes, dict[str, str] | None]]
]


class SubjectServer:
    """Serves one subject in a queue group with at most ``concurrency`` requests in flight."""

    def __init__(
        self, nc: Any, subject: str, queue: str, handle: HandleFn, *, concurrency: int
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.queue = queue
        self._handle = handle
        self._slots = asyncio.Semaphore(concurrency)
        self._most = concurrency + MAX_WAITING
        self._open = 0  # requests admitted and not answered, and the bytes of their bodies
        self._held = 0
        self._room = asyncio.Event()  # set as one is answered: the callback may be waiting
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None
        self._seq = 0
        self.served = 0

    def __repr__(self) -> str:
        state = "serving" if self._sub is not None else "stopped"
        return f"<SubjectServer {self.subject!r} {state} in_flight={len(self._tasks)}>"

    @property
    def in_flight(self) -> int:
        """Requests received and not answered yet: running, or waiting for a slot."""
        return len(self._tasks)

    async def start(self) -> None:
        """Subscribe (in the queue group)."""
        self._sub = await self.nc.subscribe(
            self.subject, queue=self.queue, cb=self._on_message, pending_msgs_limit=65536
        )
        await self.nc.flush()

    def _has_room(self, size: int) -> bool:
        # One request is always admitted, however large: NATS' max payload bounds it.
        return not self._open or (self._open < self._most and self._held + size <= MAX_HELD_BYTES)

    async def _on_message(self, msg: Any) -> None:
        received = time.monotonic()
        size = len(msg.data)
        while not self._has_room(size):  # callbacks run one at a time: one waiter at most
            self._room.clear()
            await self._room.wait()
        self._open += 1
        self._held += size
        self._seq += 1
        task = asyncio.create_task(
            self._serve(msg, received, size), name=f"serve-{self.subject}-{self._seq}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Any, received: float, size: int) -> None:
        try:
            async with self._slots:
                body, headers = await self._handle(msg.data, msg.headers, received)
                if msg.reply:
                    await self.nc.publish(msg.reply, body, headers=headers)
                self.served += 1
        except Exception:
            log.exception("worker.serve_failed", subject=self.subject)
        finally:
            self._open -= 1
            self._held -= size
            self._room.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking requests and let the in-flight ones finish and reply (drain)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.drain(), timeout)
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in pending:
                t.cancel()
        with contextlib.suppress(Exception):
            await self.nc.flush()
