"""A claim that fails where another try of the id may hold it (:mod:`writebus.bus.grouptx`'s
``claim_failure``), on the real primary.

A client resends a write under the same id while its first try still runs, and the worker's
database has a ``lock_timeout``: the resend's claim times out on the id's lock. That says
nothing of the id -- the first try may still commit it -- so the answer is "unknown" (a
resend finds out), and the other requests of its group are not held to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from tests.support.logs import logged
from tests.support.stack import primary_rows, settings_for
from writebus import Database
from writebus.bus import idempotency, optimistic
from writebus.bus.execute import Job, Limits, run_request, run_statement_writes
from writebus.bus.group import Executed
from writebus.bus.pg import durable_commits
from writebus.client.db import DIRECT_PATIENCE
from writebus.client.errors import OutcomeUnknownError, WriteRejectedError
from writebus.client.ids import new_id
from writebus.client.procedures import Procedures
from writebus.client.protocol import Request, Statement


@pytest.fixture
async def impatient(stack: Any, buses: Any) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A worker's kind of pool whose sessions give up on a lock after 200 ms."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.primary.url, min_size=1, max_size=4, configure=durable_commits, open=False,
        kwargs={"autocommit": True, "options": "-c lock_timeout=200"},
    )  # fmt: skip
    await pool.open(wait=True)
    yield pool
    await pool.close()


@pytest.fixture
async def holder(stack: Any) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A session standing for another try of an id: it takes the id's claim and holds it."""
    conn = await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True)
    yield conn
    await conn.close()


async def _hold_claim(conn: psycopg.AsyncConnection[Any], rid: str) -> None:
    await conn.execute("BEGIN")
    await conn.execute(idempotency.CLAIM_SQL, idempotency.claim_params([rid]))


def _insert(table: str, body: str, rid: str | None = None) -> Job:
    sql = f"INSERT INTO {table}(body) VALUES (%s) RETURNING id"
    return Job(Request(id=rid or uuid.uuid4().hex, statements=[Statement(sql=sql, params=[body])]))


def _bodies(stack: Any, table: str) -> list[str]:
    return sorted(r[0] for r in primary_rows(stack, f"SELECT body FROM {table}"))


def _unknown(out: Any) -> bool:
    return isinstance(out, OutcomeUnknownError) and out.retryable and "claim" in str(out)


async def test_a_resend_meeting_its_first_try_is_unknown_and_its_group_commits(
    stack: Any, worker_pool: Any, impatient: Any, holder: Any, table: str
) -> None:
    """The resend of x times out on x's lock, held by x's first try: unknown (that try then
    commits x), while y, in the same group, commits. A later resend of x gets x's result."""
    x, y = _insert(table, "x"), _insert(table, "y")
    await _hold_claim(holder, x.req.id)
    resent_x, got_y = await run_statement_writes(impatient, [x, y], limits=Limits())
    assert _unknown(resent_x), repr(resent_x)
    assert isinstance(got_y, Executed) and not got_y.duplicate
    # The first try commits x: it ran, and recorded it.
    await holder.execute(f"INSERT INTO {table}(body) VALUES ('x')")
    digest = idempotency.request_digest(x.req)
    await holder.execute(*idempotency.store_statement([(x.req.id, digest, None)]))
    await holder.execute("COMMIT")
    (again,) = await run_statement_writes(worker_pool, [x], limits=Limits())
    assert isinstance(again, Executed) and again.duplicate
    assert _bodies(stack, table) == ["x", "y"]


