"""One write, two regions, the same answer.

Every case runs from ``syd`` (the primary region: the write runs in this process, directly on
the primary) and from ``lax`` (over the bus, on a worker). Both paths call the same
``run_request``, so the outcome must be identical: the same exception class, SQLSTATE, psycopg
error class (as an attribute and as ``__cause__``), failing statement, outcome -- and nothing
applied.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import ipaddress
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.types.json import Json, Jsonb

from tests.procedures import procedures
from tests.support.stack import primary_rows, settings_for
from writebus import (
    Database,
    IdempotencyKeyReusedError,
    LimitError,
    Outcome,
    ProcedureError,
    ProtocolError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.protocol import MAX_PARAM_BYTES, MAX_STATEMENTS

REGIONS = pytest.mark.parametrize("region", ["syd", "lax"])


@pytest.fixture
async def writer(stack: Any, buses: Any, region: str) -> AsyncIterator[Database]:
    """A client in ``region``: direct writes in syd, bus writes in lax."""
    async with Database(settings_for(stack, region), procedures=procedures) as db:
        yield db


@dataclass(frozen=True)
class Seen:
    """What a caller can observe of a failed write."""

    cls: type[WriteBusError]
    sqlstate: str | None
    pg_class: type[Exception] | None
    cause_is_pg_class: bool
    statement: int | None
    outcome: Outcome | None


def _seen(err: WriteBusError) -> Seen:
    pg_class = getattr(err, "pg_error_class", None)
    return Seen(
        cls=type(err),
        sqlstate=getattr(err, "sqlstate", None),
        pg_class=pg_class,
        cause_is_pg_class=pg_class is not None and isinstance(err.__cause__, pg_class),
        statement=getattr(err, "statement_index", None),
        outcome=err.outcome,
    )


Action = Callable[[Database, str], Awaitable[Any]]


async def _big_param(db: Database, table: str) -> Any:
    return await db.execute(f"INSERT INTO {table}(body) VALUES (%s)", ["x" * (2 * 1024 * 1024)])


async def _too_many_statements(db: Database, table: str) -> Any:
    stmt = (f"INSERT INTO {table}(body) VALUES (%s)", ["many"])
    return await db.batch([stmt] * (MAX_STATEMENTS + 1))


async def _begin_in_batch(db: Database, table: str) -> Any:
    return await db.batch(["BEGIN", (f"INSERT INTO {table}(body) VALUES ('tx')", None)])


async def _commit_in_batch(db: Database, table: str) -> Any:
    return await db.batch([(f"INSERT INTO {table}(body) VALUES ('tx2')", None), "COMMIT"])


async def _unique_violation(db: Database, table: str) -> Any:
    await db.execute(f"INSERT INTO {table}(body) VALUES ('dup')")
    return await db.batch(
        [
            (f"INSERT INTO {table}(body) VALUES ('fresh')", None),
            (f"INSERT INTO {table}(body) VALUES ('dup')", None),
        ]
    )


async def _check_violation(db: Database, table: str) -> Any:
    return await db.execute(f"INSERT INTO {table}(body, n) VALUES ('neg', -1)")


async def _procedure_raises(db: Database, table: str) -> Any:
    return await db.call("boom")


async def _unknown_procedure(db: Database, table: str) -> Any:
    return await db.call("no_such_procedure", 1)


async def _reply_too_large(db: Database, table: str) -> Any:
    return await db.execute(
        f"INSERT INTO {table}(body) SELECT 'row-' || g || repeat('r', 100) "
        "FROM generate_series(1, 20000) g RETURNING body"
    )


async def _error_at_commit(db: Database, table: str) -> Any:
    return await db.call("violate_at_commit", table)


@dataclass(frozen=True)
class Case:
    """A failing write and what every region must see."""

    action: Action
    cls: type[WriteBusError]
    sqlstate: str | None = None
    pg_class: type[Exception] | None = None
    statement: int | None = None
    #: Rows the action itself commits before the failing write (the unique-violation setup).
    rows_before: int = 0


CASES: dict[str, Case] = {
    "parameter over MAX_PARAM_BYTES": Case(_big_param, LimitError),
    "more than MAX_STATEMENTS": Case(_too_many_statements, LimitError),
    "BEGIN in a batch": Case(_begin_in_batch, ProtocolError),
    "COMMIT in a batch": Case(_commit_in_batch, ProtocolError),
    "unique violation": Case(
        _unique_violation,
        WriteRejectedError,
        sqlstate="23505",
        pg_class=pg_errors.UniqueViolation,
        statement=1,
        rows_before=1,
    ),
    "check violation": Case(
        _check_violation,
        WriteRejectedError,
        sqlstate="23514",
        pg_class=pg_errors.CheckViolation,
        statement=0,
    ),
    "procedure raises": Case(_procedure_raises, ProcedureError),
    "unknown procedure": Case(_unknown_procedure, ProcedureError),
    "reply over the NATS max payload": Case(_reply_too_large, LimitError),
    "deferred constraint at COMMIT": Case(
        _error_at_commit,
        WriteRejectedError,
        sqlstate="23503",
        pg_class=pg_errors.ForeignKeyViolation,
    ),
}


@REGIONS
@pytest.mark.parametrize("name", list(CASES))
async def test_failing_writes_look_the_same_in_every_region(
    writer: Database, stack: Any, table: str, region: str, name: str
) -> None:
    """The same failing write raises the same class, SQLSTATE, psycopg class (attribute and
    __cause__), statement index and 'not applied' outcome from syd (direct) and lax (bus), and
    leaves nothing behind on the primary."""
    case = CASES[name]
    with pytest.raises(WriteBusError) as info:
        await case.action(writer, table)
    seen = _seen(info.value)
    assert seen == Seen(
        cls=case.cls,
        sqlstate=case.sqlstate,
        pg_class=case.pg_class,
        cause_is_pg_class=case.pg_class is not None,
        statement=case.statement,
        outcome=Outcome.NOT_APPLIED,
    ), f"{region}: {info.value!r}"
    assert primary_rows(stack, f"SELECT count(*) FROM {table}") == [(case.rows_before,)]


def test_the_limits_are_the_protocol_constants() -> None:
    """The parameter case exceeds the documented cap (not some other limit)."""
    assert 2 * 1024 * 1024 > MAX_PARAM_BYTES


@REGIONS
async def test_successful_writes_look_the_same_in_every_region(
    writer: Database, table: str, region: str
) -> None:
    """A successful write returns the same shape from both paths: rows, rowcount, an LSN, and
    a repeat of its request id answered as a duplicate with the stored rows."""
    rid = f"parity-{region}-{table}"
    sql = f"INSERT INTO {table}(body) VALUES (%s) RETURNING body"
    first = await writer.execute(sql, ["same"], request_id=rid)
    again = await writer.execute(sql, ["same"], request_id=rid)
    assert first.rows == [("same",)] and first.rowcount == 1 and first.lsn is not None
    assert not first.duplicate and again.duplicate and again.rows == first.rows
    assert first.via_bus == (region == "lax")


_TYPED = (
    "SELECT 1.50::numeric AS n, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,"
    " date '2026-01-02' AS d, time '03:04:05.25' AS t, timetz '03:04:05+02' AS tz,"
    " timestamp '2026-01-02 03:04:05.5' AS ts, timestamptz '2026-01-02 03:04:05.25+10' AS tstz,"
    " interval '1 day 02:00:00.5' AS i, '192.168.0.1/24'::inet AS a, '10.0.0.1'::inet AS b,"
    " '10.0.0.0/8'::cidr AS c, '\\x0001ff'::bytea AS raw, ARRAY[1.5, NULL]::numeric[] AS ns,"
    " ARRAY[ARRAY[date '2026-01-02']] AS ds, 'x'::text AS s, NULL::uuid AS nothing,"
    " 'happy'::text AS label, 7 AS i4, 2.5::float8 AS f"
)


@REGIONS
async def test_returned_values_have_the_types_a_read_gives(
    writer: Database, stack: Any, region: str
) -> None:
    """A write's rows hold what psycopg gives reading the same values -- Decimal, UUID,
    datetimes, timedelta, addresses, bytes, arrays of them -- from both paths (over the bus
    they were the wire's text: '1.50', not Decimal('1.50'))."""
    with psycopg.connect(stack.primary.url) as conn:
        read = conn.execute(_TYPED).fetchone()
    assert read is not None
    (row,) = (await writer.execute(_TYPED)).rows
    assert row == read
    assert [type(v) for v in row] == [type(v) for v in read]
    assert isinstance(row[0], decimal.Decimal) and isinstance(row[12][0], decimal.Decimal)


_PARAMS: list[Any] = [
    decimal.Decimal("1.50"),
    uuid.UUID(int=7),
    datetime.date(2026, 1, 2),
    datetime.time(3, 4, 5, 250000),
    datetime.datetime(2026, 1, 2, 3, 4, 5, 500000),
    datetime.datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=datetime.UTC),
    datetime.timedelta(days=1, seconds=7200, microseconds=500000),
    ipaddress.ip_address("10.0.0.1"),
    ipaddress.ip_interface("192.168.0.1/24"),
    ipaddress.ip_network("10.0.0.0/8"),
    Jsonb({"b": [1, "x"], "a": None}),
    Json([1, 2]),
    [decimal.Decimal("1.5"), None, decimal.Decimal("-2")],
    [[uuid.UUID(int=1)], [uuid.UUID(int=2)]],
    [Jsonb({"q": 'a "quoted" \\ value'}), Jsonb(None), None],
    7,
    2.5,
    b"\x00\xff",
    datetime.timedelta(seconds=-1),  # msgspec's "-PT1S" is no interval Postgres reads
    [datetime.timedelta(days=-3)],
    decimal.Decimal("sNaN"),
]


