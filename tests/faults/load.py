"""A write load from both regions, recording what each caller saw.

Every write inserts one row with a unique, client-chosen ``key`` so the primary can later be
checked against what the callers were told (:mod:`tests.faults.check`). The writes and the
concurrency are split evenly between the regions: ``syd`` clients write directly to the primary,
``lax`` clients through the bus (and wait for their local replica). Each write carries its own
request id. Each outcome is what the error said about the write (:class:`writebus.Outcome`):

* ``acked``: the call returned (or raised :class:`ReplicationTimeoutError`, which says the write
  *did commit* at a known LSN -- only the local replay is late);
* ``unknown``: :class:`OutcomeUnknownError` -- it may or may not have been applied; re-sending
  it with its request id tells which (:meth:`tests.faults.conftest.Rig.resolve`);
* ``not_applied``: an error that says the write was not applied -- it must be absent;
* ``other``: anything else (a bug: every write error states its outcome).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from writebus.client import Database, ReplicationTimeoutError, WriteBusError
from writebus.client import Outcome as WriteOutcome

Status = Literal["acked", "unknown", "not_applied", "other"]

#: Both regions, alternating write by write.
REGIONS: tuple[str, ...] = ("syd", "lax")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What the caller of one write saw.

    ``total_s`` is the whole call; ``wait_s`` the replication wait alone (lax writes only: they
    are sent without waiting, then wait with :meth:`Database.wait_for_lsn`, so the wait is timed
    on its own). ``error`` is the exception's type name.
    """

    key: str
    region: str
    request_id: str
    status: Status
    error: str | None = None
    message: str | None = None
    duplicate: bool = False
    replicated: bool = False
    attempts: int = 1
    started: float = 0.0
    total_s: float = 0.0
    wait_s: float | None = None

    @property
    def replication_timeout(self) -> bool:
        """The write committed but the local replica had not replayed it in time."""
        return self.error == ReplicationTimeoutError.__name__


