"""Waiter bookkeeping for the LSN tracker: pure logic, no I/O.

Waiters sit in a min-heap keyed by LSN, so releasing the ``k`` waiters a broadcast satisfies costs
``O(k log n)`` -- never a scan of all ``n``. A broadcast that satisfies every waiter (the highest
LSN waited for is known) takes them all at once, without a single heap comparison. A waiter that gives up (timeout, cancellation) is
marked dead in O(1) and dropped lazily; dead entries are purged when they outnumber live ones and
the heap is emptied whenever no live waiter remains, so nothing is left behind.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")

_COMPACT_MIN = 64


class Waiter(Generic[T]):
    """One caller waiting for ``lsn``; ``payload`` is whatever the shell wakes (a future)."""

    __slots__ = ("lsn", "payload", "active", "timeline")

    def __init__(self, lsn: int, payload: T, timeline: int | None = None) -> None:
        self.lsn = lsn
        self.payload = payload
        self.active = True
        #: The WAL timeline the LSN is on, when known.
        self.timeline = timeline

    def __repr__(self) -> str:
        state = "waiting" if self.active else "done"
        return f"<Waiter lsn={self.lsn} {state}>"


class WaiterQueue(Generic[T]):
    """Waiters ordered by LSN."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Waiter[T]]] = []
        self._seq = itertools.count()
        self._live = 0
        self._dead = 0
        #: At least the highest LSN in the heap (never lowered by a discard; reset when empty).
        self._max = -1

    def __len__(self) -> int:
        """Number of live waiters."""
        return self._live

    @property
    def heap_size(self) -> int:
        """Entries held, live or dead (for tests: bounded by about twice the live count)."""
        return len(self._heap)

    def add(self, lsn: int, payload: T, timeline: int | None = None) -> Waiter[T]:
        """Add a waiter for ``lsn`` (on ``timeline``, when known)."""
        waiter = Waiter(lsn, payload, timeline)
        heapq.heappush(self._heap, (lsn, next(self._seq), waiter))
        self._live += 1
        if lsn > self._max:
            self._max = lsn
        return waiter

    def discard(self, waiter: Waiter[T]) -> None:
        """Forget a waiter that stopped waiting. Idempotent."""
        if not waiter.active:
            return
        waiter.active = False
        self._live -= 1
        self._dead += 1
        if self._live == 0:
            self._clear()
        elif self._dead > _COMPACT_MIN and self._dead > self._live:
            self._heap = [e for e in self._heap if e[2].active]
            heapq.heapify(self._heap)
            self._dead = 0

    def pop_reached(self, replayed: int) -> list[Waiter[T]]:
        """Remove and return the live waiters whose LSN is ``<= replayed``, lowest first."""
        if replayed >= self._max:
            return self.drain()
        out: list[Waiter[T]] = []
        heap = self._heap
        while heap and heap[0][0] <= replayed:
            waiter = heapq.heappop(heap)[2]
            if waiter.active:
                waiter.active = False
                self._live -= 1
                out.append(waiter)
            else:
                self._dead -= 1
        return out

    def pop_lost(self, switch: int, timeline: int) -> list[Waiter[T]]:
        """Remove and return the live waiters a promotion at ``switch`` onto ``timeline`` left
        behind: an LSN past the switch point on an older timeline (a rare event: a scan)."""
        out = [
            e[2]
            for e in self._heap
            if e[2].active and e[0] > switch and e[2].timeline is not None
            and e[2].timeline < timeline
        ]  # fmt: skip
        for w in out:
            self.discard(w)
        return out

    def drain(self) -> list[Waiter[T]]:
        """Remove and return every live waiter, lowest first. (LSNs mostly arrive in order, so
        the heap is nearly sorted already and the sort costs about one comparison each.)"""
        out = [e[2] for e in sorted(self._heap) if e[2].active]
        for w in out:
            w.active = False
        self._clear()
        return out

    def _clear(self) -> None:
        self._heap.clear()
        self._live = 0
        self._dead = 0
        self._max = -1

