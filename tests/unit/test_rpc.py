"""Request retries and the meaning of each failure, against an in-memory NATS.

The same paths run against a real nats-server in ``tests/test_write_path.py`` and the fault
suite; here each NATS behaviour (no responders, a lost reply, a disconnected client) is made to
happen exactly when a test wants it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from psycopg import errors as pg_errors

from tests.support.fake_nats import FakeMsg, FakeNats, FakeServer
from writebus.client.errors import (
    DisconnectedError,
    LimitError,
    NoWorkerError,
    Outcome,
    OutcomeUnknownError,
    WriteRejectedError,
)
from writebus.client.protocol import ErrorInfo, Reply, Request, Statement, decode, encode
from writebus.client.retry import RetryPolicy
from writebus.client.rpc import request

SUBJECT = "writebus.write"
FAST = RetryPolicy(base_delay=0.005, max_delay=0.02, attempt_timeout=0.2, no_worker_patience=0.1)

Answer = Callable[[Request], Awaitable[Reply | None]]


async def _ok(req: Request) -> Reply:
    return Reply(id=req.id, lsn="0/10", lsn_int=16)


class Worker:
    """A fake bus worker: records every request it receives and answers with ``answer``."""

    def __init__(self, nc: FakeNats, answer: Answer = _ok) -> None:
        self.nc = nc
        self.answer = answer
        self.seen: list[Request] = []
        self.sub: Any = None

    async def start(self) -> Worker:
        self.sub = await self.nc.subscribe(SUBJECT, queue="writebus-workers", cb=self._on)
        return self

    async def _on(self, msg: FakeMsg) -> None:
        req = decode(msg.data, Request)
        self.seen.append(req)
        reply = await self.answer(req)
        if reply is not None:
            await self.nc.publish(msg.reply, encode(reply))


def _req(rid: str = "r1") -> Request:
    return Request(id=rid, statements=[Statement(sql="INSERT INTO t VALUES (1)")])


async def _send(client: FakeNats, req: Request, timeout: float = 1.0) -> Any:
    return await request(client, SUBJECT, req, timeout=timeout, policy=FAST, region="syd")


async def test_a_reply_on_the_first_attempt() -> None:
    """One attempt, one request seen by the worker, its reply returned."""
    server = FakeServer()
    worker = await Worker(server.client()).start()
    ex = await _send(server.client(), _req())
    assert ex.attempts == 1 and ex.reply.lsn_int == 16 and len(worker.seen) == 1


async def test_no_worker_is_not_applied_and_reported_within_the_patience() -> None:
    """With nobody subscribed, the call retries for no_worker_patience, then raises
    NoWorkerError: not applied, since no attempt could have been delivered."""
    client = FakeServer().client()
    t0 = time.monotonic()
    with pytest.raises(NoWorkerError) as info:
        await _send(client, _req(), timeout=5.0)
    assert time.monotonic() - t0 < 1.0
    assert info.value.outcome is Outcome.NOT_APPLIED and client.requests >= 2


async def test_a_lost_reply_is_retried_with_the_same_id() -> None:
    """The first reply is lost: the call retries and the worker sees the same id twice."""
    server = FakeServer()
    worker = await Worker(server.client()).start()
    server.drop_replies(1)
    ex = await _send(server.client(), _req("same"))
    assert ex.attempts == 2 and [r.id for r in worker.seen] == ["same", "same"]


async def test_no_worker_after_an_ambiguous_attempt_is_an_unknown_outcome() -> None:
    """An attempt reached a worker and its reply was lost; then the worker went away. Later
    attempts meet "no responders" -- which says nothing about the first one -- so the call
    keeps trying until its deadline and raises OutcomeUnknownError carrying the id, never
    NoWorkerError ("not applied")."""
    server = FakeServer()
    worker_nc = server.client()

    async def answer_then_leave(req: Request) -> Reply:
        await worker.sub.unsubscribe()
        return Reply(id=req.id, lsn="0/10", lsn_int=16)

    worker = await Worker(worker_nc, answer_then_leave).start()
    server.drop_replies(1)
    client = server.client()
    t0 = time.monotonic()
    with pytest.raises(OutcomeUnknownError) as info:
        await _send(client, _req("maybe"), timeout=0.8)
    elapsed = time.monotonic() - t0
    assert info.value.request_id == "maybe" and info.value.outcome is Outcome.UNKNOWN
    assert isinstance(info.value.last_error, NoWorkerError)
    assert elapsed > FAST.no_worker_patience * 3  # kept retrying past the no-worker patience
    assert len(worker.seen) == 1 and client.requests > 3


async def test_an_ambiguous_attempt_then_a_worker_returns_succeeds() -> None:
    """After a lost reply and a spell with no worker (as while a NATS server restarts), a
    worker comes back: the retry with the same id succeeds instead of failing."""
    server = FakeServer()

    async def answer_then_leave(req: Request) -> Reply:
        await first.sub.unsubscribe()
        return Reply(id=req.id, lsn="0/10", lsn_int=16)

    async def stored(req: Request) -> Reply:
        return Reply(id=req.id, lsn="0/10", lsn_int=16, duplicate=True)

    first = await Worker(server.client(), answer_then_leave).start()
    second = Worker(server.client(), stored)
    server.drop_replies(1)
    client = server.client()

    async def return_after_no_responders() -> None:
        while client.requests < 3:  # the first attempt, then "no responders" twice
            await asyncio.sleep(0.001)
        await second.start()

    comeback = asyncio.create_task(return_after_no_responders())
    ex = await _send(client, _req("back"), timeout=2.0)
    await comeback
    assert ex.reply.duplicate and ex.attempts >= 3
    assert [r.id for r in first.seen + second.seen] == ["back", "back"]


async def test_disconnected_fails_at_once_and_sends_nothing() -> None:
    """A client that is not connected refuses to send: DisconnectedError (not applied) at
    once, and no request reaches NATS."""
    server = FakeServer()
    worker = await Worker(server.client()).start()
    client = server.client()
    client.connected = False
    t0 = time.monotonic()
    with pytest.raises(DisconnectedError) as info:
        await _send(client, _req(), timeout=5.0)
    assert time.monotonic() - t0 < 0.1
    assert info.value.outcome is Outcome.NOT_APPLIED and worker.seen == [] and client.requests == 0


async def test_a_rejected_write_is_not_retried_and_keeps_its_psycopg_class() -> None:
    """A 'rejected' reply becomes WriteRejectedError with the SQLSTATE and psycopg's class as
    __cause__, after one attempt."""
    server = FakeServer()

    async def reject(req: Request) -> Reply:
        info = ErrorInfo(kind="rejected", message="duplicate key", sqlstate="23505", statement=0)
        return Reply(id=req.id, ok=False, error=info)

    worker = await Worker(server.client(), reject).start()
    with pytest.raises(WriteRejectedError) as info:
        await _send(server.client(), _req())
    assert info.value.sqlstate == "23505" and info.value.statement_index == 0
    assert isinstance(info.value.__cause__, pg_errors.UniqueViolation)
    assert len(worker.seen) == 1


async def test_serialization_failures_are_retried() -> None:
    """A 40001 rejection is retryable: the next attempt (same id) succeeds."""
    server = FakeServer()

    async def fail_once(req: Request) -> Reply:
        if len(worker.seen) == 1:
            info = ErrorInfo(kind="rejected", message="could not serialize", sqlstate="40001",
                             retryable=True)
            return Reply(id=req.id, ok=False, error=info)
        return Reply(id=req.id, lsn="0/20", lsn_int=32)

    worker = await Worker(server.client(), fail_once).start()
    ex = await _send(server.client(), _req())
    assert ex.attempts == 2 and ex.reply.lsn_int == 32


async def test_every_attempt_tells_the_worker_its_budget() -> None:
    """Each attempt carries timeout_ms no larger than its own budget."""
    server = FakeServer()
    worker = await Worker(server.client()).start()
    server.drop_replies(1)
    await _send(server.client(), _req())
    assert [r.timeout_ms for r in worker.seen] and all(
        r.timeout_ms is not None and 0 < r.timeout_ms <= FAST.attempt_timeout * 1000
        for r in worker.seen
    )


async def test_a_request_over_the_max_payload_is_not_sent() -> None:
    """A request bigger than NATS accepts is a LimitError before anything is sent."""
    server = FakeServer(max_payload=1024)
    client = server.client()
    big = Request(id="big", statements=[Statement(sql="SELECT %s", params=["x" * 4096])])
    with pytest.raises(LimitError):
        await _send(client, big)
    assert client.requests == 0


@pytest.mark.parametrize("answer", [b"\xc1 not msgpack", encode(Reply(id="r1", ok=False))])
async def test_an_unreadable_reply_is_an_unknown_outcome(answer: bytes) -> None:
    """Something answered -- so the request was delivered -- but what it did cannot be read
    (undecodable bytes, or ok=false without an error): unknown, never "not applied"."""
    server = FakeServer()
    worker_nc = server.client()

    async def on(msg: FakeMsg) -> None:
        await worker_nc.publish(msg.reply, answer)

    await worker_nc.subscribe(SUBJECT, queue="writebus-workers", cb=on)
    with pytest.raises(OutcomeUnknownError) as info:
        await _send(server.client(), _req("garbled"), timeout=0.3)
    assert info.value.request_id == "garbled" and info.value.outcome is Outcome.UNKNOWN


def test_an_internal_or_unknown_error_kind_has_an_unknown_outcome() -> None:
    """A worker's bug ("internal") or a kind newer than this client says nothing about
    whether the write was applied."""
    from writebus.client.wire_errors import error_from_info

    for kind in ("internal", "from-the-future"):
        err = error_from_info(ErrorInfo(kind=kind, message="x"), request_id="r")
        assert isinstance(err, OutcomeUnknownError) and err.outcome is Outcome.UNKNOWN
        assert err.request_id == "r" and not err.retryable and kind in str(err)


def test_an_ended_transaction_crosses_the_wire_as_not_retryable() -> None:
    """A worker's TransactionEndedError is an ``unknown`` error with its own detail and
    ``retryable: false``; the client makes it a TransactionEndedError again, which the retry
    policy never resends (no exactly-once record stops a resend)."""
    from writebus.client.errors import TransactionEndedError
    from writebus.client.wire_errors import TRANSACTION_ENDED, error_from_info, error_info

    info = error_info(TransactionEndedError("r1", "a statement ended the transaction"))
    assert (info.kind, info.detail, info.retryable) == ("unknown", TRANSACTION_ENDED, False)
    err = error_from_info(info, request_id="r1")
    assert isinstance(err, TransactionEndedError) and err.outcome is Outcome.UNKNOWN
    assert not err.retryable and "not sent again" in str(err) and str(err).count("r1") == 1
    assert FAST.should_retry(err, attempt=1, elapsed=0.0, remaining=5.0) is None


def test_a_workers_unknown_answer_keeps_its_reason_once() -> None:
    """A worker's OutcomeUnknownError goes on the wire as its reason (kind ``unknown``,
    retryable); the client words the rest again, so the request id and the advice to resend
    appear once, not nested."""
    from writebus.client.wire_errors import error_from_info, error_info

    info = error_info(OutcomeUnknownError("r1", "its exactly-once claim failed (55P03: x)"))
    assert (info.kind, info.detail, info.retryable) == ("unknown", None, True)
    assert info.message == "its exactly-once claim failed (55P03: x)"
    err = error_from_info(info, request_id="r1")
    assert isinstance(err, OutcomeUnknownError) and err.retryable
    assert "55P03" in str(err) and str(err).count("send it again") == 1


async def test_an_unrecorded_call_of_unknown_outcome_never_advises_resending() -> None:
    """An rpc_region/rpc_primary call answered with a worker's internal error (nothing says
    whether it ran, and it is not retryable): UnrecordedOutcomeError -- calling again runs it
    again. It was an OutcomeUnknownError whose message advised sending it again."""
    from writebus.client.errors import UnrecordedOutcomeError
    from writebus.client.rpc import unrecorded_request
    from writebus.client.subjects import Subjects

    server = FakeServer()
    nc = server.client()

    async def internal(msg: FakeMsg) -> None:
        req = decode(msg.data, Request)
        info = ErrorInfo(kind="internal", message="KeyError: 'x'", retryable=False)
        await nc.publish(msg.reply, encode(Reply(id=req.id, ok=False, error=info)))

    await nc.subscribe("writebus.rpc.syd", queue="writebus-workers", cb=internal)
    req = Request(id="rpc-1", procedure="add_note", args=["x"])
    with pytest.raises(UnrecordedOutcomeError) as info:
        await unrecorded_request(nc, Subjects(), "syd", req, timeout=2, retry=FAST)
    assert info.value.outcome is Outcome.UNKNOWN and not info.value.retryable
    assert "request_id" not in str(info.value) and "runs it again" in str(info.value)
