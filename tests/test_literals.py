"""Groups written out whole (:mod:`writebus.bus.literals`) on the real primary: the values
arrive as bound ones would, hostile text stays a value, and anything unusual still gets the
careful answer."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import ipaddress
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from tests.support.stack import deferred_child, primary_rows
from writebus.bus import idempotency, literals, optimistic
from writebus.bus.execute import Job, Limits, run_statement_writes
from writebus.bus.group import Executed
from writebus.bus.pg import durable_commits
from writebus.bus.typedparams import bound as typed_bound
from writebus.client.errors import (
    IdempotencyKeyReusedError,
    OutcomeUnknownError,
    WriteRejectedError,
)
from writebus.client.paramtypes import as_a_worker_gets
from writebus.client.protocol import Request, Statement

#: One value of every kind the wire carries as a scalar, at the edges of each bound type.
VALUES: list[Any] = [
    None, True, False, 0, -32768, 32767, 40000, -(2**31), 2**40, -(2**63), 2**63 - 1, 2**63,
    -(2**70), 1.5, -0.0, 1e300, 5e-324, float("inf"), float("-inf"), 0.1,
    "", "abc", "it's", "back\\slash", "x\ny", "'; DROP TABLE t; --", "*/ ; /*", "ünï 字",
    "%s", "$1", "$$", b"", b"\x00\x01'\\", bytes(range(256)),
]  # fmt: skip
#: Strings that would change a statement if they were ever pasted into its text unescaped.
HOSTILE = ["it's", "a''b", "back\\slash\\", "x\ny", "'); DELETE FROM notes; --", "*/ ; /*",
           "$$ ; $$", "E'\\x27'", "%s %(x)s", "\t\r", "ünï 字"]  # fmt: skip


@pytest.fixture
async def conn(stack: Any) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    c = await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True)
    yield c
    await c.close()


@pytest.fixture
async def pool(stack: Any, buses: Any) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.primary.url, min_size=1, max_size=2, kwargs={"autocommit": True},
        configure=durable_commits, open=False,
    )  # fmt: skip
    await p.open(wait=True)
    yield p
    await p.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each group's first round trip, as it went: "written" or "bound"."""
    ways: list[str] = []
    simple, bound = optimistic._send_simple, optimistic._send_bound

    async def spy_simple(*args: Any) -> Any:
        ways.append("written")
        out = await simple(*args)
        if out is None:
            ways[-1] = "written, results not lined up"
        return out

    async def spy_bound(*args: Any) -> Any:
        ways.append("bound")
        return await bound(*args)

    monkeypatch.setattr(optimistic, "_send_simple", spy_simple)
    monkeypatch.setattr(optimistic, "_send_bound", spy_bound)
    return ways


@pytest.fixture
def careful(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group run the careful way (savepoints, statements bound)."""
    from writebus.bus import group

    sizes: list[int] = []
    first_round = group._first_round

    async def spy(*args: Any) -> Any:
        sizes.append(len(args[1]))
        return await first_round(*args)

    monkeypatch.setattr(group, "_first_round", spy)
    return sizes


@contextlib.asynccontextmanager
async def _pool_with(stack: Any, options: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool whose sessions start with ``options`` (``-c lock_timeout=...``)."""
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        stack.primary.url, min_size=1, max_size=1, kwargs={"autocommit": True, "options": options},
        configure=durable_commits, open=False,
    )  # fmt: skip
    await p.open(wait=True)
    try:
        yield p
    finally:
        await p.close()


def _insert(table: str, body: Any, n: Any = None, rid: str | None = None) -> Job:
    sql = f"INSERT INTO {table} (body, n) VALUES (%s, %s) RETURNING id, body, n"
    return Job(Request(id=rid or uuid.uuid4().hex, statements=[Statement(sql=sql, params=[body, n])]))


async def _run(pool: AsyncConnectionPool[Any], jobs: list[Job]) -> list[Any]:
    return await run_statement_writes(pool, jobs, limits=Limits(max_reply_bytes=256 * 1024))


