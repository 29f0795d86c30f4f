"""Request/reply over NATS with retries, translating failures into typed errors.

One attempt (:func:`_attempt`) maps what NATS says onto what it means for the write:

* not connected -- nothing was sent: :class:`DisconnectedError` (not applied);
* no responders -- no worker is subscribed, nothing was delivered: :class:`NoWorkerError`;
* no reply in time -- it may have been applied: :class:`OutcomeUnknownError`;
* a reply -- its ``error`` becomes the same exception the worker raised
  (:mod:`writebus.client.wire_errors`).

:class:`~writebus.client.retry.Attempts` decides what to do next, and keeps an ambiguous attempt's
uncertainty in the final error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import nats.errors

from writebus.client.denials import PublishRefused, denials_of
from writebus.client.errors import (
    DisconnectedError,
    ForbiddenError,
    LimitError,
    NoWorkerError,
    OutcomeUnknownError,
    ProtocolError,
    UnrecordedOutcomeError,
)
from writebus.client.protocol import (
    MSGPACK,
    Reply,
    Request,
    decode,
    encode,
    encoding_of,
    reply_lsn,
)
from writebus.client.retry import Attempts, RetryPolicy, for_procedure_calls
from writebus.client.settings_checks import is_region
from writebus.client.subjects import Subjects
from writebus.client.transport import NatsClient
from writebus.client.wire_errors import error_from_info

#: nats-py's errors for a connection that is closed, reconnecting or draining: nothing sent.
_NOT_SENT = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
)
#: ... and for one lost after the request may have gone out.
_LOST_AFTER_SEND = (nats.errors.StaleConnectionError, nats.errors.FlushTimeoutError)


@dataclass(frozen=True)
class Exchange:
    """A reply and how it was obtained."""

    reply: Reply
    rpc_ms: float
    attempts: int


async def request(
    nc: NatsClient,
    subject: str,
    req: Request,
    *,
    timeout: float,
    policy: RetryPolicy,
    region: str,
    encoding: str = MSGPACK,
) -> Exchange:
    """Send ``req`` and return the successful reply, retrying retryable failures with the same
    request id until ``timeout`` seconds have passed. Raises a
    :class:`~writebus.client.errors.WriteBusError`."""
    payload = encode(req, encoding)
    if len(payload) > nc.max_payload:
        raise LimitError(
            f"request of {len(payload)} bytes exceeds the NATS max payload of {nc.max_payload}"
        )
    attempts = Attempts(policy, timeout, request_id=req.id, subject=subject)

    async def once(budget: float) -> Exchange:
        return await _attempt(nc, subject, req, budget, region, encoding, attempts)

    return await attempts.run(once)


async def unrecorded_request(
    nc: NatsClient,
    subjects: Subjects,
    region: str,
    req: Request,
    *,
    timeout: float,
    retry: RetryPolicy,
) -> Exchange:
    """Send an ``rpc_region`` call to ``region``'s workers: resent only when it provably did not
    run (:func:`~writebus.client.retry.for_procedure_calls`), and, as nothing records it for
    exactly-once, an unknown outcome is an :class:`UnrecordedOutcomeError` (calling again runs
    it again). A ``region`` that cannot name a subject is a :class:`ProtocolError`: not sent."""
    if not isinstance(region, str) or not is_region(region):
        raise ProtocolError(f"{region!r} is not a region name; the call was not sent")
    try:
        return await request(nc, subjects.rpc(region), req, timeout=timeout,
                             policy=for_procedure_calls(retry, timeout), region=region)  # fmt: skip
    except UnrecordedOutcomeError:
        raise
    except OutcomeUnknownError as exc:  # retryable or not: calling again runs it again
        raise UnrecordedOutcomeError(exc) from exc


async def _attempt(
    nc: NatsClient,
    subject: str,
    req: Request,
    budget: float,
    region: str,
    encoding: str,
    attempts: Attempts,
) -> Exchange:
    if budget != float("inf"):
        # Tell the worker how long this attempt waits, so it does not start a request whose
        # caller has moved on (and may be retrying it elsewhere).
        req.timeout_ms = max(1, int(budget * 1000))
    payload = encode(req, encoding)
    if not nc.is_connected:
        # nats-py would buffer the message and send it after reconnecting: the caller could
        # not tell whether it ran. Refuse to send instead, so the answer is "not applied".
        raise DisconnectedError(f"not connected to NATS; request {req.id} was not sent")
    sent = time.monotonic()
    try:
        with denials_of(nc).watching(subject):
            msg = await nc.request(subject, payload, timeout=budget)
    except PublishRefused:
        raise ForbiddenError(
            f"NATS refused to deliver request {req.id} to {subject!r}: this connection's user "
            "may not publish there (a permissions violation; check its publish allow-list "
            "and WRITEBUS_PREFIX); it was not applied",
            data={"subject": subject},
        ) from None
    except nats.errors.NoRespondersError:
        raise NoWorkerError(subject, region) from None
    except nats.errors.TimeoutError:
        raise OutcomeUnknownError(
            req.id,
            f"no reply within {budget:.3f}s",
            subject=subject,
            timeout=attempts.elapsed,
        ) from None
    except nats.errors.MaxPayloadError as exc:
        raise LimitError(str(exc) or "payload too large") from exc
    except _NOT_SENT as exc:
        raise DisconnectedError(
            f"NATS connection unavailable ({type(exc).__name__}); request {req.id} was not sent"
        ) from exc
    except _LOST_AFTER_SEND as exc:
        raise OutcomeUnknownError(
            req.id,
            f"NATS connection lost after sending ({type(exc).__name__})",
            subject=subject,
            timeout=attempts.elapsed,
        ) from exc
    rpc_ms = (time.monotonic() - sent) * 1000
    try:
        reply = decode(msg.data, Reply, encoding_of(msg.headers, msg.data))
        if not reply.ok and reply.error is None:
            raise ProtocolError("the reply has ok=false and no error")
    except ProtocolError as exc:
        # Something answered, so the request was delivered; what it did is unreadable.
        raise OutcomeUnknownError(
            req.id, f"the reply could not be read: {exc}", subject=subject,
            timeout=attempts.elapsed,
        ) from exc
    if reply.ok:
        return Exchange(reply, rpc_ms, attempts.attempt)
    assert reply.error is not None
    raise error_from_info(
        reply.error, request_id=req.id, subject=subject, procedure=req.procedure,
        lsn=reply_lsn(reply),
    )  # fmt: skip
