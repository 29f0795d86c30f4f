"""The first try at a group: no savepoints, and the statements sent in one go.

In steady state nothing in a group fails: no statement errors, no request id is a repeat, every
reply fits. Savepoints then buy nothing and cost a command per request on the worker and on the
primary. So a group is first sent without them, in the same two round trips as always:
``BEGIN; claim ids (lock and look up); statements`` then ``record ids; COMMIT; flush LSN``.
The first round trip goes one of two ways:

* **written out** (:func:`simple_query`): when every statement is plain and has run bound on
  this worker before (:mod:`.literals`), as one simple query with the values written in --
  one string for the whole group instead of a bound command per statement;
* **bound**: otherwise, as a pipeline in which consecutive requests that run the same single
  statement (an application's INSERT) go as one ``executemany``. A lone write is not tried
  this way: bound and without savepoints, the careful way sends the same commands and gives
  exact errors the first time.

A group whose ids were all applied already (a client's retry) is answered with the stored
results after a lookup and a position read, and a lone one-statement write that fails written
out with that statement's error (the claim's errors name writebus' functions). When anything else is unusual -- a statement fails, some ids were already
applied, a value cannot be sent, a reply is too large, a statement ended the transaction,
results do not line up with the commands -- this path rolls the whole transaction back and
returns None, and :func:`writebus.bus.group.run_group` runs the group the careful way, each
request inside its own savepoint. The answers are the same either way; the unusual group pays one extra round
trip. Nothing was committed by the first try, so running the requests again cannot apply
anything twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import pq

from writebus.bus import idempotency, literals
from writebus.bus.grouptx import (
    CLAIM_CONTENDED,
    NOT_SENT,
    Check,
    ClaimFailed,
    Executed,
    GroupCommitFailed,
    Lost,
    Outcome,
    applied_position,
    commit,
    ended,
    look_up,
    rejection,
    repeat,
    rollback,
    transaction_ended,
)
from writebus.bus.pg import connection_lost, pipelined
from writebus.bus.results import wire_result
from writebus.bus.typedparams import bound, types_key
from writebus.client.errors import UnavailableError, WriteBusError
from writebus.client.protocol import Request, Statement, StatementResult


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


def _batch_key(req: Request) -> tuple[str, type, Hashable] | None:
    stmts = req.statements or ()
    if len(stmts) != 1 or stmts[0].params is None:
        return None
    return stmts[0].sql, type(stmts[0].params), types_key(stmts[0])


class _NotTried:
    def __repr__(self) -> str:
        return "NOT_TRIED"


#: :func:`run_optimistic`'s answer when it sent nothing. None means it tried and rolled
#: back, which released the ids' locks: a retry may have applied one meanwhile.
NOT_TRIED: Final = _NotTried()


async def run_optimistic(
    conn: psycopg.AsyncConnection[Any],
    requests: list[Request],
    digests: list[bytes],
    *,
    read_lsn: bool,
    check: Check,
    may_commit: Callable[[], str | None] | None,
    unseen: bool = False,
) -> list[Outcome] | _NotTried | None:
    """Run ``requests`` in one transaction without savepoints; None when anything was unusual
    (rolled back, nothing applied), :data:`NOT_TRIED` when nothing was sent. Raises
    :class:`Lost` or :class:`GroupCommitFailed`.
    ``unseen``: see :func:`writebus.bus.group.run_group`."""
    query = simple_query(conn, requests, unseen)
    if query is None and len(requests) == 1:
        return NOT_TRIED  # bound and alone, the careful way is this way with exact errors
    try:
        try:
            if query is not None:
                results = await _send_simple(conn, query[0], requests, query[1])
            else:
                results = await _send_bound(conn, requests, unseen)
        except (psycopg.Error, *NOT_SENT) as exc:
            if isinstance(exc, psycopg.Error) and connection_lost(conn, exc):
                raise Lost(exc, committing=False) from exc
            if query is None and isinstance(exc, psycopg.Error) and transaction_ended(conn):
                # Bound only: a simple query carries only statements already proven in a
                # bound run (validated, committed), which cannot end the transaction.
                return [ended(r) for r in requests]  # never run again: some of it committed
            await rollback(conn)
            if isinstance(exc, psycopg.Error):
                if exc.sqlstate == idempotency.REPEATED_SQLSTATE:
                    return await _repeats(conn, requests, digests, read_lsn)
                if exc.sqlstate in CLAIM_CONTENDED and _from_claim(exc):
                    raise ClaimFailed(exc) from exc  # the careful way would only wait again
                if query is not None and _failed_alone(requests, exc):
                    return [rejection(exc, 0)]
            return None
        except WriteBusError:
            await rollback(conn)  # a value the wire cannot carry
            return None
        if transaction_ended(conn):
            return [ended(r) for r in requests]  # never run again: some of it committed
        if results is None or conn.pgconn.transaction_status != pq.TransactionStatus.INTRANS:
            await rollback(conn)  # results that do not line up with the statements
            return None
        try:
            for req, res in zip(requests, results, strict=True):
                check(req, res)
        except WriteBusError:
            await rollback(conn)  # a reply too large
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
        if len(requests) > 1:
            raise GroupCommitFailed(exc) from exc
        await rollback(conn)
        return [rejection(exc)]  # alone, the failed COMMIT is its answer (as the careful way)
    return [Executed(r, lsn=lsn) for r in results]


def _failed_alone(requests: list[Request], exc: psycopg.Error) -> bool:
    """Whether ``exc``, raised by a written first try, is the answer of a lone write of one
    statement: only BEGIN, the claim and that statement ran, and the claim's errors name
    writebus' functions (in their context, or their message when the function is missing).
    Any other error from the server is that statement's -- what the careful way would find by
    running it again, at the statement's cost again (a lock or statement timeout twice over).
    An error raised in this process (no SQLSTATE) is not taken for the statement's."""
    if len(requests) != 1 or len(requests[0].statements or ()) != 1 or exc.sqlstate is None:
        return False
    return not _from_claim(exc)