@pytest.mark.parametrize("value", VALUES, ids=repr)
async def test_a_written_value_has_the_bound_type_and_value(
    conn: psycopg.AsyncConnection[Any], value: Any
) -> None:
    """Each value, written in, reaches the server with the type psycopg binds it as, and
    reads back the same (``str`` and ``None`` unknown-typed, resolved by their context)."""
    sql = "SELECT pg_typeof(v)::text, v, v::text FROM (SELECT %s AS v) AS s"
    bound = await (await conn.execute(sql, [value])).fetchone()
    written = await (await conn.execute(literals.Renderer(conn).statement(sql, [value]))).fetchone()
    assert bound is not None and written is not None
    assert written[0] == bound[0] and written[2] == bound[2]
    assert written[1] == bound[1] or (written[1] != written[1] and bound[1] != bound[1])  # NaN


async def test_written_types_do_not_depend_on_the_search_path(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """A temporary table named like a type (its row type shadows the name on the search path)
    does not change what a written value is: the casts name pg_catalog's types."""
    await conn.execute("CREATE TEMP TABLE int2 (a text)")
    sql = "SELECT pg_typeof(v)::text, v FROM (SELECT %s AS v) AS s"
    written = await (await conn.execute(literals.Renderer(conn).statement(sql, [5]))).fetchone()
    assert written == ("smallint", 5)


async def test_named_parameters_are_written_like_positional_ones(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    sql = "SELECT %(a)s::text, %(b)s + 1, %(c)s"
    params = {"a": "it's", "b": 41, "c": None}
    bound = await (await conn.execute(sql, params)).fetchone()
    written = await (await conn.execute(literals.Renderer(conn).statement(sql, params))).fetchone()
    assert written == bound == ("it's", 42, None)


async def test_a_group_of_proven_plain_statements_goes_in_one_simple_query(
    stack: Any, pool: Any, table: str, sent: list[str]
) -> None:
    """The first group runs bound (proving the text), the next is written out: every hostile
    string is stored as the value it is, each request gets its own row, one LSN for all."""
    first = await _run(pool, [_insert(table, "p0"), _insert(table, "p1", 1)])
    assert sent == ["bound"] and all(isinstance(o, Executed) for o in first)
    out = await _run(pool, [_insert(table, s, n) for n, s in enumerate(HOSTILE)])
    assert sent == ["bound", "written"]
    assert all(isinstance(o, Executed) and not o.duplicate for o in out)
    assert [list(o.results[0].rows[0][1:]) for o in out] == [[s, n] for n, s in enumerate(HOSTILE)]
    assert len({o.lsn for o in out}) == 1
    stored = primary_rows(stack, f"SELECT body FROM {table} ORDER BY id")
    assert [r[0] for r in stored] == ["p0", "p1", *HOSTILE]


_TYPED_VALUES: list[Any] = [
    decimal.Decimal("1.50"), uuid.UUID(int=5), datetime.date(2026, 1, 2),
    datetime.timedelta(seconds=-1), ipaddress.ip_interface("10.0.0.1/8"), Jsonb({"a": [1]}),
    [decimal.Decimal("2"), None], datetime.time(3, 4, tzinfo=datetime.UTC),
]  # fmt: skip


async def test_typed_values_are_written_out_with_their_type(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """A typed value (a Decimal, UUID, date... sent as text with its type) is written in as
    a literal of that type, read as the same value as bound: one typed parameter no longer
    sends its whole group bound."""
    sql = "SELECT pg_typeof(v)::text, v::text FROM (SELECT %s AS v) AS s"
    for value in _TYPED_VALUES:
        stmt = as_a_worker_gets(Statement(sql=sql, params=[value]))
        bound_row = await (await conn.execute(sql, [value])).fetchone()
        text = literals.Renderer(conn).statement(sql, typed_bound(stmt))
        assert b"::pg_catalog." in text, value
        assert await (await conn.execute(text)).fetchone() == bound_row, value


async def test_a_proven_typed_statement_goes_in_one_simple_query(
    pool: Any, table: str, sent: list[str]
) -> None:
    """Typed statements prove themselves bound, then go written out, answering the same; a
    bare typed value's column, named after its cast when written, is answered bound."""
    def job(body: Any, n: Any, extra: str = "") -> Job:
        sql = f"INSERT INTO {table} (body, n) VALUES (%s, %s) RETURNING body, n, %s{extra}"
        stmt = as_a_worker_gets(Statement(sql=sql, params=[body, n, decimal.Decimal("0.5")]))
        return Job(Request(id=uuid.uuid4().hex, statements=[stmt]))

    first = await _run(pool, [job(uuid.UUID(int=1), decimal.Decimal(1)),
                              job(uuid.UUID(int=2), decimal.Decimal(2))])  # fmt: skip
    assert sent == ["bound"]
    second = await _run(pool, [job(uuid.UUID(int=3), decimal.Decimal(3)),
                               job(uuid.UUID(int=4), decimal.Decimal(4))])  # fmt: skip
    assert sent == ["bound", "written, results not lined up"]  # then the careful way
    for out, n in [(first, 1), (first, 2), (second, 3), (second, 4)]:
        result = out[n - 1 if out is first else n - 3].results[0]
        assert result.columns == ["body", "n", "?column?"]
        assert result.rows == [(str(uuid.UUID(int=n)), n, decimal.Decimal("0.5"))]
    named = await _run(pool, [job(uuid.UUID(int=5), decimal.Decimal(5), " AS half"),
                              job(uuid.UUID(int=6), decimal.Decimal(6), " AS half")])  # fmt: skip
    assert sent[2:] == ["bound"] and named[0].results[0].columns == ["body", "n", "half"]
    again = await _run(pool, [job(uuid.UUID(int=7), decimal.Decimal(7), " AS half"),
                              job(uuid.UUID(int=8), decimal.Decimal(8), " AS half")])  # fmt: skip
    assert sent[3:] == ["written"] and again[1].results[0].rows == [
        (str(uuid.UUID(int=8)), 8, decimal.Decimal("0.5"))
    ]


async def test_a_proven_lone_write_is_written_out_and_a_failing_one_answered_exactly(
    stack: Any, pool: Any, table: str, sent: list[str]
) -> None:
    """Alone, an unproven write goes the careful way directly; once proven it is written out.
    When its second statement fails, the careful way runs it again for the exact answer."""
    await _run(pool, [_insert(table, "a", 1)])
    assert sent == []
    (ok,) = await _run(pool, [_insert(table, "b", 2)])
    assert sent == ["written"] and isinstance(ok, Executed) and ok.lsn is not None
    stmt = _insert(table, "c", 3).req.statements[0]  # type: ignore[index]
    two = Job(Request(id=uuid.uuid4().hex, statements=[
        stmt, Statement(sql=stmt.sql, params=["d", -1]),
    ]))  # fmt: skip
    (bad,) = await _run(pool, [two])
    assert sent == ["written", "written"]
    assert isinstance(bad, WriteRejectedError) and bad.sqlstate == "23514"
    assert bad.statement_index == 1
    assert sorted(r[0] for r in primary_rows(stack, f"SELECT body FROM {table}")) == ["a", "b"]


async def test_repeats_are_answered_from_the_first_try(
    pool: Any, table: str, sent: list[str], careful: list[int]
) -> None:
    """A retry whose id is already applied is answered with the stored result by the first
    try; its statements are not run a second time the careful way. So is a group made only
    of repeats -- one of them reusing an id for another body is refused."""
    a, b = _insert(table, "a", 1), _insert(table, "b", 2)
    (done_a,) = await _run(pool, [a])  # not proven yet: the careful way
    assert careful == [1] and sent == []
    (again,) = await _run(pool, [a])
    assert sent == ["written"] and careful == [1]
    assert isinstance(again, Executed) and again.duplicate
    assert again.results[0].rows == [list(r) for r in done_a.results[0].rows or ()]
    assert again.lsn is not None and done_a.lsn is not None and again.lsn >= done_a.lsn
    await _run(pool, [b])
    reused = _insert(table, "not b", 2, rid=b.req.id)
    out = await _run(pool, [a, b, reused])
    assert sent[-1] == "written" and careful == [1]
    assert [isinstance(o, Executed) and o.duplicate for o in out[:2]] == [True, True]
    assert isinstance(out[2], IdempotencyKeyReusedError)


async def test_a_value_alone_in_a_select_list_keeps_its_bound_column_name(
    pool: Any, table: str, sent: list[str]
) -> None:
    """Written, ``SELECT %s`` would name its column after the cast: such a result is not used,
    and the careful way answers with the bound name. The statement is not written out again
    (each time, it ran twice)."""
    sql = "SELECT %s AS n, %s"

    def job(a: int, b: int) -> Job:
        return Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=sql, params=[a, b])]))

    (first,) = await _run(pool, [job(1, 2)])
    assert isinstance(first, Executed) and first.results[0].columns == ["n", "?column?"]
    (again,) = await _run(pool, [job(3, 4)])
    assert sent == ["written, results not lined up"]
    assert isinstance(again, Executed) and again.results[0].columns == ["n", "?column?"]
    assert [list(r) for r in again.results[0].rows or ()] == [[3, 4]]
    (third,) = await _run(pool, [job(5, 6)])
    assert sent == ["written, results not lined up"]  # alone, not written: the careful way
    assert isinstance(third, Executed) and third.results[0].columns == ["n", "?column?"]


