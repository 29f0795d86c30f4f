"""The async Database and the SyncDatabase run the same cases with the same outcomes.

Each test is written once against an async view of either API: the sync one is called in a
worker thread (``asyncio.to_thread``), as a sync application's request thread would call it.
The cases cover the write path (read-your-writes, batches, procedures, RPCs, deferred waits),
errors (rejected, unknown procedure, no worker), timeouts, row factories and SQLAlchemy Core.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg import errors as pg_errors
from psycopg.rows import class_row, dict_row, namedtuple_row

import writebus
from tests.procedures import procedures
from tests.support.stack import settings_for
from writebus import (
    Database,
    NoWorkerError,
    Outcome,
    ProcedureError,
    ReplicationTimeoutError,
    RowFactoryError,
    SyncDatabase,
    WriteRejectedError,
)


class API:
    """One awaitable interface over either API: ``await api.call("execute", ...)``."""

    def __init__(self, target: Database | SyncDatabase) -> None:
        self.target = target
        self.sync = isinstance(target, SyncDatabase)

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn: Callable[..., Any] = getattr(self.target, method)
        if self.sync:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return await fn(*args, **kwargs)


@pytest.fixture(params=["async", "sync"])
async def api(request: pytest.FixtureRequest, stack: Any, buses: Any) -> AsyncIterator[API]:
    """A client in lax through the async or the sync API."""
    settings = settings_for(stack, "lax")
    if request.param == "async":
        async with Database(settings, procedures=procedures) as db:
            yield API(db)
    else:
        sdb = SyncDatabase(settings, procedures=procedures)
        await asyncio.to_thread(sdb.open)
        try:
            yield API(sdb)
        finally:
            await asyncio.to_thread(sdb.close)


@dataclass
class Note:
    id: int
    body: str


async def test_read_your_writes(api: API, table: str) -> None:
    """Each write, read back at once from the local replica, is there: 0 stale in 20."""
    stale = 0
    for i in range(20):
        res = await api("execute", f"INSERT INTO {table}(body) VALUES (%s) RETURNING id", [f"r{i}"])
        assert res.via_bus and res.replicated
        stale += await api("fetchval", f"SELECT body FROM {table} WHERE id = %s", [res.rows[0][0]]) is None
    assert stale == 0


async def test_batch_is_atomic_and_rejections_keep_their_class(api: API, table: str) -> None:
    """A failing statement rolls the whole batch back and raises WriteRejectedError with the
    SQLSTATE, the statement index and psycopg's class."""
    with pytest.raises(WriteRejectedError) as info:
        await api("batch", [(f"INSERT INTO {table}(body) VALUES ('a')", None),
                            (f"INSERT INTO {table}(body, n) VALUES ('b', -1)", None)])
    assert info.value.sqlstate == "23514" and info.value.statement_index == 1
    assert info.value.pg_error_class is pg_errors.CheckViolation
    assert await api("fetchval", f"SELECT count(*) FROM {table}") == 0


async def test_procedures_and_rpcs(api: API, table: str) -> None:
    """call() runs on the primary and waits for replay; rpc_region runs in that region."""
    note_id = await api("call", "add_note", table, "via-call")
    assert await api("fetchval", f"SELECT body FROM {table} WHERE id = %s", [note_id]) == "via-call"
    assert await api("rpc_region", "lax", "whereami") == {"in_recovery": True}
    assert await api("rpc_primary", "whereami") == {"in_recovery": False}


async def test_deferred_wait(api: API, table: str) -> None:
    """await_replication=False returns the LSN; wait_for_lsn then waits for it."""
    res = await api("execute", f"INSERT INTO {table}(body) VALUES ('later')",
                    await_replication=False)
    assert res.lsn is not None and not res.replicated
    assert await api("wait_for_lsn", res.lsn, 5) >= res.lsn


