"""Retry decisions."""

from __future__ import annotations

import logging
import random

import pytest

from writebus.client.errors import (
    NoWorkerError,
    OutcomeUnknownError,
    ReplicationTimeoutError,
    RpcTimeoutError,
    UnavailableError,
    WriteRejectedError,
)
from writebus.client.retry import MIN_ATTEMPT, NO_RETRY, Attempts, RetryPolicy

P = RetryPolicy(base_delay=0.02, max_delay=0.5, no_worker_patience=0.5)


def test_non_retryable_errors_surface_at_once() -> None:
    """Rejected writes and replication timeouts are never retried."""
    assert P.should_retry(WriteRejectedError("x", sqlstate="23505"), attempt=1, elapsed=0,
                          remaining=10) is None
    assert P.should_retry(ReplicationTimeoutError(1, 1.0, None, "lax"), attempt=1, elapsed=0,
                          remaining=10) is None
    assert P.should_retry(ValueError("x"), attempt=1, elapsed=0, remaining=10) is None


def test_no_attempt_is_made_with_too_little_time_to_come_back() -> None:
    """With less than MIN_ATTEMPT left after the delay, the retries end: a last attempt of a
    few milliseconds could not get its reply, and its "no reply" replaced what the attempts
    before it learned (a flaky suite: "could not be read" became "no reply within 0.003s")."""
    err = UnavailableError("down")  # P's first delay: 0.01 to 0.02 s
    for _ in range(20):
        assert P.should_retry(err, attempt=1, elapsed=0.1, remaining=0.01 + MIN_ATTEMPT) is None
        assert P.should_retry(err, attempt=1, elapsed=0.1, remaining=0.021 + MIN_ATTEMPT)


def test_retryable_errors_back_off_within_deadline() -> None:
    """Timeouts and lost connections are retried with a delay below the remaining time."""
    for err in (RpcTimeoutError("s", 1.0, "id"), UnavailableError("down")):
        d = P.should_retry(err, attempt=1, elapsed=0.1, remaining=5.0)
        assert d is not None and 0 < d <= 0.02
    assert P.should_retry(RpcTimeoutError("s", 1.0, "id"), attempt=3, elapsed=1,
                          remaining=0.001) is None


def test_backoff_grows_and_is_capped() -> None:
    """Backoff doubles per attempt up to max_delay, with jitter in [cap/2, cap]."""
    rng = random.Random(1)
    assert all(0.01 <= P.backoff(1, rng) <= 0.02 for _ in range(50))
    assert all(0.04 <= P.backoff(3, rng) <= 0.08 for _ in range(50))
    assert all(0.25 <= P.backoff(30, rng) <= 0.5 for _ in range(50))


def test_no_worker_is_retried_only_within_patience() -> None:
    """'No worker' is retried for a deploy's gap, then reported."""
    err = NoWorkerError("writebus.write", "syd")
    assert P.should_retry(err, attempt=1, elapsed=0.1, remaining=10) is not None
    assert P.should_retry(err, attempt=5, elapsed=0.6, remaining=10) is None


def test_no_retry_policy() -> None:
    """NO_RETRY never retries, and lets one attempt use the whole timeout."""
    assert NO_RETRY.should_retry(RpcTimeoutError("s", 1, "i"), attempt=1, elapsed=0,
                                 remaining=9) is None
    assert NO_RETRY.attempt_budget(7.5) == 7.5


def test_serialization_failures_are_retried() -> None:
    """40001/40P01 rolled the whole transaction back: retrying with the same id is safe, and
    the flag survives the trip over the wire."""
    from writebus.client.protocol import ErrorInfo
    from writebus.client.wire_errors import error_from_info

    err = error_from_info(ErrorInfo(kind="rejected", message="x", sqlstate="40001",
                                    retryable=True), request_id="r")
    assert err.retryable
    assert P.should_retry(err, attempt=1, elapsed=0, remaining=5) is not None
    assert not WriteRejectedError("x", sqlstate="23505").retryable


def test_procedure_calls_do_not_retry_ambiguous_failures() -> None:
    """rpc_region/rpc_primary: a timeout or lost connection may mean the procedure ran, so it is
    not sent again; 'no worker' (never delivered) and 'unavailable' (the worker did not run it)
    still are."""
    from writebus.client.retry import for_procedure_calls

    p = for_procedure_calls(P, 6.0)
    assert p.attempt_budget(10) == 6.0
    assert p.should_retry(RpcTimeoutError("s", 1, "i"), attempt=1, elapsed=0, remaining=5) is None
    assert p.should_retry(OutcomeUnknownError("i", "lost"), attempt=1, elapsed=0,
                          remaining=5) is None
    assert p.should_retry(UnavailableError("x"), attempt=1, elapsed=0, remaining=5) is not None
    assert p.should_retry(NoWorkerError("s", "syd"), attempt=1, elapsed=0,
                          remaining=5) is not None


async def test_each_retry_is_logged_at_debug_with_what_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attempt loop says why it retries, on ``writebus.client.retry`` at DEBUG: the
    request id, the attempt, the error's type and the delay -- and nothing at INFO or above
    (a library stays quiet)."""
    calls = 0

    async def once(budget: float) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise UnavailableError("the worker is stopping; not run")
        return "done"

    async def no_sleep(delay: float) -> None:
        return None

    attempts = Attempts(P, 5.0, request_id="req-1", subject="wb.write", sleep=no_sleep)
    with caplog.at_level(logging.DEBUG, logger="writebus.client.retry"):
        assert await attempts.run(once) == "done"
    records = [r for r in caplog.records if r.name == "writebus.client.retry"]
    assert [r.levelno for r in records] == [logging.DEBUG]
    message = records[0].getMessage()
    assert message.startswith("request.retrying ")
    for part in ("request_id=req-1", "subject=wb.write", "attempt=1", "error=UnavailableError"):
        assert part in message


async def test_an_applied_answer_after_an_ambiguous_attempt_stands() -> None:
    """The first attempt timed out (unknown); the resend's answer is a duplicate whose result
    is too large to send: applied, and so is the first attempt -- not wrapped as "unknown"
    (which also dropped its position)."""
    from writebus.client.errors import OutcomeUnknownError, ResultNotSentError

    calls = 0

    async def once(budget: float) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OutcomeUnknownError("req-2", "no reply within 0.5s", subject="wb.write")
        raise ResultNotSentError("req-2", "its result cannot be sent", lsn=16)

    async def no_sleep(delay: float) -> None:
        return None

    attempts = Attempts(P, 5.0, request_id="req-2", subject="wb.write", sleep=no_sleep)
    with pytest.raises(ResultNotSentError) as info:
        await attempts.run(once)
    assert info.value.lsn == 16 and calls == 2
