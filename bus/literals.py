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

Each value is written as a parenthesised, escaped literal (libpq's ``PQescapeLiteral`` for
text) of the type psycopg would bind it as: ``('5'::pg_catalog.int2)``, ``('1.5'::
pg_catalog.float8)``, ``('abc')`` (unknown, as psycopg binds ``str``), ``(E'\\\\x00ff'::
pg_catalog.bytea)``, ``NULL``. A parenthesised expression parses wherever a ``$n`` parameter
does, and a typed string literal is read by the type's input function exactly as a parameter
sent as text is (the type is schema-qualified: a temporary table named ``int2`` cannot stand
in). One visible difference remains -- a value alone in a select list is named after its cast
(``int2``) where bound it is ``?column?``. A statement where such a name could be seen other
than in its result -- a derived table or CTE, whose columns reach ``to_jsonb(p)`` and
unqualified names; a ``NATURAL`` or ``USING`` join; a table made from a query -- is not plain; a
result with such a column name is not used (:func:`renamed`): the careful way runs the group
bound, and that statement is not written out again. ``None``, ``bool``, ``int``, ``float``,
``str`` and ``bytes`` are written in, and a typed value (:mod:`.typedparams`) of a type the
client sends (``numeric``, ``uuid``, dates and times, ``interval``, ``inet``/``cidr``,
``json``/``jsonb``, arrays of them) as ``('<text>'::pg_catalog.<type>)``; a statement with
any other value is sent bound.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Final

import psycopg
from psycopg import pq

from writebus.bus.typedparams import CASTS, Typed, types_key
from writebus.client.protocol import Statement

#: Characters and sequences that may not appear outside double-quoted identifiers.
_HAZARDS: Final = re.compile(r"['$\\;]|--|/\*")
_NAMED: Final = re.compile(r"%\(([^)]*)\)")
#: Where a written value's column name (its cast's) could be seen other than in a result:
#: a derived table (UPDATE ... FROM (SELECT %s) p: to_jsonb(p), unqualified names), a CTE (not
#: "with time zone", "with ordinality", "with ties"), a NATURAL or USING join, and a table
#: made from a query (CREATE TABLE ... AS, SELECT ... INTO; EXPLAIN and DECLARE too).
_NAMES_SEEN: Final = re.compile(
    r"(?:\b(?:from|join|lateral)|,)\s*\(+\s*select\b"
    r"|\bwith\b(?!\s+(?:time\s+zone|ordinality|ties)\b)"
    r"|\b(?:natural|using)\b"
    r"|^\W*(?:create|explain|declare)\b|\bselect\b.*\binto\b",
    re.IGNORECASE | re.DOTALL,
)


def plain_text(sql: str) -> bool:
    """Whether ``sql`` is one command whose placeholders all stand where expressions do: no
    quote, dollar sign, backslash, comment or semicolon outside double-quoted identifiers, no
    ``%`` inside one, and no named placeholder used twice -- and where a written value's
    column name (its cast's: ``int2``, ``numeric``) cannot be seen but in its result (no
    derived table, CTE, ``NATURAL`` or ``USING`` join, or table made from a query)."""
    names = _NAMED.findall(sql)
    if len(names) != len(set(names)) or not all(n.isidentifier() for n in names):
        return False  # a name with a quote in it would throw the identifier scan below
    parts = sql.split('"')
    if len(parts) % 2 == 0:  # an unterminated identifier
        return False
    for n, part in enumerate(parts):
        if n % 2 == 0:
            if _HAZARDS.search(part):
                return False
        elif "%" in part:
            return False
    return not _NAMES_SEEN.search(" ".join(parts[0::2]))  # outside quoted identifiers


def shape(stmt: Statement) -> Hashable:
    """What a proof covers: the statement's text, its parameters' Python types and their
    ``types`` (a typed '1.5' is no proof for an untyped one, whose type may not be known)."""
    params = stmt.params
    if params is None:
        return stmt.sql
    typed = types_key(stmt)
    if isinstance(params, dict):
        return stmt.sql, tuple(sorted((k, type(v)) for k, v in params.items())), typed
    return stmt.sql, tuple(type(v) for v in params), typed


