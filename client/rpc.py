"""Request/reply over NATS with retries, translating failures into typed errors."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import nats.errors

from writebus.client.errors import (
    NoWorkerError,
    ProcedureError,
    ProtocolError,
    RpcTimeoutError,
    UnavailableError,
    WriteBusError,
    WriteRejectedError,
)
from writebus.client.protocol import MSGPACK, ErrorInfo, Reply, Request, decode, encode, encoding_of
from writebus.client.retry import RetryPolicy

_LOST = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
)


@dataclass(frozen=True)
class Exchange:
    """A reply and how it was obtained."""

    reply: Reply
    rpc_ms: float
    attempts: int


def error_from_reply(info: ErrorInfo, *, procedure: str | None = None) -> WriteBusError:
    """The typed exception for an error carried in a reply."""
    if info.kind == "rejected":
        return WriteRejectedError(
            info.message,
            sqlstate=info.sqlstate,
            statement_index=info.statement,
            detail=info.detail,
        )
    if info.kind == "procedure":
        return ProcedureError(info.message, procedure=procedure or "", kind="procedure")
    if info.kind == "unavailable":
        return UnavailableError(info.message)
    if info.kind in ("protocol", "limit", "forbidden"):
        return ProtocolError(info.message, kind=info.kind)
    err = WriteBusError(f"{info.kind}: {info.message}")
    err.retryable = info.retryable
    return err


async def request(
    nc: Any,
    subject: str,
    req: Request,
    *,
    timeout: float,
    policy: RetryPolicy,
    region: str,
    encoding: str = MSGPACK,
) -> Exchange:
    """Send ``req`` and return the successful reply, retrying retryable failures with the same
    request id until ``timeout`` seconds have passed. Raises a :class:`WriteBusError`."""
    payload = encode(req, encoding)
    if len(payload) > nc.max_payload:
        raise ProtocolError(
            f"request of {len(payload)} bytes exceeds the NATS max payload of {nc.max_payload}",
            kind="limit",
        )
    start = time.monotonic()
    deadline = start + timeout
    attempt = 0
    while True:
        attempt += 1
        now = time.monotonic()
        budget = policy.attempt_budget(deadline - now)
        if budget != float("inf"):
            # Tell the worker how long this attempt waits, so it does not start a request
            # whose caller has moved on (and may be retrying it elsewhere).
            req.timeout_ms = max(1, int(budget * 1000))
            payload = encode(req, encoding)
        sent = time.monotonic()
        err: WriteBusError
        try:
            msg = await nc.request(subject, payload, timeout=budget)
        except nats.errors.NoRespondersError:
            err = NoWorkerError(subject, region)
        except nats.errors.TimeoutError:
            err = RpcTimeoutError(subject, time.monotonic() - start, req.id)
        except nats.errors.MaxPayloadError as exc:
            raise ProtocolError(str(exc) or "payload too large", kind="limit") from exc
        except _LOST as exc:
            err = UnavailableError(f"NATS connection unavailable: {type(exc).__name__}")
        else:
            rpc_ms = (time.monotonic() - sent) * 1000
            reply = decode(msg.data, Reply, encoding_of(msg.headers, msg.data))
            if reply.ok:
                return Exchange(reply, rpc_ms, attempt)
            if reply.error is None:
                raise ProtocolError("reply has ok=false and no error")
            err = error_from_reply(reply.error, procedure=req.procedure)
        now = time.monotonic()
        delay = policy.should_retry(err, attempt=attempt, elapsed=now - start, remaining=deadline - now)
        if delay is None:
            raise err
        await asyncio.sleep(delay)
