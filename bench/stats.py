"""Summaries of latency samples: pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    ``nan`` for an empty sequence, so a missing measurement shows as such in the report.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    lo = math.floor(rank)
    hi = math.ceil(rank)
    if lo == hi:
        return float(ordered[lo])
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo))


def summary(values: Sequence[float]) -> dict[str, float]:
    """``p50``, ``p99``, ``mean``, ``min``, ``max`` and ``n`` of ``values``, rounded for reports."""
    n = len(values)
    return {
        "p50": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "mean": round(sum(values) / n, 3) if n else math.nan,
        "min": round(min(values), 3) if n else math.nan,
        "max": round(max(values), 3) if n else math.nan,
        "n": n,
    }


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, ``nan`` when the denominator is zero or missing."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator
