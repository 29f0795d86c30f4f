"""Array parameters of the exactly-once claim, sent without psycopg's type inference.

psycopg adapts a Python ``list`` by looking at its elements on every call to choose the array
type and an element dumper; for the arrays every write sent (ids, and once the records'
digests and results), that was about a tenth of a lone write's CPU in the worker. The type of
the one left, the claim's ids, is known: :class:`TextArray` is a list that dumps straight to
Postgres' binary array format as ``text[]``. (The records now go in as ``VALUES``,
:mod:`writebus.bus.idempotency`.)

The dumper is registered on psycopg's global adapters for this class only (no oid is
registered, so nothing else -- a ``list``, ``COPY`` with declared types -- changes).
"""

from __future__ import annotations

import struct
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_TEXT_OID = 25
_TEXT_ARRAY_OID = 1009

_HEADER = struct.Struct("!iiiii")
_LENGTH = struct.Struct("!i")


class TextArray(list[str]):
    """A list of str sent as ``text[]``. None elements are not allowed."""


def encode_array(items: list[bytes], element_oid: int) -> bytes:
    """Postgres' binary format of a one-dimensional array with no nulls, lower bound 1."""
    if not items:
        return struct.pack("!iii", 0, 0, element_oid)
    parts = [_HEADER.pack(1, 0, element_oid, len(items), 1)]
    for item in items:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


class _TextArrayDumper(Dumper):
    format = Format.BINARY

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self.oid = _TEXT_ARRAY_OID  # per instance: a class oid would be registered by oid
        conn = self.connection
        self._encoding = conn.info.encoding if conn is not None else "utf-8"

    def dump(self, obj: Any) -> bytes:
        encoding = self._encoding
        return encode_array([s.encode(encoding) for s in obj], _TEXT_OID)


psycopg.adapters.register_dumper(TextArray, _TextArrayDumper)
