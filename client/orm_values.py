"""Values read back by an ORM batch, turned into what the ORM itself would have loaded.

A write's ``RETURNING`` rows travel in the wire's value forms (docs/protocol.md, "Values in
results"): ``numeric`` as text, ``uuid`` as text, ``timestamp`` as ISO text, ``interval`` as an
ISO 8601 duration... The client loads those back by column type
(:mod:`writebus.client.wiretypes`); what reaches this module may be either form. A session
reading the same row from the replica gets psycopg's Python values, passed through the column type's SQLAlchemy result processor (an ``Enum`` label becomes
the enum member, a ``TypeDecorator`` runs ``process_result_value``). :func:`load` does the same
two steps: the wire form back to psycopg's value, chosen by the column's underlying type, then
the type's own result processor for the psycopg dialect.

Types outside the wire's contract (arrays, network addresses, ranges...) are not guessed at:
:func:`loadable` says no, and the ORM batch leaves such an attribute expired so the session
loads it from the replica on first access (the write has been replayed there by then).
"""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql import psycopg as sa_psycopg

from writebus.client.wiretypes import parse_duration

#: Postgres type OIDs the psycopg dialect's numeric result processors look at.
_NUMERIC_OID = 1700
_FLOAT8_OID = 701

#: The dialect :mod:`writebus.client.sqla` compiles with; its types are what a session reads.
DIALECT: Any = sa_psycopg.dialect()  # type: ignore[no-untyped-call]


def _base(type_: sqltypes.TypeEngine[Any]) -> sqltypes.TypeEngine[Any]:
    """The type psycopg sees: under any ``TypeDecorator``, the dialect's implementation."""
    impl = type_.dialect_impl(DIALECT)
    while isinstance(impl, sqltypes.TypeDecorator):
        impl = impl.impl_instance
    return impl


def _python_type(base: sqltypes.TypeEngine[Any]) -> type | None:
    try:
        return base.python_type
    except NotImplementedError:
        return None


def loadable(type_: sqltypes.TypeEngine[Any]) -> bool:
    """True when a value of this column type can be read back from the wire faithfully."""
    base = _base(type_)
    if isinstance(base, (sqltypes.Float, sqltypes.Numeric, sqltypes.Uuid, sqltypes.String,
                         sqltypes.JSON)):
        return True
    if isinstance(base, sqltypes.ARRAY):
        return False
    return _python_type(base) in (
        bool, int, bytes, datetime.datetime, datetime.date, datetime.time, datetime.timedelta
    )


def _native(base: sqltypes.TypeEngine[Any], value: Any) -> tuple[Any, int | None]:
    """The value psycopg would have produced for this type, and the type OID to report."""
    if isinstance(base, sqltypes.Float):
        return float(value), _FLOAT8_OID
    if isinstance(base, sqltypes.Numeric):
        return Decimal(value if isinstance(value, str) else str(value)), _NUMERIC_OID
    if isinstance(base, sqltypes.Uuid):
        return (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))), None
    if isinstance(base, (sqltypes.String, sqltypes.JSON)):
        return value, None
    py = _python_type(base)
    if isinstance(value, str):
        if py is datetime.datetime:
            return datetime.datetime.fromisoformat(value), None
        if py is datetime.date:
            return datetime.date.fromisoformat(value), None
        if py is datetime.time:
            return datetime.time.fromisoformat(value), None
        if py is datetime.timedelta:
            return parse_duration(value), None
    if py is bytes:
        return bytes(value), None
    return value, None


def load(type_: sqltypes.TypeEngine[Any], value: Any) -> Any:
    """``value`` from a ``RETURNING`` row as the ORM would load it for a column of ``type_``."""
    if value is None:
        return None
    native, oid = _native(_base(type_), value)
    process = type_.dialect_impl(DIALECT).result_processor(DIALECT, oid)
    return process(native) if process is not None else native
