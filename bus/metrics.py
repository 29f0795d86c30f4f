"""Prometheus metrics of a bus node (``/metrics``), built with prometheus-client.

Every metric is prefixed ``writebus_``. Request metrics come from the handler's
:class:`~writebus.bus.served.Served` records (:meth:`Metrics.observe`); the rest -- in-flight
requests, pool statistics, replay lag, broadcasts, polls -- are read from the node when
Prometheus scrapes, by a collector, so serving a request costs a few counter increments and
nothing more.

The request counters and histograms are plain numbers exposed by a collector, not
prometheus-client's ``Counter``/``Histogram``: those take a lock on every observation to be
thread-safe, while a node observes and is scraped on its one event-loop thread. That made
:meth:`Metrics.observe` about 5 µs a request; plain numbers, about 1.

Latency buckets span both what a worker spends (sub-millisecond commits to a few milliseconds)
and what a caller across a 50-300 ms WAN sees.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from writebus.bus.served import Served

#: Seconds: 0.25 ms .. 5 s, dense around a worker's commit (~1 ms) and a WAN round trip.
BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

#: psycopg_pool's ``get_stats()`` keys that are instantaneous measures; the rest are counters.
POOL_GAUGES = frozenset(
    {"pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting"}
)


@dataclass
class NodeReadings:
    """What the collector reads from the node at scrape time (callables, so the metrics module
    needs no reference to the service's internals)."""

    in_flight: Callable[[], dict[str, int]] = dict
    pool_stats: Callable[[], dict[str, int]] = dict
    #: region -> (lag bytes or None, lag seconds or None), as this node sees it.
    lag: Callable[[], dict[str, tuple[int | None, float | None]]] = dict
    #: role -> broadcasts published so far.
    broadcasts: Callable[[], dict[str, int]] = dict
    #: Database polls of the replica monitor so far.
    polls: Callable[[], int] = lambda: 0
    #: (groups committed, requests in them) by the group committer so far.
    groups: Callable[[], tuple[int, int]] = lambda: (0, 0)
    #: Committer slots open now (0: no committer, the node is not the primary).
    group_slots: Callable[[], int] = lambda: 0
    #: reason ("stalled", "overdue", "alone") -> groups that ran past the committer slots.
    group_past_slots: Callable[[], dict[str, int]] = dict
    #: The node's role now ("primary", "replica", or "starting").
    role: Callable[[], str] = lambda: "starting"
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class _NodeCollector(Collector):
    def __init__(self, region: str, readings: NodeReadings) -> None:
        self.region = region
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        r = self.readings
        info = GaugeMetricFamily(
            "writebus_node_info",
            "1 per bus node, labelled with its region, role and version (alert on no primary).",
            labels=["region", "role", "version"],
        )
        info.add_metric([self.region, r.role(), r.version], 1)
        yield info
        g = GaugeMetricFamily(
            "writebus_in_flight_requests",
            "Requests received and not answered yet: running, or waiting for a slot.",
            labels=["subject"],
        )
        for subject, n in sorted(r.in_flight().items()):
            g.add_metric([subject], n)
        yield g
        stats = r.pool_stats()
        for key in sorted(stats):
            name = f"writebus_pool_{key}"
            if key in POOL_GAUGES:
                yield GaugeMetricFamily(name, f"psycopg_pool {key}.", value=stats[key])
            else:
                yield CounterMetricFamily(name, f"psycopg_pool {key} so far.", value=stats[key])
        lag_bytes = GaugeMetricFamily(
            "writebus_replay_lag_bytes",
            "WAL bytes a region's replica is behind the primary, as this node sees it.",
            labels=["region"],
        )
        lag_seconds = GaugeMetricFamily(
            "writebus_replay_lag_seconds",
            "Seconds a region's replica is behind the primary (0 when caught up).",
            labels=["region"],
        )
        for region, (nbytes, seconds) in sorted(r.lag().items()):
            if nbytes is not None:
                lag_bytes.add_metric([region], nbytes)
            if seconds is not None:
                lag_seconds.add_metric([region], seconds)
        yield lag_bytes
        yield lag_seconds
        published = CounterMetricFamily(
            "writebus_broadcasts_published",
            "Progress broadcasts this node published.",
            labels=["role"],
        )
        for role, n in sorted(r.broadcasts().items()):
            published.add_metric([role], n)
        yield published
        groups, grouped = r.groups()
        yield CounterMetricFamily(
            "writebus_group_commits",
            "Transactions that committed statement writes (one group each).",
            value=groups,
        )
        yield CounterMetricFamily(
            "writebus_group_requests",
            "Statement writes committed in groups (divided by group commits: the mean group).",
            value=grouped,
        )
        yield GaugeMetricFamily(
            "writebus_group_slots",
            "Groups of statement writes this node lets run at once now: WRITEBUS_GROUP_CONNECTIONS, "
            "or 1 while the CPU is busy.",
            value=r.group_slots(),
        )
        past = CounterMetricFamily(
            "writebus_group_past_slots",
            "Groups of statement writes that ran past the committer slots: stalled (still "
            "running after the 50 ms budget), overdue (started for a write queued that long) "
            "or alone (writes too slow to share a group, started at once).",
            labels=["reason"],
        )
        for reason, n in sorted(r.group_past_slots().items()):
            past.add_metric([reason], n)
        yield past
        yield CounterMetricFamily(
            "writebus_replica_polls",
            "Polls of the local replica's replay position by the progress monitor.",
            value=r.polls(),
        )


class _Histogram:
    """Bucket counts and a sum, for observations from one thread (no lock)."""

    __slots__ = ("name", "doc", "counts", "sum")

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        self.counts = [0] * (len(BUCKETS) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is ``>= value``."""
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        """The histogram as Prometheus exposes it: cumulative buckets, sum, count."""
        buckets, total = [], 0
        for bound, n in zip((*map(floatToGoString, BUCKETS), "+Inf"), self.counts, strict=True):
            total += n
            buckets.append((bound, total))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)


class Metrics:
    """The node's metrics in their own registry (several nodes may share a process in tests)."""

    def __init__(self, region: str, readings: NodeReadings | None = None) -> None:
        self.region = region
        self.registry = CollectorRegistry()
        self.readings = readings or NodeReadings()
        #: (subject, kind, outcome) -> requests answered.
        self.requests: dict[tuple[str, str, str], int] = {}
        self.queue_seconds = _Histogram(
            "writebus_queue_wait_seconds", "Time a request waited in the worker for a free slot."
        )
        self.commit_seconds = _Histogram(
            "writebus_commit_seconds", "Time running a request: transaction through the flush LSN."
        )
        self.total_seconds = _Histogram(
            "writebus_request_seconds", "Time a request spent in the worker, waiting included."
        )
        self.idempotency_hits = 0
        self.registry.register(_RequestCollector(self))
        self.registry.register(_NodeCollector(region, self.readings))

    def observe(self, served: Served) -> None:
        """Count one answered request (a :class:`~writebus.bus.served.Observer`)."""
        if served.procedure is None:
            kind = "statements"
        elif served.procedure.startswith("writebus."):
            kind = "ping"
        else:
            kind = "procedure"
        key = (served.subject, kind, served.outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.queue_seconds.observe(served.queue_ms / 1000)
        self.commit_seconds.observe(served.run_ms / 1000)
        self.total_seconds.observe(served.total_ms / 1000)
        if served.duplicate:
            self.idempotency_hits += 1


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        requests = CounterMetricFamily(
            "writebus_requests",
            "Requests answered, by subject, kind (statements, procedure, ping) and outcome "
            "(ok or the error kind).",
            labels=["subject", "kind", "outcome"],
        )
        for key, n in sorted(m.requests.items()):
            requests.add_metric(list(key), n)
        yield requests
        yield m.queue_seconds.family()
        yield m.commit_seconds.family()
        yield m.total_seconds.family()
        yield CounterMetricFamily(
            "writebus_idempotency_hits",
            "Requests answered from the exactly-once table (a retry of an applied id).",
            value=m.idempotency_hits,
        )