async def test_errors(api: API) -> None:
    """An unknown procedure is a ProcedureError; a replica wait that cannot end is a
    ReplicationTimeoutError carrying the LSN."""
    with pytest.raises(ProcedureError, match="no_such_proc"):
        await api("call", "no_such_proc")
    with pytest.raises(ReplicationTimeoutError) as info:
        await api("wait_for_lsn", 2**62, 0.3)
    assert info.value.lsn == 2**62


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_opening_an_open_handle_does_nothing(stack: Any, buses: Any, kind: str) -> None:
    """A second ``open()`` (a framework helper's, then ``with``) takes nothing more: it took
    a second tracker reference (and, sync, a second Database) that ``close()`` never gave
    back, so the region's tracker and its NATS subscription lived on after the last close."""
    from writebus.client import trackers

    settings = settings_for(stack, "lax", prefix=f"twice{uuid.uuid4().hex[:6]}")
    if kind == "async":
        db = Database(settings)
        await db.open()
        await db.open()
        tracker = db.tracker
        await db.close()
    else:
        sdb = SyncDatabase(settings)
        await asyncio.to_thread(sdb.open)
        await asyncio.to_thread(sdb.open)
        assert sdb.database is not None
        tracker = sdb.database.tracker
        await asyncio.to_thread(sdb.close)
    assert tracker is not None
    assert all(t is not tracker for t, _ in trackers._trackers.values())


async def test_no_worker(stack: Any, buses: Any, request: pytest.FixtureRequest) -> None:
    """A prefix nobody serves gives NoWorkerError (not applied) from both APIs."""
    settings = settings_for(stack, "lax", prefix=f"nobody{uuid.uuid4().hex[:6]}")
    async with Database(settings) as db:
        with pytest.raises(NoWorkerError):
            await db.execute("SELECT 1")
    with SyncDatabase(settings) as sdb, pytest.raises(NoWorkerError):
        await asyncio.to_thread(sdb.execute, "SELECT 1")


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (dict_row, {"id": 1, "body": "rf"}),
        (class_row(Note), Note(1, "rf")),
        (namedtuple_row, (1, "rf")),
        (None, (1, "rf")),
    ],
)
async def test_row_factories_on_reads_and_returning(
    api: API, table: str, factory: Any, expected: Any
) -> None:
    """row_factory shapes RETURNING rows of a write and rows of a read the same way."""
    res = await api("execute", f"INSERT INTO {table}(body) VALUES ('rf') RETURNING id, body",
                    row_factory=factory)
    assert res.rows == [expected]
    rows = await api("fetch", f"SELECT id, body FROM {table}", row_factory=factory)
    assert rows == [expected]


@pytest.mark.parametrize("factory", [dict_row, class_row(Note)])
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_fetchval_gives_the_value_whatever_the_handles_row_factory(
    stack: Any, buses: Any, table: str, factory: Any, kind: str
) -> None:
    """``fetchval`` is the first column's value on a handle made with ``row_factory=``: it
    took the handle's factory and indexed its dict (KeyError: 0) or object (TypeError)."""
    settings = settings_for(stack, "lax")
    if kind == "async":
        async with Database(settings, row_factory=factory) as db:
            await db.execute(f"INSERT INTO {table}(id, body) VALUES (1, 'v')")
            value = await db.fetchval(f"SELECT id, body FROM {table}")
            row = await db.fetchrow(f"SELECT id, body FROM {table}")
    else:
        with SyncDatabase(settings, row_factory=factory) as sdb:
            await asyncio.to_thread(sdb.execute, f"INSERT INTO {table}(id, body) VALUES (1, 'v')")
            value = await asyncio.to_thread(sdb.fetchval, f"SELECT id, body FROM {table}")
            row = await asyncio.to_thread(sdb.fetchrow, f"SELECT id, body FROM {table}")
    assert value == 1
    assert row == ({"id": 1, "body": "v"} if factory is dict_row else Note(1, "v"))


