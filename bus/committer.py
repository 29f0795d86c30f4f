"""Forming groups from the statement writes that are waiting (group commit).

Requests are never held back to make a group: a write that arrives while a committer is free
starts at once, alone. Groups form only from requests that queued up while every committer
was busy; the next free committer takes all of them (up to ``max_count`` requests and
``max_bytes`` of parameters) into one transaction (:mod:`writebus.bus.group`). A lone request
therefore pays nothing, and a busy worker commits many requests per COMMIT, per flush-LSN read
and per round trip.

How the queue is cut into groups is :func:`take_group`, pure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from writebus.bus.execute import Job
from writebus.bus.group import Executed
from writebus.client.errors import OutcomeUnknownError, UnavailableError, WriteBusError
from writebus.client.log import get_logger

log = get_logger("writebus.bus.committer")

Outcome = Executed | WriteBusError
RunGroup = Callable[[list[Job]], Awaitable[list[Outcome]]]


@dataclass
class _Waiting:
    job: Job
    size: int
    future: asyncio.Future[Outcome]


def take_group(queue: deque[_Waiting], *, max_count: int, max_bytes: int) -> list[_Waiting]:
    """Pop the next group off ``queue``: in arrival order, at most ``max_count`` requests and
    ``max_bytes`` of parameters -- but always at least one, however large."""
    group: list[_Waiting] = []
    size = 0
    while queue and len(group) < max_count:
        nxt = queue[0]
        if group and size + nxt.size > max_bytes:
            break
        group.append(queue.popleft())
        size += nxt.size
    return group


class Committer:
    """``connections`` committers, each running one group at a time with ``run``."""

    def __init__(
        self,
        run: RunGroup,
        *,
        connections: int = 4,
        max_count: int = 64,
        max_bytes: int = 1024 * 1024,
        name: str = "write",
    ) -> None:
        self.run = run
        self.connections = connections
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.name = name
        self._queue: deque[_Waiting] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        #: Groups run and requests in them (mean group size = requests / groups).
        self.groups = 0
        self.requests = 0

    def __repr__(self) -> str:
        return (
            f"<Committer {self.name} queued={len(self._queue)} busy={self._busy}/"
            f"{self.connections} groups={self.groups}>"
        )

    @property
    def mean_group(self) -> float:
        """Requests per group so far."""
        return self.requests / self.groups if self.groups else 0.0

    def start(self) -> None:
        """Start the committers (named tasks)."""
        for n in range(self.connections):
            self._tasks.append(
                asyncio.create_task(self._committer(), name=f"committer-{self.name}-{n}")
            )

    async def stop(self) -> None:
        """Stop after the queued requests were answered as not run (retryable)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        while self._queue:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                waiting.future.set_result(UnavailableError("the worker is stopping; not run"))

    async def submit(self, job: Job, size: int = 0) -> Outcome:
        """Queue a validated statement write (``size``: its parameters' bytes) and wait for
        its outcome."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(job, size, future))
        self._wake.set()
        return await future

    async def _committer(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            group = take_group(self._queue, max_count=self.max_count, max_bytes=self.max_bytes)
            if self._queue:
                self._wake.set()  # more waiting: let another free committer take them
            self._busy += 1
            try:
                outcomes = await self.run([w.job for w in group])
            except asyncio.CancelledError:
                for w in group:  # the group may or may not have committed
                    if not w.future.done():
                        w.future.set_result(
                            OutcomeUnknownError(w.job.req.id, "the worker stopped mid-commit")
                        )
                raise
            except Exception as exc:  # a bug: answer every request rather than hang them
                log.exception("committer.failed", requests=len(group))
                outcomes = [WriteBusError(f"internal: {type(exc).__name__}: {exc}")] * len(group)
            finally:
                self._busy -= 1
            self.groups += 1
            self.requests += len(group)
            for waiting, outcome in zip(group, outcomes, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(outcome)