@REGIONS
async def test_parameters_bind_as_the_same_types_in_every_region(
    writer: Database, stack: Any, region: str
) -> None:
    """A statement's parameters are bound as the types psycopg binds them as, from both
    paths: over the bus a Decimal, UUID, date, interval, address or JSON document was the
    wire's untyped text, so ``pg_typeof`` said ``unknown``/``text`` and ``%s + 1`` with a
    Decimal was refused in lax while syd ran it."""
    sql = "SELECT " + ", ".join("pg_typeof(%s)::text, %s::text" for _ in _PARAMS)
    params = [p for value in _PARAMS for p in (value, value)]
    with psycopg.connect(stack.primary.url) as conn:
        read = conn.execute(sql, params).fetchone()
    (row,) = (await writer.execute(sql, params)).rows
    assert row == read
    assert row[0:2] == ("numeric", "1.50") and row[24:26] == ("numeric[]", "{1.5,NULL,-2}")
    named = {"n": decimal.Decimal("1.5"), "j": Jsonb({"b": [1, "x"]})}
    (summed,) = (await writer.execute("SELECT %(n)s + 1 AS n, %(j)s->'b'->>1 AS j", named)).rows
    assert summed == (decimal.Decimal("2.5"), "x")


@REGIONS
async def test_a_negative_interval_is_the_same_under_every_interval_style(
    writer: Database, region: str
) -> None:
    """A negative timedelta means itself whatever the session's IntervalStyle: under
    ``sql_standard`` a leading sign applies to every unsigned field, so '-1 day 23:59:59'
    read as -47:59:59."""
    minus = [datetime.timedelta(seconds=-1), datetime.timedelta(days=-2, hours=3)]
    res = await writer.batch([
        ("SET LOCAL intervalstyle = 'sql_standard'", None),
        ("SELECT extract(epoch FROM %s), extract(epoch FROM %s)", minus),
    ])  # fmt: skip
    assert res.statements[1].rows == [(-1, -2 * 86400 + 3 * 3600)]


