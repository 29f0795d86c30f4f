"""An error after COMMIT succeeded, on a real primary: the write is answered as applied.

A transaction's last round trip is one simple query: the exactly-once records, ``COMMIT``, then
the flush-LSN read. A cancel or statement timeout that arrives while COMMIT holds interrupts off
lands on the statement after it, so that read can fail although the write committed. A
procedure reads the position in a command of its own after COMMIT, which can fail the same way.
Such a write used to be answered "rejected" (not applied). Here the server really commits and
then really fails the next statement: the tests swap in a flush read that divides by zero.

``grouptx.FLUSH_LSN_SQL`` is the name the records-and-COMMIT query reads. Every other position
read goes through ``pg.read_flush_lsn`` (``pg.FLUSH_LSN_SQL``), so patching only the first
breaks only the read after COMMIT.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.support.stack import primary_rows
from writebus.bus import grouptx, literals, pg
from writebus.bus.execute import Job, Limits, run_request, run_statement_writes
from writebus.bus.group import Executed
from writebus.client import Database
from writebus.client.errors import Outcome, OutcomeUnknownError
from writebus.client.procedures import Procedures
from writebus.client.protocol import Request, Statement

FAILS = "SELECT 1 / 0"  # division_by_zero (22012), raised by the server after COMMIT


def _insert(table: str, body: str) -> Job:
    sql = f"INSERT INTO {table}(body) VALUES (%s) RETURNING id, body"
    return Job(Request(id=str(uuid.uuid4()), statements=[Statement(sql=sql, params=[body])]))


async def _run(pool: AsyncConnectionPool[Any], jobs: list[Job]) -> list[Any]:
    return await run_statement_writes(pool, jobs, limits=Limits(max_reply_bytes=64 * 1024))


def _bodies(stack: Any, table: str) -> list[str]:
    return sorted(r[0] for r in primary_rows(stack, f"SELECT body FROM {table}"))


def _flush_lsn(stack: Any) -> int:
    (row,) = primary_rows(stack, "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")
    return int(row[0])


def _rows(out: Executed) -> list[list[Any]]:
    return [list(r) for r in out.results[0].rows or ()]


def _logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "writebus", {}).get("event") == event]


@pytest.mark.parametrize("way", ["careful", "written"])
async def test_a_write_whose_flush_read_fails_after_commit_is_applied(
    stack: Any,
    worker_pool: Any,
    table: str,
    way: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lone write, sent bound (the careful way) or written out (a statement already proven):
    its records commit, the read after COMMIT fails, and the answer is the write's own
    result with a position that covers it -- not a rejection, and not run twice."""
    if way == "written":
        (proving,) = await _run(worker_pool, [_insert(table, "proving")])
        assert isinstance(proving, Executed)
    job = _insert(table, "a")
    assert (job.req.statements[0] in literals.PROVEN) is (way == "written")  # type: ignore[index]
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    with caplog.at_level(logging.WARNING, logger="writebus"):
        (out,) = await _run(worker_pool, [job])
    assert isinstance(out, Executed), out
    assert not out.duplicate  # this try's own result, not a rerun's stored one
    assert out.results[0].rows is not None and out.results[0].rows[0][1] == "a"
    assert out.lsn is not None and out.lsn <= _flush_lsn(stack)
    assert _bodies(stack, table) == (["a", "proving"] if way == "written" else ["a"])
    (record,) = _logged(caplog, "group.failed_after_commit")
    assert record.writebus["sqlstate"] == "22012"  # type: ignore[attr-defined]


