"""The Postgres types of a statement's parameters, for the values the wire carries as text.

msgpack has no decimal, UUID, date, interval, address or JSON type: such a parameter travels
as its text (:func:`writebus.client.protocol.encode_hook`), and a worker binding that text
would send it untyped, so Postgres would infer its type from the context. psycopg binds the
value itself with its type (``numeric``, ``uuid``, ``jsonb``...), so the same statement would
mean another thing in the primary region than in the others: ``SELECT %s + 1`` with a
``Decimal`` runs in one and is refused (``integer`` inferred for ``'1.5'``) in the other.

So a statement carries ``types``: for each parameter, the type OID psycopg binds it as, where
the value as sent would be bound as another type; 0 elsewhere. A worker binds each typed value
as text of that type (:mod:`writebus.bus.typedparams`). Pure: psycopg's adapters are only
asked which type they would choose.
"""

from __future__ import annotations

import datetime
import decimal
import enum
from typing import Any

import msgspec
import psycopg
from psycopg.adapt import PyFormat, Transformer

from writebus.client.errors import ProtocolError
from writebus.client.protocol import Statement, as_sent

#: Values msgpack carries as themselves: a worker binds them as psycopg binds them here.
_AS_THEMSELVES = frozenset({str, int, float, bool, bytes, type(None)})

_transformer = Transformer()  # psycopg's global adapters: what a connection uses by default


def _carried_as_itself(value: Any) -> bool:
    if type(value) in _AS_THEMSELVES:
        return True
    if type(value) is list:
        return all(_carried_as_itself(v) for v in value)
    return False


def _oid(value: Any) -> int:
    return _transformer.get_dumper(value, PyFormat.AUTO).oid


def param_type(value: Any) -> int:
    """The type OID to send beside ``value``: psycopg's for it, where the value as sent would
    be bound as another type; else 0 (the worker binds the value as psycopg would)."""
    if _carried_as_itself(value):
        return 0
    try:
        oid = _oid(value)
        sent = _oid(as_sent(value))
    except (psycopg.Error, ProtocolError, TypeError, ValueError):
        return 0  # psycopg or the wire refuses it: that answer comes where it is sent
    return oid if oid != sent else 0


def param_types(params: list[Any] | dict[str, Any] | None) -> list[int] | dict[str, int] | None:
    """``types`` for ``params``: a list as long as a list of parameters, a map of the typed
    names for a map; None when no parameter needs one (nothing more goes on the wire)."""
    if params is None:
        return None
    if isinstance(params, dict):
        named = {k: oid for k, v in params.items() if (oid := param_type(v))}
        return named or None
    types = [param_type(v) for v in params]
    return types if any(types) else None


def _psycopg_text(value: Any) -> str:
    dumped = _transformer.get_dumper(value, PyFormat.TEXT).dump(value)
    return bytes(dumped or b"").decode()


def wire_value(value: Any) -> Any:
    """``value`` as a statement parameter travels: itself, except where msgpack's form would
    be read as something else than psycopg sends, which then goes as psycopg's text -- a
    negative ``timedelta`` (msgspec's ``-PT1S`` is no interval Postgres reads; its fields
    signed), a signalling NaN, an ``Enum`` that is no number or string (psycopg sends its
    name, msgpack its value) and a tuple (a composite for psycopg, an array for msgpack).
    Elsewhere msgpack's text is what Postgres reads for psycopg's, so resends of writes
    recorded before this keep their digest."""
    kind = type(value)
    if kind in _AS_THEMSELVES:
        return value
    if kind is list:
        return [wire_value(v) for v in value]
    if isinstance(value, datetime.timedelta) and value < datetime.timedelta(0):
        # Every field signed: under IntervalStyle sql_standard a leading sign applies to the
        # fields without one, and "-1 day 23:59:59" would be -47:59:59 (psycopg signs them
        # there too).
        d = value
        return f"{d.days:+d} day {d.seconds:+d} second {d.microseconds:+d} microsecond"
    if (
        (isinstance(value, decimal.Decimal) and value.is_snan())
        or (isinstance(value, enum.Enum) and not isinstance(value, (int, float, str)))
        or isinstance(value, tuple)
    ):
        try:
            return _psycopg_text(value)
        except Exception:  # psycopg refuses it (a Flag without a name): so will the worker
            return value
    return value


def with_types(stmt: Statement) -> Statement:
    """``stmt`` with ``types`` for its parameters and each parameter as it travels
    (:func:`wire_value`), unless it already has ``types``."""
    params = stmt.params
    if stmt.types is not None or params is None:
        return stmt
    types = param_types(params)
    if isinstance(params, dict):
        sent: list[Any] | dict[str, Any] = {k: wire_value(v) for k, v in params.items()}
    else:
        sent = [wire_value(v) for v in params]
    if types is None and sent == params:
        return stmt
    return msgspec.structs.replace(stmt, params=sent, types=types)


def as_a_worker_gets(stmt: Statement) -> Statement:
    """``stmt`` as a worker decodes it: its parameters in their wire forms, with their types.
    The primary region runs this, so a statement binds the same way in every region."""
    stmt = with_types(stmt)
    if stmt.params is None:
        return stmt
    return msgspec.structs.replace(stmt, params=as_sent(stmt.params))