class Mood(enum.Enum):
    SAD = 1


@REGIONS
async def test_enums_and_tuples_are_sent_as_psycopg_sends_them(
    writer: Database, stack: Any, region: str
) -> None:
    """An Enum is its name and a tuple a composite, as psycopg sends them, from both paths:
    msgpack carried the Enum's value and the tuple as an array over the bus, and since the
    primary region binds what a worker gets, there too."""
    sql = "SELECT %s::text, %s::text"
    params = [Mood.SAD, (1, "a b")]
    with psycopg.connect(stack.primary.url) as conn:
        read = conn.execute(sql, params).fetchone()
    assert read == ("SAD", '(1,"a b")')
    assert (await writer.execute(sql, params)).rows == [read]


@REGIONS
async def test_procedures_get_and_return_the_same_values_in_every_region(
    writer: Database, region: str
) -> None:
    """A procedure gets its arguments as a worker receives them, and its value comes back as
    a worker's reply carries it, from both paths: the primary region's direct call handed it
    the caller's Decimal and returned the procedure's objects, the bus their wire forms."""
    when = datetime.date(2026, 1, 2)
    value = await writer.call(
        "describe", decimal.Decimal("1.50"), uuid.UUID(int=7), (1, 2), when, {7: "seven"},
        kwargs={"d": when},
    )  # fmt: skip
    assert value == {
        "types": ["str", "str", "list", "str", "dict"],
        "kwtypes": {"d": "str"},
        "args": ["1.50", str(uuid.UUID(int=7)), [1, 2], "2026-01-02", {7: "seven"}],
        "kwargs": {"d": "2026-01-02"},
    }


