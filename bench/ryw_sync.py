"""Read-your-write through the synchronous API (issue #10), beside the async one.

:class:`SyncWritebusRyw` does what :class:`bench.approaches.WritebusRyw` does with a
:class:`~writebus.client.sync.SyncDatabase`, as a Flask or Django view would: the calls run on
a worker thread (so the benchmark's own loop keeps serving) and are timed on that thread, so
the hop to it is not counted -- what is measured is the sync API's own cost.
"""

from __future__ import annotations

import asyncio
import time

from bench.harness import INSERT_SQL, READ_SQL
from bench.sampling import Sample
from writebus.client.sync import SyncDatabase


class SyncWritebusRyw:
    """A write through the bus and the local read-back, with the synchronous API."""

    name = "writebus_sync"

    def __init__(self, db: SyncDatabase) -> None:
        self.db = db

    def _once(self, seq: int) -> Sample:
        t0 = time.perf_counter()
        res = self.db.execute(INSERT_SQL, [self.name, f"ryw {seq}"])
        row = self.db.fetchrow(READ_SQL, [res.rows[0][0]])
        return Sample((time.perf_counter() - t0) * 1000, stale=row is None)

    async def once(self, seq: int) -> Sample:
        """One write and read-back on a worker thread."""
        return await asyncio.to_thread(self._once, seq)
