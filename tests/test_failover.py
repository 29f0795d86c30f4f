"""Failover: the replica region's standby is promoted and its bus node takes over writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.support.stack import TEST_DELAY_MS, settings_for, start_bus
from writebus.bus.embedded.stack import Stack
from writebus.client import Database, RetryPolicy


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    """A stack of this module's own: promotion cannot be undone."""
    with Stack(one_way_delay_ms=TEST_DELAY_MS) as s:
        yield s


async def test_promoted_replica_takes_over_writes(own_stack: Stack) -> None:
    """Primary down, lax standby promoted: the lax bus node switches to the primary role and
    serves writes; lax clients write and read their writes again, waiting on the new
    primary's own position."""
    stack = own_stack
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE fo (id bigserial PRIMARY KEY, body text)")
    stack.wait_replica_caught_up(10)
    buses = [start_bus(stack, r, log_name=f"fo-bus-{r}") for r in ("syd", "lax")]
    retry = RetryPolicy(no_worker_patience=10.0)
    try:
        async with Database(settings_for(stack, "lax", rpc_timeout=20, replication_timeout=10),
                            retry=retry) as db:
            before = await db.execute("INSERT INTO fo(body) VALUES ('before') RETURNING id")
            assert before.via_bus
            stack.primary.stop("fast")
            stack.replica.promote()
            assert await db.fetchval("SELECT pg_is_in_recovery()") is False
            deadline = time.monotonic() + 20
            while '"event": "bus.promoted"' not in buses[1].log_path.read_text():
                assert time.monotonic() < deadline, buses[1].log_tail()
                await asyncio.sleep(0.05)
            res = await db.execute("INSERT INTO fo(body) VALUES ('after') RETURNING id")
            assert res.lsn is not None and res.region == "lax"
            row = await db.fetchrow("SELECT body FROM fo WHERE id = %s", [res.rows[0][0]])
            assert row == ("after",)
            assert db.tracker is not None and db.tracker.waiting == 0
    finally:
        for bus in buses:
            bus.stop(10)


