"""SQLAlchemy Core constructs wherever writebus accepts SQL (the ``sqlalchemy`` extra).

``insert(...)``, ``update(...)``, ``delete(...)``, ``select(...)`` and ``text(...)`` with bound
parameters are compiled with SQLAlchemy's psycopg dialect into SQL with ``%(name)s`` placeholders
and a parameter map -- as SQLAlchemy itself would send them -- then travel like any statement.
Bind processors run here; their psycopg adapter objects (``Json``, ``Jsonb``) become the JSON
text their SQL cast (``%(x)s::JSON``) reads, so the parameters stay plain wire values.
"""

from __future__ import annotations

import json
from typing import Any

_dialect: Any = None


def is_construct(obj: object) -> bool:
    """True for a SQLAlchemy executable construct (without importing SQLAlchemy)."""
    return type(obj).__module__.startswith("sqlalchemy.") and hasattr(obj, "compile")


def _psycopg_dialect() -> Any:
    global _dialect
    if _dialect is None:
        from sqlalchemy.dialects.postgresql import psycopg as sa_psycopg

        _dialect = sa_psycopg.dialect()  # type: ignore[no-untyped-call]
    return _dialect


def _wire(value: Any) -> Any:
    from psycopg.types.json import Json, Jsonb

    if isinstance(value, (Json, Jsonb)):
        return json.dumps(value.obj)
    return value


def _python_default(column: Any, update: bool) -> Any:
    """A column's Python-side default (or onupdate), evaluated as SQLAlchemy would for a
    statement that does not set it. Defaults that read the execution context are refused."""
    default = column.onupdate if update else column.default
    if default is None:
        return None
    if getattr(default, "is_scalar", False):
        return default.arg
    if getattr(default, "is_callable", False):
        try:
            return default.arg(None)  # SQLAlchemy wraps zero-argument callables to take a context
        except Exception as exc:
            raise TypeError(
                f"the Python default of {column.key!r} needs SQLAlchemy's execution context; "
                "set the column in the statement's values instead"
            ) from exc
    raise TypeError(
        f"column {column.key!r} has a default writebus cannot evaluate before sending; "
        "set it in the statement's values"
    )


def _columns_from(construct: Any, params: dict[str, Any] | None) -> dict[str, Any]:
    """``column_keys`` for an insert or update: it also sets the columns ``params`` name, as
    ``connection.execute(stmt, params)`` does (and, as there, a ``bindparam`` named like a
    column is refused: the name is the SET clause's)."""
    from sqlalchemy.sql.dml import ValuesBase

    if not params or not isinstance(construct, ValuesBase):
        return {}
    return {"column_keys": sorted(params)}


def compile_construct(
    construct: Any, params: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """SQL text and parameters of a SQLAlchemy construct, for psycopg; ``params`` fill or
    override its bound parameters (as ``session.execute(stmt, params)`` would)."""
    from sqlalchemy.sql.ddl import BaseDDLElement

    if isinstance(construct, BaseDDLElement):  # CreateTable, CreateIndex...: no parameters
        return str(construct.compile(dialect=_psycopg_dialect())), {}
    compiled = construct.compile(dialect=_psycopg_dialect(), **_columns_from(construct, params))
    # Unescaped names ("my p", not my_p): the expansion below reads them so, and escapes.
    values = compiled.construct_params(params or None, escape_names=False)
    # Columns with a Python-side default/onupdate that the statement does not set: SQLAlchemy
    # fills them in while executing; here it must happen before the statement travels.
    for column in [*compiled.insert_prefetch, *compiled.update_prefetch]:
        if values.get(column.key) is None and (params or {}).get(column.key) is None:
            values[column.key] = _python_default(column, column in compiled.update_prefetch)
    # Expanded after the values are complete, as SQLAlchemy does while executing: an IN list
    # (or an expanding bindparam) becomes one placeholder per item, each with the column's
    # bind processor (a TypeDecorator's, an Enum's name), and params may fill a bindparam.
    expanded = compiled.construct_expanded_state(values)
    escaped = compiled.escaped_bind_names  # "my col" is sent as %(my_col)s
    processors = {escaped.get(k, k): f for k, f in compiled._bind_processors.items()}
    processors.update(expanded.processors)
    out = {
        key: _wire(processors[key](value) if key in processors else value)
        for key, value in expanded.parameters.items()
    }
    return expanded.statement, out
