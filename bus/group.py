"""Group commit: statement writes run together in one transaction, each answered on its own.

One request is a group of one: the same code runs a lone write in two round trips -- ``BEGIN;
claim ids (lock and look up); statements`` then ``record ids; COMMIT; flush LSN`` -- and a
group of many in the same two, each request inside its own ``SAVEPOINT``:

* a request whose statement fails (or whose reply would not fit) rolls back to its savepoint
  and only it gets the error; the requests after it run again in another round trip (in
  pipeline mode an error cancels what was sent after it);
* a request whose id was already applied (found by ``find``) is answered with its stored
  result, its statements rolled back the same way;
* the ids of the applied requests are recorded in one multi-row INSERT (one row version each,
  :mod:`writebus.bus.idempotency`), then one COMMIT and one flush-LSN read serve them all.

If COMMIT itself fails (a deferred constraint, a serialization failure) the requests are not
guessed at: the caller runs each alone again (:class:`GroupCommitFailed`), so each gets its own
truthful answer. A lost connection raises :class:`Lost` with whether COMMIT was in flight, as
does an error after COMMIT ran that the records cannot settle (:func:`.grouptx.commit`); the
exactly-once record makes running the group again safe.

A group is first tried without savepoints (:mod:`.optimistic`) -- a lone write only when it
can be written out whole, since sent bound it would be the way above minus exact errors --
and the way above is what runs when that try meets anything unusual, with the same answers.

Procedures do not join groups (see :mod:`writebus.bus.execute`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq

from writebus.bus import idempotency, literals, optimistic
from writebus.bus.grouptx import (
    CLAIM_CONTENDED,
    NOT_SENT,
    Check,
    ClaimFailed,
    Executed,
    GroupCommitFailed,
    Lost,
    Outcome,
    TransactionEnded,
    claim_failure,
    commit,
    ended,
    rejection,
    repeat,
    rollback,
    transaction_ended,
)
from writebus.bus.pg import connection_lost, pipelined, read_flush_lsn, server_error
from writebus.bus.results import wire_result
from writebus.bus.typedparams import bound
from writebus.client.errors import (
    OutcomeUnknownError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.protocol import Request

__all__ = ["Check", "Executed", "GroupCommitFailed", "Lost", "Outcome", "run_group"]



@dataclass
class _Item:
    req: Request
    digest: bytes
    n: int
    outcome: Outcome | None = None
    cursors: list[psycopg.AsyncCursor[Any]] = field(default_factory=list)


async def run_group(
    conn: psycopg.AsyncConnection[Any],
    requests: list[Request],
    *,
    read_lsn: bool,
    check: Check,
    may_commit: Callable[[], str | None] | None = None,
    unseen: bool = False,
) -> list[Outcome]:
    """Run statement ``requests`` on ``conn`` (autocommit, idle) in one transaction; return
    one outcome per request, in order. Raises :class:`Lost` or :class:`GroupCommitFailed`.
    ``unseen``: nobody can have applied their ids, so the claim only locks them (see
    :func:`writebus.bus.idempotency.claim_sql`)."""
    out = await _run_group(
        conn, requests, read_lsn=read_lsn, check=check, may_commit=may_commit, unseen=unseen
    )
    # What committed may be written out whole next time (:mod:`.literals`).
    literals.PROVEN.add(
        s
        for r, o in zip(requests, out, strict=True)
        if isinstance(o, Executed) and not o.duplicate
        for s in r.statements or ()
    )
    return out


async def _run_group(
    conn: psycopg.AsyncConnection[Any],
    requests: list[Request],
    *,
    read_lsn: bool,
    check: Check,
    may_commit: Callable[[], str | None] | None,
    unseen: bool,
) -> list[Outcome]:
    items = [_Item(r, idempotency.request_digest(r), n) for n, r in enumerate(requests)]
    savepoints = len(items) > 1
    try:
        fast = await optimistic.run_optimistic(
            conn, requests, [i.digest for i in items], read_lsn=read_lsn, check=check,
            may_commit=may_commit, unseen=unseen,
        )  # fmt: skip
    except ClaimFailed as refused:
        return _claim_failed(items, refused.cause)
    if isinstance(fast, list):
        return fast
    committing = False
    try:
        # Unseen only if the first try sent nothing. Its rollback released the ids' locks:
        # a resend (its caller timed out) may have taken one and applied it meanwhile, and
        # an unseen claim would not look, and apply it again.
        unseen = unseen and fast is optimistic.NOT_TRIED
        found, error = await _first_round(conn, items, savepoints, unseen)
        for item in items:
            row = found.get(item.req.id)
            if row is not None and item.outcome is not None:
                # Refused before anything was sent (psycopg), yet applied before -- under a
                # rule new since then: answered from its record, not "nothing applied".
                item.outcome = repeat(item.req, row, item.digest)
        pending = [i for i in items if i.outcome is None]
        while pending:
            failed = await _settle(conn, pending, found, check, error)
            if failed is None:
                break
            if not savepoints:
                await rollback(conn)
                break
            await conn.execute(f"ROLLBACK TO SAVEPOINT wb{failed.n}")
            pending = [i for i in pending if i.outcome is None]
            if pending:
                error = await _run_round(conn, pending, savepoints=True)
        applied = [i for i in items if isinstance(i.outcome, Executed) and not i.outcome.duplicate]
        refusal = may_commit() if may_commit is not None else None
        if refusal is not None:
            await rollback(conn)
            for i in applied:
                i.outcome = UnavailableError(f"not committed: {refusal}")
            applied = []
        if not applied:
            await rollback(conn)
            return await _with_repeats_placed(conn, items, read_lsn)  # nothing new committed
        committing = True
        lsn = await commit(
            conn,
            [(i.req, i.digest, i.outcome.results) for i in applied],  # type: ignore[union-attr]
            read_lsn,
        )
    except ClaimFailed as refused:
        if not conn.closed:
            await rollback(conn)
        return _claim_failed(items, refused.cause)
    except TransactionEnded:
        for i in items:
            if i.outcome is None or (isinstance(i.outcome, Executed) and not i.outcome.duplicate):
                i.outcome = ended(i.req)
        return await _with_repeats_placed(conn, items, read_lsn)
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise Lost(exc, committing) from exc
        if committing and len(items) > 1:
            raise GroupCommitFailed(exc) from exc
        if not conn.closed:
            await rollback(conn)
        for i in items:
            if i.outcome is None or (isinstance(i.outcome, Executed) and not i.outcome.duplicate):
                i.outcome = rejection(exc)
        return await _with_repeats_placed(conn, items, read_lsn)
    except BaseException:
        if not conn.closed:
            await rollback(conn)
        raise
    out: list[Outcome] = []
    for i in items:
        assert i.outcome is not None
        if isinstance(i.outcome, Executed):
            i.outcome.lsn = lsn
        out.append(i.outcome)
    return out


async def _with_repeats_placed(
    conn: psycopg.AsyncConnection[Any], items: list[_Item], read_lsn: bool
) -> list[Outcome]:
    """The answers of a group that committed nothing new (it failed, or every request was a
    repeat or refused): its repeats (ids applied before) keep their stored results, with the
    flush LSN to wait for -- or, when it cannot be read, an unknown outcome, which a resend
    settles. Nothing is run again: the others' answers stand, and some of the group may
    have ended its own transaction."""
    repeats = [i for i in items if isinstance(i.outcome, Executed)]
    if read_lsn and repeats:
        try:
            lsn = await read_flush_lsn(conn)
        except psycopg.Error as exc:
            for i in repeats:
                i.outcome = OutcomeUnknownError(
                    i.req.id, f"it was applied before, but its position could not be read: {exc}"
                )
        else:
            for i in repeats:
                i.outcome.lsn = lsn  # type: ignore[union-attr]
    return [i.outcome for i in items]  # type: ignore[misc]


def _claim_failed(items: list[_Item], error: psycopg.Error) -> list[Outcome]:
    """The answers when the group's claim failed (nothing ran). When it may have met another
    try of one of the ids (:data:`~writebus.bus.grouptx.CLAIM_CONTENDED`), the requests run
    again each alone, so that only that id's answer is unknown; otherwise each gets the
    claim's answer (:func:`~writebus.bus.grouptx.claim_failure`)."""
    if len(items) > 1 and error.sqlstate in CLAIM_CONTENDED:
        raise GroupCommitFailed(error) from error
    return [claim_failure(i.req, error) for i in items]


