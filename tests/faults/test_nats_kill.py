"""The replica region's nats-server killed (SIGKILL) and restarted while 32 writes are in flight.

The bug this guards against: the first attempt's reply was lost with the server, the retry met
"no responders" while the gateway re-formed, and the call raised ``NoWorkerError`` -- "not
applied" -- for writes that were in fact committed. An app trusting that error would write them
twice. Now every call ends acknowledged, or with ``OutcomeUnknownError`` whose request id,
re-sent, settles it; a call told "not applied" is absent from the primary. The clients use the
default retry policy.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from tests.faults.conftest import Rig
from tests.faults.load import Load
from writebus.client import RetryPolicy

pytestmark = pytest.mark.slow

ROUNDS = 3
IN_FLIGHT = 32
#: Each write holds its transaction this long on the primary, so all 32 are in flight together.
WORK = 1.0
#: The lax nats-server stays down this long (the report's reproduction: about a second).
DOWN = 1.0


def _running(primary_url: str, table: str) -> int:
    """Statements on ``table`` running on the primary right now."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND strpos(query, %s) > 0 AND pid <> pg_backend_pid()",
            [f"INSERT INTO {table}"],
        ).fetchone()
    return int(row[0]) if row else 0


async def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_nats_killed_under_in_flight_writes(rig: Rig) -> None:
    """Over several rounds, SIGKILL the lax nats-server while 32 lax writes are in flight and
    restart it a second later: every call is acknowledged or reports an unknown outcome that
    its id resolves; none says "not applied" for a write that is on the primary; none is
    applied twice."""
    await rig.start_buses("syd", "lax")
    await rig.open_clients(retry=RetryPolicy())
    nats_lax = rig.stack.nats["lax"]
    totals = {"acked": 0, "unknown": 0, "not_applied": 0, "unknown_were_applied": 0}
    for n in range(ROUNDS):
        load = Load(
            {"lax": rig.lax},
            rig.table,
            total=IN_FLIGHT,
            concurrency=IN_FLIGHT,
            work=WORK,
            rpc_timeout=10.0,
            replication_timeout=10.0,
            tag=f"round{n}",
            id_prefix=f"{rig.prefix}-",
        ).start()
        url = rig.stack.primary.url
        await _until(lambda: _running(url, rig.table) >= IN_FLIGHT, 10.0)  # noqa: B023
        await asyncio.to_thread(nats_lax.kill)
        load.mark("nats_lax_killed")
        await asyncio.sleep(DOWN)  # the outage itself, not a synchronisation
        await asyncio.to_thread(nats_lax.start)
        load.mark("nats_lax_restarted")
        await load.result(60.0)
        report = await rig.check(load, scenario=f"nats_killed_round{n}")
        assert report.other == 0, report.explain()
        assert set(report.errors) <= {"OutcomeUnknownError", "DisconnectedError"}, report.explain()
        for key in totals:
            totals[key] += getattr(report, key)
    print(f"nats kill -9, {ROUNDS} rounds x {IN_FLIGHT} in flight: {totals}")
    assert sum(totals[k] for k in ("acked", "unknown", "not_applied")) == ROUNDS * IN_FLIGHT