class ProvenTexts:
    """Statements (text and parameter types, :func:`shape`) the server has run bound
    (extended protocol) on this worker; the ``capacity`` most recently used are kept."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._shapes: OrderedDict[Hashable, None] = OrderedDict()
        self._refused: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, stmt: Statement) -> bool:
        return shape(stmt) in self._shapes

    def refuse(self, stmt: Statement) -> None:
        """Never write ``stmt`` out again (its result, written, did not line up): else each
        group holding it would run twice, written and then the careful way."""
        key = shape(stmt)
        self._shapes.pop(key, None)
        self._refused[key] = None
        if len(self._refused) > self.capacity:
            self._refused.popitem(last=False)

    def __len__(self) -> int:
        return len(self._shapes)

    def add(self, statements: Iterable[Statement]) -> None:
        """Record ``statements`` as run bound (the most recently used)."""
        for stmt in statements:
            key = shape(stmt)
            if key in self._shapes:
                self._shapes.move_to_end(key)
            elif key not in self._refused and plain_text(stmt.sql):  # only these are looked up
                self._shapes[key] = None
                if len(self._shapes) > self.capacity:
                    self._shapes.popitem(last=False)

    def clear(self) -> None:
        """Forget every statement."""
        self._shapes.clear()
        self._refused.clear()


#: The statements this process's worker has run bound.
PROVEN: Final = ProvenTexts()


class Unrenderable(Exception):
    """A value or statement that is not written in (it is sent bound instead)."""


class Written(bytes):
    """An SQL fragment already written (an ``ARRAY[...]``): put in place as it is."""


#: A placeholder as psycopg reads one: ``%s``, ``%(name)s``, or ``%`` and any character.
_PLACEHOLDER: Final = re.compile(r"%(?:\(([^)]+)\))?(.)", re.DOTALL)


@functools.lru_cache(maxsize=4096)
def template(sql: str, encoding: str) -> tuple[tuple[bytes, ...], tuple[int | str, ...]] | None:
    """``sql`` cut at its placeholders: the encoded text around them, and each one's key (its
    position, or its name). ``%%`` is a ``%``. None for anything else psycopg would read
    differently or refuse (``%b``, ``%d``, positional and named mixed): sent bound, psycopg
    decides."""
    chunks: list[bytes] = []
    keys: list[int | str] = []
    text: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(sql):
        name, kind = m.group(1), m.group(2)
        text.append(sql[pos : m.start()])
        pos = m.end()
        if kind == "%" and name is None:
            text.append("%")
            continue
        if kind != "s":
            return None
        chunks.append("".join(text).encode(encoding))
        text = []
        keys.append(len(keys) if name is None else name)
    text.append(sql[pos:])
    chunks.append("".join(text).encode(encoding))
    if len({type(k) for k in keys}) > 1:
        return None
    return tuple(chunks), tuple(keys)


class Renderer:
    """Writes statements out for one connection (its encoding and escaping rules)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._encoding = conn.info.encoding
        self._escaping = pq.Escaping(conn.pgconn)
        #: The column names the typed values written so far give when alone (``numeric``).
        self.casts: set[str] = set()

    def literal(self, value: Any) -> bytes:
        """``value`` as a parenthesised literal of the type psycopg binds it as."""
        if type(value) is str:
            if "\x00" in value:  # refused bound too (text cannot hold NUL)
                raise Unrenderable("a string with a NUL character")
            return b"(" + self._escaping.escape_literal(value.encode(self._encoding)) + b")"
        if type(value) is bytes:
            # An escape string, so the backslash means the same whatever
            # standard_conforming_strings is; hex digits need no escaping.
            return b"(E'\\\\x" + value.hex().encode() + b"'::pg_catalog.bytea)"
        if value is None:
            return b"NULL"
        kind = type(value)
        if kind is bool:
            return b"('t'::pg_catalog.bool)" if value else b"('f'::pg_catalog.bool)"
        if kind is int:
            return b"('%d'::%s)" % (value, _int_type(value))
        if kind is float:
            return b"('%s'::pg_catalog.float8)" % str(value).encode()
        if kind is Typed and value.oid in CASTS and "\x00" not in value.text:
            name, cast = CASTS[value.oid]
            self.casts.add(name)
            escaped = self._escaping.escape_literal(value.text.encode(self._encoding))
            return b"(" + escaped + b"::" + cast + b")"  # read by the type's input function
        raise Unrenderable(f"a {kind.__name__} is sent bound")

    def array(self, values: Sequence[Any]) -> Written:
        """An ``ARRAY[...]`` of ``values`` (for a placeholder cast to the array's type)."""
        return Written(b"ARRAY[" + b",".join([self.literal(v) for v in values]) + b"]")

    def statement(self, sql: str, params: Any) -> bytes:
        """``sql`` with ``params`` written in where psycopg would bind them."""
        if params is None:
            return sql.encode(self._encoding)  # sent as it is, as psycopg sends it
        cut = template(sql, self._encoding)
        if cut is None:
            raise Unrenderable("placeholders psycopg reads another way")
        chunks, keys = cut
        if isinstance(params, dict):
            if not all(isinstance(k, str) and k in params for k in keys):
                raise Unrenderable("a named placeholder without its value")
        elif len(keys) != len(params) or (keys and not isinstance(keys[0], int)):
            raise Unrenderable("placeholders and parameters do not match")
        out = [chunks[0]]
        for key, chunk in zip(keys, chunks[1:], strict=True):
            value = params[key]
            out.append(value if isinstance(value, Written) else self.literal(value))
            out.append(chunk)
        return b"".join(out)


def _int_type(value: int) -> bytes:
    """The type psycopg binds an int as: the smallest integer type that holds it."""
    if -(2**15) <= value < 2**15:
        return b"pg_catalog.int2"
    if -(2**31) <= value < 2**31:
        return b"pg_catalog.int4"
    if -(2**63) <= value < 2**63:
        return b"pg_catalog.int8"
    return b"pg_catalog.numeric"


#: The column names a written value alone in a select list gets from its cast; bound, the
#: same column is ``?column?``.
_CAST_NAMES: Final = frozenset({"bool", "int2", "int4", "int8", "numeric", "float8", "bytea"})


def renamed(columns: Sequence[str] | None, casts: Iterable[str] = ()) -> bool:
    """Whether a written statement's result has a column a cast may have named (a bare
    ``SELECT %s`` is ``?column?`` bound, ``int2`` written; ``casts``: the typed values'
    names, :attr:`Renderer.casts`): then it must be run bound."""
    if columns is None:
        return False
    names = _CAST_NAMES.union(casts)
    return any(c in names for c in columns)


def join(commands: Iterable[bytes]) -> bytes:
    """One simple query running ``commands`` in order. Each semicolon has a line of its own,
    so a line comment could never swallow it (plain texts have none; the separator does not
    rely on that)."""
    return b"\n;\n".join(commands)
