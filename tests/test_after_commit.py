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

from tests.support.logs import logged
from tests.support.stack import deferred_child, primary_rows
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


def _count_calls(
    monkeypatch: pytest.MonkeyPatch, name: str, *, fail_first: bool = False
) -> list[Any]:
    """Record the arguments (past the connection) of each call of ``grouptx.<name>``; with
    ``fail_first``, the first call fails with the server's error (:data:`FAILS`)."""
    real = getattr(grouptx, name)
    calls: list[Any] = []

    async def counted(conn: Any, *args: Any) -> Any:
        calls.append(args[0] if len(args) == 1 else args)
        if fail_first and len(calls) == 1:
            await conn.execute(FAILS)
        return await real(conn, *args)

    monkeypatch.setattr(grouptx, name, counted)
    return calls


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
    before = _flush_lsn(stack)
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    with caplog.at_level(logging.WARNING, logger="writebus"):
        (out,) = await _run(worker_pool, [job])
    assert isinstance(out, Executed), out
    assert not out.duplicate  # this try's own result, not a rerun's stored one
    assert out.results[0].rows is not None and out.results[0].rows[0][1] == "a"
    assert out.lsn is not None and before < out.lsn <= _flush_lsn(stack)  # it covers the commit
    assert _bodies(stack, table) == (["a", "proving"] if way == "written" else ["a"])
    (record,) = logged(caplog, "group.failed_after_commit")
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
    """Every flush read fails: after COMMIT, after the lookup that finds the records, and in
    the rerun. The write committed once, and the answer says "unknown" (a resend under its id
    finds out) -- never "not applied"."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    monkeypatch.setattr(pg, "FLUSH_LSN_SQL", FAILS)
    (out,) = await _run(worker_pool, [_insert(table, "u")])
    assert isinstance(out, OutcomeUnknownError), out
    assert out.outcome is Outcome.UNKNOWN
    assert "its position could not be read" in str(out) and "connection was lost" not in str(out)
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
    if way == "careful":  # the resend is sent bound: the careful way finds the id
        monkeypatch.setattr(literals, "PROVEN", literals.ProvenTexts())
    assert (job.req.statements[0] in literals.PROVEN) is (way == "written")  # type: ignore[index]
    monkeypatch.setattr(pg, "FLUSH_LSN_SQL", FAILS)
    (again,) = await _run(worker_pool, [job])
    assert isinstance(again, OutcomeUnknownError), again
    monkeypatch.undo()
    (later,) = await _run(worker_pool, [job])
    assert isinstance(later, Executed) and later.duplicate and later.lsn is not None
    assert _rows(later) == _rows(first)
    assert _bodies(stack, table).count("r") == 1


@pytest.mark.parametrize("way", ["careful", "written"])
async def test_a_commit_that_fails_is_still_its_rejection(
    stack: Any, worker_pool: Any, table: str, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMIT itself fails (a deferred constraint): the lookup after it finds no record, so
    the answer stays the constraint's rejection, not applied."""
    child_table = deferred_child(stack, table, parents=(1,))
    sql = f"INSERT INTO {child_table} VALUES (%s)"

    def child(pid: int) -> Job:
        return Job(Request(id=str(uuid.uuid4()), statements=[Statement(sql=sql, params=[pid])]))

    if way == "written":
        (proving,) = await _run(worker_pool, [child(1)])
        assert isinstance(proving, Executed)
    looked = _count_calls(monkeypatch, "look_up")
    job = child(7)
    assert (job.req.statements[0] in literals.PROVEN) is (way == "written")  # type: ignore[index]
    (out,) = await _run(worker_pool, [job])
    assert getattr(out, "sqlstate", None) == "23503", out
    assert out.outcome is Outcome.NOT_APPLIED
    assert looked == [[job.req.id]]  # the answer came after the lookup found nothing
    assert primary_rows(stack, f"SELECT pid FROM {child_table}") == (
        [(1,)] if way == "written" else []
    )


