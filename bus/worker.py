"""Serving a subject: NATS messages in, bounded concurrent handling, replies out.

nats-py runs one subscription's callbacks one at a time, and reads on into the subscription's
queue while one waits. So the callback notes when the message came and spawns a named task at
once; the task waits for one of ``concurrency`` slots. The handler then sees how long the
request really waited -- a request whose caller has given up is answered "not run" instead of
being run for nobody -- and the queue wait and the backlog (``in_flight`` above
``concurrency``) are measured. Past :data:`MAX_WAITING` waiting requests the callback itself
waits, holding further messages in nats-py's queue (back-pressure; memory stays bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from writebus.client.log import get_logger

log = get_logger("writebus.bus.worker")

#: Requests received and waiting for a slot, at most, before the callback waits too.
MAX_WAITING = 8192

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
        self._admitted = asyncio.Semaphore(concurrency + MAX_WAITING)
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

    async def _on_message(self, msg: Any) -> None:
        received = time.monotonic()
        await self._admitted.acquire()  # at once, unless MAX_WAITING requests wait already
        self._seq += 1
        task = asyncio.create_task(
            self._serve(msg, received), name=f"serve-{self.subject}-{self._seq}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Any, received: float) -> None:
        try:
            async with self._slots:
                body, headers = await self._handle(msg.data, msg.headers, received)
                if msg.reply:
                    await self.nc.publish(msg.reply, body, headers=headers)
                self.served += 1
        except Exception:
            log.exception("worker.serve_failed", subject=self.subject)
        finally:
            self._admitted.release()

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
