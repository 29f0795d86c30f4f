"""Row factories on rows that came over the wire, as psycopg users expect.

Reads run on a psycopg cursor, which applies a ``row_factory`` itself. A write's ``RETURNING``
rows arrive as column names and value lists (from a bus worker, or from the direct path's same
function), so the factory is applied here, to a small stand-in for the cursor psycopg's row
factories inspect: its result's field names. ``dict_row``, ``namedtuple_row``,
``class_row(...)``, ``tuple_row`` and custom factories built the same way all work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from psycopg import pq

RowFactory = Callable[[Any], Callable[[Sequence[Any]], Any]]


class _WireResult:
    """The part of a ``PGresult`` psycopg's row factories read: field count and names."""

    status = pq.ExecStatus.TUPLES_OK

    def __init__(self, columns: Sequence[str]) -> None:
        self._names = [c.encode() for c in columns]
        self.nfields = len(self._names)

    def fname(self, index: int) -> bytes | None:
        return self._names[index] if 0 <= index < self.nfields else None


class _WireCursor:
    """What a row factory receives: a result description, no connection."""

    _encoding = "utf-8"

    def __init__(self, columns: Sequence[str]) -> None:
        self.pgresult = _WireResult(columns)


def make_rows(
    columns: Sequence[str] | None, rows: Sequence[Sequence[Any]], factory: RowFactory | None
) -> list[Any]:
    """``rows`` shaped by ``factory`` (tuples without one)."""
    if factory is None or columns is None:
        return [tuple(row) for row in rows]
    make = factory(_WireCursor(columns))
    return [make(row) for row in rows]
