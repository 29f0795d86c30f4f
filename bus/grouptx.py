"""What a group's transaction shares between its two ways of running (:mod:`.group`,
:mod:`.optimistic`): the outcome types, and the steps that end the transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import pq

from writebus.bus import idempotency, literals
from writebus.bus.pg import (
    FLUSH_LSN_SQL,
    connection_lost,
    durable_group_commit_sql,
    read_flush_lsn,
    rejected,
)
from writebus.client.errors import OutcomeUnknownError, TransactionEndedError, WriteBusError
from writebus.client.log import get_logger
from writebus.client.lsn import parse_lsn
from writebus.client.protocol import Request, StatementResult

log = get_logger("writebus.bus.grouptx")


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
    """A try ended without an answer: the connection went away, or an error came that the
    ids' records could not settle (``why`` says which). ``committing`` says whether the write
    may have committed. The caller runs the try again, once."""

    def __init__(self, cause: BaseException, committing: bool, *, why: str | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.committing = committing
        self._why = why

    @property
    def uncertainty(self) -> str:
        """Why the write may have committed, for the message of an answer that says so."""
        if self._why is not None:
            return self._why
        return f"the database connection was lost while COMMIT was in flight: {self.cause}"


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
        stored = idempotency.stored_answer(req, row, digest)
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
    LSN (None when not asked for).

    Returns when the ids' records committed as this transaction wrote them; raises the
    server's error when the transaction did not commit, and :class:`Lost` when that cannot be
    known. An error after COMMIT ran is told apart by looking the ids up
    (:func:`_after_commit_error`): the flush read can fail after COMMIT succeeded, as when a
    cancel that COMMIT held off lands on it."""
    render = literals.Renderer(conn)
    records = [
        (req.id, digest, idempotency.encode_result(res, None)) for req, digest, res in applied
    ]
    rows = [
        render.statement(idempotency.STORE_ROW_SQL, idempotency.store_row(*record))
        for record in records
    ]
    store = idempotency.STORE_VALUES_SQL.encode() + b", ".join(rows)
    # A statement can turn synchronous_commit off where validation cannot see it (a function
    # it calls, a trigger): then COMMIT would not wait for the flush, the flush position read
    # after it could come before the commit (a stale read of the write), and a crash could
    # lose an answered write. It goes back to the session's own value first. (A deferred
    # trigger, which runs within COMMIT itself, could still turn it off.)
    commands = [durable_group_commit_sql(conn).encode(), store, b"COMMIT"]
    commands += [FLUSH_LSN_SQL.encode()] if read_lsn else []
    cur = conn.cursor()
    try:
        await cur.execute(literals.join(commands))  # the simple query protocol: one round trip
    except psycopg.Error as exc:
        if connection_lost(conn, exc) or not transaction_ended(conn):
            raise  # lost, or failed before COMMIT ran: the transaction is still open
        return await _after_commit_error(conn, records, read_lsn, exc)
    if not read_lsn:
        return None
    for _ in range(3):  # past the guard, the records and COMMIT
        cur.nextset()
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def _after_commit_error(
    conn: psycopg.AsyncConnection[Any],
    records: list[tuple[str, bytes, bytes]],
    read_lsn: bool,
    error: psycopg.Error,
) -> int | None:
    """COMMIT ran and ``error`` came back: COMMIT failed (a deferred constraint), or it
    committed and the statement after it failed. The ids' records (``records``: this
    transaction's ``id, digest, result``) say which. Committed with
    this transaction's records: the flush LSN, read now (:func:`applied_position`). Nothing
    recorded: ``error`` stands -- nothing committed. Anything else (the lookup failed; a
    record another try of an id committed once this transaction's locks were gone) is
    :class:`Lost`, committing: the caller runs the requests again, and their claims answer
    from the records. (A record that another try of an id committed after this COMMIT failed
    and let its locks go passes for this one's only when its digest and result are the same
    bytes: the answer is then the same, though not marked as a repeat.)"""
    after = f"an error came after COMMIT had run ({error})"
    try:
        found = await look_up(conn, [request_id for request_id, _, _ in records])
    except psycopg.Error as exc:
        raise Lost(exc, True, why=f"{after}, and looking the ids up failed: {exc}") from error
    if not found:
        raise error
    if [found.get(record[0]) for record in records] != records:
        raise Lost(error, True, why=f"{after}, and the records found are not this try's") from error
    log.warning(
        "group.failed_after_commit", requests=len(records), sqlstate=error.sqlstate,
        error=str(error).strip(),
    )  # fmt: skip
    return await applied_position(conn) if read_lsn else None


async def look_up(
    conn: psycopg.AsyncConnection[Any], ids: list[str]
) -> dict[str, tuple[Any, ...]]:
    """Lock and look up ``ids`` on ``conn`` (autocommit, idle): the records found, ``(id,
    digest, result)`` by id. Raises the server's error."""
    cur = await conn.execute(idempotency.CLAIM_SQL, idempotency.claim_params(ids))
    return {row[0]: tuple(row) for row in await cur.fetchall()}


async def applied_position(conn: psycopg.AsyncConnection[Any]) -> int:
    """The flush LSN, read once the writes are applied (committed now, or found committed):
    it covers them. Its failure says nothing against them: :class:`Lost`, committing, so the
    caller runs them again, and their claims answer from the records -- never "not
    applied", and never an answer without a position to wait for. (A group whose other
    requests must not run again answers its repeats "unknown" instead:
    :func:`writebus.bus.group.run_group`.)"""
    try:
        return await read_flush_lsn(conn)
    except psycopg.Error as exc:
        why = f"the write was applied, but its position could not be read: {exc}"
        raise Lost(exc, committing=True, why=why) from exc


async def rollback(conn: psycopg.AsyncConnection[Any]) -> None:
    """ROLLBACK, when a transaction is open."""
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        await conn.execute("ROLLBACK")
