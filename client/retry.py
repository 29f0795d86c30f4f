"""Retry policy for bus requests: pure decisions, no I/O.

A retry re-sends the *same* request id, so the worker's idempotency table answers a request that
did commit with its stored result instead of applying it twice. Only retryable errors are retried
(:attr:`client.errors.WriteBusError.retryable`) and only while the caller's deadline allows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from client.errors import NoWorkerError, WriteBusError


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by the caller's deadline.

    ``no_worker_patience`` bounds how long "no worker serves this subject" is retried: long enough
    to ride through a rolling deploy, short enough to report a missing bus quickly.
    """

    retries: bool = True
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
        self, error: BaseException, *, attempt: int, elapsed: float, remaining: float
    ) -> float | None:
        """The delay before retrying after ``error``, or None to give up and raise it.

        ``attempt`` counts attempts made so far; ``elapsed``/``remaining`` are seconds since the
        first attempt and until the caller's deadline.
        """
        if not self.retries or not isinstance(error, WriteBusError) or not error.retryable:
            return None
        if isinstance(error, NoWorkerError) and elapsed >= self.no_worker_patience:
            return None
        delay = self.backoff(attempt)
        if isinstance(error, NoWorkerError):
            delay = min(delay, max(0.0, self.no_worker_patience - elapsed))
        if delay >= remaining:
            return None
        return delay


#: Send once; report the first failure.
NO_RETRY = RetryPolicy(retries=False, attempt_timeout=float("inf"))