async def test_a_row_factory_that_fails_on_a_committed_write_says_it_committed(
    api: API, table: str
) -> None:
    """A row factory that cannot shape a write's RETURNING rows (a class missing a column)
    does not hide the commit behind its own TypeError: RowFactoryError, applied, with the
    request id and the position; the session counts the write, and the row is there."""
    with writebus.session() as s:
        with pytest.raises(RowFactoryError) as info:
            await api("execute", f"INSERT INTO {table}(body) VALUES ('rf') RETURNING id",
                      row_factory=class_row(Note))  # fmt: skip
        err = info.value
        assert err.outcome is Outcome.APPLIED and err.lsn is not None and err.request_id
        assert isinstance(err.__cause__, TypeError) and "committed at" in str(err)
        assert s.lsn == err.lsn
        assert await api("fetchval", f"SELECT count(*) FROM {table} WHERE body = 'rf'") == 1


async def test_sqlalchemy_core_constructs(api: API, table: str) -> None:
    """insert/update/select built with SQLAlchemy Core run as writes and reads."""
    notes = sa.Table(table, sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                     sa.Column("body", sa.Text), sa.Column("n", sa.Integer))
    res = await api("execute", sa.insert(notes).values(body="core", n=1).returning(notes.c.id))
    (note_id,) = res.rows[0]
    await api("execute", sa.update(notes).where(notes.c.id == note_id).values(n=2))
    row = await api("fetchrow", sa.select(notes.c.body, notes.c.n).where(notes.c.id == note_id))
    assert tuple(row) == ("core", 2)
    text = sa.text(f"SELECT count(*) FROM {table} WHERE body = :b")
    assert await api("fetchval", text, {"b": "core"}) == 1


class Upper(sa.types.TypeDecorator[str]):
    """A column type whose bind processor upper-cases what is stored."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return value.upper() if value is not None else None


async def test_sqlalchemy_in_lists_run_their_bind_processors(api: API, table: str) -> None:
    """An ``in_()`` list's values go through the column type's bind processor, as a lone
    comparison's do, and ``params`` may fill a bindparam beside one: the list was expanded
    at compile time, so 'a' was sent as 'a' (matching nothing stored as 'A'), and a
    bindparam filled by params raised SQLAlchemy's InvalidRequestError."""
    notes = sa.Table(table, sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                     sa.Column("body", Upper), sa.Column("n", sa.Integer))  # fmt: skip
    await api("execute", sa.insert(notes).values(body="a", n=1))
    await api("execute", sa.insert(notes).values(body="b", n=2))
    assert await api("fetchval", sa.select(sa.func.count()).where(notes.c.body == "a")) == 1
    found = sa.select(notes.c.n).where(notes.c.body.in_(["a", "b"])).where(
        notes.c.n >= sa.bindparam("least")).order_by(notes.c.n)  # fmt: skip
    assert [tuple(r) for r in await api("fetch", found, {"least": 1})] == [(1,), (2,)]
    gone = await api("execute", sa.delete(notes).where(notes.c.body.in_(["a"])))
    assert gone.rowcount == 1
    ids = sa.text(f"SELECT count(*) FROM {table} WHERE n IN :ns").bindparams(
        sa.bindparam("ns", expanding=True))  # fmt: skip
    assert await api("fetchval", ids, {"ns": [1, 2]}) == 1


async def test_sqlalchemy_insert_takes_its_columns_from_params(api: API, table: str) -> None:
    """``insert(t)`` without ``values()`` sets the columns ``params`` name, as SQLAlchemy's
    ``connection.execute(insert(t), params)`` does: it asked for every column (``id``)."""
    notes = sa.Table(table, sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                     sa.Column("body", sa.Text), sa.Column("n", sa.Integer))  # fmt: skip
    res = await api("execute", sa.insert(notes).returning(notes.c.n), {"body": "p", "n": 3})
    assert res.rows == [(3,)]
