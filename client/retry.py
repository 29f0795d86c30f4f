"""Retries: the policy (pure decisions) and the attempt loop every caller shares.

A retry re-sends the *same* request id, so the worker's idempotency table answers a request that
did commit with its stored result instead of applying it twice. Only retryable errors are retried
(:attr:`writebus.client.errors.WriteBusError.retryable`) and only while the caller's deadline
allows.

Ambiguity is never lost across attempts. Once an attempt *may* have reached a worker (it was
published and timed out, or its connection was lost after the publish), a later "no worker" or
"disconnected" says nothing about that earlier attempt: the loop keeps retrying with the same id
until the deadline, and if it still fails the caller gets
:class:`~writebus.client.errors.OutcomeUnknownError`, never an error that says "not applied".
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from writebus.client.errors import (
    DisconnectedError,
    NoWorkerError,
    Outcome,
    OutcomeUnknownError,
    WriteBusError,
)
from writebus.client.log import get_logger

T = TypeVar("T")

#: Seconds an attempt must have to be made: with less, its reply could not come back (a
#: round trip to the primary region), and the caller would hear its "no reply" instead of
#: what the attempts before it learned.
MIN_ATTEMPT = 0.05
log = get_logger("writebus.client.retry")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by the caller's deadline.

    ``no_worker_patience`` bounds how long "no worker serves this subject" is retried for a
    request that cannot have been delivered yet: long enough to ride through a rolling deploy,
    short enough to report a missing bus quickly. After an ambiguous attempt it no longer
    applies: the call retries until its deadline to learn the outcome.
    """

    retries: bool = True
    #: Retry errors after which the request may already have run (a timeout, a lost
    #: connection). Safe only where the worker applies each request id once: writes.
    retry_ambiguous: bool = True
    base_delay: float = 0.02
    max_delay: float = 0.5
    attempt_timeout: float = 2.0
    no_worker_patience: float = 0.5

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before attempt number ``attempt`` (1 = first retry)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return (rng or random).uniform(cap / 2, cap)

    def attempt_budget(self, remaining: float) -> float:
        """How long one attempt may wait for its reply."""
        return max(0.0, min(self.attempt_timeout, remaining))

    def should_retry(
        self,
        error: BaseException,
        *,
        attempt: int,
        elapsed: float,
        remaining: float,
        ambiguous: bool = False,
    ) -> float | None:
        """The delay before retrying after ``error``, or None to give up.

        ``attempt`` counts attempts made so far; ``elapsed``/``remaining`` are seconds since the
        first attempt and until the caller's deadline; ``ambiguous`` says whether an earlier
        attempt may have been applied (then only the deadline stops the retries).
        """
        if not self.retries or not isinstance(error, WriteBusError) or not error.retryable:
            return None
        unknown = error.outcome is Outcome.UNKNOWN
        if unknown and not self.retry_ambiguous:
            return None
        undelivered = isinstance(error, (NoWorkerError, DisconnectedError))
        if undelivered and not ambiguous:
            if isinstance(error, DisconnectedError):
                return None  # nothing was sent: report it at once
            if elapsed >= self.no_worker_patience:
                return None
        delay = self.backoff(attempt)
        if undelivered and not ambiguous:
            delay = min(delay, max(0.0, self.no_worker_patience - elapsed))
        if delay + MIN_ATTEMPT >= remaining:
            return None  # an attempt with less could not come back: it would only blur the answer
        return delay


def for_procedure_calls(policy: RetryPolicy, timeout: float) -> RetryPolicy:
    """The policy for ``rpc_region``/``rpc_primary``: those calls carry no exactly-once
    guarantee, so only failures that prove the request did not run (no worker, a serialization
    failure) are retried, and one attempt may use the whole timeout."""
    return replace(policy, retry_ambiguous=False, attempt_timeout=timeout)


#: Send once; report the first failure.
NO_RETRY = RetryPolicy(retries=False, attempt_timeout=float("inf"))


class Attempts:
    """The attempts of one call: deadline, count, ambiguity, and the decision to retry.

    One loop for every caller (the bus request and the primary-region direct write), as
    psycopg_pool's ``AttemptWithBackoff`` is for reconnections. ``once(budget)`` makes one
    attempt that may wait ``budget`` seconds and raises a :class:`WriteBusError` on failure.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float,
        *,
        request_id: str,
        subject: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.request_id = request_id
        self.subject = subject
        self._clock = clock
        self._sleep = sleep
        self.start = clock()
        self.deadline = self.start + timeout
        self.attempt = 0
        #: The first error after which the request may have been applied, if any.
        self.ambiguity: WriteBusError | None = None

    def __repr__(self) -> str:
        return (
            f"<Attempts {self.request_id} attempt={self.attempt} "
            f"ambiguous={self.ambiguity is not None}>"
        )

    @property
    def elapsed(self) -> float:
        """Seconds since the first attempt."""
        return self._clock() - self.start

    @property
    def remaining(self) -> float:
        """Seconds until the caller's deadline."""
        return self.deadline - self._clock()

    async def run(self, once: Callable[[float], Awaitable[T]]) -> T:
        """Call ``once`` until it succeeds, the policy gives up, or the deadline passes."""
        while True:
            self.attempt += 1
            try:
                return await once(self.policy.attempt_budget(self.remaining))
            except WriteBusError as err:
                if err.outcome is Outcome.UNKNOWN and self.ambiguity is None:
                    self.ambiguity = err
                delay = self.policy.should_retry(
                    err,
                    attempt=self.attempt,
                    elapsed=self.elapsed,
                    remaining=self.remaining,
                    ambiguous=self.ambiguity is not None,
                )
                if delay is None:
                    final = self.final(err)
                    if final is err:
                        raise
                    raise final from err
                log.debug(
                    "request.retrying", request_id=self.request_id, subject=self.subject,
                    attempt=self.attempt, error=type(err).__name__, delay=round(delay, 4),
                )  # fmt: skip
            await self._sleep(delay)

    def final(self, err: WriteBusError) -> WriteBusError:
        """The error to raise when giving up after ``err``.

        After an ambiguous attempt only an outcome-unknown error is truthful: the last error
        describes the last attempt, not the one that may have been applied -- unless it says
        the write *was* applied (:class:`~writebus.client.errors.ResultNotSentError`, a
        duplicate's result too large to send), which settles the earlier attempt too.
        """
        if (self.ambiguity is None or isinstance(err, OutcomeUnknownError)
                or err.outcome is Outcome.APPLIED):  # fmt: skip
            return err
        first = self.ambiguity
        unknown = OutcomeUnknownError(
            self.request_id,
            f"an earlier attempt may have been applied ({type(first).__name__}); "
            f"the last of {self.attempt} attempts ended with {type(err).__name__}: {err}",
            subject=self.subject,
            timeout=self.elapsed,
        )
        unknown.last_error = err
        return unknown