async def _first_round(
    conn: psycopg.AsyncConnection[Any], items: list[_Item], savepoints: bool, unseen: bool
) -> tuple[dict[str, tuple[Any, ...]], psycopg.Error | None]:
    """BEGIN, the claim (locks and lookup) and every request's statements, in one round trip.
    Returns the ids found and the statement error that stopped the round, if one did."""
    ids = [i.req.id for i in items]
    claimed: list[psycopg.AsyncCursor[Any]] = []

    async def queue() -> None:
        await conn.execute(idempotency.BEGIN_SQL)
        claim_sql = idempotency.claim_sql(unseen=unseen)
        claimed.append(await conn.execute(claim_sql, idempotency.claim_params(ids, unseen=unseen)))
        await _queue(conn, items, savepoints)

    error: psycopg.Error | None = None
    try:
        await pipelined(conn, queue)
    except psycopg.Error as exc:
        # A statement failed (the settling finds which), or the claim did -- the locks, the
        # lookup -- before any statement ran; or the connection was lost.
        if connection_lost(conn, exc):
            raise
        result = claimed[0].pgresult if claimed else None
        if result is None or result.status != pq.ExecStatus.TUPLES_OK:
            raise ClaimFailed(exc) from exc
        error = exc
    rows = await claimed[0].fetchall()
    return {row[0]: row for row in rows}, error


