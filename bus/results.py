"""A statement's result in its wire form (docs/protocol.md, "Values in results")."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import psycopg

from writebus.client.errors import WriteRejectedError
from writebus.client.protocol import StatementResult


async def wire_result(cur: psycopg.AsyncCursor[Any]) -> StatementResult:
    """A statement's result in its wire form (docs/protocol.md, "Values in results").

    A value the wire cannot carry faithfully is a :class:`WriteRejectedError` (the write rolls
    back), never an internal error or a wrong value.
    """
    description = cur.description  # built anew on each access: read it once
    if description is None:
        return StatementResult(rowcount=cur.rowcount, columns=None, rows=None)
    columns = [c.name for c in description]
    types = [c.type_code for c in description]
    _check_interval_style(cur, types)
    try:
        rows: list[list[Any]] = await cur.fetchall()
        # psycopg gives timestamptz values in the session's TimeZone. The wire carries them in
        # UTC, so a reply does not depend on the database's TimeZone setting and a repeated
        # request id -- answered from the stored result -- gets the same text in JSON.
        zoned = [i for i, t in enumerate(types) if t in _TIMESTAMPTZ_OIDS]
        if zoned:
            rows = [_in_utc(row, zoned) for row in rows]
    except (psycopg.DataError, NotImplementedError, ValueError, OverflowError) as exc:
        # The driver cannot turn a value into Python ('infinity'::timestamptz, a year past
        # 9999, a JSON number of more than 4,300 digits), or it has no UTC form (9999-12-31
        # 23:00 in New York): a value the wire cannot carry, not a bug.
        raise WriteRejectedError(
            f"a value in the result cannot be sent: {exc}; select it as text (::text)"
        ) from exc
    return StatementResult(rowcount=cur.rowcount, columns=columns, rows=rows, types=types)


def _check_interval_style(cur: psycopg.AsyncCursor[Any], types: list[int]) -> None:
    # psycopg parses intervals in IntervalStyle 'postgres' only; under another style (a
    # statement's SET LOCAL intervalstyle) it raises or, depending on when its loader was made,
    # misreads the text ('P1D' as 60 seconds). Refuse rather than send a wrong value.
    if _INTERVAL_OIDS.isdisjoint(types):
        return
    style = cur.connection.pgconn.parameter_status(b"IntervalStyle")
    if style not in (None, b"postgres"):
        raise WriteRejectedError(
            "a value in the result cannot be sent: an interval under IntervalStyle "
            f"{style.decode(errors='replace')!r}; select it as text (::text)"
        )


_INTERVAL_OIDS = frozenset(
    {psycopg.postgres.types["interval"].oid, psycopg.postgres.types["interval"].array_oid}
)
_TIMESTAMPTZ_OIDS = frozenset(
    {psycopg.postgres.types["timestamptz"].oid, psycopg.postgres.types["timestamptz"].array_oid}
)


def _in_utc(row: Sequence[Any], columns: list[int]) -> list[Any]:
    out = list(row)
    for i in columns:
        out[i] = _utc(out[i])
    return out


def _utc(value: Any) -> Any:
    """A timestamptz value (or an array of them, nested) converted to UTC."""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC)
    if isinstance(value, list):
        return [_utc(v) for v in value]
    return value
