"""The waiter heap: ordering, release cost, and nothing left behind."""

from __future__ import annotations

import gc
import random
import weakref

from hypothesis import given
from hypothesis import strategies as st

from writebus.client.waiters import WaiterQueue


def test_pop_reached_releases_only_satisfied_in_lsn_order() -> None:
    """Waiters at or below the replayed LSN are released lowest first; others stay."""
    q: WaiterQueue[str] = WaiterQueue()
    for lsn in (30, 10, 20, 40):
        q.add(lsn, f"w{lsn}")
    out = q.pop_reached(25)
    assert [w.payload for w in out] == ["w10", "w20"]
    assert len(q) == 2
    assert [w.payload for w in q.pop_reached(35)] == ["w30"]


def test_equal_lsn_is_reached() -> None:
    """A waiter for exactly the replayed LSN is released."""
    q: WaiterQueue[int] = WaiterQueue()
    q.add(7, 1)
    assert [w.payload for w in q.pop_reached(7)] == [1]


def test_discarded_waiters_are_not_released_and_heap_empties() -> None:
    """Discarded waiters are never returned, and the heap is empty once none is live."""
    q: WaiterQueue[int] = WaiterQueue()
    ws = [q.add(i, i) for i in range(10)]
    for w in ws[:5]:
        q.discard(w)
    q.discard(ws[0])  # idempotent
    assert len(q) == 5
    assert [w.payload for w in q.pop_reached(100)] == [5, 6, 7, 8, 9]
    assert len(q) == 0 and q.heap_size == 0


def test_discarding_all_clears_heap() -> None:
    """Cancelling every waiter leaves no entry behind."""
    q: WaiterQueue[int] = WaiterQueue()
    ws = [q.add(i, i) for i in range(1000)]
    for w in ws:
        q.discard(w)
    assert len(q) == 0 and q.heap_size == 0


def test_dead_entries_are_compacted() -> None:
    """Heap size stays bounded by about twice the live waiters under churn."""
    q: WaiterQueue[int] = WaiterQueue()
    keep = [q.add(10**9 + i, i) for i in range(100)]
    for i in range(10_000):
        q.discard(q.add(i, i))
    assert len(q) == len(keep)
    assert q.heap_size <= 2 * len(keep) + 66


def test_release_does_not_touch_unreached_waiters() -> None:
    """Releasing k of n waiters pops only about k heap entries (no scan of n)."""
    q: WaiterQueue[int] = WaiterQueue()
    for i in range(10_000):
        q.add(1000 + i, i)
    out = q.pop_reached(1009)
    assert len(out) == 10
    assert q.heap_size == 10_000 - 10


@given(
    st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=60),
    st.integers(0, 60),
)
def test_model(entries: list[tuple[int, bool]], replayed: int) -> None:
    """Against a plain list model: released = live waiters with lsn <= replayed, sorted."""
    q: WaiterQueue[int] = WaiterQueue()
    live = []
    for i, (lsn, cancel) in enumerate(entries):
        w = q.add(lsn, i)
        if cancel:
            q.discard(w)
        else:
            live.append((lsn, i))
    out = q.pop_reached(replayed)
    expected = sorted((lsn, i) for lsn, i in live if lsn <= replayed)
    got = [(w.lsn, w.payload) for w in out]
    if any(lsn > replayed for lsn, _ in live):
        assert got == expected  # popped from the heap one by one: lowest first
    else:
        assert sorted(got) == expected  # everyone at once: in heap order
    assert len(q) == len(live) - len(expected)


def test_drain_returns_all_live() -> None:
    """drain() hands back every live waiter and empties the queue."""
    q: WaiterQueue[int] = WaiterQueue()
    ws = [q.add(random.randint(0, 100), i) for i in range(20)]
    q.discard(ws[3])
    assert len(q.drain()) == 19
    assert len(q) == 0 and q.heap_size == 0