@REGIONS
async def test_a_reused_id_with_a_different_request_is_refused(
    writer: Database, stack: Any, table: str, region: str
) -> None:
    """An id already applied, sent again with different statements (or another procedure),
    is refused with IdempotencyKeyReusedError -- not answered with the first request's result
    -- and nothing more is applied; the identical request still gets the stored result."""
    rid = f"reuse-{region}-{table}"
    await writer.execute(f"INSERT INTO {table}(body) VALUES ('first')", request_id=rid)
    with pytest.raises(IdempotencyKeyReusedError) as info:
        await writer.execute(f"INSERT INTO {table}(body) VALUES ('second')", request_id=rid)
    assert info.value.outcome is Outcome.NOT_APPLIED and rid in str(info.value)
    with pytest.raises(IdempotencyKeyReusedError):
        await writer.call("add_note", table, "third", request_id=rid)
    same = await writer.execute(f"INSERT INTO {table}(body) VALUES ('first')", request_id=rid)
    assert same.duplicate
    assert primary_rows(stack, f"SELECT body FROM {table}") == [("first",)]


@REGIONS
async def test_a_resend_with_its_maps_in_another_order_is_the_same_request(
    writer: Database, stack: Any, table: str, region: str
) -> None:
    """Named parameters and keyword arguments rebuilt in another order (a retry job, another
    language's client) are the same request: answered from the record, not refused as another
    -- which would tell the caller nothing was applied, and a new id would apply it twice."""
    rid = f"order-{region}-{table}"
    sql = f"INSERT INTO {table}(body) VALUES (%(a)s || %(b)s) RETURNING body"
    first = await writer.execute(sql, {"a": "x", "b": "y"}, request_id=rid)
    again = await writer.execute(sql, {"b": "y", "a": "x"}, request_id=rid)
    assert again.duplicate and again.rows == first.rows == [("xy",)]
    rid = f"order-call-{region}-{table}"
    note = await writer.call("add_note", kwargs={"table": table, "body": "k"}, request_id=rid)
    same = await writer.call_result(
        "add_note", kwargs={"body": "k", "table": table}, request_id=rid
    )
    assert same.duplicate and same.value == note
    assert primary_rows(stack, f"SELECT body FROM {table} ORDER BY id") == [("xy",), ("k",)]
