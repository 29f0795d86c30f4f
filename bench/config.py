"""How much a benchmark run measures: one frozen object, built for full, quick or tiny runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Self


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Sample counts and durations (seconds) of one run.

    ``ryw_rounds``: rounds of the interleaved read-your-write approaches (one sample of each per
    round); ``remote_apply_rounds``: the same with the replica as a synchronous standby;
    ``batch_rounds``: 10-statement changes per approach; ``local_rounds``: primary-region writes
    per approach; ``warmup``: unrecorded samples per approach before each of those.
    """

    delay_ms: float = 25.0
    ryw_rounds: int = 300
    remote_apply_rounds: int = 200
    batch_rounds: int = 100
    local_rounds: int = 3000
    warmup: int = 10
    throughput_seconds: float = 6.0
    throughput_slices: int = 4
    throughput_warmup_seconds: float = 0.5
    concurrencies: tuple[int, ...] = (1, 16, 64)
    tracker_waiters: int = 10_000
    tracker_batch: int = 100
    #: Runs of the wake-all comparison (tracker and bare futures alternating; medians).
    tracker_repeats: int = 5
    scaling_sizes: tuple[int, ...] = (10_000, 100_000)
    scaling_release: int = 100
    quick: bool = False

    @classmethod
    def full(cls, *, delay_ms: float = 25.0) -> Self:
        """A few hundred samples per approach; about 6 minutes on a 2-core machine."""
        return cls(delay_ms=delay_ms)

    @classmethod
    def quick_run(cls, *, delay_ms: float = 25.0) -> Self:
        """Fewer samples and shorter throughput runs: about 3 minutes."""
        return cls(
            delay_ms=delay_ms,
            ryw_rounds=60,
            remote_apply_rounds=40,
            batch_rounds=15,
            local_rounds=1000,
            warmup=5,
            throughput_seconds=1.5,
            throughput_slices=2,
            throughput_warmup_seconds=0.3,
            quick=True,
        )

    @classmethod
    def tiny(cls, *, samples: int, delay_ms: float = 25.0) -> Self:
        """A smoke run with ``samples`` per approach, to keep the command working in CI."""
        return cls.quick_run(delay_ms=delay_ms).replace(
            ryw_rounds=samples,
            remote_apply_rounds=samples,
            batch_rounds=samples,
            local_rounds=samples,
            warmup=1,
            throughput_seconds=0.3,
            throughput_slices=1,
            throughput_warmup_seconds=0.1,
            tracker_waiters=min(cls.tracker_waiters, 100 * samples),
            tracker_repeats=1,
            scaling_sizes=(1_000, 10_000),
            scaling_release=10,
        )

    def replace(self, **changes: object) -> Self:
        """A copy with some values changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


#: The metrics' cost at c16 (issue #9): the worker processes with metrics, and those without
#: (``WRITEBUS_HTTP_ADDR=off``); each side is the mean of its processes. Identical worker
#: processes differ by about 4 % (standard deviation) here; with four a side, the difference of
#: the two means has about 3 %.
METRICS_ON = ("writebus_1w_grouped", *(f"writebus_1w_metrics_{x}" for x in "bcd"))
METRICS_OFF = ("writebus_1w_no_metrics", *(f"writebus_1w_no_metrics_{x}" for x in "bcd"))