def _from_claim(exc: psycopg.Error) -> bool:
    """Whether the server's error ``exc`` came from the claim: its errors name writebus' claim
    functions, in their context (or their message, when the function is missing) -- not an
    application's function that merely has "writebus." in its name."""
    diag = exc.diag
    return any(_CLAIM_FUNCTION.search(text or "") for text in (diag.context, diag.message_primary))


_CLAIM_FUNCTION = re.compile(r"(?<![\w$\"])writebus\.claim_")


async def _repeats(
    conn: psycopg.AsyncConnection[Any],
    requests: list[Request],
    digests: list[bytes],
    read_lsn: bool,
) -> list[Outcome] | None:
    """The claim found an id already applied (a client's retry) and stopped the statements.
    When every request's id was, their stored answers and the flush LSN, in two round trips;
    None when only some were: the careful way sorts them out (running the statements of the
    others). Raises :class:`ClaimFailed` when this lookup's own claim fails (not a lost
    connection), and :class:`Lost` when the LSN cannot be read (the ids are applied)."""
    try:
        rows = await look_up(conn, [r.id for r in requests])
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise Lost(exc, committing=False) from exc
        raise ClaimFailed(exc) from exc
    if not all(r.id in rows for r in requests):
        return None
    out = [repeat(r, rows[r.id], d) for r, d in zip(requests, digests, strict=True)]
    placed = read_lsn and any(isinstance(o, Executed) for o in out)
    lsn = await applied_position(conn) if placed else None  # their commits are before it
    for o in out:
        if isinstance(o, Executed):
            o.lsn = lsn
    return out


#: What the first round trip gives: each request's results.
Sent = list[list[StatementResult]]


def simple_query(
    conn: psycopg.AsyncConnection[Any], requests: list[Request], unseen: bool = False
) -> tuple[bytes, list[frozenset[str]]] | None:
    """The first round trip as one simple query (:mod:`.literals`), with the names each
    statement's typed values' casts give (:attr:`.literals.Renderer.casts`); None when a
    statement must be sent bound (not plain, not yet run bound, or a value not written in)."""
    statements = [s for r in requests for s in r.statements or ()]
    if not all(s in literals.PROVEN for s in statements):
        return None
    try:
        render = literals.Renderer(conn)
        ids = [r.id for r in requests]
        claim = idempotency.claim_params(ids, unseen=unseen, array=render.array)
        commands = [
            render.statement(idempotency.BEGIN_SQL, None),
            render.statement(idempotency.claim_sql(unseen=unseen, first_try=True), claim),
        ]
        casts = []
        for s in statements:
            render.casts = set()
            commands.append(render.statement(s.sql, bound(s)))
            casts.append(frozenset(render.casts))
    except (literals.Unrenderable, psycopg.Error, *NOT_SENT):
        return None  # psycopg.Error: escaping refused a value (invalid in the client encoding)
    return literals.join(commands), casts


async def _send_simple(
    conn: psycopg.AsyncConnection[Any],
    query: bytes,
    requests: list[Request],
    casts: Sequence[frozenset[str]] = (),
) -> Sent | None:
    """The first round trip as one simple query; None when its results do not line up with
    BEGIN, the claim and the statements."""
    cur = conn.cursor()
    await cur.execute(query)  # no parameters, no pipeline: the simple query protocol
    if not cur.nextset():  # past BEGIN's result, at the claim's
        return None
    out: list[list[StatementResult]] = []
    n = 0
    for req in requests:
        mine = []
        for stmt in req.statements or ():
            if not cur.nextset():
                return None
            result = await wire_result(cur)
            if literals.renamed(result.columns, casts[n] if n < len(casts) else ()):
                # A bare value's column, named after its cast: ask the careful way, and this
                # statement is not written out again (else every group with it runs twice).
                literals.PROVEN.refuse(stmt)
                return None
            mine.append(result)
            n += 1
        out.append(mine)
    return None if cur.nextset() else out


async def _send_bound(
    conn: psycopg.AsyncConnection[Any], requests: list[Request], unseen: bool
) -> Sent:
    """The first round trip as a pipeline of bound statements, a run of the same statement as
    one ``executemany``."""
    runs = plan_runs(requests)
    ids = [r.id for r in requests]
    cursors: list[list[psycopg.AsyncCursor[Any]]] = []

    async def queue() -> None:
        await conn.execute(idempotency.BEGIN_SQL)
        await conn.execute(
            idempotency.claim_sql(unseen=unseen, first_try=True),
            idempotency.claim_params(ids, unseen=unseen),
        )
        for run in runs:
            if run.batched:
                cur = conn.cursor()
                stmts: list[Statement] = [r.statements[0] for r in requests[run.start : run.stop]]  # type: ignore[index]
                await cur.executemany(stmts[0].sql, [bound(s) for s in stmts], returning=True)  # type: ignore[misc]
                cursors.append([cur])
                continue
            mine = []
            for stmt in requests[run.start].statements or ():
                cur = conn.cursor()
                await cur.execute(stmt.sql, bound(stmt))
                mine.append(cur)
            cursors.append(mine)

    await pipelined(conn, queue)
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
    return out
