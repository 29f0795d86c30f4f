"""A statement's result in its wire form (:mod:`writebus.bus.results`), on the real primary:
timestamps in UTC whatever the session's TimeZone, and values the wire cannot carry faithfully
refused as the write's rejection, never sent wrong."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from writebus.bus.results import wire_result
from writebus.client.errors import WriteRejectedError

UTC = datetime.UTC


@pytest.fixture
async def conn(stack: Any) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    c = await psycopg.AsyncConnection.connect(stack.primary.url, autocommit=True)
    yield c
    await c.close()


async def test_a_command_without_rows_has_a_rowcount_and_no_columns(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    await conn.execute("CREATE TEMP TABLE r (n int)")
    res = await wire_result(await conn.execute("INSERT INTO r SELECT generate_series(1, 3)"))
    assert (res.rowcount, res.columns, res.rows) == (3, None, None)


async def test_timestamps_are_sent_in_utc_whatever_the_session_time_zone(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    await conn.execute("SET TimeZone = 'Asia/Tokyo'")
    cur = await conn.execute(
        "SELECT 1 AS n, '2024-01-02 03:04:05+00'::timestamptz AS t, "
        "ARRAY['2024-01-02 03:04:05+00'::timestamptz, NULL] AS a, "
        "'2024-01-02 03:04:05'::timestamp AS naive"
    )
    res = await wire_result(cur)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert res.columns == ["n", "t", "a", "naive"]
    assert res.rows is not None
    ((n, t, a, naive),) = res.rows
    assert n == 1 and t == when and t.utcoffset() == datetime.timedelta(0)
    assert a == [when, None] and a[0].utcoffset() == datetime.timedelta(0)
    assert naive == datetime.datetime(2024, 1, 2, 3, 4, 5) and naive.tzinfo is None


async def test_an_interval_is_refused_under_another_interval_style(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """psycopg reads intervals in the 'postgres' style only: another style is refused, not
    misread; in that style the value comes through."""
    res = await wire_result(await conn.execute("SELECT interval '1 day 2 hours' AS i"))
    assert [list(r) for r in res.rows or ()] == [[datetime.timedelta(days=1, hours=2)]]
    await conn.execute("SET IntervalStyle = 'iso_8601'")
    with pytest.raises(WriteRejectedError, match="IntervalStyle 'iso_8601'"):
        await wire_result(await conn.execute("SELECT ARRAY[interval '1 day'] AS i"))
    res = await wire_result(await conn.execute("SELECT (interval '1 day')::text AS i"))
    assert [list(r) for r in res.rows or ()] == [["P1D"]]


async def test_a_value_the_driver_cannot_load_is_refused(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    with pytest.raises(WriteRejectedError, match="select it as text"):
        await wire_result(await conn.execute("SELECT 'infinity'::timestamptz AS t"))


async def test_a_value_python_cannot_hold_or_put_in_utc_is_refused(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """Values the driver reads with a plain Python error are refused the same way: a JSON
    number past Python's 4,300-digit limit (ValueError), and a timestamp near year 9999 that
    has no UTC form in the session's time zone (OverflowError)."""
    with pytest.raises(WriteRejectedError, match="select it as text"):
        await wire_result(await conn.execute("SELECT ('{\"n\": ' || repeat('9', 5000) || '}')::jsonb AS j"))
    await conn.execute("SET TimeZone = 'America/New_York'")
    with pytest.raises(WriteRejectedError, match="select it as text"):
        await wire_result(await conn.execute("SELECT '9999-12-31 23:00'::timestamptz AS t"))
    res = await wire_result(await conn.execute("SELECT '9999-12-31 23:00'::timestamptz::text AS t"))
    assert [list(r) for r in res.rows or ()] == [["9999-12-31 23:00:00-05"]]
