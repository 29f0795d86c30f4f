"""Running one request on a database: the single code path of every write.

The bus worker (:mod:`writebus.bus.handler`) and the primary-region direct path
(:class:`writebus.client.db.Database` in the primary region) both call :func:`run_request`, so a
request gets the same validation, the same exactly-once record, the same results and the same
errors wherever it runs: a 2 MB parameter, a ``COMMIT`` inside a batch or a unique violation look
the same in ``syd`` as in ``lax``.

:func:`run_request` covers, in order: validation and limits; choosing the procedure; the
exactly-once claim (writes on the primary); running statements (pipelined, :mod:`.pipelined`) or
the procedure; the reply-size check before COMMIT; COMMIT and the flush LSN read after it; and
translating database failures into typed errors:

* the database refused the write -> :class:`WriteRejectedError` (``__cause__`` is psycopg's own
  exception; ``pg_error_class`` names its class);
* the connection was lost before COMMIT was sent, or no connection could be had ->
  :class:`UnavailableError` (not applied; retryable);
* the connection was lost while COMMIT was in flight, or an error came after COMMIT ran that
  the ids' records could not settle -> :class:`OutcomeUnknownError`, unless the next try
  settles it.

An exactly-once request whose connection was cut (:class:`~.grouptx.Lost`) runs once more on a
connection from the pool: the id claimed in the write's own transaction makes that safe (a
commit that did land is found and answered as a duplicate).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from writebus.bus import idempotency
from writebus.bus.group import Executed, GroupCommitFailed, Lost, run_group
from writebus.bus.pg import connection_lost, rejected
from writebus.bus.proctx import Phase, run_procedure_tx
from writebus.bus.settle import unless_applied
from writebus.client.errors import (
    LimitError,
    OutcomeUnknownError,
    ProcedureError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
    after_an_uncertain_try,
)
from writebus.client.log import get_logger
from writebus.client.procedures import Procedure, Procedures
from writebus.client.protocol import (
    CONTENT_TYPE_HEADER,
    JSON,
    MAX_PARAM_BYTES,
    MAX_STATEMENTS,
    MSGPACK,
    Reply,
    Request,
    StatementResult,
    encode,
)
from writebus.client.validation import keeps_to_itself, param_bytes, storable_id, validate_request

log = get_logger("writebus.bus.execute")

A = TypeVar("A")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a request may be, and how long to wait for a connection."""

    max_statements: int = MAX_STATEMENTS
    max_param_bytes: int = MAX_PARAM_BYTES
    allow_sql: bool = True
    acquire_timeout: float = 5.0
    #: The NATS max payload. A result whose reply would be bigger is refused with a ``limit``
    #: error *before* commit (a reply that cannot be sent must not hide an applied write). The
    #: direct path checks it too, so a write that works in the primary region works elsewhere.
    max_reply_bytes: int | None = None