async def test_a_group_whose_flush_read_fails_after_commit_is_applied_once(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of three: each gets its own result and the one commit's position, from this
    try (no request is run again to learn its outcome)."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    out = await _run(worker_pool, [_insert(table, b) for b in ("x", "y", "z")])
    assert all(isinstance(o, Executed) and not o.duplicate for o in out), out
    assert [o.results[0].rows[0][1] for o in out] == ["x", "y", "z"]
    assert len({o.lsn for o in out}) == 1 and out[0].lsn is not None
    assert _bodies(stack, table) == ["x", "y", "z"]


async def test_when_no_position_can_be_read_the_outcome_is_unknown_not_rejected(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every flush read fails: after COMMIT, in the lookup, and in the rerun's. The write
    committed once, and the answer says "unknown" (a resend under its id finds out) --
    never "not applied"."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    monkeypatch.setattr(pg, "FLUSH_LSN_SQL", FAILS)
    (out,) = await _run(worker_pool, [_insert(table, "u")])
    assert isinstance(out, OutcomeUnknownError), out
    assert out.outcome is Outcome.UNKNOWN
    assert _bodies(stack, table) == ["u"]


@pytest.mark.parametrize("way", ["careful", "written"])
async def test_a_repeat_is_never_answered_without_a_position(
    stack: Any, worker_pool: Any, table: str, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's resend of an applied id, when no position can be read: not an answer
    without an LSN (the client would not wait for its replica) and not "not applied", but
    "unknown" -- the id is applied, and a later resend gets its stored result."""
    job = _insert(table, "r")
    if way == "written":
        await _run(worker_pool, [_insert(table, "proving")])
    (first,) = await _run(worker_pool, [job])
    assert isinstance(first, Executed)
    if way == "careful":
        literals.PROVEN.clear()  # so the resend is sent bound: the careful way finds the id
    assert (job.req.statements[0] in literals.PROVEN) is (way == "written")  # type: ignore[index]
    monkeypatch.setattr(pg, "FLUSH_LSN_SQL", FAILS)
    (again,) = await _run(worker_pool, [job])
    assert isinstance(again, OutcomeUnknownError), again
    monkeypatch.undo()
    (later,) = await _run(worker_pool, [job])
    assert isinstance(later, Executed) and later.duplicate and later.lsn is not None
    assert _rows(later) == _rows(first)
    assert _bodies(stack, table).count("r") == 1


async def test_a_commit_that_fails_is_still_its_rejection(
    stack: Any, worker_pool: Any, table: str
) -> None:
    """COMMIT itself fails (a deferred constraint): the lookup after it finds no record, so
    the answer stays the constraint's rejection, not applied."""
    with psycopg.connect(stack.primary.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table}_parent (id int PRIMARY KEY)")
        conn.execute(
            f"CREATE TABLE {table}_child (pid int REFERENCES {table}_parent "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
    job = Job(Request(id=str(uuid.uuid4()),
                      statements=[Statement(sql=f"INSERT INTO {table}_child VALUES (7)")]))
    (out,) = await _run(worker_pool, [job])
    assert getattr(out, "sqlstate", None) == "23503", out
    assert out.outcome is Outcome.NOT_APPLIED
    assert primary_rows(stack, f"SELECT count(*) FROM {table}_child") == [(0,)]


async def test_a_procedure_whose_flush_read_fails_after_commit_is_applied(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A procedure commits and its position read fails: it runs again on a fresh connection,
    where its claim finds the record and answers with the stored value -- applied once."""
    procs = Procedures()

    @procs.register
    async def add(conn: Any, table: str, body: str) -> str:
        await conn.execute(f"INSERT INTO {table}(body) VALUES (%s)", [body])
        return body.upper()

    real = grouptx.read_flush_lsn
    calls: list[int] = []

    async def first_fails(conn: psycopg.AsyncConnection[Any]) -> int:
        calls.append(1)
        if len(calls) == 1:
            await conn.execute(FAILS)
        return await real(conn)

    monkeypatch.setattr(grouptx, "read_flush_lsn", first_fails)
    req = Request(id=str(uuid.uuid4()), procedure="add", args=[table, "p"])
    out = await run_request(worker_pool, req, procedures=procs, limits=Limits())
    assert out.value == "P" and out.duplicate and out.lsn is not None
    assert len(calls) == 2
    assert _bodies(stack, table) == ["p"]


async def test_a_primary_region_write_gets_its_rows_after_a_failed_flush_read(
    stack: Any, syd_db: Database, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end in the primary region (the app runs the write itself): the caller gets the
    inserted row back, as for any write."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    res = await syd_db.execute(f"INSERT INTO {table}(body) VALUES ('d') RETURNING body")
    assert res.rows[0][0] == "d" and not res.duplicate and res.lsn is not None
    assert _bodies(stack, table) == ["d"]
