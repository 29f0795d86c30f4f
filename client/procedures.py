"""Registered procedures: named async functions that run in a transaction on a database.

A procedure receives an open ``psycopg.AsyncConnection`` already inside a transaction, then the
caller's positional and keyword arguments; whatever it returns (msgpack/JSON-encodable) goes back
to the caller. On the primary its transaction commits before the reply, and the reply carries the
commit's LSN. Register procedures in a module both the bus and the app import::

    procedures = Procedures()

    @procedures.register
    async def add_user(conn, name: str) -> int:
        cur = await conn.execute("INSERT INTO users(name) VALUES (%s) RETURNING id", [name])
        return (await cur.fetchone())[0]
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from writebus.client.errors import ConfigError, ProcedureError

Procedure = Callable[..., Awaitable[Any]]

#: Procedure names under this prefix are built into the bus (``writebus.ping``).
RESERVED_PREFIX = "writebus."
#: The built-in procedure a bus node answers on ``<prefix>.rpc.<region>`` without touching
#: application code: who it is, its role and whether its database answers.
PING = "writebus.ping"
P = TypeVar("P", bound=Procedure)


class Procedures:
    """A registry of procedures by name."""

    def __init__(self) -> None:
        self._procs: dict[str, Procedure] = {}

    def register(self, fn: P | None = None, *, name: str | None = None) -> Any:
        """Register ``fn`` (usable as ``@register`` or ``@register(name="x")``)."""

        def deco(f: P) -> P:
            key = name or f.__name__
            if key.startswith(RESERVED_PREFIX):
                raise ValueError(f"procedure names starting with {RESERVED_PREFIX!r} are reserved")
            self._procs[key] = f
            return f

        return deco(fn) if fn is not None else deco

    def get(self, name: str) -> Procedure:
        """The procedure called ``name``; :class:`ProcedureError` if none is registered."""
        try:
            return self._procs[name]
        except KeyError:
            raise ProcedureError(
                f"unknown procedure {name!r}; registered: {sorted(self._procs) or 'none'}",
                procedure=name,
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._procs

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._procs)


def load_procedures(spec: str) -> Procedures:
    """Load a registry named ``"package.module:attribute"`` (``WRITEBUS_PROCEDURES``).

    Raises :class:`~writebus.client.errors.ConfigError` when the module cannot be imported or
    does not hold a :class:`Procedures` under that name.
    """
    if not spec:
        return Procedures()
    module_name, _, attr = spec.partition(":")
    attr = attr or "procedures"
    where = "WRITEBUS_PROCEDURES"
    if not module_name or module_name.startswith(".") or not attr.isidentifier():
        raise ConfigError(
            f"{where}={spec!r}: name a module and its registry, package.module:attribute",
            variable=where,
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{where}={spec!r}: no module named {exc.name!r} (is it on PYTHONPATH?)",
            variable=where,
        ) from exc
    registry = getattr(module, attr, None)
    if registry is None:
        raise ConfigError(f"{where}={spec!r}: {module_name} has no {attr!r}", variable=where)
    if not isinstance(registry, Procedures):
        raise ConfigError(
            f"{where}={spec!r} is a {type(registry).__name__}, not a writebus.Procedures",
            variable=where,
        )
    return registry