async def run_request(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    req: Request,
    *,
    procedures: Procedures,
    limits: Limits,
    write: bool = True,
    primary: bool = True,
    encoding: str = MSGPACK,
    region: str = "",
    deadline: float | None = None,
    may_commit: Callable[[], str | None] | None = None,
    submit: Callable[[Job, int], Awaitable[Executed | WriteBusError]] | None = None,
    unseen: bool = False,
) -> Executed:
    """Run ``req`` on a connection from ``pool`` and return what it produced.

    ``write`` is true for ``<prefix>.write`` requests (statements allowed) and false for
    ``<prefix>.rpc.<region>`` (procedures only). ``primary`` says the database is the primary:
    then writes are recorded exactly once by id and the flush LSN is read after COMMIT.
    ``deadline`` (monotonic seconds) is when the caller stops waiting for this attempt: the
    request is not started after it, even if it was waiting for a connection. ``may_commit``
    is asked right before COMMIT and returns why the node must not commit (the split-brain
    guard fenced it), or None. ``submit``, when given, queues a statement write for group
    commit (:mod:`writebus.bus.committer`) instead of running it alone. ``unseen`` is the
    primary-region caller's promise that nobody can have applied ``req.id`` (see
    :func:`writebus.bus.idempotency.claim_sql`): the first try then only locks the id; a try
    after a lost connection looks it up. Raises a
    :class:`~writebus.client.errors.WriteBusError` subclass.
    """
    try:
        validate_request(
            req,
            max_statements=limits.max_statements,
            allow_statements=write,
            allow_sql=limits.allow_sql,
            max_param_bytes=limits.max_param_bytes,
        )
        proc = procedures.get(req.procedure or "") if req.statements is None else None
    except WriteBusError as refusal:
        if not (write and primary) or unseen or not storable_id(req.id):
            raise
        # A resend of an id applied before may meet a rule that is new since (bus.settle).
        return await unless_applied(refusal, pool, req, acquire_timeout=limits.acquire_timeout)
    if req.statements is not None:
        job = Job(req, encoding, deadline, unseen, alone=keeps_to_itself(req))
        alone = idempotency.far_ahead(req.id)  # it would fail a group's COMMIT: see below
        if submit is not None and not alone:
            out = await submit(job, param_bytes(req))
        else:
            (out,) = await run_statement_writes(
                pool, [job], limits=limits, region=region, may_commit=may_commit, read_lsn=primary
            )
        if alone and isinstance(out, WriteRejectedError):
            out = _unrecordable(req.id, out)
        if isinstance(out, WriteBusError):
            raise out
        return out
    assert proc is not None
    exactly_once = write and primary

    def check(results: list[StatementResult], value: Any) -> None:
        _check_reply_size(req, results, value, limits, encoding, region)
        refusal = may_commit() if may_commit is not None else None
        if refusal is not None:
            raise UnavailableError(f"not committed: {refusal}")

    if deadline is not None:
        limits = replace(
            limits,
            acquire_timeout=max(0.0, min(limits.acquire_timeout, deadline - time.monotonic())),
        )

    try:
        return await _attempt(
            pool, req, proc, exactly_once, primary, limits, check, deadline, unseen
        )
    except Lost as first:
        if not exactly_once:
            raise _lost_error(req, first) from first.cause
        log.info("execute.retry_on_fresh_connection", request_id=req.id, error=str(first.cause))
        try:
            return await _attempt(pool, req, proc, exactly_once, primary, limits, check, deadline)
        except Lost as again:
            last = first if first.committing else again
            raise _lost_error(req, last) from last.cause
        except WriteBusError as err:
            answer = after_lost_commit(req, err, first)
            if answer is err:
                raise
            raise answer from err


@dataclass(frozen=True)
class Job:
    """A statement write to run: the request, the encoding of its reply, and when its caller
    stops waiting (monotonic seconds; None: no limit)."""

    req: Request
    encoding: str = MSGPACK
    deadline: float | None = None
    #: Nobody can have applied the id (:func:`writebus.bus.idempotency.claim_sql`): true only
    #: for the primary-region direct path's first try of an id it made.
    unseen: bool = False
    #: It sets something for the rest of its transaction (``SET LOCAL``...): a group of its
    #: own (:func:`writebus.client.validation.keeps_to_itself`).
    alone: bool = False


