"""Binding a statement's typed parameters: each as text of the type the client named.

A client sends a decimal, a UUID, a date, an interval, an address or a JSON document as its
text, with the type psycopg would bind the value as in the statement's ``types``
(:mod:`writebus.client.paramtypes`). :func:`bound` wraps each such value in :class:`Typed`,
which psycopg sends as text of that type: the server reads it with the type's input function,
as it reads a value psycopg sent itself, so a statement means the same in every region. An
array goes as the text of a Postgres array of its elements.

An untyped value (0, or a name the map leaves out) is bound as the value says, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from writebus.client.protocol import Statement


class Typed:
    """A parameter's ``text``, bound as the type ``oid``."""

    __slots__ = ("oid", "text")

    def __init__(self, text: str, oid: int) -> None:
        self.text = text
        self.oid = oid

    def __repr__(self) -> str:
        return f"Typed({self.text!r}, {self.oid})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Typed) and (self.text, self.oid) == (other.text, other.oid)

    def __hash__(self) -> int:
        return hash((self.text, self.oid))


class TypedDumper(Dumper):
    """Dumps a :class:`Typed` as its text, with its own OID (one upgraded dumper per OID)."""

    format = Format.TEXT

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        conn = self.connection
        self._encoding = conn.info.encoding if conn is not None else "utf-8"

    def get_key(self, obj: Typed, format: Any) -> Any:
        return (Typed, obj.oid)

    def upgrade(self, obj: Typed, format: Any) -> TypedDumper:
        dumper = TypedDumper(Typed, self.connection)
        dumper.oid = obj.oid
        return dumper

    def dump(self, obj: Typed) -> bytes:
        if "\x00" in obj.text:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return obj.text.encode(self._encoding)


psycopg.adapters.register_dumper(Typed, TypedDumper)


def _casts() -> dict[int, tuple[str, bytes]]:
    from psycopg.postgres import types

    out = {}
    for name in ("numeric", "uuid", "date", "time", "timetz", "timestamp", "timestamptz",
                 "interval", "inet", "cidr", "json", "jsonb"):  # fmt: skip
        info = types[name]
        out[info.oid] = (name, f"pg_catalog.{name}".encode())
        out[info.array_oid] = (name, f"pg_catalog.{name}[]".encode())
    return out


#: The types a typed value may be written in as a literal of (:mod:`writebus.bus.literals`):
#: OID to the column name a cast to it gives a bare value, and the cast. The types the
#: Python client sends, and arrays of them; any other is sent bound.
CASTS: dict[int, tuple[str, bytes]] = _casts()


def text_of(value: Any) -> str | None:
    """A wire value's text, as Postgres reads it for a scalar or an array; None for nil."""
    if value is None:
        return None
    if isinstance(value, list):
        return "{" + ",".join(_element(v) for v in value) + "}"
    return _scalar(value)


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return text_of(value) or "{}"
    text = _scalar(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent as text of a type")


def _typed(value: Any, oid: int) -> Any:
    if not oid or value is None:
        return value
    if not isinstance(value, (str, int, float, list)):
        return value  # not a wire form (a Decimal the primary region holds): psycopg's type
    text = text_of(value)
    return value if text is None else Typed(text, oid)


def types_key(stmt: Statement) -> tuple[Any, ...]:
    """``stmt.types`` as a hashable key (a proof's, a batched run's)."""
    types = stmt.types
    return tuple(sorted(types.items())) if isinstance(types, dict) else tuple(types or ())


def bound(stmt: Statement) -> Sequence[Any] | dict[str, Any] | None:
    """``stmt``'s parameters as a worker binds them: typed values as :class:`Typed`."""
    params, types = stmt.params, stmt.types
    if not types or params is None:
        return params
    if isinstance(params, dict):
        named = types if isinstance(types, dict) else {}
        return {k: _typed(v, named.get(k, 0)) for k, v in params.items()}
    oids = types if isinstance(types, list) else []
    return [_typed(v, oid) for v, oid in zip(params, oids, strict=False)] + params[len(oids) :]
