"""One timer for every waiter's deadline: the tracker's queue's earliest, re-armed as it fires.

A timer per waiter cost more to create and cancel than waking the waiter itself
(:mod:`writebus.client.waiters`), so the tracker keeps one, here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from writebus.client.waiters import WaiterQueue
from writebus.client.wakeup import BatchFuture

#: The timer is set this much after the deadline: uvloop truncates a timer's delay to whole
#: milliseconds, so it can fire up to 1 ms early, and a waiter must never time out early.
TIMER_LAG = 0.001


class DeadlineTimer:
    """Fails each waiter of ``queue`` whose deadline passed with ``expired()``."""

    def __init__(
        self, queue: WaiterQueue[BatchFuture[int]], expired: Callable[[], BaseException]
    ) -> None:
        self._queue = queue
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def include(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """A waiter was queued with ``deadline`` (the loop's clock): fire by then."""
        if deadline < self._at:
            self._arm(loop, deadline)

    def cancel(self) -> None:
        """Fire no more (until the next :meth:`include`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._at = float("inf")

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self.cancel()
        self._timer = loop.call_at(when + TIMER_LAG, self._fire, loop)
        self._at = when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cancel()  # this timer has run: cancelling it does nothing
        for w in self._queue.pop_expired(loop.time()):
            if not w.payload.done():
                w.payload.set_exception(self._expired())
        upcoming = self._queue.next_deadline()
        if upcoming is not None:
            self._arm(loop, upcoming)