async def run_statement_writes(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    jobs: list[Job],
    *,
    limits: Limits,
    region: str = "",
    may_commit: Callable[[], str | None] | None = None,
    read_lsn: bool = True,
) -> list[Executed | WriteBusError]:
    """Run validated statement writes together on one connection (:mod:`.group`): the one
    function every statement write goes through, alone or in a group. Returns one outcome per
    job, in order.

    A job whose caller has stopped waiting is not started. A lost connection runs the group
    again once on a fresh one (safe: applied ids are found and answered as repeats). A failed
    COMMIT of several runs each again alone, so each gets its own answer.
    """
    outcomes: dict[int, Executed | WriteBusError] = {}
    live = []
    repeats: list[tuple[int, Job]] = []
    seen: set[str] = set()
    for n, job in enumerate(jobs):
        if job.deadline is not None and time.monotonic() >= job.deadline:
            outcomes[n] = _not_run(job)
        elif job.req.id in seen:
            repeats.append((n, job))  # the same id twice in a group: after the first commits
        else:
            seen.add(job.req.id)
            live.append((n, job))
    first: Lost | None = None
    for _ in (1, 2):
        if not live:
            break
        # Unseen only until a try has been sent: after a lost connection it may have committed.
        unseen = first is None and all(job.unseen for _, job in live)
        try:
            done = await _group_attempt(pool, live, limits, region, may_commit, read_lsn, unseen)
        except Lost as lost:
            if first is not None:
                last = first if first.committing else lost
                for n, job in live:
                    outcomes[n] = _lost_error(job.req, last)
                break
            first = lost
            log.info("execute.retry_on_fresh_connection", requests=len(live), error=str(lost))
            continue
        except GroupCommitFailed:
            for n, job in live:
                (out,) = await run_statement_writes(
                    pool, [replace(job, unseen=False)], limits=limits, region=region,
                    may_commit=may_commit, read_lsn=read_lsn,
                )
                # After a cut COMMIT, a lone rerun's "not applied" (its deadline passed, no
                # connection) says nothing of the first try, which may have committed.
                outcomes[n] = after_lost_commit(job.req, out, first)
            break
        by_n = dict(live)
        outcomes.update((n, after_lost_commit(by_n[n].req, out, first)) for n, out in done.items())
        break
    if repeats:
        later = await run_statement_writes(
            pool, [replace(job, unseen=False) for _, job in repeats], limits=limits,
            region=region, may_commit=may_commit, read_lsn=read_lsn,
        )
        outcomes.update((n, out) for (n, _), out in zip(repeats, later, strict=True))
    return [outcomes[n] for n in range(len(jobs))]


async def _group_attempt(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    live: list[tuple[int, Job]],
    limits: Limits,
    region: str,
    may_commit: Callable[[], str | None] | None,
    read_lsn: bool,
    unseen: bool,
) -> dict[int, Executed | WriteBusError]:
    deadlines = [job.deadline for _, job in live if job.deadline is not None]
    timeout = limits.acquire_timeout
    if deadlines and len(deadlines) == len(live):
        timeout = max(0.0, min(timeout, max(deadlines) - time.monotonic()))
    by_req = {id(job.req): job for _, job in live}

    def check(req: Request, results: list[StatementResult]) -> None:
        _check_reply_size(req, results, None, limits, by_req[id(req)].encoding, region)

    out: dict[int, Executed | WriteBusError] = {}
    try:
        async with pool.connection(timeout=timeout) as conn:
            # A job whose caller gave up while this waited for a connection (the database was
            # down) is not started: its caller has retried, perhaps on another database after
            # a failover, and running it here could apply it twice.
            runnable = []
            for n, job in live:
                if job.deadline is not None and time.monotonic() >= job.deadline:
                    out[n] = _not_run(job)
                else:
                    runnable.append((n, job))
            if runnable:
                results = await run_group(
                    conn,
                    [job.req for _, job in runnable],
                    read_lsn=read_lsn,
                    check=check,
                    may_commit=may_commit,
                    unseen=unseen,
                )
                for (n, _), result in zip(runnable, results, strict=True):
                    out[n] = result
    except psycopg_pool.PoolTimeout as exc:
        for n, _ in live:
            out.setdefault(n, UnavailableError(f"database unavailable: {exc}"))
    except psycopg.OperationalError as exc:
        # Raised by the pool while handing out or returning a connection that was cut.
        raise Lost(exc, committing=False) from exc
    return out


def _not_run(job: Job) -> UnavailableError:
    return UnavailableError(
        f"request {job.req.id} waited past its caller's timeout; it was not run"
    )


def after_lost_commit(req: Request, out: A, first: Lost | None) -> A | OutcomeUnknownError:
    """The answer of the try that followed ``first``, a try whose connection was lost (None:
    no try was): when COMMIT was in flight then, a "not applied" that no statement of the
    later try gave is no answer for the write
    (:func:`~writebus.client.errors.after_an_uncertain_try`)."""
    if first is None or not first.committing:
        return out
    return after_an_uncertain_try(out, req.id, first.uncertainty)


def _lost_error(req: Request, lost: Lost) -> WriteBusError:
    """The answer when tries ended in ``lost`` (the one that may have committed, if any)."""
    if lost.committing:
        return OutcomeUnknownError(req.id, lost.uncertainty)
    return UnavailableError(f"database unavailable: {lost.cause}")


