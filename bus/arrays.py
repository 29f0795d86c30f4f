"""Array parameters of the exactly-once statements, sent without psycopg's type inference.

psycopg adapts a Python ``list`` by looking at its elements on every call to choose the array
type and an element dumper; for the id, digest and result arrays every write sends, that was
about a tenth of a lone write's CPU in the worker. Their types are known: :class:`TextArray`
and :class:`ByteaArray` are lists that dump straight to Postgres' binary array format as
``text[]`` and ``bytea[]``.

The dumpers are registered on psycopg's global adapters for these two classes only (no oid is
registered, so nothing else -- a ``list``, ``COPY`` with declared types -- changes).
"""

from __future__ import annotations

import struct
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_TEXT_OID = 25
_BYTEA_OID = 17
_TEXT_ARRAY_OID = 1009
_BYTEA_ARRAY_OID = 1001

_HEADER = struct.Struct("!iiiii")
_LENGTH = struct.Struct("!i")


class TextArray(list[str]):
    """A list of str sent as ``text[]``. None elements are not allowed."""


class ByteaArray(list[bytes]):
    """A list of bytes sent as ``bytea[]``. None elements are not allowed."""


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


class _ByteaArrayDumper(Dumper):
    format = Format.BINARY

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self.oid = _BYTEA_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return encode_array([bytes(b) for b in obj], _BYTEA_OID)


psycopg.adapters.register_dumper(TextArray, _TextArrayDumper)
psycopg.adapters.register_dumper(ByteaArray, _ByteaArrayDumper)
