"""Fault injection under load (issue #4): exactly-once holds while servers die and come back.

Each scenario runs 1,000 writes at concurrency 32 from both regions (``syd`` directly on the
primary, ``lax`` through the bus) on the package's own stack, injects its fault mid-load, then
checks the primary: every acknowledged write present exactly once, no write that failed
non-retryably present, nothing applied twice -- and the lax tracker holds no leftover waiter.
Processes are killed with SIGKILL where a scenario says *killed*.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from tests.faults.conftest import Rig
from tests.faults.load import Load, LoadResult, Outcome, run_while
from writebus.bus.embedded.bus_process import BusProcess
from writebus.client import RetryPolicy

pytestmark = pytest.mark.slow

TOTAL = 1000
CONCURRENCY = 32
#: Writes started per second: spreads each load over >= 5 s, so every fault has load on both
#: sides of it (unpaced, 1,000 writes finish in under two seconds).
RATE = 200.0
#: Seconds each write spends in its transaction: ~15 writes are in flight at any moment, so a
#: fault lands on open transactions and unanswered requests.
WORK = 0.04
#: A load must end within this long; a hang fails the scenario instead of stalling the session.
LOAD_DEADLINE = 90.0
#: The fault starts once this many writes were acknowledged.
FAULT_AT = 250


def _load(rig: Rig, **options: object) -> Load:
    settings: dict[str, object] = dict(total=TOTAL, concurrency=CONCURRENCY, rate=RATE, work=WORK)
    settings.update(options)
    return rig.load(**settings)


def _retried(load: Load) -> int:
    """Writes that needed more than one attempt (retried over the bus, or re-run directly)."""
    return sum(o.attempts > 1 for o in load.result_so_far.outcomes)


async def _kill(bus: BusProcess) -> None:
    bus.kill()
    await asyncio.to_thread(bus.wait, 10)


def _lax(load: Load) -> list[Outcome]:
    return [o for o in load.result_so_far.outcomes if o.region == "lax"]


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait until ``predicate()`` holds (checked every 10 ms); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(0.01)


async def test_worker_killed_while_another_serves(rig: Rig) -> None:
    """One of two syd workers is SIGKILLed mid-load and later restarted: the other keeps
    serving, requests caught on the dead one are retried with the same id, every write is
    acknowledged and none applies twice."""
    a, _b, _lax_bus = await rig.start_buses("syd", "syd", "lax")
    await rig.open_clients()
    load = _load(rig)

    async def fault() -> None:
        await load.wait_acked(FAULT_AT)
        await _kill(a)
        load.mark("worker_killed")
        await load.wait_acked(2 * FAULT_AT)
        await rig.start_bus("syd", "restarted")
        load.mark("worker_restarted")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    report = await rig.check(load, retried=_retried(load))
    assert report.all_acked, report.explain()


async def test_only_worker_killed_and_restarted(rig: Rig) -> None:
    """The only syd worker is SIGKILLed mid-load and restarted ~3 s later: lax clients keep
    retrying (no worker, RPC timeout) with the same ids and go through the new worker; nothing
    applies twice and nothing fails non-retryably."""
    (worker, _lax_bus) = await rig.start_buses("syd", "lax")
    await rig.open_clients()
    load = _load(rig)

    async def fault() -> None:
        await load.wait_acked(FAULT_AT)
        await _kill(worker)
        load.mark("worker_killed")
        await asyncio.sleep(3.0)  # the outage: no worker serves writes for this long
        await rig.start_bus("syd", "restarted")
        load.mark("worker_restarted")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    report = await rig.check(load, retried=_retried(load))
    assert report.other == 0, report.explain()
    # Retryable failures are allowed by the invariant when an outage outlasts the patience;
    # this one (~4 s) is well inside it.
    assert report.all_acked, report.explain()


async def test_replica_region_nats_restarted(rig: Rig) -> None:
    """The lax nats-server is restarted mid-load: the lax client, its tracker and the lax bus
    reconnect. Requests already sent are retried with their ids until acknowledged; writes
    started while lax is disconnected are refused at once as not applied (and are absent)."""
    await rig.start_buses("syd", "lax")
    await rig.open_clients()
    load = _load(rig)

    async def fault() -> None:
        await load.wait_acked(FAULT_AT)
        await asyncio.to_thread(rig.stack.nats["lax"].restart)
        load.mark("nats_lax_restarted")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    report = await rig.check(load, retried=_retried(load))
    assert report.other == 0 and report.unknown == 0, report.explain()
    assert set(report.errors) <= {"DisconnectedError"}, report.explain()


async def test_primary_restarted(rig: Rig) -> None:
    """The Postgres primary is restarted (fast shutdown) mid-load: open transactions abort,
    the workers' pools replace their dead connections, lax writes are retried through it;
    nothing applies twice and nothing is present that failed non-retryably."""
    await rig.start_buses("syd", "syd", "lax")
    await rig.open_clients()
    load = _load(rig)

    async def fault() -> None:
        await load.wait_acked(FAULT_AT)
        await asyncio.to_thread(rig.stack.primary.restart)
        load.mark("primary_restarted")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    report = await rig.check(load, retried=_retried(load))
    assert report.other == 0, report.explain()
    lax_failed = [o for o in _lax(load) if o.status != "acked"]
    assert not lax_failed, lax_failed[:5]  # lax writes retry through the restart


async def test_replica_stopped(rig: Rig) -> None:
    """The lax replica is stopped mid-load: lax writes still commit on the primary, their
    waits end with ReplicationTimeoutError within the timeout + 10 % (none hangs); once the
    replica is back, waits succeed again."""
    timeout = 2.0
    await rig.start_buses("syd", "lax")
    await rig.open_clients()
    load = _load(rig, replication_timeout=timeout)

    def timeouts(r: LoadResult) -> int:
        return sum(o.replication_timeout for o in r.outcomes)

    async def fault() -> None:
        await load.wait_acked(FAULT_AT)
        await asyncio.to_thread(rig.stack.replica.stop, "fast")
        load.mark("replica_stopped")
        await load.wait_until(lambda r: timeouts(r) >= 20, timeout=30)
        await asyncio.to_thread(rig.stack.replica.start)
        load.mark("replica_started")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    timed_out = [o for o in _lax(load) if o.replication_timeout]
    report = await rig.check(load, timeout=timeout)
    assert report.all_acked, report.explain()
    assert len(timed_out) >= 20
    slowest = max(o.wait_s or 0.0 for o in timed_out)
    assert all(timeout <= (o.wait_s or 0.0) <= timeout * 1.1 for o in timed_out), slowest
    # Waits succeed again after the restart: lax writes started a second after it replicated,
    # and a write now is readable locally as soon as it returns.
    back = dict((label, t) for label, t, _ in load.events)["replica_started"]
    later = [o for o in _lax(load) if o.started >= back + 1.0]
    assert all(o.replicated and o.error is None for o in later), later[:3]
    res = await rig.lax.execute(
        f"INSERT INTO {rig.table}(key, region) VALUES ('after-restart', 'lax') RETURNING id"
    )
    assert res.replicated
    assert await rig.lax.fetchval(
        f"SELECT key FROM {rig.table} WHERE id = %s", [res.rows[0][0]]
    ) == "after-restart"


async def test_progress_publisher_stopped(rig: Rig) -> None:
    """The lax bus node (the region's replay-progress publisher) is SIGKILLed mid-load: the
    tracker notices the missing heartbeats and polls the local replica itself, so lax writes
    keep succeeding and no wait hangs; when a publisher is back, broadcasts are used again."""
    (_worker, publisher) = await rig.start_buses("syd", "lax")
    await rig.open_clients()
    tracker = rig.lax.tracker
    assert tracker is not None
    load = _load(rig)
    polls_before = 0
    updates_after_kill = 0

    async def fault() -> None:
        nonlocal polls_before, updates_after_kill
        await load.wait_acked(FAULT_AT)
        await _kill(publisher)
        load.mark("publisher_killed")
        polls_before = tracker.fallback_polls
        # Carry on writing until the tracker has been polling on its own for a while.
        await load.wait_until(
            lambda r: tracker.fallback_polls > polls_before + 20
            and r.count("acked") >= 3 * FAULT_AT,
            timeout=30,
        )
        load.mark("fallback_polling")
        updates_after_kill = tracker.updates_received
        await rig.start_bus("lax", "publisher-restarted")
        load.mark("publisher_restarted")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    report = await rig.check(
        load, fallback_polls_during_outage=tracker.fallback_polls - polls_before
    )
    assert report.all_acked, report.explain()
    assert report.replication_timeouts == 0, report.explain()
    assert tracker.fallback_polls > polls_before
    # Detecting the silence takes the tracker's staleness window (2 heartbeats + 0.5 s); no
    # wait took much longer than that.
    assert max(o.wait_s or 0.0 for o in _lax(load)) < 4.0
    # Broadcasts from the new publisher are heard again.
    await wait_for(lambda: tracker.updates_received > updates_after_kill, timeout=10)
    res = await rig.lax.execute(f"INSERT INTO {rig.table}(key, region) VALUES ('probe', 'lax')")
    assert res.replicated


async def test_rolling_restart_with_sigterm(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Two syd workers are restarted one after the other with SIGTERM under load (each drains,
    exits 0, and is replaced before the next goes): zero failed requests, with the client's
    default retry policy, and not one request even needed a retry (no drain gap, and no
    queue on the worker left alone: see the committer's overdue rule). A failure names each
    retry's reason, from the client's retry log."""
    caplog.set_level(logging.DEBUG, logger="writebus.client.retry")
    first, second, _lax_bus = await rig.start_buses("syd", "syd", "lax")
    await rig.open_clients(retry=RetryPolicy())
    load = _load(rig, rate=120.0)  # ~8.3 s: room for two restarts
    codes: list[int | None] = []

    async def fault() -> None:
        await load.wait_acked(FAULT_AT // 2)
        for n, old in enumerate((first, second), 1):
            old.terminate()
            load.mark(f"sigterm_{n}")
            codes.append(await asyncio.to_thread(old.wait, 30))
            load.mark(f"exited_{n}")
            await rig.start_bus("syd", f"replacement{n}")
            load.mark(f"replaced_{n}")

    await run_while(load, fault, timeout=LOAD_DEADLINE)
    report = await rig.check(load, retried=_retried(load), exit_codes=codes)
    assert codes == [0, 0]
    assert report.all_acked, report.explain()
    assert report.acked == TOTAL
    retries = [r.getMessage() for r in caplog.records if r.name == "writebus.client.retry"]
    assert report.extra["retried"] == 0, f"{report.explain()}; events={load.events}; {retries}"
