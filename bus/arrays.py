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


class _ArrayDumper(Dumper):
    format = Format.BINARY
    array_oid = 0
    element_oid = 0

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self.oid = self.array_oid  # per instance: a class oid would be registered by oid

    def dump(self, obj: Any) -> bytes:
        return encode_array(self.elements(obj), self.element_oid)

    def elements(self, obj: Any) -> list[bytes]:
        """The elements' bytes in the binary format."""
        return obj  # type: ignore[no-any-return]


class _TextArrayDumper(_ArrayDumper):
    array_oid = _TEXT_ARRAY_OID
    element_oid = _TEXT_OID

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        conn = self.connection
        self._encoding = conn.info.encoding if conn is not None else "utf-8"

    def elements(self, obj: Any) -> list[bytes]:
        encoding = self._encoding
        return [s.encode(encoding) for s in obj]


class _ByteaArrayDumper(_ArrayDumper):
    array_oid = _BYTEA_ARRAY_OID
    element_oid = _BYTEA_OID  # the elements are bytes already: sent as they are


psycopg.adapters.register_dumper(TextArray, _TextArrayDumper)
psycopg.adapters.register_dumper(ByteaArray, _ByteaArrayDumper)
