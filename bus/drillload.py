"""The drill's write load: a steady rate of writes from each region, each outcome recorded.

Writes *start* on a schedule (``rate`` per second per region) whether or not earlier ones have
finished, as requests from users would: while the primary is down they pile up (bounded by
``max_in_flight``) and retry with their request ids, and the first ones to succeed afterwards
mark the end of the outage. Every write inserts one row with a unique key and carries a request
id of its own, so the new primary can be checked key by key against what the callers were told.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping

from writebus.bus.drillreport import Status, WriteRecord
from writebus.client.db import Database
from writebus.client.errors import Outcome, ReplicationTimeoutError, WriteBusError
from writebus.client.writes import new_request_id

#: The drill's table: ``key`` deliberately not unique, so a write applied twice shows.
TABLE = "writebus_drill"
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, key text NOT NULL, "
    "region text NOT NULL, request_id text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)
INSERT = f"INSERT INTO {TABLE}(key, region, request_id) VALUES (%s, %s, %s)"


def classify(exc: BaseException) -> Status:
    """What an error says about its write: applied (acked), not applied (failed), or unknown
    -- also for an error that does not say, which would be a bug worth seeing in the report."""
    outcome = exc.outcome if isinstance(exc, WriteBusError) else None
    if outcome is Outcome.APPLIED:
        return "acked"  # committed at a known LSN; only the local replay was late
    if outcome is Outcome.NOT_APPLIED:
        return "failed"
    return "unknown"


class DrillLoad:
    """Writes into :data:`TABLE` from each region's :class:`Database` in ``dbs``.

    :meth:`start`, then :meth:`wait_until` a condition on :attr:`records`; :meth:`stop` ends
    the schedule and :meth:`drain` waits for the writes still running. Keys are
    ``<tag>-<region>-<n>``; times in records are seconds since :meth:`start`.
    """

    def __init__(
        self,
        dbs: Mapping[str, Database],
        *,
        rate: float,
        tag: str,
        rpc_timeout: float,
        max_in_flight: int = 500,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be more than zero")
        self.dbs = dict(dbs)
        self.rate = rate
        self.tag = tag
        self.rpc_timeout = rpc_timeout
        self.records: list[WriteRecord] = []
        #: Acknowledged writes per (region of the app, region whose primary committed them).
        self.acked: Counter[tuple[str, str | None]] = Counter()
        self.started = dict.fromkeys(self.dbs, 0)
        self._slots = {region: asyncio.Semaphore(max_in_flight) for region in self.dbs}
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._pacers: list[asyncio.Task[None]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self._t0 = 0.0

    def __repr__(self) -> str:
        return f"<DrillLoad {self.tag} started={self.started} done={len(self.records)}>"

    def now(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self._t0

    def start(self) -> None:
        """Start each region's schedule in a named task."""
        self._t0 = time.monotonic()
        self._pacers = [
            asyncio.create_task(self._pace(region), name=f"drill-pace-{region}")
            for region in self.dbs
        ]

    async def wait_until(self, predicate: Callable[[DrillLoad], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked as writes start and end); False
        if it still does not after ``timeout`` seconds."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self)), timeout)
            return predicate(self)

    def stop(self) -> None:
        """Start no more writes."""
        self._stop.set()

    async def drain(self, timeout: float) -> None:
        """Wait for the schedules and every running write (each ends within its
        ``rpc_timeout``); after ``timeout`` the rest are cancelled and recorded as unknown."""
        self.stop()
        for pacer in self._pacers:
            pacer.cancel()  # it only starts writes; one waiting for a free slot would wait long
        await asyncio.gather(*self._pacers, return_exceptions=True)
        if self._writes:
            _, late = await asyncio.wait(set(self._writes), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _pace(self, region: str) -> None:
        n = 0
        while not self._stop.is_set():
            delay = self._t0 + n / self.rate - time.monotonic()
            if delay > 0:
                # Pacing, not synchronisation: the schedule is the point. stop() ends it early.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    break
            await self._slots[region].acquire()
            task = asyncio.create_task(self._write(region, n), name=f"drill-write-{region}-{n}")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            self.started[region] = n = n + 1
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _write(self, region: str, n: int) -> None:
        key = f"{self.tag}-{region}-{n:06d}"
        request_id = new_request_id()
        started = self.now()
        try:
            record = await self._attempt(region, key, request_id, started)
        except asyncio.CancelledError:
            # Given up on by drain(): it may or may not have been applied.
            self.records.append(WriteRecord(
                key=key, region=region, request_id=request_id, status="unknown",
                started=started, ended=self.now(), error="Cancelled",
            ))  # fmt: skip
            raise
        finally:
            self._slots[region].release()
        self.records.append(record)
        if record.status == "acked":
            self.acked[region, record.served_by] += 1
        await self._notify()

    async def _attempt(self, region: str, key: str, request_id: str, started: float) -> WriteRecord:
        db = self.dbs[region]
        try:
            res = await db.execute(
                INSERT, [key, region, request_id], request_id=request_id,
                rpc_timeout=self.rpc_timeout,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - every failure is data for the report
            lsn = exc.lsn if isinstance(exc, ReplicationTimeoutError) else None
            return WriteRecord(
                key=key, region=region, request_id=request_id, status=classify(exc),
                started=started, ended=self.now(), lsn=lsn, error=type(exc).__name__,
            )  # fmt: skip
        return WriteRecord(
            key=key, region=region, request_id=request_id, status="acked", started=started,
            ended=self.now(), served_by=res.region, lsn=res.lsn, duplicate=res.duplicate,
            replicated=res.replicated,
        )  # fmt: skip
