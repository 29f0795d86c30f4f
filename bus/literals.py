"""Statements written out whole, values as typed literals, for the simple query protocol.

A group's first round trip -- ``BEGIN``, the claim, every request's statements -- costs the
worker a command's worth of psycopg and libpq work per statement when sent as a pipeline of
bound statements (about half of a grouped write's CPU). Sent as *one* simple query, the same
commands cost a string join: the server runs them in order and returns a result for each.

That is only safe for text where writing a value in cannot change what the text means, so a
statement goes this way only when both hold:

* **its text is plain** (:func:`plain_text`): outside double-quoted identifiers it has no
  quote, no dollar sign, no backslash, no comment and no semicolon, no placeholder sits
  inside an identifier, and no named placeholder appears twice. Every placeholder then stands
  where an expression stands, nothing can hide a second command, a literal cannot end up
  inside a string or a comment, and each value's type is decided where it stands (a bound
  parameter used twice takes the type its first use deduces);
* **the server has run it bound** (:data:`PROVEN`): the text, with parameters of the same
  Python types, ran successfully through the extended protocol on this worker before (a lone
  write, or a group sent the other way). A text or a value the extended protocol refuses --
  syntax that only parses with a literal in place (``INTERVAL %s``), a ``str`` or ``None``
  where no type can be deduced (``pg_typeof(%s)``) -- is then refused the same way every
  time, whichever way its group is sent.

Each value is written as a parenthesised, escaped literal (libpq's ``PQescapeLiteral``) of
the type psycopg would bind it as: ``('5'::int2)``, ``('1.5'::float8)``, ``('abc')`` (unknown,
as psycopg binds ``str``), ``NULL``. A parenthesised expression parses wherever a ``$n``
parameter does, and a typed string literal is read by the type's input function exactly as a
parameter sent as text is. Only ``None``, ``bool``, ``int``, ``float``, ``str`` and ``bytes``
are written in; a statement with any other value is sent bound.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper, PyFormat, Transformer

from writebus.client.protocol import Statement

#: Characters and sequences that may not appear outside double-quoted identifiers.
_HAZARDS: Final = re.compile(r"['$\\;]|--|/\*")
_NAMED: Final = re.compile(r"%\(([^)]*)\)")
#: The Python types written in, with the type each is bound as decided by psycopg's dumper.
_SCALARS: Final = frozenset({bool, int, float, str, bytes})
#: Type names for the oids psycopg's dumpers choose for those types (0: unknown, no cast).
_TYPE_NAMES: Final = {
    psycopg.postgres.types[name].oid: name.encode()
    for name in ("bool", "int2", "int4", "int8", "numeric", "float8", "bytea")
}


def plain_text(sql: str) -> bool:
    """Whether ``sql`` is one command whose placeholders all stand where expressions do: no
    quote, dollar sign, backslash, comment or semicolon outside double-quoted identifiers, no
    ``%`` inside one, and no named placeholder used twice."""
    names = _NAMED.findall(sql)
    if len(names) != len(set(names)):
        return False
    parts = sql.split('"')
    if len(parts) % 2 == 0:  # an unterminated identifier
        return False
    for n, part in enumerate(parts):
        if n % 2 == 0:
            if _HAZARDS.search(part):
                return False
        elif "%" in part:
            return False
    return True


def shape(stmt: Statement) -> Hashable:
    """What a proof covers: the statement's text and its parameters' Python types."""
    params = stmt.params
    if params is None:
        return stmt.sql
    if isinstance(params, dict):
        return stmt.sql, tuple(sorted((k, type(v)) for k, v in params.items()))
    return stmt.sql, tuple(type(v) for v in params)


class ProvenTexts:
    """Statements (text and parameter types, :func:`shape`) the server has run bound
    (extended protocol) on this worker; the ``capacity`` most recently used are kept."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._shapes: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, stmt: Statement) -> bool:
        return shape(stmt) in self._shapes

    def __len__(self) -> int:
        return len(self._shapes)

    def add(self, statements: Iterable[Statement]) -> None:
        """Record ``statements`` as run bound (the most recently used)."""
        for stmt in statements:
            key = shape(stmt)
            if key in self._shapes:
                self._shapes.move_to_end(key)
            elif plain_text(stmt.sql):  # only plain texts are ever looked up
                self._shapes[key] = None
                if len(self._shapes) > self.capacity:
                    self._shapes.popitem(last=False)

    def clear(self) -> None:
        """Forget every statement."""
        self._shapes.clear()


#: The statements this process's worker has run bound.
PROVEN: Final = ProvenTexts()


class Unrenderable(Exception):
    """A value or statement that is not written in (it is sent bound instead)."""


class _Written:
    """An SQL fragment already written: put in place of its placeholder as it is."""

    __slots__ = ("sql",)

    def __init__(self, sql: bytes) -> None:
        self.sql = sql


class _WrittenDumper(Dumper):
    oid = 0

    def dump(self, obj: Any) -> bytes:
        return obj.sql  # type: ignore[no-any-return]

    def quote(self, obj: Any) -> bytes:
        return obj.sql  # type: ignore[no-any-return]


class Renderer:
    """Writes statements out for one connection (its encoding and escaping rules)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._cursor = psycopg.AsyncClientCursor(conn)  # only its placeholder substitution
        self._cursor.adapters.register_dumper(_Written, _WrittenDumper)
        self._tx = Transformer.from_context(conn)
        self._escaping = pq.Escaping(conn.pgconn)

    def literal(self, value: Any) -> bytes:
        """``value`` as a parenthesised literal of the type psycopg binds it as."""
        if value is None:
            return b"NULL"
        if type(value) not in _SCALARS:
            raise Unrenderable(f"a {type(value).__name__} is sent bound")
        dumper = self._tx.get_dumper(value, PyFormat.TEXT)
        data = dumper.dump(value)
        assert data is not None
        text = self._escaping.escape_literal(bytes(data))
        if not dumper.oid:
            return b"(" + text + b")"
        name = _TYPE_NAMES.get(dumper.oid)
        if name is None:
            raise Unrenderable(f"a {type(value).__name__} bound as oid {dumper.oid}")
        return b"(" + text + b"::" + name + b")"

    def array(self, values: Sequence[Any]) -> _Written:
        """An ``ARRAY[...]`` of ``values`` (for a placeholder cast to the array's type)."""
        return _Written(b"ARRAY[" + b",".join(self.literal(v) for v in values) + b"]")

    def statement(self, sql: str, params: Any) -> str:
        """``sql`` with ``params`` written in (as psycopg substitutes placeholders)."""
        if params is None:
            return sql  # sent as it is, as psycopg sends a statement without parameters
        if isinstance(params, dict):
            written: Any = {k: self._written(v) for k, v in params.items()}
        else:
            written = [self._written(v) for v in params]
        return self._cursor.mogrify(sql, written)

    def _written(self, value: Any) -> Any:
        return value if isinstance(value, _Written) else _Written(self.literal(value))


def join(commands: Iterable[str]) -> str:
    """One simple query running ``commands`` in order. Each semicolon has a line of its own,
    so a line comment could never swallow it (plain texts have none; the separator does not
    rely on that)."""
    return "\n;\n".join(commands)
