"""The first try at a group of several: no savepoints, and one ``executemany`` per run of
requests with the same statement.

In steady state nothing in a group fails: no statement errors, no request id is a repeat, every
reply fits. Savepoints then buy nothing and cost a command per request on the worker and on the
primary, and consecutive requests that run the same single statement (an application's INSERT)
can go as one ``executemany`` -- psycopg sends it in the same pipeline with half the work per
request of separate ``execute`` calls. So a group is first sent that way, in the same two round
trips as always: ``BEGIN; claim ids (lock and look up); statements`` then ``record ids;
COMMIT; flush LSN``.

When anything is unusual -- a statement fails, an id was already applied, a value cannot be
sent, a reply is too large, a statement ended the transaction -- this path rolls the whole
transaction back and returns None, and :func:`writebus.bus.group.run_group` runs the group the
careful way, each request inside its own savepoint. The answers are the same either way; the
unusual group pays one extra round trip. Nothing was committed by the first try, so running
the requests again cannot apply anything twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from writebus.bus import idempotency
from writebus.bus.grouptx import (
    Executed,
    GroupCommitFailed,
    Lost,
    Outcome,
    commit,
    rollback,
)
from writebus.bus.pg import connection_lost
from writebus.bus.results import wire_result
from writebus.client.errors import UnavailableError, WriteBusError
from writebus.client.protocol import Request, Statement, StatementResult

Check = Callable[[Request, list[StatementResult]], None]

#: Errors psycopg raises while preparing a statement, before sending it.
_NOT_SENT = (TypeError, ValueError, psycopg.ProgrammingError, psycopg.DataError)


@dataclass(frozen=True)
class Run:
    """Requests ``start`` to ``stop`` (exclusive) of a group, sent together: a run of the same
    single statement (``batched``: one executemany) or one request's statements."""

    start: int
    stop: int
    batched: bool


def plan_runs(requests: Sequence[Request]) -> list[Run]:
    """Cut ``requests`` into runs, in order: consecutive requests made of one identical
    statement with parameters go together; any other request is a run of its own."""
    runs: list[Run] = []
    key_of = [_batch_key(r) for r in requests]
    n = 0
    while n < len(requests):
        end = n + 1
        if key_of[n] is not None:
            while end < len(requests) and key_of[end] == key_of[n]:
                end += 1
        runs.append(Run(n, end, batched=end - n > 1))
        n = end
    return runs


def _batch_key(req: Request) -> tuple[str, type] | None:
    stmts = req.statements or ()
    if len(stmts) != 1 or stmts[0].params is None:
        return None
    return stmts[0].sql, type(stmts[0].params)


async def run_optimistic(
    conn: psycopg.AsyncConnection[Any],
    requests: list[Request],
    digests: list[bytes],
    *,
    read_lsn: bool,
    check: Check,
    may_commit: Callable[[], str | None] | None,
) -> list[Outcome] | None:
    """Run ``requests`` in one transaction without savepoints; None when anything was unusual
    (rolled back, nothing applied). Raises :class:`Lost` or :class:`GroupCommitFailed`."""
    runs = plan_runs(requests)
    try:
        try:
            find, cursors = await _send(conn, requests, runs)
        except (psycopg.Error, *_NOT_SENT) as exc:
            if isinstance(exc, psycopg.Error) and connection_lost(conn, exc):
                raise Lost(exc, committing=False) from exc
            await rollback(conn)
            return None
        if await find.fetchall() or conn.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
            await rollback(conn)  # a repeated id, or a statement that ended the transaction
            return None
        try:
            results = await _collect(requests, runs, cursors, check)
        except WriteBusError:
            await rollback(conn)  # a value the wire cannot carry, a reply too large
            return None
        refusal = may_commit() if may_commit is not None else None
        if refusal is not None:
            await rollback(conn)
            return [UnavailableError(f"not committed: {refusal}") for _ in requests]
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise Lost(exc, committing=False) from exc
        raise
    except BaseException:
        if not conn.closed:
            await rollback(conn)
        raise
    try:
        lsn = await commit(conn, list(zip(requests, digests, results, strict=True)), read_lsn)
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise Lost(exc, committing=True) from exc
        raise GroupCommitFailed(exc) from exc
    return [Executed(r, lsn=lsn) for r in results]


async def _send(
    conn: psycopg.AsyncConnection[Any], requests: list[Request], runs: list[Run]
) -> tuple[psycopg.AsyncCursor[Any], list[list[psycopg.AsyncCursor[Any]]]]:
    """The first round trip. Returns the lookup's cursor and, per run, its cursors."""
    ids = [r.id for r in requests]
    cursors: list[list[psycopg.AsyncCursor[Any]]] = []
    async with conn.pipeline() as pipe:
        await conn.execute(idempotency.BEGIN_SQL)
        find = await conn.execute(idempotency.CLAIM_SQL, idempotency.claim_params(ids))
        for run in runs:
            if run.batched:
                cur = conn.cursor()
                stmts: list[Statement] = [r.statements[0] for r in requests[run.start : run.stop]]  # type: ignore[index]
                await cur.executemany(stmts[0].sql, [s.params for s in stmts], returning=True)  # type: ignore[misc]
                cursors.append([cur])
                continue
            mine = []
            for stmt in requests[run.start].statements or ():
                cur = conn.cursor()
                await cur.execute(stmt.sql, stmt.params)
                mine.append(cur)
            cursors.append(mine)
        await pipe.sync()
    return find, cursors


async def _collect(
    requests: list[Request],
    runs: list[Run],
    cursors: list[list[psycopg.AsyncCursor[Any]]],
    check: Check,
) -> list[list[StatementResult]]:
    """Each request's results, checked (raises the first WriteBusError)."""
    out: list[list[StatementResult]] = []
    for run, curs in zip(runs, cursors, strict=True):
        if run.batched:
            (cur,) = curs
            for n in range(run.start, run.stop):
                if n > run.start:
                    cur.nextset()
                out.append([await wire_result(cur)])
        else:
            out.append([await wire_result(cur) for cur in curs])
    for req, results in zip(requests, out, strict=True):
        check(req, results)
    return out
