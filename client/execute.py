"""Running statements and procedures on a database connection.

Shared by the bus worker (on the primary) and the client's primary-region direct path, so both
produce the same results and the same errors.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import pq

from writebus.client.errors import ProcedureError, WriteBusError, WriteRejectedError
from writebus.client.lsn import parse_lsn
from writebus.client.procedures import Procedure
from writebus.client.protocol import ErrorInfo, Statement, StatementResult

FLUSH_LSN_SQL = "SELECT pg_current_wal_flush_lsn()::text"

#: Run on each new worker connection. With ``synchronous_commit=off`` (a common tuning) COMMIT
#: returns before its WAL is flushed, so the flush LSN read afterwards could precede the commit
#: record and a replica wait would end too soon. ``local`` restores a flushed COMMIT for the
#: session; any stronger setting (on, remote_write, remote_apply) is left alone.
DURABLE_COMMIT_SQL = (
    "SELECT set_config('synchronous_commit', 'local', false) "
    "WHERE current_setting('synchronous_commit') = 'off'"
)


async def run_statements(
    conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
) -> list[StatementResult]:
    """Run ``statements`` in order on ``conn`` (the caller holds the transaction).

    A database error is raised as :class:`WriteRejectedError` naming the failing statement. A
    lost connection (see :func:`connection_lost`) is not a rejection: it is re-raised as is.
    """
    results: list[StatementResult] = []
    async with conn.cursor() as cur:
        for index, stmt in enumerate(statements):
            try:
                await cur.execute(stmt.sql, stmt.params)
                if cur.description is not None:
                    columns = [c.name for c in cur.description]
                    rows: list[list[Any]] | None = await cur.fetchall()
                else:
                    columns, rows = None, None
            except psycopg.Error as exc:
                if connection_lost(conn, exc):
                    raise
                raise rejected(exc, statement_index=index) from exc
            except TypeError as exc:
                # psycopg, before sending anything: the params do not fit the placeholders
                # (a map for %s, a list for %(name)s).
                raise WriteRejectedError(str(exc), statement_index=index) from exc
            results.append(StatementResult(rowcount=cur.rowcount, columns=columns, rows=rows))
    return results


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
        raise WriteRejectedError(
            f"procedure {name!r} caught a database error and returned; its transaction was "
            "aborted and rolled back",
            sqlstate="25P02",
        )
    return result


async def read_flush_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    """The primary's WAL flush position; read it *after* COMMIT returned.

    With ``synchronous_commit`` on, COMMIT returns once its record is flushed, so this position
    covers the commit. ``pg_current_wal_insert_lsn()`` is not used: it can point past a page
    header that a standby never reports as replayed.
    """
    cur = await conn.execute(FLUSH_LSN_SQL)
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


#: The server ended the session (shutdown, crash, restart): about the connection, not the write.
SESSION_ENDED_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def connection_lost(conn: psycopg.AsyncConnection[Any], exc: psycopg.Error) -> bool:
    """True when ``exc`` means the connection went away (the primary restarted, the network
    cut it) rather than that the database refused the write. Such an error is retryable:
    the transaction did not commit."""
    if conn.broken or conn.closed:
        return True
    state = exc.sqlstate or ""
    return isinstance(exc, psycopg.OperationalError) and (
        state.startswith("08") or state in SESSION_ENDED_SQLSTATES
    )


def rejected(exc: psycopg.Error, *, statement_index: int | None = None) -> WriteRejectedError:
    """Translate a psycopg error into :class:`WriteRejectedError` with its SQLSTATE."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip() or type(exc).__name__
    return WriteRejectedError(
        message,
        sqlstate=exc.sqlstate,
        statement_index=statement_index,
        detail=diag.message_detail,
    )


def error_info(exc: WriteRejectedError) -> ErrorInfo:
    """The wire form of a rejected write."""
    retryable = exc.retryable
    return ErrorInfo(
        kind="rejected",
        message=exc.message,
        sqlstate=exc.sqlstate,
        retryable=retryable,
        statement=exc.statement_index,
        detail=exc.detail,
    )


