"""A procedure in a transaction of its own, recorded exactly once when it writes.

Procedures do not join statement groups (:mod:`writebus.bus.group`): they run arbitrary code,
take locks or catch errors, none of which a savepoint inside someone else's transaction could
honour. A procedure's transaction runs at READ COMMITTED whatever the database's default
(see :data:`~writebus.bus.idempotency.BEGIN_SQL`); one that needs more takes row locks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from psycopg import pq

from writebus.bus import idempotency
from writebus.bus.group import Executed
from writebus.bus.grouptx import applied_position, claim_failure, ended, transaction_ended
from writebus.bus.pg import (
    RESTORE_DURABLE_COMMIT_SQL,
    connection_lost,
    read_flush_lsn,
    rejected,
)
from writebus.client.errors import ProcedureError, WriteBusError, WriteRejectedError
from writebus.client.procedures import Procedure
from writebus.client.protocol import Request, StatementResult


class Phase:
    """How far an attempt got: whether COMMIT may have reached the server."""

    committing = False


async def run_procedure_tx(
    conn: psycopg.AsyncConnection[Any],
    req: Request,
    proc: Procedure,
    exactly_once: bool,
    primary: bool,
    check: Callable[[list[StatementResult], Any], None],
    phase: Phase,
    unseen: bool = False,
) -> Executed:
    """A procedure in a transaction of its own: procedures do not join groups -- they run
    arbitrary code, take locks or catch errors, none of which a savepoint inside someone
    else's transaction could honour. ``unseen``: nobody can have applied the id, so the claim
    only locks it (:func:`writebus.bus.idempotency.claim_sql`)."""
    name = req.procedure or ""
    digest = idempotency.request_digest(req)
    try:
        async with read_committed(conn, exactly_once), conn.transaction():
            if exactly_once:
                try:
                    stored = await find(conn, req, digest, unseen)
                except psycopg.Error as exc:
                    if connection_lost(conn, exc):
                        raise
                    raise claim_failure(req, exc) from exc  # it may have met another try
                if stored is not None:
                    raise _Duplicate(stored)
            try:
                value = await run_procedure(conn, proc, req.args, req.kwargs, name=name)
            except WriteBusError as err:
                if transaction_ended(conn):
                    raise ended(req) from err
                raise
            if transaction_ended(conn):
                raise ended(req)  # the procedure sent COMMIT or ROLLBACK itself
            check([], value)
            async with conn.pipeline():  # one round trip
                # The procedure may have turned synchronous_commit off, for its transaction or
                # the pooled session: COMMIT would return before its WAL is flushed, and the
                # position read after it could precede it.
                await conn.execute(RESTORE_DURABLE_COMMIT_SQL)
                if exactly_once:
                    row = (req.id, digest, idempotency.encode_result([], value))
                    await conn.execute(*idempotency.store_statement([row]))
            phase.committing = True
    except _Duplicate as dup:
        lsn = await applied_position(conn) if primary else None
        return Executed(dup.stored.results, dup.stored.value, lsn, True)
    except psycopg.Error as exc:
        # From the lookup, the record or COMMIT itself (a deferred constraint, a
        # serialization failure): the database refused the transaction.
        if connection_lost(conn, exc):
            raise
        raise rejected(exc) from exc
    lsn = await _position(conn, exactly_once) if primary else None
    return Executed([], value, lsn, False)


@contextlib.asynccontextmanager
async def read_committed(conn: psycopg.AsyncConnection[Any], needed: bool) -> AsyncIterator[None]:
    """``conn`` at READ COMMITTED for the block when ``needed`` (``conn.transaction()``
    begins at the connection's level), then back at its own level: a connection from an
    application's pool goes back as it came, and the application's own transactions on it
    keep the level they had."""
    level = conn.isolation_level
    if not needed or level is psycopg.IsolationLevel.READ_COMMITTED:
        yield
        return
    await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)
    try:
        yield
    finally:
        # Refused only on a connection that is not idle (cut, or cancelled mid-query),
        # which the pool discards.
        with contextlib.suppress(psycopg.ProgrammingError):
            await conn.set_isolation_level(level)


async def _position(conn: psycopg.AsyncConnection[Any], exactly_once: bool) -> int | None:
    """The flush LSN after the procedure committed. A recorded call's comes from
    :func:`~writebus.bus.grouptx.applied_position` (its failure: run again, the record
    answers). An ``rpc`` call is not recorded, so running it again would run it twice, and
    nobody waits on its position: its failure is only a missing LSN."""
    if exactly_once:
        return await applied_position(conn)
    try:
        return await read_flush_lsn(conn)
    except psycopg.Error:
        return None


async def find(
    conn: psycopg.AsyncConnection[Any], req: Request, digest: bytes, unseen: bool
) -> idempotency.StoredResult | None:
    """Lock the id (a racing retry waits here) and look it up (unless ``unseen``): one round
    trip."""
    cur = await conn.execute(
        idempotency.claim_sql(unseen=unseen), idempotency.claim_params([req.id], unseen=unseen)
    )
    row = await cur.fetchone()
    return idempotency.stored_answer(req, row, digest) if row is not None else None


class _Duplicate(Exception):
    def __init__(self, stored: idempotency.StoredResult) -> None:
        super().__init__(stored)
        self.stored = stored


async def run_procedure(
    conn: psycopg.AsyncConnection[Any],
    proc: Procedure,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    name: str = "",
) -> Any:
    """Call a registered procedure with ``conn`` (the caller holds the transaction).

    Database errors become :class:`WriteRejectedError` (a lost connection is re-raised as is);
    any other exception becomes :class:`ProcedureError` naming the procedure. Either way the
    transaction rolls back.
    """
    name = name or getattr(proc, "__name__", "?")
    try:
        result = proc(conn, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise
        raise rejected(exc) from exc
    except WriteBusError:
        raise
    except Exception as exc:
        raise ProcedureError(
            f"procedure {name!r} raised {type(exc).__name__}: {exc}", procedure=name
        ) from exc
    if conn.info.transaction_status == pq.TransactionStatus.INERROR:
        # The procedure caught a database error and returned: its transaction is aborted and
        # will roll back. Report that instead of running more queries inside it.
        message = (
            f"procedure {name!r} caught a database error and returned; its transaction was "
            "aborted and rolled back"
        )
        # The same __cause__ class as a reply from a worker carries (wire_errors).
        raise WriteRejectedError(message, sqlstate="25P02") from (
            psycopg.errors.InFailedSqlTransaction(message)
        )
    return result
