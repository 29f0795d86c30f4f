"""A worker's committer slots, watched through its ``/metrics`` (the adaptive-slot tests of
tests/test_group_commit.py and tests/test_cgroup_quota.py)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import http_url, settings_for
from writebus import Database
from writebus.bus.embedded.bus_process import BusProcess


def metric(base: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` (with ``labels``) on ``base``'s ``/metrics``."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"{name} {labels or ''} not exported")


async def slots_become(bus: BusProcess, n: int, timeout: float = 20.0) -> None:
    """Wait until ``bus`` shows ``n`` open committer slots (``writebus_group_slots``)."""
    deadline = time.monotonic() + timeout
    while metric(http_url(bus), "writebus_group_slots") != n:
        assert time.monotonic() < deadline, f"writebus_group_slots never became {n}"
        await asyncio.sleep(0.1)


async def write_twenty(stack: Any, prefix: str, table: str, tag: str) -> int:
    """Send 20 writes from ``lax`` to the workers on ``prefix`` at once; return how many were
    answered as applied (each is checked on the primary by the caller)."""
    async with Database(settings_for(stack, "lax", prefix=prefix), max_size=2) as db:
        results = await asyncio.gather(*(
            db.execute(f"INSERT INTO {table}(body) VALUES (%s)", [f"{tag}{i}"],
                       await_replication=False)
            for i in range(20)
        ))  # fmt: skip
    return sum(1 for r in results if not r.duplicate)
