"""The two ways a write runs: over the bus, or directly in the primary region.

:func:`via_bus` sends the request to the primary region's workers and waits for the local
replica to replay the commit; :func:`direct` runs it in this process with the workers' own
function (:func:`writebus.bus.execute.run_request`), retried by the same attempt loop. Both return
a :class:`~writebus.client.results.WriteResult` of the same shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from writebus.client import ids
from writebus.client.bounded import within
from writebus.client.errors import (
    DatabaseTimeoutError,
    LostInFailoverError,
    Outcome,
    OutcomeUnknownError,
    TrackerError,
    TransactionEndedError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.log import get_logger
from writebus.client.lsn import format_lsn
from writebus.client.paramtypes import as_a_worker_gets, with_types
from writebus.client.procedures import Procedures
from writebus.client.protocol import (
    MSGPACK,
    Reply,
    Request,
    Statement,
    as_sent,
    decode,
    encode,
    reply_lsn,
)
from writebus.client.results import Timings, WriteResult, shape_results
from writebus.client.retry import Attempts, RetryPolicy
from writebus.client.rows import RowFactory
from writebus.client.rpc import request
from writebus.client.settings import Settings
from writebus.client.subjects import Subjects
from writebus.client.tracker import LsnTracker
from writebus.client.transport import NatsClient

Params = Sequence[Any] | dict[str, Any] | None
#: SQL text, or a SQLAlchemy Core construct (``insert(...)``, ``select(...)``, ``text(...)``).
SQL = Any
StatementLike = Statement | SQL | tuple[SQL, Params]
Route = Literal["direct", "bus"]

log = get_logger("writebus.client.db")  # the events of the Database that writes


def to_statement(s: StatementLike) -> Statement:
    """A :class:`Statement` from SQL text, a ``(sql, params)`` pair or a SQLAlchemy construct."""
    if isinstance(s, Statement):
        return with_types(s)
    sql, params = s if isinstance(s, tuple) else (s, None)
    text, values = to_sql(sql, params)
    return with_types(Statement(sql=text, params=values))


def to_sql(sql: SQL, params: Params) -> tuple[str, list[Any] | dict[str, Any] | None]:
    """SQL text and wire parameters; a SQLAlchemy construct is compiled for psycopg."""
    if isinstance(sql, str):
        return sql, to_params(params)
    from writebus.client import sqla

    if sqla.is_construct(sql):
        if params is not None and not isinstance(params, dict):
            raise TypeError("parameters of a SQLAlchemy construct are a mapping of names")
        return sqla.compile_construct(sql, params)
    raise TypeError(f"SQL must be a string or a SQLAlchemy construct, not {type(sql).__name__}")


def to_params(params: Params) -> list[Any] | dict[str, Any] | None:
    if params is None or isinstance(params, dict):
        return params
    return list(params)


def new_request_id() -> str:
    """A fresh request id: a UUIDv7, 36 characters (random, and dated, which lets the primary
    look it up in fewer places; :mod:`writebus.client.ids`)."""
    return ids.new_id()


def write_route(settings: Settings, *, has_local_pool: bool) -> Route:
    """Where a write runs: ``"direct"`` on the local database in the primary region (it is the
    primary), else ``"bus"``. A pure decision, kept apart from the I/O."""
    return "direct" if settings.is_primary and has_local_pool else "bus"


def primary_lost(exc: BaseException) -> bool:
    """True when a direct write failed because the local primary is gone or no longer the
    primary (down, unreachable, or read-only after a demotion), so the bus should take it."""
    if isinstance(exc, WriteRejectedError):
        return exc.sqlstate == "25006"  # read_only_sql_transaction: a standby now
    if isinstance(exc, (TransactionEndedError, DatabaseTimeoutError)):
        return False  # the primary answered, or is busy: the write itself ended or waited
    return isinstance(exc, (UnavailableError, OutcomeUnknownError))


def fallback_event(exc: BaseException) -> tuple[int, str]:
    """The log level and event of a primary-region write that goes over the bus after its
    local primary failed it (:func:`primary_lost`): a warning that the primary is lost -- or,
    when the write's exactly-once claim met another try of its id still running there (a
    resend under the database's ``lock_timeout``), an info: that primary is fine, and the bus
    keeps trying until the call's deadline."""
    from writebus.bus.grouptx import CLAIM_CONTENDED  # only the primary region comes here

    cause = exc.__cause__
    if isinstance(cause, psycopg.Error) and cause.sqlstate in CLAIM_CONTENDED:
        return logging.INFO, "db.direct_claim_held_by_another_try"
    return logging.WARNING, "db.direct_fell_back_to_bus"