async def test_a_proven_lone_write_failing_at_commit_is_rejected(
    stack: Any, pool: Any, table: str, sent: list[str]
) -> None:
    """A deferred constraint fails at COMMIT of a written lone write: the failure is its answer
    (as the careful way gives it), not a group to split again."""
    sql = f"INSERT INTO {deferred_child(stack, table, parents=(1,))} VALUES (%s)"

    def job(pid: int) -> Job:
        return Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=sql, params=[pid])]))

    (ok,) = await _run(pool, [job(1)])
    assert isinstance(ok, Executed)
    (bad,) = await _run(pool, [job(42)])
    assert sent == ["written"]
    assert isinstance(bad, WriteRejectedError) and bad.sqlstate == "23503"
    assert primary_rows(stack, f"SELECT pid FROM {table}_child") == [(1,)]


async def test_texts_that_are_not_plain_are_always_sent_bound(
    stack: Any, pool: Any, table: str, sent: list[str]
) -> None:
    sql = f"INSERT INTO {table} (body) VALUES (%s) -- a comment\nRETURNING body"

    def job(body: str) -> Job:
        return Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=sql, params=[body])]))

    await _run(pool, [job("a"), job("b")])
    await _run(pool, [job("c"), job("d")])
    assert sent == ["bound", "bound"]
    assert Statement(sql=sql, params=["e"]) not in literals.PROVEN