async def _attempt(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    req: Request,
    proc: Procedure,
    exactly_once: bool,
    primary: bool,
    limits: Limits,
    check: Callable[[list[StatementResult], Any], None],
    deadline: float | None = None,
    unseen: bool = False,
) -> Executed:
    phase = Phase()
    try:
        async with pool.connection(timeout=limits.acquire_timeout) as conn:
            if deadline is not None and time.monotonic() >= deadline:
                # The caller gave up while this waited for a connection (the database was
                # down): it has retried, perhaps elsewhere. Starting now could apply it twice
                # on two databases after a failover.
                raise UnavailableError(
                    f"request {req.id} waited for a database connection past its timeout; "
                    "it was not run"
                )
            try:
                executed = await run_procedure_tx(
                    conn, req, proc, exactly_once, primary, check, phase, unseen
                )
            except psycopg.Error as exc:
                if connection_lost(conn, exc):
                    raise Lost(exc, phase.committing) from exc
                raise rejected(exc) from exc
    except psycopg_pool.PoolTimeout as exc:
        raise UnavailableError(f"database unavailable: {exc}") from exc
    except psycopg.OperationalError as exc:
        # Raised by the pool while handing out or returning a connection that was cut.
        raise Lost(exc, phase.committing) from exc
    if executed.duplicate:
        log.info("execute.duplicate", request_id=req.id)
    return executed


def reply_header_bytes(encoding: str) -> int:
    """What a reply's NATS headers take of the max payload (nats-server counts them): a JSON
    reply's Content-Type, as nats-py writes it; a msgpack reply has none."""
    if encoding != JSON:
        return 0
    return len(f"NATS/1.0\r\n{CONTENT_TYPE_HEADER}: {JSON}\r\n\r\n")


def _check_reply_size(
    req: Request,
    results: list[StatementResult],
    value: Any,
    limits: Limits,
    encoding: str,
    region: str,
) -> None:
    """Raise :class:`LimitError` when the reply to ``req`` would exceed the NATS max payload,
    and a rejection when a value has no form in the reply or in the exactly-once record (a
    JSON number past 64 bits: JSON carries it, the record's msgpack does not)."""
    limit = limits.max_reply_bytes
    try:
        if limit is None or encoding != MSGPACK:
            idempotency.encode_result(results, value)  # else the widest reply proves it
        if limit is None:
            return
        # The largest reply these results can make: every optional field at its widest.
        widest = Reply(
            id=req.id,
            results=results,
            value=value,
            lsn="FFFFFFFF/FFFFFFFF",
            lsn_int=2**64 - 1,
            region=region,
            duplicate=True,
            server_ms=-1.2345678901234567e-300,  # the longest a float's text can be
            timeline=2**32 - 1,
        )
        size = len(encode(widest, encoding))
    except Exception as exc:  # before commit, so an unencodable value applies nothing
        message = f"a value in the result cannot be sent or recorded: {exc}"
        if req.procedure is not None:
            raise ProcedureError(message, procedure=req.procedure) from exc
        raise WriteRejectedError(f"{message}; select it as text (::text)") from exc
    size += reply_header_bytes(encoding)
    if size > limit:
        raise LimitError(
            f"the reply would take {size} bytes, over the NATS max payload of {limit}; "
            "nothing was applied: return fewer rows or a smaller value"
        )


def _unrecordable(request_id: str, error: WriteRejectedError) -> WriteRejectedError:
    """The rejection of a write whose dated id is hours ahead, when its record (not one of its
    statements) was refused: say so, rather than leave "no partition ... found for row"."""
    if error.sqlstate != "23514" or error.statement_index is not None:
        return error  # another failure, or a statement's own CHECK constraint
    out = WriteRejectedError(
        f"request id {request_id!r} is dated hours ahead of the database's clock, too far for "
        "its exactly-once record to be kept; nothing was applied. Check the client's clock",
        sqlstate=error.sqlstate,
        detail=error.message,
    )
    out.__cause__ = error
    return out