async def test_a_resend_whose_lookup_meets_another_try_is_unknown(
    stack: Any, worker_pool: Any, impatient: Any, holder: Any, table: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both ids were applied; while their resend looks up the stored answers, another try of
    a takes a's lock. a's answer is unknown, b's is its stored result: not "unavailable" for
    both, after a retry on a fresh connection (the lookup's lock timeout read as a lost
    connection)."""
    a, b = _insert(table, "a"), _insert(table, "b")
    first = await run_statement_writes(worker_pool, [a, b], limits=Limits())
    assert all(isinstance(o, Executed) for o in first)
    real = optimistic._repeats
    held: list[bool] = []

    async def contended(*args: Any) -> Any:
        if not held:
            await _hold_claim(holder, a.req.id)
            held.append(True)
        return await real(*args)

    monkeypatch.setattr(optimistic, "_repeats", contended)
    resent_a, resent_b = await run_statement_writes(impatient, [a, b], limits=Limits())
    assert held
    assert _unknown(resent_a), repr(resent_a)
    assert isinstance(resent_b, Executed) and resent_b.duplicate
    await holder.execute("ROLLBACK")
    assert _bodies(stack, table) == ["a", "b"]


async def test_a_procedure_resend_meeting_its_first_try_is_unknown(
    stack: Any, impatient: Any, holder: Any, table: str
) -> None:
    """The same for a procedure (a transaction of its own): unknown, nothing ran; once the
    other try is gone (rolled back here), the resend runs it."""
    procs = Procedures()

    @procs.register
    async def add(conn: Any, table: str) -> None:
        await conn.execute(f"INSERT INTO {table}(body) VALUES ('proc')")

    req = Request(id=uuid.uuid4().hex, procedure="add", args=[table])
    await _hold_claim(holder, req.id)
    with pytest.raises(OutcomeUnknownError) as caught:
        await run_request(impatient, req, procedures=procs, limits=Limits())
    assert _unknown(caught.value)
    assert _bodies(stack, table) == []
    await holder.execute("ROLLBACK")
    out = await run_request(impatient, req, procedures=procs, limits=Limits())
    assert not out.duplicate and _bodies(stack, table) == ["proc"]


async def test_after_a_cut_commit_a_contended_rerun_never_says_not_applied(
    stack: Any, impatient: Any, holder: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's COMMIT is cut (its session lives on, holding the ids' locks, and then
    commits). The retry's claim gives up on those locks, so each request runs again alone;
    y's deadline passes meanwhile. Its "not run" would say not applied -- but the first try
    may have committed y, and does: both answers are unknown."""
    from writebus.bus import execute
    from writebus.bus.grouptx import Lost

    now = time.monotonic()
    x = replace(_insert(table, "x"), deadline=now + 5)
    y = replace(_insert(table, "y"), deadline=now + 0.35)
    await holder.execute("BEGIN")
    await holder.execute(idempotency.CLAIM_SQL, idempotency.claim_params([x.req.id, y.req.id]))
    real = execute._group_attempt
    tries: list[int] = []

    async def cut_first(*args: Any) -> Any:
        tries.append(1)
        if len(tries) == 1:
            cause = psycopg.OperationalError("server closed the connection unexpectedly")
            raise Lost(cause, committing=True)
        return await real(*args)

    monkeypatch.setattr(execute, "_group_attempt", cut_first)
    out = await run_statement_writes(impatient, [x, y], limits=Limits())
    assert all(isinstance(o, OutcomeUnknownError) for o in out), out
    # The first try commits both after all.
    await holder.execute(f"INSERT INTO {table}(body) VALUES ('x'), ('y')")
    records = [(j.req.id, idempotency.request_digest(j.req), None) for j in (x, y)]
    await holder.execute(*idempotency.store_statement(records))
    await holder.execute("COMMIT")
    assert _bodies(stack, table) == ["x", "y"]


async def test_an_application_function_named_like_writebus_is_not_the_claim(
    stack: Any, impatient: Any, holder: Any, table: str
) -> None:
    """A statement's own lock timeout is its rejection (not applied) even when its error
    names a function of a schema ending in "writebus" -- alone and in a group, and once
    the statement has run before (sent written out, where the claim's errors are told apart
    by the functions they name)."""
    schema = f"app_{uuid.uuid4().hex[:6]}_writebus"
    async with await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True) as c:
        await c.execute(f"INSERT INTO {table}(body) VALUES ('locked'), ('free')")
        await c.execute(
            f"CREATE SCHEMA {schema}; CREATE FUNCTION {schema}.touch(b text) RETURNS int "
            f"LANGUAGE plpgsql AS $$ BEGIN UPDATE {table} SET n = 1 WHERE body = b; "
            "RETURN 1; END $$"
        )
    sql = f"SELECT {schema}.touch(%s) AS n"

    def touch(body: str) -> Job:
        return Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=sql, params=[body])]))

    (proven,) = await run_statement_writes(impatient, [touch("free")], limits=Limits())
    assert isinstance(proven, Executed)
    await holder.execute("BEGIN")
    await holder.execute(f"SELECT 1 FROM {table} WHERE body = 'locked' FOR UPDATE")
    (alone,) = await run_statement_writes(impatient, [touch("locked")], limits=Limits())
    first, locked, last = await run_statement_writes(
        impatient, [touch("free"), touch("locked"), touch("free")], limits=Limits()
    )
    await holder.execute("ROLLBACK")
    for out in (alone, locked):
        assert isinstance(out, WriteRejectedError) and out.sqlstate == "55P03", repr(out)
        assert out.statement_index == 0
    assert isinstance(first, Executed) and isinstance(last, Executed)


async def test_a_primary_region_resend_meeting_its_first_try_is_not_a_lost_primary(
    stack: Any, buses: Any, holder: Any, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary-region app whose database has a ``lock_timeout`` resends a write while its
    first try holds the id: its direct tries time out on the claim, and it goes on over the
    bus, logged as what it is -- not as a lost primary. Once that try rolls back, the bus
    applies the write, once."""
    rid = new_id()
    await _hold_claim(holder, rid)
    url = make_conninfo(stack.primary.url, options="-c lock_timeout=200")
    sql = f"INSERT INTO {table}(body) VALUES (%s) RETURNING id"
    with caplog.at_level(logging.INFO, logger="writebus"):
        async with Database(settings_for(stack, "syd", database_url=url)) as db:
            write = asyncio.create_task(db.execute(sql, ["r"], request_id=rid, rpc_timeout=10))
            deadline = time.monotonic() + DIRECT_PATIENCE + 10
            while not logged(caplog, "db.direct_claim_held_by_another_try"):  # on the bus now
                assert time.monotonic() < deadline and not write.done()
                await asyncio.sleep(0.02)
            await holder.execute("ROLLBACK")
            result = await asyncio.wait_for(write, 10)
    assert result.via_bus and not result.duplicate
    levels = {getattr(r, "writebus", {}).get("event"): r.levelno for r in caplog.records}
    assert levels.get("db.direct_claim_held_by_another_try") == logging.INFO
    assert "db.direct_fell_back_to_bus" not in levels
    assert _bodies(stack, table) == ["r"]