async def _run_round(
    conn: psycopg.AsyncConnection[Any], items: list[_Item], *, savepoints: bool
) -> psycopg.Error | None:
    """Send the statements of ``items`` again (after a rollback to a savepoint); return the
    statement error that stopped the round, if one did."""
    try:
        await pipelined(conn, lambda: _queue(conn, items, savepoints))
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise
        return exc
    return None


async def _queue(conn: psycopg.AsyncConnection[Any], items: list[_Item], savepoints: bool) -> None:
    for item in items:
        item.cursors = []
    for item in items:
        if savepoints:
            await conn.execute(f"SAVEPOINT wb{item.n}")
        for index, stmt in enumerate(item.req.statements or ()):
            cur = conn.cursor()
            try:
                await cur.execute(stmt.sql, bound(stmt))
            except NOT_SENT as exc:
                if server_error(exc):
                    raise  # an earlier command's error, read while sending this one
                # Refused by psycopg before anything was sent: parameters that do not fit the
                # placeholders, a value it cannot adapt (a map for %s).
                item.outcome = WriteRejectedError(str(exc), statement_index=index)
                if savepoints:
                    await conn.execute(f"ROLLBACK TO SAVEPOINT wb{item.n}")
                break
            item.cursors.append(cur)


async def _settle(
    conn: psycopg.AsyncConnection[Any],
    pending: list[_Item],
    found: dict[str, tuple[Any, ...]],
    check: Check,
    error: psycopg.Error | None,
) -> _Item | None:
    """Give each pending request its outcome, in order, up to the first whose work must be
    undone (it failed, was a repeat, or its reply is too large); return that one. Raises
    :class:`TransactionEnded` when a statement ended the transaction (validation refuses
    BEGIN/COMMIT/...; this catches whatever slips past)."""
    if transaction_ended(conn):
        raise TransactionEnded
    for item in pending:
        if item.outcome is not None:  # refused before anything was sent (TypeError)
            continue
        row = found.get(item.req.id)
        if row is not None:
            item.outcome = repeat(item.req, row, item.digest)
            return item
        failure = _statement_error(item, error)
        if failure is not None:
            item.outcome = failure
            return item
        try:
            results = [await wire_result(cur) for cur in item.cursors]
            check(item.req, results)
        except WriteBusError as exc:
            item.outcome = exc
            return item
        item.outcome = Executed(results)
    return None


def _statement_error(item: _Item, error: psycopg.Error | None) -> WriteBusError | None:
    """The rejection of the request's failed statement, if one of its statements failed.

    In pipeline mode the failing command's cursor gets no result, and neither do the commands
    after it (nor those never queued: the error stops the queuing); the round's exception is
    that command's error. The first request with a statement lacking a successful result is
    therefore the one that raised it.
    """
    for index in range(len(item.req.statements or ())):
        res = item.cursors[index].pgresult if index < len(item.cursors) else None
        if res is None or res.status == pq.ExecStatus.FATAL_ERROR:
            if error is None:
                return UnavailableError(f"statement {index} was not run")
            return rejection(error, index)
    return None
