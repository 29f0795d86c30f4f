"""Retry policy for bus requests: pure decisions, no I/O.

A retry re-sends the *same* request id, so the worker's idempotency table answers a request that
did commit with its stored result instead of applying it twice. Only retryable errors are retried
(:attr:`client.errors.WriteBusError.retryable`) and only while the caller's deadline allows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from writebus.client.errors import NoWorkerError, RpcTimeoutError, UnavailableError, WriteBusError


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by the caller's deadline.

    ``no_worker_patience`` bounds how long "no worker serves this subject" is retried: long enough
    to ride through a rolling deploy, short enough to report a missing bus quickly.
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
        self, error: BaseException, *, attempt: int, elapsed: float, remaining: float
    ) -> float | None:
        """The delay before retrying after ``error``, or None to give up and raise it.

        ``attempt`` counts attempts made so far; ``elapsed``/``remaining`` are seconds since the
        first attempt and until the caller's deadline.
        """
        if not self.retries or not isinstance(error, WriteBusError) or not error.retryable:
            return None
        if not self.retry_ambiguous and isinstance(error, (RpcTimeoutError, UnavailableError)):
            return None
        if isinstance(error, NoWorkerError) and elapsed >= self.no_worker_patience:
            return None
        delay = self.backoff(attempt)
        if isinstance(error, NoWorkerError):
            delay = min(delay, max(0.0, self.no_worker_patience - elapsed))
        if delay >= remaining:
            return None
        return delay


def for_procedure_calls(policy: RetryPolicy, timeout: float) -> RetryPolicy:
    """The policy for ``rpc_region``/``rpc_primary``: those calls carry no exactly-once
    guarantee, so only failures that prove the request did not run (no worker, a serialization
    failure) are retried, and one attempt may use the whole timeout."""
    return replace(policy, retry_ambiguous=False, attempt_timeout=timeout)


#: Send once; report the first failure.
NO_RETRY = RetryPolicy(retries=False, attempt_timeout=float("inf"))
