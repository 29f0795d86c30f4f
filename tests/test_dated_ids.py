"""Dated request ids (UUIDv7, :mod:`writebus.client.ids`) on the real primary: the claim looks
their records up only from their date on -- older partitions are not even opened -- and a
record is never stored before where a retry will look for it."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support.stack import primary_rows
from writebus.bus import idempotency, partitions
from writebus.bus.execute import Executed, Limits, run_request
from writebus.bus.pg import durable_commits
from writebus.client.errors import WriteRejectedError
from writebus.client.ids import id_time, new_id
from writebus.client.procedures import Procedures
from writebus.client.protocol import Request, Statement

HOUR = 3600.0


@pytest.fixture
async def pool(stack: Any) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.primary.url, min_size=1, max_size=2, kwargs={"autocommit": True},
        configure=durable_commits, open=False,
    )  # fmt: skip
    await p.open(wait=True)
    async with p.connection() as conn:
        await idempotency.ensure_schema(conn, None)
    yield p
    await p.close()


@pytest.fixture
async def past_day(stack: Any) -> AsyncIterator[list[str]]:
    """Partitions for each of the last 24 hours (as a worker running for a day has), dropped
    afterwards when this fixture made them."""
    made: list[str] = []
    async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as conn:
        await idempotency.ensure_schema(conn, None)
        now = datetime.datetime.now(datetime.UTC)
        day = partitions.partition_bounds(now, since=now - datetime.timedelta(days=1))
        for start, _ in day:
            name = partitions.partition_name(start)
            cur = await conn.execute("SELECT to_regclass(%s) IS NULL", [f"writebus.{name}"])
            if (await cur.fetchone() or [False])[0]:
                made.append(name)
        await partitions.create_partitions(conn, day)
        yield [partitions.partition_name(s) for s, _ in day]
        for name in made:
            await conn.execute(f"DROP TABLE IF EXISTS writebus.{name}")


def _write(table: str, body: str, rid: str) -> Request:
    sql = f"INSERT INTO {table} (body) VALUES (%s) RETURNING body"
    return Request(id=rid, statements=[Statement(sql=sql, params=[body])])


async def _run(pool: AsyncConnectionPool[Any], req: Request) -> Executed:
    return await run_request(pool, req, procedures=Procedures(), limits=Limits())


@pytest.mark.parametrize(
    "claim_sql",
    [idempotency.CLAIM_SQL, idempotency.CLAIM_FRESH_SQL],
    ids=["claim", "first-try claim"],
)
async def test_a_dated_claim_does_not_open_older_partitions(
    stack: Any, past_day: list[str], claim_sql: str
) -> None:
    """With a partition from ten hours ago locked by another session, claiming dated ids goes
    through (that partition was never opened), while an undated id -- looked up everywhere --
    waits for it until its lock_timeout. Both claims: a flattened first-try claim whose lookup
    PL/pgSQL ran on a generic plan locked every partition as it ran, and waited here."""
    old = past_day[-14]  # ten hours before the current hour (two are made ahead)
    holder = await psycopg.AsyncConnection.connect(stack.primary.url)
    claimer = await psycopg.AsyncConnection.connect(
        stack.primary.url, autocommit=True, options="-c lock_timeout=300"
    )
    try:
        for _ in range(8):  # past the plan cache's first five custom plans
            async with claimer.transaction():
                await claimer.execute(claim_sql, idempotency.claim_params([new_id()]))
        await holder.execute(f"LOCK TABLE writebus.{old} IN ACCESS EXCLUSIVE MODE")
        dated = [new_id(), new_id()]
        async with claimer.transaction():
            cur = await claimer.execute(claim_sql, idempotency.claim_params(dated))
            rows = await cur.fetchall()  # the first try's claim returns void; finding none is no error
            assert rows == ([] if claim_sql == idempotency.CLAIM_SQL else [("",)])
        with pytest.raises(psycopg.errors.LockNotAvailable):
            async with claimer.transaction():
                undated = idempotency.claim_params([*dated, uuid.uuid4().hex])
                await claimer.execute(claim_sql, undated)
    finally:
        await holder.close()
        await claimer.close()


async def test_a_dated_id_is_stored_where_its_retry_looks(
    stack: Any, pool: AsyncConnectionPool[Any], table: str
) -> None:
    """Ids dated 90 minutes ahead (a fast client clock), now, and 30 hours back (older than the
    window): each is applied once, its record no earlier than its date less the slack, and its
    retry answered from the record."""
    for offset in (1.5 * HOUR, 0.0, -30 * HOUR):
        rid = new_id(time.time() + offset)
        first = await _run(pool, _write(table, f"at {offset}", rid))
        again = await _run(pool, _write(table, f"at {offset}", rid))
        assert not first.duplicate and again.duplicate
        assert again.results[0].rows == [list(r) for r in first.results[0].rows or ()]
        ((stored_at,),) = primary_rows(
            stack, "SELECT extract(epoch FROM applied_at) FROM writebus.applied WHERE id = %s", [rid]
        )
        made = id_time(rid)
        assert made is not None and float(stored_at) >= made - idempotency.ID_CLOCK_SLACK
    bodies = [r[0] for r in primary_rows(stack, f"SELECT body FROM {table} ORDER BY id")]
    assert bodies == [f"at {o}" for o in (1.5 * HOUR, 0.0, -30 * HOUR)]


async def test_an_id_dated_hours_ahead_is_rejected_at_its_record_not_applied(
    stack: Any, pool: AsyncConnectionPool[Any], table: str
) -> None:
    """Its record's floor is past the partitions made ahead: storing it fails after the lookup,
    under the id's lock, so the write is rejected as not applied -- and so is its retry. It runs
    alone, never in a group, and its rejection names the clock."""
    rid = new_id(time.time() + 6 * HOUR)
    grouped: list[Any] = []

    async def submit(job: Any, size: int) -> Any:  # the committer: must not be used
        grouped.append(job)
        raise AssertionError("grouped")

    for _ in range(2):
        with pytest.raises(WriteRejectedError) as caught:
            await run_request(pool, _write(table, "from the future", rid),
                              procedures=Procedures(), limits=Limits(), submit=submit)  # fmt: skip
        assert caught.value.sqlstate == "23514" and caught.value.outcome == "not_applied"
        assert "dated hours ahead" in caught.value.message
        assert caught.value.statement_index is None
    assert grouped == []  # run alone: it would have failed a whole group's COMMIT
    assert primary_rows(stack, f"SELECT body FROM {table}") == []
    assert primary_rows(stack, "SELECT 1 FROM writebus.applied WHERE id = %s", [rid]) == []


async def test_an_id_dated_past_the_horizon_is_looked_up_everywhere(
    stack: Any, pool: AsyncConnectionPool[Any], table: str
) -> None:
    """A UUIDv7-shaped id dated centuries ahead (a draft-era generator) is an undated id: applied
    once, stored now, its retry answered."""
    rid = new_id(time.time() + 20 * 365 * 86400)
    first = await _run(pool, _write(table, "undated", rid))
    again = await _run(pool, _write(table, "undated", rid))
    assert not first.duplicate and again.duplicate
    ((age,),) = primary_rows(
        stack, "SELECT extract(epoch FROM now() - applied_at) FROM writebus.applied WHERE id = %s",
        [rid],
    )
    assert 0 <= float(age) < 600
