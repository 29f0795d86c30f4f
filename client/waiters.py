"""Waiter bookkeeping for the LSN tracker: pure logic, no I/O.

Waiters sit in a min-heap keyed by LSN, so releasing the ``k`` waiters a broadcast satisfies costs
``O(k log n)`` -- never a scan of all ``n``. A broadcast that satisfies every waiter (the highest
LSN waited for is known) takes them all in one pass, without a single heap operation.

A waiter may carry a deadline: those sit in a second min-heap, so the shell needs one timer for
the whole queue (the earliest deadline) instead of one per waiter -- a timer per waiter cost more
to create and cancel than waking the waiter itself. A waiter that leaves one heap (released,
expired, or given up on) is marked done in O(1) and dropped from the other lazily; dead entries
are purged when they outnumber live ones, and both heaps are emptied whenever no live waiter
remains, so nothing is left behind.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_COMPACT_MIN = 64


class Waiter(Generic[T]):
    """One caller waiting for ``lsn``; ``payload`` is whatever the shell wakes (a future)."""

    __slots__ = ("lsn", "payload", "active", "timeline", "deadline")

    def __init__(
        self, lsn: int, payload: T, timeline: int | None = None, deadline: float | None = None
    ) -> None:
        self.lsn = lsn
        self.payload = payload
        self.active = True
        #: The WAL timeline the LSN is on, when known.
        self.timeline = timeline
        #: When the shell gives up on this waiter (its clock), or None for never.
        self.deadline = deadline

    def __repr__(self) -> str:
        state = "waiting" if self.active else "done"
        return f"<Waiter lsn={self.lsn} {state}>"


class WaiterQueue(Generic[T]):
    """Waiters ordered by LSN, and by deadline for those that have one."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Waiter[T]]] = []
        self._deadlines: list[tuple[float, int, Waiter[T]]] = []
        self._seq = itertools.count()
        self._live = 0
        #: Live waiters with a deadline (the rest of ``_deadlines`` is dead entries).
        self._timed = 0
        #: At least the highest LSN in the heap (never lowered by a discard; reset when empty).
        self._max = -1
        #: Heaps drained but not yet freed (see :meth:`drain`).
        self._spent: list[list[Any]] = []

    def __len__(self) -> int:
        """Number of live waiters."""
        return self._live

    @property
    def heap_size(self) -> int:
        """Entries held in both heaps, live or dead (for tests: bounded by about twice the
        live count, and 0 when nobody waits)."""
        return len(self._heap) + len(self._deadlines)

    def add(
        self, lsn: int, payload: T, timeline: int | None = None, deadline: float | None = None
    ) -> Waiter[T]:
        """Add a waiter for ``lsn`` (on ``timeline``, when known), to be given up at
        ``deadline`` (see :meth:`pop_expired`), if any."""
        waiter = Waiter(lsn, payload, timeline, deadline)
        seq = next(self._seq)
        heapq.heappush(self._heap, (lsn, seq, waiter))
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, seq, waiter))
            self._timed += 1
        self._live += 1
        if lsn > self._max:
            self._max = lsn
        return waiter

    def discard(self, waiter: Waiter[T]) -> None:
        """Forget a waiter that stopped waiting. Idempotent."""
        if waiter.active:
            self._retire(waiter)
            self._tidy()

    def pop_reached(self, replayed: int) -> list[Waiter[T]]:
        """Remove and return the live waiters whose LSN is ``<= replayed``: lowest first, or
        all of them as :meth:`drain` does when ``replayed`` reaches the highest."""
        if replayed >= self._max:
            return self.drain()
        return self._pop_upto(self._heap, replayed)

    def pop_expired(self, now: float) -> list[Waiter[T]]:
        """Remove and return the live waiters whose deadline is ``<= now``, earliest first."""
        return self._pop_upto(self._deadlines, now)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live waiter, or None."""
        heap = self._deadlines
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_lost(self, lost: Callable[[int, int], bool]) -> list[Waiter[T]]:
        """Remove and return the live waiters with a timeline for which ``lost(lsn,
        timeline)`` holds: those a promotion left behind (a rare event: a scan)."""
        out = [
            e[2]
            for e in self._heap
            if e[2].active and e[2].timeline is not None and lost(e[0], e[2].timeline)
        ]  # fmt: skip
        for w in out:
            self.discard(w)
        return out

    def drain(self) -> list[Waiter[T]]:
        """Remove and return every live waiter, in heap order (roughly by LSN: nobody needs
        more, as they are all released at once).

        The emptied heaps are kept, not freed, until :meth:`forget_spent`: freeing 10,000
        entries took longer than taking the waiters out, and the caller can do it once the
        waiters run."""
        out = [e[2] for e in self._heap if e[2].active]
        for w in out:
            w.active = False
        self._spent.append(self._heap)
        self._spent.append(self._deadlines)
        self._heap = []
        self._deadlines = []
        self._clear()
        return out

    def forget_spent(self) -> None:
        """Free the heaps :meth:`drain` emptied."""
        self._spent.clear()

    def _pop_upto(self, heap: list[Any], bound: float) -> list[Waiter[T]]:
        """Pop ``heap`` (either one) while its key is ``<= bound``; retire the live waiters."""
        out: list[Waiter[T]] = []
        while heap and heap[0][0] <= bound:
            waiter = heapq.heappop(heap)[2]
            if waiter.active:
                self._retire(waiter)
                out.append(waiter)
        self._tidy()
        return out

    def _retire(self, waiter: Waiter[T]) -> None:
        waiter.active = False
        self._live -= 1
        if waiter.deadline is not None:
            self._timed -= 1

    def _tidy(self) -> None:
        """Empty both heaps when nobody waits; purge a heap whose dead entries outnumber its
        live ones (amortised O(1) a waiter)."""
        if self._live == 0:
            self._clear()
            return
        # Waiters mostly leave in the order they came (by LSN, and so by deadline): the ones a
        # release took are then at the top of the deadline heap, and go from there at the
        # cost of the pops -- purging the whole heap would put a spike into one release.
        self.next_deadline()
        if len(self._heap) > 2 * self._live + _COMPACT_MIN:
            self._heap = [e for e in self._heap if e[2].active]
            heapq.heapify(self._heap)
        if len(self._deadlines) > 2 * self._timed + _COMPACT_MIN:
            self._deadlines = [e for e in self._deadlines if e[2].active]
            heapq.heapify(self._deadlines)

    def _clear(self) -> None:
        self._heap.clear()
        self._deadlines.clear()
        self._live = 0
        self._timed = 0
        self._max = -1

