"""Turning request bytes into reply bytes: decode, validate, run, encode.

No NATS here: :class:`Handler` is called by :mod:`writebus.bus.worker` with a message's body and headers
and returns the reply body and headers. Every failure becomes a typed error reply; nothing a
client sends can raise out of :meth:`Handler.handle`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
import structlog

from writebus.bus import idempotency, pipelined
from writebus.client.errors import ProcedureError, ProtocolError, WriteRejectedError
from writebus.client.execute import (
    SESSION_ENDED_SQLSTATES,
    connection_lost,
    error_info,
    read_flush_lsn,
    rejected,
    run_procedure,
)
from writebus.client.lsn import format_lsn
from writebus.client.procedures import Procedures
from writebus.client.protocol import (
    CONTENT_TYPE_HEADER,
    JSON,
    MAX_PARAM_BYTES,
    MAX_REQUEST_ID_LENGTH,
    MAX_STATEMENTS,
    ErrorInfo,
    Reply,
    Request,
    StatementResult,
    decode,
    encode,
    encoding_of,
    validate_request,
)

log = structlog.get_logger("writebus.worker")

#: Error messages and details are clipped to this many characters: Postgres and the validators
#: quote the offending input, which must not make the reply bigger than the request.
MAX_ERROR_TEXT = 4096


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a worker accepts."""

    max_statements: int = MAX_STATEMENTS
    max_param_bytes: int = MAX_PARAM_BYTES
    allow_sql: bool = True
    acquire_timeout: float = 5.0
    #: The NATS max payload. A result whose reply would be bigger is refused with a ``limit``
    #: error *before* commit (a reply that cannot be sent must not hide an applied write).
    #: None: not checked.
    max_reply_bytes: int | None = None


class _Expired(Exception):
    """The caller's timeout passed while the request waited in the worker."""


class _Duplicate(Exception):
    pass


