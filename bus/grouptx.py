"""What a group's transaction shares between its two ways of running (:mod:`.group`,
:mod:`.optimistic`): the outcome types, and the steps that end the transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import pq

from writebus.bus import idempotency, literals
from writebus.bus.pg import FLUSH_LSN_SQL, rejected
from writebus.client.errors import OutcomeUnknownError, TransactionEndedError, WriteBusError
from writebus.client.lsn import parse_lsn
from writebus.client.protocol import Request, StatementResult


@dataclass
class Executed:
    """What a request produced: its results (or a procedure's value), the primary's flush LSN
    read after COMMIT (None when not run on the primary), and whether the id had already been
    applied (then this is the stored result; nothing was run again)."""

    results: list[StatementResult]
    value: Any = None
    lsn: int | None = None
    duplicate: bool = False


Outcome = Executed | WriteBusError

#: ``check(request, results)``: raises to refuse a request before COMMIT (reply too large).
Check = Callable[[Request, list[StatementResult]], None]

#: Errors psycopg raises while preparing a statement, before sending it.
NOT_SENT = (TypeError, ValueError, psycopg.ProgrammingError, psycopg.DataError)


class Lost(Exception):
    """The connection went away; ``committing`` says whether COMMIT may have reached it."""

    def __init__(self, cause: BaseException, committing: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.committing = committing


class TransactionEnded(Exception):
    """A statement ended the transaction (a COMMIT or ROLLBACK that got past validation)."""


def ended(req: Request) -> TransactionEndedError:
    """The answer to each request of a transaction one of its statements ended: what ran
    before that statement may have committed -- without its exactly-once record -- and what
    ran after it did outside any transaction, so nothing of it is run again, here or by a
    client's retry (the error is not retryable)."""
    return TransactionEndedError(
        req.id,
        "a statement ended the transaction (a COMMIT or ROLLBACK inside the request): what "
        "ran before it may have committed, without its exactly-once record",
    )


#: A claim failing with one of these may have met another try of one of its ids, holding the
#: id's lock in a transaction that can still commit: a lock or statement timeout, a deadlock.
CLAIM_CONTENDED: Final = frozenset({"55P03", "57014", "40P01"})


class ClaimFailed(Exception):
    """The claim (the ids' locks and lookup) failed, before any statement ran."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


def claim_failure(req: Request, error: psycopg.Error) -> WriteBusError:
    """The answer to ``req`` when its claim failed with ``error``, the request alone. Nothing
    ran, but a claim that may have met another try of the id (a client's resend while the
    first try still runs) learnt nothing of the id: that try may yet commit it. So the
    outcome is unknown, and a resend under the same id (retryable) finds out. Any other
    failure is the claim's rejection."""
    if error.sqlstate not in CLAIM_CONTENDED:
        return rejection(error)
    message = error.diag.message_primary or str(error).strip()
    err = OutcomeUnknownError(
        req.id, f"its exactly-once claim failed ({error.sqlstate}: {message}) -- another try "
        "of this id may hold it and still commit",
    )  # fmt: skip
    err.__cause__ = error
    return err


def transaction_ended(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether a statement ended the transaction this code began: the connection is idle
    where it should be in a transaction (validation refuses BEGIN/COMMIT/...; this catches
    whatever slips past, and a procedure's own COMMIT)."""
    return conn.pgconn.transaction_status == pq.TransactionStatus.IDLE


class GroupCommitFailed(Exception):
    """COMMIT of a group of several failed, or its claim met another try's lock: run each
    request alone to learn its outcome."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


def repeat(req: Request, row: tuple[Any, ...], digest: bytes) -> Outcome:
    """The answer to ``req``, whose id the claim found already applied (``row``): its stored
    result, or :class:`IdempotencyKeyReusedError` when the id was used for another request."""
    try:
        stored = idempotency.stored_answer(req.id, row, digest)
    except WriteBusError as exc:
        return exc
    return Executed(stored.results, stored.value, duplicate=True)


def rejection(error: psycopg.Error, index: int | None = None) -> WriteBusError:
    """``rejected(error)`` with psycopg's exception as its cause (as when raised from it)."""
    err = rejected(error, statement_index=index)
    err.__cause__ = error
    return err


async def commit(
    conn: psycopg.AsyncConnection[Any],
    applied: list[tuple[Request, bytes, list[StatementResult]]],
    read_lsn: bool,
) -> int | None:
    """Record the applied ids with their digests and results, COMMIT, read the flush LSN:
    one simple query (the values written in by :mod:`.literals`), one round trip. Returns the
    LSN (None when not asked for)."""
    render = literals.Renderer(conn)
    rows = [
        render.statement(
            idempotency.STORE_ROW_SQL,
            idempotency.store_row(req.id, digest, idempotency.encode_result(res, None)),
        )
        for req, digest, res in applied
    ]
    store = idempotency.STORE_VALUES_SQL.encode() + b", ".join(rows)
    commands = [store, b"COMMIT"] + ([FLUSH_LSN_SQL.encode()] if read_lsn else [])
    cur = conn.cursor()
    await cur.execute(literals.join(commands))  # the simple query protocol: one round trip
    if not read_lsn:
        return None
    cur.nextset()
    cur.nextset()
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """ROLLBACK, when a transaction is open."""
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        await conn.execute("ROLLBACK")