def test_pop_expired_releases_due_waiters_earliest_first() -> None:
    """Waiters whose deadline has passed leave, earliest first; the rest and the undated stay."""
    q: WaiterQueue[str] = WaiterQueue()
    q.add(10, "late", deadline=9.0)
    q.add(20, "early", deadline=3.0)
    q.add(30, "never")
    q.add(40, "mid", deadline=5.0)
    assert q.next_deadline() == 3.0
    assert [w.payload for w in q.pop_expired(5.0)] == ["early", "mid"]
    assert q.next_deadline() == 9.0 and len(q) == 2
    assert [w.payload for w in q.pop_reached(100)] == ["late", "never"]
    assert q.next_deadline() is None and q.heap_size == 0


def test_released_waiters_never_expire_and_expired_never_release() -> None:
    """A waiter leaves by exactly one door: released ones are skipped by the deadline heap and
    expired ones by the LSN heap."""
    q: WaiterQueue[int] = WaiterQueue()
    for i in range(10):
        q.add(i, i, deadline=float(i))
    assert [w.payload for w in q.pop_reached(4)] == [0, 1, 2, 3, 4]
    assert q.next_deadline() == 5.0
    assert [w.payload for w in q.pop_expired(7.0)] == [5, 6, 7]
    assert [w.payload for w in q.pop_reached(100)] == [8, 9]
    assert q.pop_expired(100.0) == [] and q.heap_size == 0


def test_deadline_heap_stays_bounded_under_churn() -> None:
    """Waiters released long before their deadline do not pile up in the deadline heap."""
    q: WaiterQueue[int] = WaiterQueue()
    keep = [q.add(10**9 + i, i, deadline=1e9) for i in range(100)]
    for i in range(10_000):
        q.add(i, i, deadline=1e6 + i)
        assert len(q.pop_reached(i)) == 1
    assert len(q) == len(keep)
    assert q.heap_size <= 2 * (2 * len(keep) + 66)


@given(
    st.lists(st.tuples(st.integers(0, 50), st.none() | st.integers(0, 20)), max_size=60),
    st.integers(0, 60),
    st.integers(0, 25),
)
def test_model_with_deadlines(
    entries: list[tuple[int, int | None]], replayed: int, now: int
) -> None:
    """Against a plain model: expiry takes the live waiters due by ``now``, then a release
    takes the remaining ones with lsn <= replayed; nobody is handed out twice."""
    q: WaiterQueue[int] = WaiterQueue()
    for i, (lsn, deadline) in enumerate(entries):
        q.add(lsn, i, deadline=None if deadline is None else float(deadline))
    expired = q.pop_expired(float(now))
    due = sorted((d, i) for i, (_, d) in enumerate(entries) if d is not None and d <= now)
    assert [w.payload for w in expired] == [i for _, i in due]
    gone = {i for _, i in due}
    released = q.pop_reached(replayed)
    expected = sorted(
        (lsn, i) for i, (lsn, _) in enumerate(entries) if i not in gone and lsn <= replayed
    )
    assert sorted((w.lsn, w.payload) for w in released) == expected
    assert len(q) == len(entries) - len(due) - len(expected)


def test_drained_heaps_are_freed_by_forget_spent() -> None:
    """drain() keeps the emptied heaps (freeing them is the caller's to schedule, after the
    wake-up); forget_spent() lets them go, and nothing else holds the payloads."""

    class Payload:
        pass

    q: WaiterQueue[Payload] = WaiterQueue()
    ref = weakref.ref(payload := Payload())
    q.add(1, payload, deadline=5.0)
    del payload
    assert len(q.drain()) == 1 and q.heap_size == 0
    gc.collect()
    assert ref() is not None
    q.forget_spent()
    gc.collect()
    assert ref() is None


def test_in_order_releases_leave_no_dead_deadlines() -> None:
    """Waiters released in the order they came leave the deadline heap as they go: no dead
    entries pile up for a purge to sweep (which would cost one release a whole-heap pass)."""
    q: WaiterQueue[int] = WaiterQueue()
    for i in range(1000):
        q.add(i, i, deadline=100.0 + i)
    for top in range(99, 900, 100):
        assert len(q.pop_reached(top)) == 100
        assert q.heap_size == 2 * len(q)
