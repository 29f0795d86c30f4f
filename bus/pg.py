"""Postgres helpers of the execution path: the flush LSN, and what an error means."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

import psycopg

from writebus.client.errors import WriteRejectedError
from writebus.client.lsn import parse_lsn

FLUSH_LSN_SQL: Final = "SELECT pg_current_wal_flush_lsn()::text"

#: Run on each new worker connection. With ``synchronous_commit=off`` (a common tuning) COMMIT
#: returns before its WAL is flushed, so the flush LSN read afterwards could precede the commit
#: record and a replica wait would end too soon. ``local`` restores a flushed COMMIT for the
#: session; any stronger setting (on, remote_write, remote_apply) is left alone.
DURABLE_COMMIT_SQL: Final = (
    "SELECT set_config('synchronous_commit', 'local', false) "
    "WHERE current_setting('synchronous_commit') = 'off'"
)

#: Run before a procedure's COMMIT. Only when the procedure left synchronous_commit off (for
#: its transaction or the session): back to the session's value from its start (``local``
#: if that was ``off``, as :data:`DURABLE_COMMIT_SQL` made it), for this COMMIT and after it.
#: Any other value -- a stronger one the procedure or the app chose -- is left alone.
#: (pg_settings builds a row for every setting: it is read only in that case, not on every
#: procedure call.)
RESTORE_DURABLE_COMMIT_SQL: Final = (
    "SELECT set_config('synchronous_commit', (SELECT CASE WHEN s.reset_val = 'off' THEN "
    "'local' ELSE s.reset_val END FROM pg_catalog.pg_settings s "
    "WHERE s.name = 'synchronous_commit'), false) "
    "WHERE current_setting('synchronous_commit') = 'off'"
)

#: The values a configured session can start with (:func:`durable_commits`; never ``off``).
_COMMIT_VALUES: Final = frozenset({"local", "on", "remote_write", "remote_apply"})
#: Each pooled connection's synchronous_commit once configured: what a group commit puts
#: back, exactly and without reading pg_settings, when a statement left it off.
_SESSION_COMMIT: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

#: The server ended the session (shutdown, crash, restart): about the connection, not the write.
SESSION_ENDED_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def server_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the server (it carries a SQLSTATE). psycopg raises some of the
    same classes itself, before sending anything: ``ProgrammingError`` for parameters that do
    not fit the placeholders, ``DataError`` for a value it cannot dump."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate is not None


async def pipelined(
    conn: psycopg.AsyncConnection[Any], queue: Callable[[], Awaitable[None]]
) -> None:
    """Send the commands ``queue`` makes as one pipeline, then sync and wait for every result.

    Raises the first error the server returned for them, wherever psycopg met it. psycopg
    reads results while it still sends, so a command's error can surface from a later
    command's ``execute``; the commands queued after it are then reported as
    ``PipelineAborted`` (an ``OperationalError`` with no SQLSTATE, which reads like a lost
    connection). Here the error stops the queuing -- the server skips everything after it
    until the sync anyway -- and is raised after the sync, in place of ``PipelineAborted``.
    """
    first: psycopg.Error | None = None
    async with conn.pipeline() as pipe:
        try:
            await queue()
        except psycopg.Error as exc:
            if not server_error(exc):
                raise
            first = exc
        try:
            await pipe.sync()
        except psycopg.errors.PipelineAborted:
            if first is None:
                raise
    if first is not None:
        raise first


async def durable_commits(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool ``configure`` hook: make COMMIT flush before it returns (see DURABLE_COMMIT_SQL),
    and remember the session's value for :func:`durable_group_commit_sql`."""
    await conn.execute(DURABLE_COMMIT_SQL)
    cur = await conn.execute("SELECT pg_catalog.current_setting('synchronous_commit')")
    row = await cur.fetchone()
    if row is not None:
        _SESSION_COMMIT[conn] = row[0]


def durable_group_commit_sql(conn: psycopg.AsyncConnection[Any]) -> str:
    """Run before a group's COMMIT (:func:`writebus.bus.grouptx.commit`): when a statement
    left synchronous_commit off -- in a function it called, where validation cannot see it
    -- back to the session's own value, for this COMMIT and after it. The value configured
    on the connection is written in (one of :data:`_COMMIT_VALUES`): planning
    :data:`RESTORE_DURABLE_COMMIT_SQL`'s pg_settings subquery cost a lone write 0.066 ms
    (7 %). A connection not configured by :func:`durable_commits` gets that exact form."""
    value = _SESSION_COMMIT.get(conn)
    if value not in _COMMIT_VALUES:
        return RESTORE_DURABLE_COMMIT_SQL
    return (
        f"SELECT pg_catalog.set_config('synchronous_commit', '{value}', false) "
        "WHERE pg_catalog.current_setting('synchronous_commit') = 'off'"
    )


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


async def lock_holders(conn: psycopg.AsyncConnection[Any], relation: str) -> list[dict[str, Any]]:
    """Other sessions holding a lock on ``relation``: pid, application, state, seconds into
    their transaction and the lock's mode -- what a log line needs to name them. Their query
    text is left out: it may carry an application's data."""
    cur = await conn.execute(
        "SELECT a.pid, a.application_name, a.state, "
        "round(extract(epoch FROM now() - a.xact_start)::numeric, 1)::float8, l.mode "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.relation = pg_catalog.to_regclass(%s)::pg_catalog.oid AND l.granted "
        "AND l.pid <> pg_catalog.pg_backend_pid() "
        "ORDER BY a.xact_start",
        [relation],
    )
    keys = ("pid", "application", "state", "transaction_s", "mode")
    return [dict(zip(keys, row, strict=True)) for row in await cur.fetchall()]


def connection_lost(conn: psycopg.AsyncConnection[Any], exc: psycopg.Error) -> bool:
    """True when ``exc`` means the connection went away (the primary restarted, the network
    cut it) rather than that the database refused the write."""
    if conn.broken or conn.closed:
        return True
    state = exc.sqlstate or ""
    return isinstance(exc, psycopg.OperationalError) and (
        not state or state.startswith("08") or state in SESSION_ENDED_SQLSTATES
    )


def rejected(exc: psycopg.Error, *, statement_index: int | None = None) -> WriteRejectedError:
    """Translate a psycopg error into :class:`WriteRejectedError` with its SQLSTATE; the caller
    raises it ``from exc`` so ``__cause__`` is psycopg's own exception."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip() or type(exc).__name__
    return WriteRejectedError(
        message,
        sqlstate=exc.sqlstate,
        statement_index=statement_index,
        detail=diag.message_detail,
    )
