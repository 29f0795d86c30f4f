"""Turning request bytes into reply bytes: parse, run, map errors, encode.

No NATS here: :class:`Handler` is called by :mod:`writebus.bus.worker` with a message's body
and headers and returns the reply body and headers. Each step is its own function:

* :func:`parse` -- decode the body, learn the encoding and the id to echo;
* :func:`~writebus.bus.execute.run_request` -- everything else a request means (validation,
  exactly-once, statements or procedure, the flush LSN);
* :func:`~writebus.client.wire_errors.error_info` -- one table from exceptions to error replies;
* :func:`encode_reply` -- encode, and never send a reply bigger than NATS allows.

Every failure becomes a typed error reply; nothing a client sends can raise out of
:meth:`Handler.handle`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool

from writebus.bus.committer import Committer
from writebus.bus.execute import Limits, reply_header_bytes, run_request
from writebus.bus.group import Executed
from writebus.bus.pg import connection_lost
from writebus.bus.served import Observer, Served
from writebus.client.errors import (
    LimitError,
    ProcedureError,
    UnavailableError,
    WriteBusError,
)
from writebus.client.log import get_logger
from writebus.client.lsn import format_lsn, parse_lsn
from writebus.client.procedures import PING, Procedures
from writebus.client.protocol import (
    CONTENT_TYPE_HEADER,
    JSON,
    MAX_REQUEST_ID_LENGTH,
    ErrorInfo,
    Reply,
    Request,
    RequestId,
    decode,
    encode,
    encoding_of,
)
from writebus.client.validation import validate_request
from writebus.client.wire_errors import RESULT_NOT_SENT, error_info

log = get_logger("writebus.bus.handler")

_PING_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_flush_lsn()::text END"
)

__all__ = ["Handler", "Limits", "Parsed", "encode_reply", "parse"]


@dataclass
class Parsed:
    """A decoded request, or the reason it could not be decoded."""

    encoding: str
    #: The id to echo in the reply (empty when it could not be read or is oversized).
    request_id: str
    request: Request | None = None
    error: WriteBusError | None = None


def parse(data: bytes, headers: dict[str, str] | None) -> Parsed:
    """Decode a request body. Never raises: a bad body comes back with ``error`` set."""
    encoding = encoding_of(headers, data)
    try:
        req = decode(data, Request, encoding)
    except WriteBusError as exc:
        return Parsed(encoding, _readable_id(data, encoding), error=exc)
    # Echo the id whenever it decoded, but never an oversized one.
    request_id = req.id if 0 < len(req.id) <= MAX_REQUEST_ID_LENGTH else ""
    return Parsed(encoding, request_id, request=req)


def _readable_id(data: bytes, encoding: str) -> str:
    """The id of a request that did not decode as a whole, when it can be read on its own."""
    try:
        rid = decode(data, RequestId, encoding).id
    except Exception:
        return ""
    return rid if 0 < len(rid) <= MAX_REQUEST_ID_LENGTH else ""


def encode_reply(reply: Reply, encoding: str, max_bytes: int | None) -> tuple[bytes, Reply]:
    """Encode ``reply``; an unencodable or oversized one becomes an error reply that fits.
    Returns the body and the reply it holds (what metrics and the request log count).

    The size was checked before COMMIT (:mod:`writebus.bus.execute`); this is the safety net.
    """
    try:
        body = encode(reply, encoding)
    except Exception as exc:  # a procedure returned something unencodable
        reply = _error_reply(reply, f"result not encodable: {exc}",
                             ProcedureError(f"result not encodable: {exc}", procedure=""))  # fmt: skip
        body = encode(reply, encoding)
    if max_bytes is not None and len(body) + reply_header_bytes(encoding) > max_bytes:
        log.error("handler.reply_too_large", request_id=reply.id, size=len(body))
        too_large = f"reply of {len(body)} bytes exceeds {max_bytes}"
        reply = _error_reply(reply, too_large, LimitError(too_large))
        body = encode(reply, encoding)
    return body, reply


def _error_reply(replaced: Reply, why: str, refusal: BaseException) -> Reply:
    """The error reply sent in place of ``replaced``. A successful one was applied (or
    answered from its record): "limit"/"procedure" would say nothing was, so it is ``unknown``
    with detail ``ResultNotSent`` (not retryable: a resend gets the same), keeping its
    position; a failed one gets ``refusal``."""
    if replaced.ok:
        error = ErrorInfo(kind="unknown", detail=RESULT_NOT_SENT, message=(
            f"it succeeded (a write was applied; an rpc call ran), but its result cannot be "
            f"sent ({why}): read it from the database"))  # fmt: skip
        return Reply(id=replaced.id, ok=False, error=error, region=replaced.region,
                     server_ms=replaced.server_ms, lsn=replaced.lsn, lsn_int=replaced.lsn_int,
                     timeline=replaced.timeline)  # fmt: skip
    return Reply(id=replaced.id, ok=False, error=error_info(refusal), region=replaced.region,
                 server_ms=replaced.server_ms)  # fmt: skip


class Handler:
    """Runs requests against one database.

    ``primary`` (per call) says whether the database is the primary: then writes commit there,
    the reply carries the flush LSN and request ids are recorded for exactly-once. ``on_commit``
    is told each commit's LSN (the primary's progress announcer).
    """

    def __init__(
        self,
        *,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        procedures: Procedures,
        region: str,
        limits: Limits | None = None,
        on_commit: Callable[[int], None] | None = None,
        observers: list[Observer] | None = None,
    ) -> None:
        self.pool = pool
        self.procedures = procedures
        self.region = region
        self.limits = limits or Limits()
        self.on_commit = on_commit
        #: Told about every answered request (the request log, metrics, status).
        self.observers: list[Observer] = list(observers or [])
        #: Group commit of statement writes (set while the node is primary).
        self.committer: Committer | None = None
        #: Asked right before each COMMIT: why this node must not commit now, or None.
        self.may_commit: Callable[[], str | None] | None = None
        #: The primary's WAL timeline, stamped on replies to commits (set while primary).
        self.timeline: int | None = None
        #: What ``writebus.ping`` reports about this node besides its database's state.
        self.node_info: dict[str, Any] = {"region": region}

    async def handle(
        self,
        data: bytes,
        headers: dict[str, str] | None,
        *,
        write: bool,
        primary: bool,
        received: float | None = None,
        subject: str = "",
    ) -> tuple[bytes, dict[str, str] | None]:
        """Answer one request. ``write`` is true on ``<prefix>.write`` (statements allowed,
        exactly-once), false on ``<prefix>.rpc.<region>`` (procedures only). ``received`` is
        when the message reached the worker: a request that waited there longer than its
        ``timeout_ms`` is not run (its caller has moved on) and gets a retryable error."""
        start = time.monotonic()
        parsed = parse(data, headers)
        reply_headers = {CONTENT_TYPE_HEADER: JSON} if parsed.encoding == JSON else None
        try:
            if parsed.error is not None:
                raise parsed.error
            assert parsed.request is not None
            _check_deadline(parsed.request, received)
            if parsed.request.procedure == PING and not write:
                done = await self._ping(parsed.request)
            else:
                done = await run_request(
                    self.pool,
                    parsed.request,
                    procedures=self.procedures,
                    limits=self.limits,
                    write=write,
                    primary=primary,
                    encoding=parsed.encoding,
                    region=self.region,
                    deadline=_deadline(parsed.request, received),
                    may_commit=self.may_commit,
                    submit=self.committer.submit if write and self.committer else None,
                )
            reply = self._success(parsed.request.id, done)
        except Exception as exc:
            reply = self._failure(parsed.request_id, exc)
        reply.region = self.region
        reply.server_ms = (time.monotonic() - start) * 1000
        body, sent = encode_reply(reply, parsed.encoding, self.limits.max_reply_bytes)
        if self.observers:
            self._tell(parsed, sent, subject, start, received)
        return body, reply_headers

    def _tell(
        self, parsed: Parsed, reply: Reply, subject: str, start: float, received: float | None
    ) -> None:
        req = parsed.request
        err = reply.error
        served = Served(
            request_id=reply.id,
            subject=subject,
            procedure=req.procedure if req is not None else None,
            statements=len(req.statements or ()) if req is not None else 0,
            outcome="ok" if err is None else err.kind,
            sqlstate=err.sqlstate if err is not None else None,
            duplicate=reply.duplicate,
            queue_ms=(start - received) * 1000 if received is not None else 0.0,
            run_ms=reply.server_ms or 0.0,
            lsn=reply.lsn,
            origin=req.origin if req is not None else None,
        )
        for observe in self.observers:
            try:
                observe(served)
            except Exception:  # an observer's bug must not fail the request
                log.exception("handler.observer_failed")

    async def _ping(self, req: Request) -> Executed:
        """The built-in ``writebus.ping``: this node's identity and its database's role. Runs no
        application code and writes nothing."""
        validate_request(req, allow_statements=False)
        info = dict(self.node_info)
        try:
            row = await self._ping_query()
            info.update(database="ok", in_recovery=bool(row[0]))
            if row[1] is not None and info.get("role") not in ("fenced", "starting"):
                # Read after the ping arrived: covers every commit before it (strong reads, a
                # token's check). Not from a node fenced or starting: its database may be a
                # stale primary, whose position is not the cluster's.
                info.update(flush_lsn=row[1], flush_lsn_int=parse_lsn(row[1]))
        except Exception as exc:  # the ping reports the database's state, it does not fail
            info.update(database=f"unreachable: {type(exc).__name__}", in_recovery=None)
        return Executed([], info, None, False)

    async def _ping_query(self) -> tuple[Any, ...]:
        """The database's role and flush position. A pooled connection that died while idle
        (the server restarted, its session was terminated) says nothing about the database
        now: the pool checks its idle connections, replacing dead ones, and the ping asks
        once more."""
        for attempt in (1, 2):
            async with self.pool.connection(timeout=min(2.0, self.limits.acquire_timeout)) as conn:
                try:
                    cur = await conn.execute(_PING_SQL)
                    row: tuple[Any, ...] | None = await cur.fetchone()
                    assert row is not None
                    return row
                except psycopg.Error as exc:
                    if attempt == 2 or not connection_lost(conn, exc):
                        raise
            await self.pool.check()
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _success(self, request_id: str, done: Executed) -> Reply:
        if done.lsn is None:
            return Reply(id=request_id, results=done.results, value=done.value)
        if self.on_commit is not None:
            self.on_commit(done.lsn)
        return Reply(
            id=request_id,
            results=done.results,
            value=done.value,
            lsn=format_lsn(done.lsn),
            lsn_int=done.lsn,
            duplicate=done.duplicate,
            timeline=self.timeline,
        )

    def _failure(self, request_id: str, exc: Exception) -> Reply:
        if isinstance(exc, UnavailableError):
            log.warning("handler.unavailable", request_id=request_id, error=str(exc))
        elif not isinstance(exc, WriteBusError):
            log.exception("handler.internal_error", request_id=request_id)
        return Reply(id=request_id, ok=False, error=error_info(exc), region=self.region)


def _deadline(req: Request, received: float | None) -> float | None:
    """When the caller stops waiting for this attempt (monotonic), if it said."""
    if req.timeout_ms is None or received is None:
        return None
    return received + req.timeout_ms / 1000


def _check_deadline(req: Request, received: float | None) -> None:
    if req.timeout_ms is None or received is None:
        return
    waited_ms = (time.monotonic() - received) * 1000
    if waited_ms >= req.timeout_ms:
        raise UnavailableError(
            f"the request waited {waited_ms:.0f} ms in the worker, past its "
            f"timeout of {req.timeout_ms} ms; it was not run"
        )