class Handler:
    """Runs requests against one database.

    ``primary`` says whether the database is the primary (then writes commit there, the reply
    carries the flush LSN and request ids are recorded for exactly-once). ``on_commit`` is told
    each commit's LSN (the primary's progress announcer).
    """

    def __init__(
        self,
        *,
        pool: psycopg_pool.AsyncConnectionPool,
        procedures: Procedures,
        region: str,
        limits: Limits | None = None,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.pool = pool
        self.procedures = procedures
        self.region = region
        self.limits = limits or Limits()
        self.on_commit = on_commit

    async def handle(
        self,
        data: bytes,
        headers: dict[str, str] | None,
        *,
        write: bool,
        primary: bool,
        received: float | None = None,
    ) -> tuple[bytes, dict[str, str] | None]:
        """Answer one request. ``write`` is true on ``<prefix>.write`` (statements allowed,
        exactly-once), false on ``<prefix>.rpc.<region>`` (procedures only). ``received`` is
        when the message reached the worker: a request that waited there longer than its
        ``timeout_ms`` is not run (its caller has moved on) and gets a retryable error."""
        start = time.monotonic()
        encoding = encoding_of(headers, data)
        reply_headers = {CONTENT_TYPE_HEADER: JSON} if encoding == JSON else None
        request_id = ""
        try:
            req = decode(data, Request, encoding)
            if 0 < len(req.id) <= MAX_REQUEST_ID_LENGTH:  # never echo an oversized id
                request_id = req.id
            validate_request(
                req,
                max_statements=self.limits.max_statements,
                allow_statements=write,
                max_param_bytes=self.limits.max_param_bytes,
            )
            if req.statements is not None and not self.limits.allow_sql:
                raise ProtocolError(
                    "raw SQL is switched off on this bus (procedures-only mode); "
                    "call a registered procedure instead",
                    kind="forbidden",
                )
            if req.timeout_ms is not None and received is not None:
                waited_ms = (time.monotonic() - received) * 1000
                if waited_ms >= req.timeout_ms:
                    raise _Expired(
                        f"the request waited {waited_ms:.0f} ms in the worker, past its "
                        f"timeout of {req.timeout_ms} ms; it was not run"
                    )
            reply = await self._run(req, write=write, primary=primary, encoding=encoding)
        except _Expired as exc:
            log.warning("worker.expired", request_id=request_id, error=str(exc))
            reply = _error(request_id, "unavailable", str(exc), True)
        except ProtocolError as exc:
            reply = _error(request_id, exc.kind, str(exc))
        except ProcedureError as exc:
            reply = _error(request_id, "procedure", str(exc))
        except WriteRejectedError as exc:
            reply = Reply(id=request_id, ok=False, error=error_info(exc))
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("worker.db_unavailable", request_id=request_id, error=str(exc))
            reply = _error(request_id, "unavailable", f"database unavailable: {exc}", True)
        except Exception as exc:
            log.exception("worker.internal_error", request_id=request_id)
            reply = _error(request_id, "internal", f"{type(exc).__name__}: {exc}")
        if reply.error is not None:
            reply.error.message = _clip(reply.error.message)
            if reply.error.detail is not None:
                reply.error.detail = _clip(reply.error.detail)
        reply.region = self.region
        reply.server_ms = (time.monotonic() - start) * 1000
        try:
            body = encode(reply, encoding)
        except Exception as exc:  # a procedure returned something unencodable
            body = encode(
                _error(request_id, "procedure", f"result not encodable: {exc}"), encoding
            )
        limit = self.limits.max_reply_bytes
        if limit is not None and len(body) > limit:  # safety net: _run checked before commit
            log.error("worker.reply_too_large", request_id=request_id, size=len(body))
            body = encode(
                _error(request_id, "limit", f"reply of {len(body)} bytes exceeds {limit}"),
                encoding,
            )
        return body, reply_headers

    def _check_reply_size(
        self, req: Request, results: list[StatementResult], value: Any, encoding: str
    ) -> None:
        """Raise a ``limit`` error when the reply to ``req`` would exceed the NATS max payload."""
        limit = self.limits.max_reply_bytes
        if limit is None:
            return
        # The largest reply these results can make: every optional field at its widest.
        widest = Reply(
            id=req.id,
            results=results,
            value=value,
            lsn="FFFFFFFF/FFFFFFFF",
            lsn_int=2**64 - 1,
            region=self.region,
            duplicate=True,
            server_ms=1e9,
        )
        try:
            size = len(encode(widest, encoding))
        except Exception as exc:  # before commit, so an unencodable value applies nothing
            raise ProcedureError(
                f"result not encodable: {exc}", procedure=req.procedure or ""
            ) from exc
        if size > limit:
            raise ProtocolError(
                f"the reply would take {size} bytes, over the NATS max payload of {limit}; "
                "nothing was applied: return fewer rows or a smaller value",
                kind="limit",
            )

    async def _run(self, req: Request, *, write: bool, primary: bool, encoding: str) -> Reply:
        exactly_once = write and primary
        try:
            return await self._run_once(req, exactly_once, primary, encoding)
        except psycopg.OperationalError as exc:
            # A pooled connection cut while idle (the primary restarted) fails on first use.
            # With the request id claimed in the write's own transaction, running the request
            # again on a fresh connection is safe whatever happened to the first attempt: a
            # commit that did land is found by the claim and answered as a duplicate.
            if not exactly_once or isinstance(exc, psycopg_pool.PoolTimeout) or not _lost(exc):
                raise
            log.info("worker.retry_on_fresh_connection", request_id=req.id, error=str(exc))
            return await self._run_once(req, exactly_once, primary, encoding)

    async def _run_once(
        self, req: Request, exactly_once: bool, primary: bool, encoding: str
    ) -> Reply:
        if req.statements is not None:
            return await self._run_statements(req, exactly_once, primary, encoding)
        proc = self.procedures.get(req.procedure or "")
        results: list[StatementResult] = []
        value: Any = None
        duplicate = False
        async with self.pool.connection(timeout=self.limits.acquire_timeout) as conn:
            try:
                async with conn.transaction():
                    if exactly_once and not await idempotency.claim(conn, req.id):
                        raise _Duplicate
                    value = await run_procedure(
                        conn, proc, req.args, req.kwargs, name=req.procedure or ""
                    )
                    self._check_reply_size(req, results, value, encoding)
                    if exactly_once:
                        await idempotency.store(conn, req.id, results, value)
            except _Duplicate:
                duplicate = True
                stored = await idempotency.fetch(conn, req.id)
                if stored is not None:
                    results, value = stored.results, stored.value
                log.info("worker.duplicate", request_id=req.id)
            except psycopg.Error as exc:
                # From the claim, the store or COMMIT itself (a deferred constraint, a
                # serialization failure): the database refused the transaction.
                if connection_lost(conn, exc):
                    raise
                raise rejected(exc) from exc
            if not primary:
                return Reply(id=req.id, results=results, value=value)
            lsn = await read_flush_lsn(conn)
        if self.on_commit is not None:
            self.on_commit(lsn)
        return Reply(
            id=req.id,
            results=results,
            value=value,
            lsn=format_lsn(lsn),
            lsn_int=lsn,
            duplicate=duplicate,
        )


    async def _run_statements(
        self, req: Request, exactly_once: bool, primary: bool, encoding: str
    ) -> Reply:
        assert req.statements is not None
        async with self.pool.connection(timeout=self.limits.acquire_timeout) as conn:
            out = await pipelined.run_write(
                conn,
                req.id,
                req.statements,
                exactly_once=exactly_once,
                read_lsn=primary,
                check=lambda results: self._check_reply_size(req, results, None, encoding),
            )
        if out.duplicate:
            log.info("worker.duplicate", request_id=req.id)
        if out.lsn is None:
            return Reply(id=req.id, results=out.results)
        if self.on_commit is not None:
            self.on_commit(out.lsn)
        return Reply(
            id=req.id,
            results=out.results,
            lsn=format_lsn(out.lsn),
            lsn_int=out.lsn,
            duplicate=out.duplicate,
        )


def _lost(exc: psycopg.OperationalError) -> bool:
    state = exc.sqlstate or ""
    return not state or state.startswith("08") or state in SESSION_ENDED_SQLSTATES


def _clip(text: str) -> str:
    if len(text) <= MAX_ERROR_TEXT:
        return text
    return f"{text[:MAX_ERROR_TEXT]}... ({len(text) - MAX_ERROR_TEXT} more characters)"


def _error(request_id: str, kind: str, message: str, retryable: bool = False) -> Reply:
    return Reply(
        id=request_id,
        ok=False,
        error=ErrorInfo(kind=kind, message=message, retryable=retryable),
    )
