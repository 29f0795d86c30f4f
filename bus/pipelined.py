"""Running a statement write on the primary in two round trips (psycopg pipeline mode).

Done one statement at a time, an exactly-once write costs six round trips to Postgres (BEGIN,
claim, the statement, store, COMMIT, flush LSN). Pipelined it costs two: ``BEGIN; claim;
statements...`` then, once their results are known, ``store; COMMIT; flush LSN``. The flush LSN
is still read after COMMIT has returned: the server runs pipelined commands in order.

A failing statement aborts the rest of the pipeline; the transaction is then rolled back and
nothing else is sent in it (no query runs inside an aborted transaction).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from writebus.bus import idempotency
from writebus.bus.pg import FLUSH_LSN_SQL, connection_lost, rejected
from writebus.client.errors import WriteRejectedError
from writebus.client.lsn import parse_lsn
from writebus.client.protocol import Statement, StatementResult


@dataclass(frozen=True)
class Outcome:
    """What a pipelined write produced."""

    results: list[StatementResult]
    lsn: int | None
    duplicate: bool


class _Duplicate(Exception):
    pass


async def run_write(
    conn: psycopg.AsyncConnection[Any],
    request_id: str,
    statements: Sequence[Statement],
    *,
    digest: bytes = b"",
    exactly_once: bool,
    read_lsn: bool,
    check: Callable[[list[StatementResult]], None] | None = None,
    on_commit: Callable[[], None] | None = None,
) -> Outcome:
    """Run ``statements`` atomically on ``conn`` (autocommit, idle).

    With ``exactly_once`` the request id is claimed first and the result stored in the same
    transaction; an id already applied gives ``duplicate=True`` with the stored results (and
    nothing applied). ``check`` may raise to roll back before COMMIT (e.g. a reply too large);
    ``on_commit`` is called just before COMMIT is sent.
    Raises :class:`WriteRejectedError` naming the failing statement; a lost connection is
    re-raised as the psycopg error.
    """
    claim: psycopg.AsyncCursor[Any] | None = None
    cursors: list[psycopg.AsyncCursor[Any]] = []
    try:
        async with conn.pipeline() as pipe:
            await conn.execute("BEGIN")
            if exactly_once:
                claim = await conn.execute(idempotency.CLAIM_SQL, [request_id, digest])
            for index, stmt in enumerate(statements):
                cur = conn.cursor()
                try:
                    await cur.execute(stmt.sql, stmt.params)
                except TypeError as exc:  # params do not fit the placeholders; nothing sent
                    raise WriteRejectedError(str(exc), statement_index=index) from exc
                cursors.append(cur)
            await pipe.sync()
            if conn.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
                # A statement ended the transaction (validation refuses BEGIN/COMMIT/...; this
                # catches whatever slips past): what follows would run outside it.
                raise WriteRejectedError(
                    "a statement ended the request's transaction; nothing more was run",
                    sqlstate="25000",
                )
            if claim is not None and claim.rowcount == 0:
                raise _Duplicate
            results = [await _result(cur) for cur in cursors]
            if check is not None:
                check(results)
            if exactly_once:
                blob = idempotency.encode_result(results, None)
                await conn.execute(idempotency.STORE_SQL, [blob, request_id])
            if on_commit is not None:
                on_commit()
            await conn.execute("COMMIT")
            flush = await conn.execute(FLUSH_LSN_SQL) if read_lsn else None
            await pipe.sync()
            lsn = None
            if flush is not None:
                row = await flush.fetchone()
                assert row is not None
                lsn = parse_lsn(row[0])
        return Outcome(results=results, lsn=lsn, duplicate=False)
    except _Duplicate:
        await _rollback(conn)
        return await _duplicate(conn, request_id, digest, read_lsn)
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise
        claimed = claim is None or claim.pgresult is not None
        if claim is not None and claimed and claim.rowcount == 0:
            # A retry raced its original: the claim waited for it, then found the id applied,
            # and a statement tripped over the original's rows. Answer as the duplicate it is.
            await _rollback(conn)
            return await _duplicate(conn, request_id, digest, read_lsn)
        await _rollback(conn)
        failed = _failed_index(cursors) if claimed else None
        raise rejected(exc, statement_index=failed) from exc
    except BaseException:
        if not conn.closed:
            await _rollback(conn)
        raise


async def _result(cur: psycopg.AsyncCursor[Any]) -> StatementResult:
    """A statement's result in its wire form (docs/protocol.md, "Values in results").

    A value the wire cannot carry faithfully is a :class:`WriteRejectedError` (the write rolls
    back), never an internal error or a wrong value.
    """
    if cur.description is None:
        return StatementResult(rowcount=cur.rowcount, columns=None, rows=None)
    columns = [c.name for c in cur.description]
    _check_interval_style(cur)
    try:
        rows: list[list[Any]] = await cur.fetchall()
    except (psycopg.DataError, NotImplementedError) as exc:
        # The driver cannot turn a value into Python ('infinity'::timestamptz, a year past
        # 9999): a value the wire cannot carry, not a bug.
        raise WriteRejectedError(
            f"a value in the result cannot be sent: {exc}; select it as text (::text)"
        ) from exc
    # psycopg gives timestamptz values in the session's TimeZone. The wire carries them in UTC,
    # so a reply does not depend on the database's TimeZone setting and a repeated request id
    # -- answered from the stored result -- gets the same text in JSON.
    zoned = [i for i, c in enumerate(cur.description) if c.type_code in _TIMESTAMPTZ_OIDS]
    if zoned:
        rows = [_in_utc(row, zoned) for row in rows]
    return StatementResult(rowcount=cur.rowcount, columns=columns, rows=rows)


def _check_interval_style(cur: psycopg.AsyncCursor[Any]) -> None:
    # psycopg parses intervals in IntervalStyle 'postgres' only; under another style (a
    # statement's SET LOCAL intervalstyle) it raises or, depending on when its loader was made,
    # misreads the text ('P1D' as 60 seconds). Refuse rather than send a wrong value.
    assert cur.description is not None
    if not any(c.type_code in _INTERVAL_OIDS for c in cur.description):
        return
    style = cur.connection.pgconn.parameter_status(b"IntervalStyle")
    if style not in (None, b"postgres"):
        raise WriteRejectedError(
            "a value in the result cannot be sent: an interval under IntervalStyle "
            f"{style.decode(errors='replace')!r}; select it as text (::text)"
        )


_INTERVAL_OIDS = frozenset(
    {psycopg.postgres.types["interval"].oid, psycopg.postgres.types["interval"].array_oid}
)
_TIMESTAMPTZ_OIDS = frozenset(
    {psycopg.postgres.types["timestamptz"].oid, psycopg.postgres.types["timestamptz"].array_oid}
)


def _in_utc(row: Sequence[Any], columns: list[int]) -> list[Any]:
    out = list(row)
    for i in columns:
        out[i] = _utc(out[i])
    return out


def _utc(value: Any) -> Any:
    """A timestamptz value (or an array of them, nested) converted to UTC."""
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC)
    if isinstance(value, list):
        return [_utc(v) for v in value]
    return value


def _failed_index(cursors: list[psycopg.AsyncCursor[Any]]) -> int | None:
    """The first statement without a successful result: the one that failed."""
    for index, cur in enumerate(cursors):
        if cur.pgresult is None or cur.pgresult.status == pq.ExecStatus.FATAL_ERROR:
            return index
    return None


async def _rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        await conn.execute("ROLLBACK")


async def _duplicate(
    conn: psycopg.AsyncConnection[Any], request_id: str, digest: bytes, read_lsn: bool
) -> Outcome:
    stored = await idempotency.fetch(conn, request_id, digest)
    results = stored.results if stored is not None else []
    lsn = None
    if read_lsn:
        cur = await conn.execute(FLUSH_LSN_SQL)
        row = await cur.fetchone()
        assert row is not None
        lsn = parse_lsn(row[0])
    return Outcome(results=results, lsn=lsn, duplicate=True)