async def test_a_value_type_not_yet_run_bound_is_sent_bound(
    pool: Any, table: str, sent: list[str]
) -> None:
    """Proven with an int, the same text with a str is sent bound -- and refused as bound
    (no type can be deduced), where a literal would have been accepted."""
    sql = f"SELECT pg_typeof(%s)::text AS t FROM {table} LIMIT 1"

    def job(value: Any) -> Job:
        return Job(Request(id=uuid.uuid4().hex, statements=[Statement(sql=sql, params=[value])]))

    assert all(isinstance(o, Executed) for o in await _run(pool, [job(1), job(2)]))
    ok, refused = await _run(pool, [job(3), job("x")])
    assert sent == ["bound", "bound"]
    assert isinstance(ok, Executed)
    assert isinstance(refused, WriteRejectedError) and refused.sqlstate == "42P18"


async def test_a_failing_statement_in_a_written_group_fails_alone(
    stack: Any, pool: Any, table: str, sent: list[str]
) -> None:
    """Written out, a CHECK violation aborts the one query; the group then runs the careful
    way and only the guilty request is rejected. A repeated id is answered as stored."""
    rid = uuid.uuid4().hex
    (done,) = await _run(pool, [_insert(table, "done", 1, rid=rid)])  # alone: proves the text
    assert isinstance(done, Executed) and sent == []
    a, bad, c = await _run(pool, [_insert(table, "a", 1), _insert(table, "bad", -1),
                                  _insert(table, "c", 2)])  # fmt: skip
    assert sent == ["written"]
    assert isinstance(a, Executed) and isinstance(c, Executed)
    assert isinstance(bad, WriteRejectedError) and bad.sqlstate == "23514"
    again, fresh = await _run(pool, [_insert(table, "done", 1, rid=rid),
                                     _insert(table, "fresh", 3)])  # fmt: skip
    assert sent == ["written", "written"]
    assert isinstance(again, Executed) and again.duplicate
    assert again.results[0].rows == [list(r) for r in done.results[0].rows or ()]
    assert isinstance(fresh, Executed) and not fresh.duplicate
    bodies = sorted(r[0] for r in primary_rows(stack, f"SELECT body FROM {table}"))
    assert bodies == ["a", "c", "done", "fresh"]


