"""Fault-injection fixtures: a dedicated two-region stack and a rig per scenario.

The scenarios kill and restart servers, so they get their own :class:`Stack` for the package
(shadowing the session ``stack`` other tests share -- nothing here can disturb it). Each
scenario isolates itself further with its own subject prefix (so its bus processes, trackers and
progress broadcasts are its own) and its own table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.check import DEFAULT_REPORT, REPORT_ENV, Check, check, primary_counts, record
from tests.faults.load import Load
from tests.procedures import procedures
from tests.support.stack import bus_env
from writebus.bus.embedded.bus_process import BusProcess
from writebus.bus.embedded.stack import Stack
from writebus.client import Database, RetryPolicy, Settings

#: One-way WAN delay of the fault stack.
FAULT_DELAY_MS = 5.0
#: Generous client deadlines: faults last seconds and clients are expected to ride through.
RPC_TIMEOUT = 20.0
REPLICATION_TIMEOUT = 10.0
#: Retries while no worker serves: long enough to ride through a worker restart.
RIDE_THROUGH = RetryPolicy(no_worker_patience=15.0)


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    """This package's own stack (shadowing the session one): its tests kill servers."""
    with Stack(one_way_delay_ms=FAULT_DELAY_MS) as s:
        yield s


@pytest.fixture(scope="package", autouse=True)
def fault_report() -> Iterator[Path]:
    """The JSON report file, emptied when the package starts; the suite's duration is added
    at the end."""
    path = Path(os.environ.get(REPORT_ENV) or DEFAULT_REPORT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    started = time.monotonic()
    yield path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data["_suite"] = {"seconds": round(time.monotonic() - started, 1)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class Rig:
    """One scenario's bus processes, clients, table and checks, on the fault stack."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = name
        suffix = uuid.uuid4().hex[:8]
        self.prefix = f"fault{suffix}"
        self.table = f"fault_{name}_{suffix}".replace("-", "_")
        self.buses: list[BusProcess] = []
        self.dbs: dict[str, Database] = {}
        self._count = 0

    def __repr__(self) -> str:
        return f"<Rig {self.name} prefix={self.prefix} buses={len(self.buses)}>"

    # -- servers --------------------------------------------------------------------------

    async def start_bus(self, region: str, label: str | None = None) -> BusProcess:
        """Start a bus node in ``region`` on this scenario's prefix; wait until it serves."""
        self._count += 1
        name = f"{self.name}-{label or region}-{self._count}"
        env = bus_env(self.stack, region, WRITEBUS_PREFIX=self.prefix)
        bus = self.stack.start_bus(region, env=env, log_name=name)
        self.buses.append(bus)
        await bus.wait_ready_async(30)
        return bus

    async def start_buses(self, *regions: str) -> list[BusProcess]:
        """Start several bus nodes side by side."""
        return list(await asyncio.gather(*(self.start_bus(r) for r in regions)))

    def create_table(self) -> None:
        """The scenario's table on the primary. ``key`` is deliberately *not* unique: a write
        applied twice shows up as two rows instead of being hidden by a constraint."""
        with psycopg.connect(self.stack.primary.url, autocommit=True) as conn:
            conn.execute(
                f"CREATE TABLE {self.table} (id bigserial PRIMARY KEY, key text NOT NULL, "
                "region text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            conn.execute(f"CREATE INDEX ON {self.table} (key)")
        self.stack.wait_replica_caught_up(10)

    # -- clients --------------------------------------------------------------------------

    def settings(self, region: str) -> Settings:
        """Client settings for an app in ``region`` on this scenario's prefix."""
        return Settings.from_env(self.stack.env(region)).replace(
            prefix=self.prefix,
            rpc_timeout=RPC_TIMEOUT,
            replication_timeout=REPLICATION_TIMEOUT,
        )

    async def open_clients(self, retry: RetryPolicy = RIDE_THROUGH) -> dict[str, Database]:
        """A client per region: ``syd`` writes directly, ``lax`` through the bus."""
        syd = Database(self.settings("syd"), procedures=procedures, max_size=20, retry=retry)
        lax = Database(self.settings("lax"), retry=retry)
        await syd.open()
        self.dbs["syd"] = syd
        await lax.open()
        self.dbs["lax"] = lax
        return self.dbs

    @property
    def lax(self) -> Database:
        """The lax client."""
        return self.dbs["lax"]

    def load(self, **options: Any) -> Load:
        """A load over this scenario's clients and table (see :class:`Load`)."""
        options.setdefault("rpc_timeout", RPC_TIMEOUT)
        options.setdefault("replication_timeout", REPLICATION_TIMEOUT)
        options.setdefault("id_prefix", f"{self.prefix}-")
        return Load(self.dbs, self.table, **options)

    # -- checks ---------------------------------------------------------------------------

    async def resolve(self, load: Load) -> dict[str, bool]:
        """Re-send every write whose outcome was unknown with its request id, as an app would;
        return key -> whether it had been applied (the re-send came back a duplicate)."""
        resolved: dict[str, bool] = {}
        for o in load.result_so_far.by(lambda o: o.status == "unknown"):
            sql, params = load.statement(o.key, o.region)
            res = await self.dbs[o.region].execute(
                sql, params, request_id=o.request_id, await_replication=False, rpc_timeout=30
            )
            resolved[o.key] = res.duplicate
        return resolved

    async def check(self, load: Load, *, scenario: str | None = None, **extra: Any) -> Check:
        """Check the primary against what ``load``'s callers saw (resolving unknown outcomes
        first), print and record the figures, and assert the invariant and that the tracker
        holds no leftover waiters. Only rows of ``load``'s tag count, so several loads can
        share the table."""
        result = load.result_so_far
        url = self.stack.primary.url

        async def counts() -> dict[str, int]:
            rows = await asyncio.to_thread(primary_counts, url, self.table)
            return {k: n for k, n in rows.items() if k.startswith(f"{load.tag}-")}

        before = await counts()
        resolved = await self.resolve(load)
        after = await counts()
        report = check(
            scenario or self.name, result, after, counts_before_resolving=before,
            resolved=resolved,
        )
        tracker = self.lax.tracker
        assert tracker is not None
        report.extra.update(
            waiting=tracker.waiting,
            heap_size=tracker.heap_size,
            fallback_polls=tracker.fallback_polls,
            max_total_s=round(max((o.total_s for o in result.outcomes), default=0.0), 3),
            max_wait_s=round(
                max((o.wait_s or 0.0 for o in result.outcomes), default=0.0), 3
            ),
            events=load.events,
            **extra,
        )
        record(report)
        assert report.ok, report.explain()
        assert report.attempted == result.attempted
        assert tracker.waiting == 0 and tracker.heap_size == 0, tracker
        return report

    async def close(self) -> None:
        """Close the clients and stop this scenario's bus processes."""
        for db in self.dbs.values():
            with contextlib.suppress(Exception):
                await db.close()
        await asyncio.gather(
            *(asyncio.to_thread(bus.stop, 10) for bus in self.buses), return_exceptions=True
        )


@pytest.fixture
async def rig(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """A scenario rig named after the test (``test_foo_bar`` -> ``foo_bar``)."""
    name = re.sub(r"\W", "_", request.node.name.removeprefix("test_"))[:30]
    r = Rig(stack, name)
    await asyncio.to_thread(r.create_table)
    try:
        yield r
    finally:
        await r.close()
