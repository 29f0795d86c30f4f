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
* the connection was lost while COMMIT was in flight -> :class:`OutcomeUnknownError`.

An exactly-once request whose connection was cut runs once more on a fresh connection: the id
claimed in the write's own transaction makes that safe (a commit that did land is found and
answered as a duplicate).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import psycopg_pool
from psycopg import pq

from writebus.bus import idempotency, pipelined
from writebus.bus.pg import connection_lost, read_flush_lsn, rejected
from writebus.client.errors import (
    LimitError,
    OutcomeUnknownError,
    ProcedureError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.log import get_logger
from writebus.client.procedures import Procedure, Procedures
from writebus.client.protocol import (
    MAX_PARAM_BYTES,
    MAX_STATEMENTS,
    MSGPACK,
    Reply,
    Request,
    StatementResult,
    encode,
    validate_request,
)

log = get_logger("writebus.bus.execute")


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


@dataclass(frozen=True)
class Executed:
    """What a request produced."""

    results: list[StatementResult]
    value: Any
    #: The primary's flush LSN read after COMMIT (None when not run on the primary).
    lsn: int | None
    #: True when the id had already been applied: the stored result, nothing run again.
    duplicate: bool


class _Phase:
    """How far an attempt got: whether COMMIT may have reached the server."""

    committing = False


class _Lost(Exception):
    """The connection went away during an attempt (internal)."""

    def __init__(self, cause: BaseException, committing: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.committing = committing


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
) -> Executed:
    """Run ``req`` on a connection from ``pool`` and return what it produced.

    ``write`` is true for ``<prefix>.write`` requests (statements allowed) and false for
    ``<prefix>.rpc.<region>`` (procedures only). ``primary`` says the database is the primary:
    then writes are recorded exactly once by id and the flush LSN is read after COMMIT.
    ``deadline`` (monotonic seconds) is when the caller stops waiting for this attempt: the
    request is not started after it, even if it was waiting for a connection. ``may_commit``
    is asked right before COMMIT and returns why the node must not commit (the split-brain
    guard fenced it), or None. Raises a :class:`~writebus.client.errors.WriteBusError` subclass.
    """
    validate_request(
        req,
        max_statements=limits.max_statements,
        allow_statements=write,
        allow_sql=limits.allow_sql,
        max_param_bytes=limits.max_param_bytes,
    )
    proc = procedures.get(req.procedure) if req.procedure is not None else None
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
        return await _attempt(pool, req, proc, exactly_once, primary, limits, check, deadline)
    except _Lost as first:
        if not exactly_once:
            raise _lost_error(req, first.committing, first.cause) from first.cause
        log.info("execute.retry_on_fresh_connection", request_id=req.id, error=str(first.cause))
        try:
            return await _attempt(pool, req, proc, exactly_once, primary, limits, check, deadline)
        except _Lost as again:
            committing = first.committing or again.committing
            raise _lost_error(req, committing, again.cause) from again.cause


def _lost_error(req: Request, committing: bool, cause: BaseException) -> WriteBusError:
    if committing:
        return OutcomeUnknownError(
            req.id, f"the database connection was lost while COMMIT was in flight: {cause}"
        )
    return UnavailableError(f"database unavailable: {cause}")


async def _attempt(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    req: Request,
    proc: Procedure | None,
    exactly_once: bool,
    primary: bool,
    limits: Limits,
    check: Callable[[list[StatementResult], Any], None],
    deadline: float | None = None,
) -> Executed:
    phase = _Phase()
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
                if req.statements is not None:
                    out = await pipelined.run_write(
                        conn,
                        req.id,
                        req.statements,
                        digest=idempotency.request_digest(req),
                        exactly_once=exactly_once,
                        read_lsn=primary,
                        check=lambda results: check(results, None),
                        on_commit=lambda: setattr(phase, "committing", True),
                    )
                    executed = Executed(out.results, None, out.lsn, out.duplicate)
                else:
                    assert proc is not None
                    executed = await _run_procedure_tx(
                        conn, req, proc, exactly_once, primary, check, phase
                    )
            except psycopg.Error as exc:
                if connection_lost(conn, exc):
                    raise _Lost(exc, phase.committing) from exc
                raise rejected(exc) from exc
    except psycopg_pool.PoolTimeout as exc:
        raise UnavailableError(f"database unavailable: {exc}") from exc
    except psycopg.OperationalError as exc:
        # Raised by the pool while handing out or returning a connection that was cut.
        raise _Lost(exc, phase.committing) from exc
    if executed.duplicate:
        log.info("execute.duplicate", request_id=req.id)
    return executed


async def _run_procedure_tx(
    conn: psycopg.AsyncConnection[Any],
    req: Request,
    proc: Procedure,
    exactly_once: bool,
    primary: bool,
    check: Callable[[list[StatementResult], Any], None],
    phase: _Phase,
) -> Executed:
    name = req.procedure or ""
    digest = idempotency.request_digest(req)
    try:
        async with conn.transaction():
            if exactly_once and not await idempotency.claim(conn, req.id, digest):
                raise _Duplicate
            value = await run_procedure(conn, proc, req.args, req.kwargs, name=name)
            check([], value)
            if exactly_once:
                await idempotency.store(conn, req.id, [], value)
            phase.committing = True
    except _Duplicate:
        stored = await idempotency.fetch(conn, req.id, digest)
        results, value = (stored.results, stored.value) if stored is not None else ([], None)
        lsn = await read_flush_lsn(conn) if primary else None
        return Executed(results, value, lsn, True)
    except psycopg.Error as exc:
        # From the claim, the store or COMMIT itself (a deferred constraint, a serialization
        # failure): the database refused the transaction.
        if connection_lost(conn, exc):
            raise
        raise rejected(exc) from exc
    lsn = await read_flush_lsn(conn) if primary else None
    return Executed([], value, lsn, False)


class _Duplicate(Exception):
    pass


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


def _check_reply_size(
    req: Request,
    results: list[StatementResult],
    value: Any,
    limits: Limits,
    encoding: str,
    region: str,
) -> None:
    """Raise :class:`LimitError` when the reply to ``req`` would exceed the NATS max payload."""
    limit = limits.max_reply_bytes
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
        server_ms=1e9,
    )
    try:
        size = len(encode(widest, encoding))
    except Exception as exc:  # before commit, so an unencodable value applies nothing
        raise ProcedureError(f"result not encodable: {exc}", procedure=req.procedure or "") from exc
    if size > limit:
        raise LimitError(
            f"the reply would take {size} bytes, over the NATS max payload of {limit}; "
            "nothing was applied: return fewer rows or a smaller value"
        )