async def test_results_that_do_not_line_up_are_not_committed(
    stack: Any, conn: psycopg.AsyncConnection[Any], table: str
) -> None:
    """The guard on a written group: one more result than commands sent means the query is
    not what was meant -- nothing of it is committed."""
    await idempotency.ensure_schema(conn, None)
    reqs = [_insert(table, f"r{n}").req for n in range(2)]
    render = literals.Renderer(conn)
    ids = [r.id for r in reqs]
    claim = [render.array(ids), idempotency.lookup_since(ids)]
    commands = [render.statement(idempotency.BEGIN_SQL, None),
                render.statement(idempotency.CLAIM_SQL, claim)]  # fmt: skip
    commands += [render.statement(s.sql, s.params) for r in reqs for s in r.statements or ()]
    assert await optimistic._send_simple(conn, literals.join(commands), reqs[:1]) is None
    await conn.execute("ROLLBACK")
    assert primary_rows(stack, f"SELECT body FROM {table}") == []


async def test_a_lone_written_write_failing_is_answered_by_its_first_try(
    stack: Any, pool: Any, table: str, sent: list[str], careful: list[int]
) -> None:
    """A proven lone write of one statement that fails written out (a unique violation: an
    app's "insert unless it exists") is answered with that error at once -- the careful way
    does not run it again -- and the answer is the one the careful way gives."""
    await _run(pool, [_insert(table, "a", 1)])  # not proven yet: the careful way
    assert careful == [1]
    (fast,) = await _run(pool, [_insert(table, "a", 2)])
    assert sent == ["written"] and careful == [1]
    literals.PROVEN.clear()
    (slow,) = await _run(pool, [_insert(table, "a", 3)])
    assert careful == [1, 1]
    for answer in (fast, slow):
        assert isinstance(answer, WriteRejectedError) and answer.sqlstate == "23505"
    assert (fast.message, fast.statement_index, fast.detail) == (
        slow.message, slow.statement_index, slow.detail
    )
    assert fast.statement_index == 0 and fast.detail is not None and "(a)" in fast.detail
    assert primary_rows(stack, f"SELECT body, n FROM {table}") == [("a", 1)]


async def test_a_lone_written_write_timing_out_is_not_run_twice(
    stack: Any, table: str, sent: list[str], careful: list[int]
) -> None:
    """A statement that hits ``statement_timeout`` written out gets that error as its answer:
    running it again the careful way would cost the timeout twice."""
    sql = f"INSERT INTO {table} (body, n) SELECT %s, %s FROM pg_sleep(%s)"

    def job(body: str, pause: float) -> Job:
        req = Request(id=uuid.uuid4().hex, statements=[Statement(sql=sql, params=[body, 1, pause])])
        return Job(req)

    async with _pool_with(stack, "-c statement_timeout=300") as timed:
        (ok,) = await _run(timed, [job("quick", 0.0)])
        (slow,) = await _run(timed, [job("slow", 5.0)])
    assert isinstance(ok, Executed) and careful == [1] and sent == ["written"]
    assert isinstance(slow, WriteRejectedError) and slow.sqlstate == "57014"
    assert slow.statement_index == 0
    assert primary_rows(stack, f"SELECT body FROM {table}") == [("quick",)]


async def test_a_claim_failing_in_a_written_lone_write_is_not_the_statements(
    stack: Any, table: str, sent: list[str], careful: list[int]
) -> None:
    """The claim's own failure (its lock held by another session, past ``lock_timeout``) is
    not taken for the statement's: it is the claim's -- unknown and retryable, since that
    session may be another try of the id -- and the careful way is not run (it would only
    wait for the lock again)."""
    rid = uuid.uuid4().hex
    async with _pool_with(stack, "-c lock_timeout=300") as timed:
        await _run(timed, [_insert(table, "proof", 1)])
        assert careful == [1]
        async with await psycopg.AsyncConnection.connect(stack.primary.url) as holder:
            await holder.execute(idempotency.CLAIM_FRESH_SQL, idempotency.claim_params([rid]))
            (blocked,) = await _run(timed, [_insert(table, "blocked", 2, rid=rid)])
            await holder.rollback()
    assert sent == ["written"] and careful == [1]
    assert isinstance(blocked, OutcomeUnknownError) and blocked.retryable
    assert "55P03" in str(blocked) and "claim" in str(blocked)
    assert primary_rows(stack, f"SELECT body FROM {table}") == [("proof",)]
