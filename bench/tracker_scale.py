"""Tracker scale: many concurrent waiters in one process, woken by progress broadcasts.

A real :class:`~writebus.client.tracker.LsnTracker` subscribes on the replica region's NATS server under a
private prefix; this module publishes the broadcasts itself (as a replica monitor would), with
LSNs far above anything the real replica has replayed so only these broadcasts release anyone.
Wake-up latency is each waiter's resumption time minus the publish time of the broadcast that
released it.

Two reference points put the numbers in context: the same wake-up with bare asyncio futures (no
tracker, no NATS: what resuming that many tasks costs in this interpreter), and the waiter
heap's release cost counted in comparisons (O(woken * log n)) next to a scan of every waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bench.harness import settings
from bench.stats import percentile
from writebus.bus.embedded.stack import Stack
from writebus.client.connect import connect_nats
from writebus.client.protocol import encode, lsn_update
from writebus.client.subjects import Subjects
from writebus.client.tracker import LsnTracker
from writebus.client.waiters import WaiterQueue

#: Synthetic LSNs start here: far beyond the real replica, so its fallback reads release nobody.
BASE_LSN = 1 << 44
REPLICA_ID = "bench-replica"

R = TypeVar("R")


@dataclass(frozen=True)
class WakeRun:
    """Waking ``waiters`` waiters, ``per_broadcast`` per broadcast.

    ``advance_ms``: time inside the tracker (heap pops and setting futures) over all
    broadcasts; the rest of the wake-up is the event loop resuming the waiting tasks.
    """

    waiters: int
    per_broadcast: int
    wake_p50_ms: float
    wake_p99_ms: float
    wake_max_ms: float
    cpu_s: float
    advance_ms: float

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the report (counts stay integers)."""
        return {k: v if isinstance(v, int) else round(v, 4) for k, v in self.__dict__.items()}


def _update(region: str, lsn: int) -> bytes:
    return encode(
        lsn_update(region=region, replica_id=REPLICA_ID, lsn=lsn, role="replica", in_recovery=True)
    )


async def _until(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("tracker benchmark: condition not reached")
        await asyncio.sleep(0.001)


async def wake_run(stack: Stack, *, waiters: int, per_broadcast: int) -> WakeRun:
    """Add ``waiters`` waiters for distinct LSNs, then release them ``per_broadcast`` at a time,
    each broadcast once the previous batch has woken."""
    region = stack.replica_region
    s = settings(stack, region, prefix=f"bench_tracker_{uuid.uuid4().hex[:8]}")
    s = s.replace(replica_id=REPLICA_ID)
    subject = Subjects(s.prefix).lsn(region)
    tracker_nc = await connect_nats(s, name="bench-tracker")
    # Broadcasts wake these waiters (their positions are made up): no probe of the replica.
    tracker = LsnTracker(s, tracker_nc, stale_after=3600.0, probe=False)
    await tracker.start()
    advance_s = 0.0
    advance = tracker.advance

    def timed_advance(replayed: int | None) -> int:
        nonlocal advance_s
        t = time.perf_counter()
        n = advance(replayed)
        advance_s += time.perf_counter() - t
        return n

    tracker.advance = timed_advance  # type: ignore[method-assign]
    nc = await connect_nats(s, name="bench-tracker-publisher")
    try:
        # Until heard: a subscription this new can still miss a publish from another
        # connection, and nothing else broadcasts on this prefix.
        for _ in range(50):
            await nc.publish(subject, _update(region, BASE_LSN))
            with contextlib.suppress(TimeoutError):
                await _until(lambda: tracker.replayed == BASE_LSN, timeout=0.2)
                break
        else:
            raise TimeoutError("tracker benchmark: the first broadcast was never heard")
        advance_s = 0.0
        woke = [0.0] * waiters

        async def wait(i: int) -> None:
            await tracker.wait_for(BASE_LSN + 1 + i, 120.0)
            woke[i] = time.perf_counter()

        tasks = [asyncio.create_task(wait(i), name=f"bench-waiter-{i}") for i in range(waiters)]
        await _until(lambda: tracker.waiting == waiters)
        released = [0.0] * waiters
        gc.collect()  # every waiter in place: start from a clean collector, as bare futures do
        cpu0 = time.process_time()
        for lo in range(0, waiters, per_broadcast):
            hi = min(waiters, lo + per_broadcast)
            batch = asyncio.gather(*tasks[lo:hi])  # before the clock starts, as for bare futures
            t = time.perf_counter()
            await nc.publish(subject, _update(region, BASE_LSN + hi))
            released[lo:hi] = [t] * (hi - lo)
            await batch
        cpu = time.process_time() - cpu0
    finally:
        await nc.close()
        await tracker.close()
        await tracker_nc.close()
    wake = [(w - r) * 1000 for w, r in zip(woke, released, strict=True)]
    return WakeRun(
        waiters=waiters,
        per_broadcast=per_broadcast,
        wake_p50_ms=percentile(wake, 50),
        wake_p99_ms=percentile(wake, 99),
        wake_max_ms=max(wake),
        cpu_s=cpu,
        advance_ms=advance_s * 1000,
    )


async def bare_asyncio_wake(waiters: int) -> dict[str, float]:
    """Wake ``waiters`` tasks awaiting plain futures, all at once: the interpreter's floor."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(waiters)]
    woke = [0.0] * waiters

    async def wait(i: int) -> None:
        await futures[i]
        woke[i] = time.perf_counter()

    tasks = [asyncio.create_task(wait(i)) for i in range(waiters)]
    # Gathered before the clock starts, as :func:`wake_run` does before its broadcast lands:
    # gathering 10,000 tasks takes milliseconds that are not waking anyone.
    everyone = asyncio.gather(*tasks)
    await asyncio.sleep(0)
    gc.collect()  # as in wake_run: the waiters are not young garbage-collector work
    t = time.perf_counter()
    for f in futures:
        f.set_result(None)
    await everyone
    wake = [(w - t) * 1000 for w in woke]
    return {
        "wake_p50_ms": round(percentile(wake, 50), 4),
        "wake_p99_ms": round(percentile(wake, 99), 4),
        "per_task_us": round(max(wake) * 1000 / waiters, 3),
    }


async def wake_all_side_by_side(
    stack: Stack, *, waiters: int, repeats: int = 3
) -> tuple[WakeRun, dict[str, float], dict[str, list[float]]]:
    """One broadcast waking ``waiters`` tracker waiters, and the same number of bare futures
    woken at once, ``repeats`` times each, alternating. Returns the tracker run and the bare
    run with the median p99 of their series, and every p99 (``{"tracker": [...], "bare":
    [...]}``).

    Both start their clock right after a full garbage collection, with every waiter in place.
    10,000 waiting tasks are enough for a collection to land inside a wake-up, adding tens of
    milliseconds to that run only, and freshly made tasks (bare futures were made just before
    their wake-up, the tracker's waiters a while before) cost each young-generation pass more:
    without a common starting point and repeats, the ratio measured the collector.
    """
    tracker_runs: list[WakeRun] = []
    bare_runs: list[dict[str, float]] = []
    for _ in range(repeats):
        tracker_runs.append(await wake_run(stack, waiters=waiters, per_broadcast=waiters))
        bare_runs.append(await bare_asyncio_wake(waiters))
    tracker, tracker_p99s = median_p99(tracker_runs, lambda r: r.wake_p99_ms)
    bare, bare_p99s = median_p99(bare_runs, lambda r: r["wake_p99_ms"])
    return tracker, bare, {"tracker": tracker_p99s, "bare": bare_p99s}


async def wake_repeated(
    stack: Stack, *, waiters: int, per_broadcast: int, repeats: int
) -> tuple[WakeRun, list[float]]:
    """:func:`wake_run` ``repeats`` times: the run with the median p99, and every p99 (one
    run's p99 is one of its broadcasts meeting a pause -- a collection, the scheduler)."""
    runs = [
        await wake_run(stack, waiters=waiters, per_broadcast=per_broadcast)
        for _ in range(repeats)
    ]
    return median_p99(runs, lambda r: r.wake_p99_ms)


def median_p99(runs: list[R], p99: Callable[[R], float]) -> tuple[R, list[float]]:
    """The run with the median p99 of ``runs``, and their p99s in order (ms, rounded)."""
    ordered = sorted(runs, key=p99)
    return ordered[len(ordered) // 2], [round(p99(r), 3) for r in ordered]


class _Counted(int):
    """An LSN that counts the comparisons the heap makes on it."""

    calls = 0

    def __lt__(self, other: object) -> bool:
        _Counted.calls += 1
        return int.__lt__(self, other)  # type: ignore[operator]


def release_cost(size: int, release: int, *, repeats: int = 200, seed: int = 7) -> dict[str, float]:
    """Cost for :class:`~writebus.client.waiters.WaiterQueue` to release the ``release`` lowest of
    ``size`` waiters (refilled after each release so the size stays ``size``).

    Returns mean microseconds per release, heap comparisons per released waiter (about
    ``2 * log2(size)`` for a heap), and the microseconds a scan of all ``size`` waiters would take.
    """
    rng = random.Random(seed)
    lsns = list(range(1, size + 1))
    rng.shuffle(lsns)

    def timed(counted: bool) -> tuple[float, float]:
        q: WaiterQueue[None] = WaiterQueue()
        for lsn in lsns:
            q.add(_Counted(lsn) if counted else lsn, None)
        top, replayed, total, comparisons = size, 0, 0.0, 0
        for _ in range(repeats):
            replayed += release
            _Counted.calls = 0
            t0 = time.perf_counter()
            out = q.pop_reached(replayed)
            total += time.perf_counter() - t0
            comparisons += _Counted.calls
            assert len(out) == release
            for _ in range(release):
                top += 1
                q.add(_Counted(top) if counted else top, None)
        return total / repeats * 1e6, comparisons / (repeats * release)

    us, _ = timed(counted=False)
    _, per_waiter = timed(counted=True)
    waiting = [(lsn, None) for lsn in lsns]
    t0 = time.perf_counter()
    for _ in range(5):
        reached = [w for w in waiting if w[0] <= release]
    scan_us = (time.perf_counter() - t0) / 5 * 1e6
    assert len(reached) == release
    return {
        "us": round(us, 2),
        "comparisons_per_woken": round(per_waiter, 2),
        "log2_n": round(math.log2(size), 2),
        "scan_us": round(scan_us, 1),
    }