async def test_when_the_lookup_after_commit_fails_a_rerun_answers_from_the_record(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush read after COMMIT fails, and so does the lookup meant to settle it: the
    write runs again, and its claim finds the record -- applied once, answered with the
    stored result and a position."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    calls = _count_calls(monkeypatch, "look_up", fail_first=True)
    job = _insert(table, "l")
    (out,) = await _run(worker_pool, [job])
    assert isinstance(out, Executed) and out.duplicate and out.lsn is not None, out
    assert _rows(out)[0][1] == "l"
    assert calls == [[job.req.id]]  # the rerun's claim found the record, not look_up
    assert _bodies(stack, table) == ["l"]


async def test_a_record_that_is_not_this_transactions_is_answered_by_a_rerun(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup after a failed flush read finds the id recorded with another result (as
    when another try of it committed once this one's locks were gone; here the lookup's
    answer is altered): this try's results are not claimed -- the write runs again, and
    its claim answers from the record that is there."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    real = grouptx.look_up

    async def altered(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> Any:
        found = await real(conn, ids)
        return {k: (k, digest, b"another") for k, (_, digest, _) in found.items()}

    monkeypatch.setattr(grouptx, "look_up", altered)
    (out,) = await _run(worker_pool, [_insert(table, "n")])
    assert isinstance(out, Executed) and out.duplicate and out.lsn is not None, out
    assert _bodies(stack, table) == ["n"]


async def test_a_repeat_in_a_group_that_failed_still_gets_a_position(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group ends early (a statement past validation ends its transaction): its repeat, an
    id applied before, is answered with its stored result and a position to wait for; when
    no position can be read, "unknown" -- never an answer without one.

    The careful way runs a repeat's statements too, to roll them back to its savepoint; here
    the table's UNIQUE body stops them before the ``;COMMIT`` runs. Without such a key, a
    statement that ends the transaction would commit them a second time: validation, which
    refuses such statements, is what prevents that (noted in the session note)."""
    done = _insert(table, "done")
    (first,) = await _run(worker_pool, [done])
    assert isinstance(first, Executed)
    ends = Job(Request(id=str(uuid.uuid4()), statements=[Statement(sql=";COMMIT")]))
    repeat, ended = await _run(worker_pool, [done, ends])
    assert isinstance(repeat, Executed) and repeat.duplicate and repeat.lsn is not None, repeat
    assert ended.outcome is Outcome.UNKNOWN
    monkeypatch.setattr(pg, "FLUSH_LSN_SQL", FAILS)
    ends = Job(Request(id=str(uuid.uuid4()), statements=[Statement(sql=";COMMIT")]))
    repeat, _ = await _run(worker_pool, [done, ends])
    assert isinstance(repeat, OutcomeUnknownError), repeat
    assert _bodies(stack, table) == ["done"]


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

    calls = _count_calls(monkeypatch, "read_flush_lsn", fail_first=True)
    req = Request(id=str(uuid.uuid4()), procedure="add", args=[table, "p"])
    out = await run_request(worker_pool, req, procedures=procs, limits=Limits())
    assert out.value == "P" and out.duplicate and out.lsn is not None
    assert len(calls) == 2
    assert _bodies(stack, table) == ["p"]


async def test_a_repeat_in_a_group_that_fails_outside_its_statements_gets_a_position(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The careful way fails outside any statement: rolling back to the repeat's savepoint,
    here swapped for a savepoint that does not exist (3B001, from the server). The group's
    new request is not applied, and says so; its repeat keeps its stored result, with a
    position to wait for."""
    done = _insert(table, "kept")
    (first,) = await _run(worker_pool, [done])
    assert isinstance(first, Executed)
    real = psycopg.AsyncConnection.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(query, str) and query.startswith("ROLLBACK TO SAVEPOINT"):
            query = "ROLLBACK TO SAVEPOINT writebus_test_no_such_savepoint"
        return await real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", execute)
    repeat, new = await _run(worker_pool, [done, _insert(table, "new")])
    assert isinstance(repeat, Executed) and repeat.duplicate and repeat.lsn is not None, repeat
    assert getattr(new, "sqlstate", None) == "3B001" and new.outcome is Outcome.NOT_APPLIED
    assert _bodies(stack, table) == ["kept"]


async def test_an_rpc_procedure_whose_position_read_fails_is_not_run_again(
    stack: Any, worker_pool: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A procedure called over ``rpc`` on the primary is not recorded, so running it again
    would run it twice, and nobody waits on its position: it commits once and answers its
    value, without an LSN."""
    procs = Procedures()

    @procs.register
    async def add_once(conn: Any, table: str) -> str:
        await conn.execute(f"INSERT INTO {table}(body) VALUES ('rpc')")
        return "added"

    monkeypatch.setattr(pg, "FLUSH_LSN_SQL", FAILS)
    req = Request(id=str(uuid.uuid4()), procedure="add_once", args=[table])
    out = await run_request(
        worker_pool, req, procedures=procs, limits=Limits(), write=False, primary=True
    )
    assert out.value == "added" and out.lsn is None and not out.duplicate
    assert _bodies(stack, table) == ["rpc"]


async def test_a_primary_region_write_gets_its_rows_after_a_failed_flush_read(
    stack: Any, syd_db: Database, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end in the primary region (the app runs the write itself): the caller gets the
    inserted row back, as for any write."""
    monkeypatch.setattr(grouptx, "FLUSH_LSN_SQL", FAILS)
    res = await syd_db.execute(f"INSERT INTO {table}(body) VALUES ('d') RETURNING body")
    assert res.rows[0][0] == "d" and not res.duplicate and res.lsn is not None
    assert _bodies(stack, table) == ["d"]