@dataclass
class LoadResult:
    """Every outcome of one load, in completion order."""

    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: Status) -> int:
        """How many writes ended with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def attempted(self) -> int:
        """Writes started."""
        return len(self.outcomes)

    def keys(self, status: Status) -> set[str]:
        """Keys of the writes that ended with ``status``."""
        return {o.key for o in self.outcomes if o.status == status}

    def errors(self) -> dict[str, int]:
        """Error type name -> count, over every outcome that carries one."""
        return dict(collections.Counter(o.error for o in self.outcomes if o.error))

    def by(self, predicate: Callable[[Outcome], bool]) -> list[Outcome]:
        """Outcomes matching ``predicate``."""
        return [o for o in self.outcomes if predicate(o)]


def classify(exc: BaseException) -> Status:
    """The status of a write that raised ``exc``: what the error says about the write."""
    outcome = exc.outcome if isinstance(exc, WriteBusError) else None
    if outcome is WriteOutcome.APPLIED:
        return "acked"  # committed at a known LSN; only the local replay is late
    if outcome is WriteOutcome.UNKNOWN:
        return "unknown"
    if outcome is WriteOutcome.NOT_APPLIED:
        return "not_applied"
    return "other"


class Load:
    """``total`` writes into ``table`` at ``concurrency``, from the clients in ``dbs``.

    ``dbs`` maps a region to its :class:`Database`. ``rate`` (writes started per second, None:
    as fast as possible) spreads the load over time so a fault injected "mid-load" has load
    around it on both sides. ``work`` (seconds) is time each write spends inside its
    transaction on the primary (``pg_sleep``), as real work would: it keeps writes in flight, so
    a fault lands on open transactions and unanswered requests, not on an idle system.

    Start with :meth:`start`; :meth:`wait_acked` and :meth:`wait_until` let a scenario act once
    the load has reached a point; :meth:`result` waits for the end.
    """

    def __init__(
        self,
        dbs: Mapping[str, Database],
        table: str,
        *,
        total: int = 1000,
        concurrency: int = 32,
        rate: float | None = None,
        work: float = 0.0,
        rpc_timeout: float = 20.0,
        replication_timeout: float = 10.0,
        tag: str = "w",
        id_prefix: str = "",
    ) -> None:
        self.dbs = dict(dbs)
        self.table = table
        self.total = total
        self.concurrency = concurrency
        self.rate = rate
        self.work = work
        self.rpc_timeout = rpc_timeout
        self.replication_timeout = replication_timeout
        self.tag = tag
        self.id_prefix = id_prefix
        self.result_so_far = LoadResult()
        self._regions = [r for r in REGIONS if r in self.dbs]
        self._next = dict.fromkeys(self._regions, 0)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[LoadResult] | None = None
        self._t0 = 0.0
        self._finished = False
        #: (label, seconds since the start, writes acked by then), one per :meth:`mark`.
        self.events: list[tuple[str, float, int]] = []

    def __repr__(self) -> str:
        r = self.result_so_far
        return f"<Load {self.table} done={r.attempted}/{self.total} acked={r.count('acked')}>"

    # -- driving --------------------------------------------------------------------------

    def start(self) -> Load:
        """Start the load in a named task."""
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"fault-load-{self.table}")
        return self

    async def result(self, timeout: float) -> LoadResult:
        """Wait for every write to end (``timeout`` guards against a hang: it fails the test)."""
        assert self._task is not None, "start() the load first"
        return await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def wait_until(self, predicate: Callable[[LoadResult], bool], timeout: float) -> None:
        """Wait until ``predicate(outcomes so far)`` holds, re-checked after every write."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: predicate(self.result_so_far) or self._finished),
                timeout,
            )
        if not predicate(self.result_so_far):
            raise AssertionError(f"the load ended before the condition held: {self!r}")

    async def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        """Wait until ``n`` writes have been acknowledged."""
        await self.wait_until(lambda r: r.count("acked") >= n, timeout)

    def mark(self, label: str) -> None:
        """Note that something happened now (a fault injected, a server back) for the report."""
        self.events.append(
            (
                label,
                round(time.monotonic() - self._t0, 3),
                self.result_so_far.count("acked"),
            )
        )

    @property
    def done(self) -> bool:
        """True once every write has ended."""
        return self._task is not None and self._task.done()

    async def cancel(self) -> None:
        """Stop the load (test teardown after a failure)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- internals ------------------------------------------------------------------------

    def _share(self, amount: int, k: int) -> int:
        """Region number ``k``'s share of ``amount`` (the first regions take the remainder)."""
        n = len(self._regions)
        return amount // n + (1 if k < amount % n else 0)

    async def _run(self) -> LoadResult:
        # Each region has its own writers and its own pace, so an outage on one path (the bus,
        # the replica) does not starve the other of writers.
        async with asyncio.TaskGroup() as tg:
            for k, region in enumerate(self._regions):
                total = self._share(self.total, k)
                for n in range(self._share(self.concurrency, k)):
                    tg.create_task(
                        self._writer(region, total), name=f"fault-writer-{region}-{n}"
                    )
        self.mark("load_done")
        async with self._changed:
            self._finished = True
            self._changed.notify_all()
        return self.result_so_far

    async def _writer(self, region: str, total: int) -> None:
        while self._next[region] < total:
            i = self._next[region]
            self._next[region] += 1
            if self.rate is not None:
                region_rate = self.rate / len(self._regions)
                delay = self._t0 + i / region_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing, not synchronisation
            outcome = await self._write(region, f"{self.tag}-{region}-{i:06d}")
            self.result_so_far.outcomes.append(outcome)
            async with self._changed:
                self._changed.notify_all()

    def statement(self, key: str, region: str) -> tuple[str, list[object]]:
        """The write of ``key``: SQL and parameters."""
        sql = f"INSERT INTO {self.table}(key, region) SELECT %s, %s FROM pg_sleep(%s)"
        return sql, [key, region, self.work]

    async def _write(self, region: str, key: str) -> Outcome:
        db = self.dbs[region]
        sql, params = self.statement(key, region)
        request_id = f"{self.id_prefix}{self.table}-{key}"
        started = time.monotonic()
        wait_s: float | None = None
        try:
            res = await db.execute(
                sql,
                params,
                await_replication=False,
                rpc_timeout=self.rpc_timeout,
                request_id=request_id,
            )
            if res.lsn is not None:
                t_wait = time.monotonic()
                try:
                    await db.wait_for_lsn(res.lsn, self.replication_timeout)
                finally:
                    wait_s = time.monotonic() - t_wait
        except Exception as exc:  # noqa: BLE001 - every failure is data for the check
            return Outcome(
                key=key,
                region=region,
                request_id=request_id,
                status=classify(exc),
                error=type(exc).__name__,
                message=str(exc)[:300],
                started=started - self._t0,
                total_s=time.monotonic() - started,
                wait_s=wait_s,
            )
        return Outcome(
            key=key,
            region=region,
            request_id=request_id,
            status="acked",
            duplicate=res.duplicate,
            replicated=res.lsn is not None,
            attempts=res.timings.attempts,
            started=started - self._t0,
            total_s=time.monotonic() - started,
            wait_s=wait_s,
        )


async def run_while(
    load: Load, fault: Callable[[], Awaitable[None]], *, timeout: float
) -> LoadResult:
    """Start ``load``, run ``fault`` alongside it, and return the load's result.

    The load is cancelled if the fault raises, so a failing scenario does not leave writers
    running into the next one.
    """
    load.start()
    try:
        await fault()
        return await load.result(timeout)
    except BaseException:
        await load.cancel()
        raise