def local_pool_configure(
    settings: Settings,
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None:
    """The local pool's ``configure`` hook. In the primary region direct writes commit on
    it, so an acknowledged write must be durable, as on the bus workers' pool
    (``synchronous_commit=off`` would let it vanish in a crash)."""
    if not settings.is_primary:
        return None
    from writebus.bus.pg import durable_commits

    return durable_commits


def claim_function_missing(error: WriteRejectedError) -> bool:
    """Whether ``error`` is the database lacking one of writebus' claim functions (SQLSTATE
    42883, undefined function, naming ``writebus.claim_...``, and no statement of the write's:
    the claim failed, so nothing of the write ran)."""
    return (
        error.sqlstate == "42883"
        and error.statement_index is None
        and "writebus.claim_" in str(error)
    )


async def ensure_exactly_once_table(pool: AsyncConnectionPool[Any]) -> None:
    """Create ``writebus.applied`` if missing. Direct writes record their ids like bus workers
    do; the table is normally created by the primary's bus node, but an app may start first.
    It never drops partitions: the app does not know the bus' window
    (``WRITEBUS_IDEMPOTENCY_WINDOW``), and dropping by another would forget ids too soon."""
    from writebus.bus import idempotency

    async with pool.connection() as conn:
        await idempotency.ensure_schema(conn, None)


async def via_bus(
    req: Request,
    *,
    nc: NatsClient,
    settings: Settings,
    retry: RetryPolicy,
    tracker: LsnTracker | None,
    await_replication: bool,
    timeout: float,
    replication_timeout: float | None,
    row_factory: RowFactory | None = None,
) -> WriteResult:
    """Send ``req`` to the primary region's workers; then wait for local replay."""
    start = time.monotonic()
    subject = Subjects(settings.prefix).write
    ex = await request(
        nc, subject, req, timeout=timeout, policy=retry, region=settings.primary_region
    )
    reply = ex.reply
    lsn = reply_lsn(reply)
    replication_ms: float | None = None
    # In the primary region reads go to the primary itself: nothing to wait for.
    if await_replication and not settings.is_primary:
        if lsn is None:
            raise no_position(req.id, subject)
        t0 = time.monotonic()
        wait = replication_timeout if replication_timeout is not None else settings.replication_timeout
        try:
            if tracker is None:
                raise TrackerError("no LSN tracker: is this Database open?")
            await tracker.wait_for(lsn, wait, reply.timeline)
        except LostInFailoverError as e:
            raise replay_wait_failed(e, req.id, lsn, subject) from e
        except TrackerError as e:
            replay_wait_failed(e, req.id, lsn, subject, reply.timeline)  # applied, at lsn
            raise
        replication_ms = (time.monotonic() - t0) * 1000
    server_ms = reply.server_ms or 0.0
    return WriteResult(
        statements=shape_results(reply.results, row_factory, request_id=req.id, lsn=lsn,
                                 timeline=reply.timeline),  # fmt: skip
        lsn=lsn,
        region=reply.region or settings.primary_region,
        via_bus=True,
        value=reply.value,
        duplicate=reply.duplicate,
        replicated=replication_ms is not None,
        timeline=reply.timeline,
        request_id=req.id,
        timings=Timings(
            forward_ms=max(0.0, ex.rpc_ms - server_ms),
            commit_ms=server_ms,
            replication_ms=replication_ms,
            total_ms=(time.monotonic() - start) * 1000,
            attempts=ex.attempts,
        ),
    )


def replay_wait_failed(
    error: TrackerError, request_id: str, lsn: int, subject: str = "", timeline: int | None = None
) -> WriteBusError:
    """What a write that committed at ``lsn`` answers when its replay wait failed with
    ``error``. A promotion that left it behind (:class:`LostInFailoverError`) makes its
    outcome unknown -- the commit is on the old primary only -- to be settled by sending it
    again under ``request_id``; any other failure of the wait (no tracker, or it closed) leaves
    it applied, at ``lsn`` (``error`` itself, completed)."""
    if isinstance(error, LostInFailoverError):
        err = OutcomeUnknownError(request_id, str(error), subject=subject)
        err.last_error = error
        return err
    error.outcome = Outcome.APPLIED
    error.lsn, error.timeline = lsn, timeline
    error.args = (f"{error} (the write committed at {format_lsn(lsn)}; request {request_id})",)
    return error


def no_position(request_id: str, subject: str) -> TrackerError:
    """A reply that says a write committed but carries no LSN (docs/protocol.md: only errors,
    pings and replicas' rpc replies go without): nothing to wait for, so the call cannot
    promise the local replica has it. Applied, and said so -- not returned as if replicated."""
    err = TrackerError(
        f"the reply to request {request_id} on {subject} says the write committed but carries "
        "no LSN, so the local replica's replay of it cannot be waited for (an older writebus "
        "worker answering a repeat, or a worker that does not follow the protocol)"
    )
    err.outcome = Outcome.APPLIED
    return err


async def direct(
    req: Request,
    *,
    pool: AsyncConnectionPool[Any],
    procedures: Procedures | None,
    settings: Settings,
    retry: RetryPolicy,
    max_reply_bytes: int | None,
    timeout: float,
    row_factory: RowFactory | None = None,
    made_id: bool = False,
    deadline: float | None = None,
) -> WriteResult:
    """Run ``req`` on the local primary with the bus workers' own function.

    ``timeout`` bounds the tries (connections refused, claims contended); each run is bounded
    by ``deadline`` (monotonic; the caller's ``rpc_timeout``, default ``timeout`` from now),
    when the call answers :class:`DatabaseTimeoutError` and the run goes on
    (:mod:`writebus.client.bounded`).

    The reply-size limit is the NATS max payload, as on the bus, so a write that works here
    works from every region. ``made_id``: the caller made ``req.id`` for this call, so no
    one can have applied it before the first attempt, which then only locks the id instead
    of looking it up (:func:`writebus.bus.idempotency.claim_sql`); later attempts look it up.
    """
    # Imported here: only the primary region runs writes itself.
    from writebus.bus.execute import Limits, run_request
    from writebus.bus.group import Executed

    registry = procedures if procedures is not None else Procedures()
    # What a worker would get -- parameters and arguments in their wire forms -- so a write
    # binds, and a procedure sees, the same values in every region.
    if req.procedure is not None:
        req = msgspec.structs.replace(req, args=as_sent(req.args), kwargs=as_sent(req.kwargs))
    elif req.statements is not None:
        req = msgspec.structs.replace(req, statements=[as_a_worker_gets(s) for s in req.statements])
    attempts = Attempts(retry, timeout, request_id=req.id)
    end = deadline if deadline is not None else time.monotonic() + timeout

    async def run(budget: float, unseen: bool) -> Executed:
        limits = Limits(acquire_timeout=max(0.1, budget), max_reply_bytes=max_reply_bytes)
        return await within(run_request(
            pool, req, procedures=registry, limits=limits, encoding=MSGPACK,
            region=settings.region, unseen=unseen,
        ), end - time.monotonic(), request_id=req.id)  # fmt: skip

    async def once(budget: float) -> Executed:
        unseen = made_id and attempts.attempt == 1
        deadline = time.monotonic() + budget
        try:
            return await run(budget, unseen)
        except WriteRejectedError as exc:
            if not claim_function_missing(exc):
                raise
            # The database lost this version's functions after the app opened (restored from
            # an older dump, or swapped in): the claim was refused and nothing ran. Make them
            # again -- the app's open() did -- and run the same try, within the same budget.
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await ensure_exactly_once_table(pool)
            except (psycopg.Error, WriteBusError, TimeoutError) as why:  # may not, or too slow
                log.warning("db.claim_functions_not_made", request_id=req.id, error=str(why))
                raise exc from None  # not applied; the write's own answer
        return await run(max(0.0, deadline - time.monotonic()), unseen)

    start = time.monotonic()
    done = await attempts.run(once)
    elapsed = (time.monotonic() - start) * 1000
    # What a worker's reply would have carried: the same values from every region.
    sent = decode(encode(Reply(id=req.id, results=done.results, value=done.value)), Reply)
    return WriteResult(
        statements=shape_results(sent.results, row_factory, request_id=req.id, lsn=done.lsn,
                                 timeline=None),  # fmt: skip
        lsn=done.lsn,
        region=settings.region,
        via_bus=False,
        value=sent.value,
        duplicate=done.duplicate,
        request_id=req.id,
        timings=Timings(
            forward_ms=0.0,
            commit_ms=elapsed,
            replication_ms=None,
            total_ms=elapsed,
            attempts=attempts.attempt,
        ),
    )
