"""The request metrics: what they expose matches prometheus-client's own types."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from writebus.bus.metrics import BUCKETS, Metrics
from writebus.bus.served import Served

#: Seconds, including values on bucket bounds, below the first and above the last.
VALUES = [0.0, 0.0001, 0.00025, 0.0003, 0.001, 0.3, 0.31, 4.99, 5.0, 7.5, 120.0]


def _served(seconds: float, *, outcome: str = "ok", duplicate: bool = False,
            procedure: str | None = None) -> Served:
    return Served(request_id="r", subject="w.write", procedure=procedure, statements=1,
                  outcome=outcome, sqlstate=None, duplicate=duplicate, queue_ms=0.0,
                  run_ms=seconds * 1000, lsn=None, origin="lax")  # fmt: skip


def _samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, Any], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


def test_histogram_exposes_what_prometheus_client_would() -> None:
    """Same observations, same bucket bounds: identical bucket, count and sum samples (a value
    on a bound counts in that bound's bucket, as Prometheus' ``le`` says)."""
    metrics = Metrics("syd")
    reference = CollectorRegistry()
    ref = Histogram("writebus_commit_seconds", "x", buckets=BUCKETS, registry=reference)
    for v in VALUES:
        metrics.observe(_served(v))
        ref.observe(v)
    ours = _samples(metrics.registry, "writebus_commit_seconds")
    theirs = _samples(reference, "writebus_commit_seconds")
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(ours[key] - value) < 1e-9, key


def test_request_counters_by_kind_and_outcome() -> None:
    """Requests are counted per subject, kind and outcome; repeats answered from the
    exactly-once table count as idempotency hits -- as prometheus-client counters would show."""
    metrics = Metrics("syd")
    reference = CollectorRegistry()
    requests = Counter("writebus_requests", "x", ["subject", "kind", "outcome"],
                       registry=reference)  # fmt: skip
    hits = Counter("writebus_idempotency_hits", "x", registry=reference)
    for served, kind in [
        (_served(0.001), "statements"),
        (_served(0.001, duplicate=True), "statements"),
        (_served(0.001, outcome="rejected"), "statements"),
        (_served(0.001, procedure="writebus.ping"), "ping"),
        (_served(0.001, procedure="notes.add"), "procedure"),
    ]:
        metrics.observe(served)
        requests.labels(served.subject, kind, served.outcome).inc()
        if served.duplicate:
            hits.inc()
    for prefix in ("writebus_requests", "writebus_idempotency_hits"):
        assert _samples(metrics.registry, prefix) == _samples(reference, prefix)
