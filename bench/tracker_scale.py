"""Tracker scale: many concurrent waiters in one process, woken by progress broadcasts.

A real :class:`~client.tracker.LsnTracker` subscribes on the replica region's NATS server under a
private prefix; this module publishes the broadcasts itself (as a replica monitor would), with
LSNs far above anything the real replica has replayed so only these broadcasts release anyone.
Wake-up latency is each waiter's resumption time minus the publish time of the broadcast that
released it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.harness import settings
from bench.stats import percentile
from bus.embedded.stack import Stack
from client.connect import connect_nats
from client.lsn import format_lsn
from client.protocol import LsnUpdate, encode
from client.subjects import Subjects
from client.tracker import LsnTracker
from client.waiters import WaiterQueue

#: Synthetic LSNs start here: far beyond the real replica, so its fallback reads release nobody.
BASE_LSN = 1 << 44
REPLICA_ID = "bench-replica"


@dataclass(frozen=True)
class WakeRun:
    """Waking ``waiters`` waiters, ``per_broadcast`` per broadcast."""

    waiters: int
    per_broadcast: int
    wake_p50_ms: float
    wake_p99_ms: float
    wake_max_ms: float
    cpu_s: float
    wall_s: float


def _update(region: str, lsn: int) -> bytes:
    return encode(
        LsnUpdate(
            region=region,
            replica_id=REPLICA_ID,
            lsn=format_lsn(lsn),
            lsn_int=lsn,
            time=time.time(),
            in_recovery=True,
            role="replica",
        )
    )


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("tracker benchmark: condition not reached")
        await asyncio.sleep(0.001)


async def wake_run(stack: Stack, *, waiters: int, per_broadcast: int) -> WakeRun:
    """Add ``waiters`` waiters for distinct LSNs, then release them ``per_broadcast`` at a time,
    one broadcast after the previous batch has woken."""
    region = stack.replica_region
    s = settings(stack, region, prefix=f"bench_tracker_{uuid.uuid4().hex[:8]}")
    s = s.replace(replica_id=REPLICA_ID)
    subject = Subjects(s.prefix).lsn(region)
    tracker = LsnTracker(s, stale_after=3600.0)
    await tracker.start()
    nc = await connect_nats(s, name="bench-tracker-publisher")
    try:
        await nc.publish(subject, _update(region, BASE_LSN))
        await _until(lambda: tracker.replayed == BASE_LSN)
        woke = [0.0] * waiters

        async def wait(i: int) -> None:
            await tracker.wait_for(BASE_LSN + 1 + i, 120.0)
            woke[i] = time.perf_counter()

        tasks = [asyncio.create_task(wait(i), name=f"bench-waiter-{i}") for i in range(waiters)]
        await _until(lambda: tracker.waiting == waiters)
        released = [0.0] * waiters
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        for lo in range(0, waiters, per_broadcast):
            hi = min(waiters, lo + per_broadcast)
            t = time.perf_counter()
            await nc.publish(subject, _update(region, BASE_LSN + hi))
            released[lo:hi] = [t] * (hi - lo)
            await asyncio.gather(*tasks[lo:hi])
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    finally:
        await nc.close()
        await tracker.close()
    wake = [(w - r) * 1000 for w, r in zip(woke, released, strict=True)]
    return WakeRun(
        waiters=waiters,
        per_broadcast=per_broadcast,
        wake_p50_ms=percentile(wake, 50),
        wake_p99_ms=percentile(wake, 99),
        wake_max_ms=max(wake),
        cpu_s=cpu,
        wall_s=wall,
    )


def release_cost_us(size: int, release: int, *, repeats: int = 200, seed: int = 7) -> float:
    """Mean microseconds for :class:`~client.waiters.WaiterQueue` to release the ``release``
    lowest of ``size`` waiters (refilled after each release, so the size stays ``size``)."""
    rng = random.Random(seed)
    q: WaiterQueue[None] = WaiterQueue()
    lsns = list(range(1, size + 1))
    rng.shuffle(lsns)
    for lsn in lsns:
        q.add(lsn, None)
    top = size
    replayed = 0
    total = 0.0
    for _ in range(repeats):
        replayed += release
        t0 = time.perf_counter()
        out = q.pop_reached(replayed)
        total += time.perf_counter() - t0
        assert len(out) == release
        for _ in range(release):
            top += 1
            q.add(top, None)
    return total / repeats * 1e6

