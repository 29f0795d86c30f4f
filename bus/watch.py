"""One live picture of a writebus deployment, from its NATS subjects alone.

``writebus top`` and ``writebus dashboard`` both show it. A :class:`Watch` subscribes to
``<prefix>.lsn.>`` (progress broadcasts) and ``<prefix>.status.>`` (each bus node's traffic) --
what the ``dashboard`` NATS role may read -- and :func:`snapshot` joins them into one row per
node: role, replay position, lag, broadcast age, requests per second, latency, errors, in-flight.
Building the rows is pure (:func:`build_rows`), so it is tested without servers.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from writebus.client.cluster import ClusterView, NodeRow
from writebus.client.protocol import LsnUpdate, Status, decode, encoding_of
from writebus.client.subjects import Subjects
from writebus.client.transport import NatsClient

#: A row is highlighted as lagging past either bound.
LAGGING_SECONDS = 1.0
LAGGING_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One node as ``top`` and the dashboard show it."""

    region: str
    replica_id: str
    role: str
    lsn: str | None
    lag_bytes: int | None
    lag_seconds: float | None
    #: Seconds since this node's last progress broadcast (None: none heard).
    broadcast_age: float | None
    requests_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors_per_s: float | None
    in_flight: int | None
    concurrency: int | None
    version: str | None
    stale: bool
    lagging: bool


@dataclass(frozen=True)
class Snapshot:
    """Every node, and the deployment's write throughput."""

    time: float
    rows: list[Row]
    writes_per_s: float
    primary_lsn: str | None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``top --once --json``, the dashboard's event stream): a NaN
        or infinity a malformed broadcast carried (msgpack can) is None."""
        return finite(asdict(self))  # type: ignore[no-any-return]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (which JSON cannot carry) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def _lsn_text(value: int | None) -> str | None:
    from writebus.client.lsn import format_lsn

    return format_lsn(value) if value is not None else None


def build_rows(
    nodes: list[NodeRow],
    statuses: dict[tuple[str, str], tuple[Status, float]],
    now: float,
    *,
    stale_after: float,
) -> list[Row]:
    """Join progress rows and status messages (with the monotonic time each was heard)."""
    keys = {(n.region, n.replica_id) for n in nodes} | set(statuses)
    by_key = {(n.region, n.replica_id): n for n in nodes}
    rows = []
    for key in keys:
        node = by_key.get(key)
        status, heard = statuses.get(key, (None, None))
        status_fresh = status is not None and heard is not None and now - heard <= stale_after
        interval = status.interval if status is not None and status.interval > 0 else None
        age = node.age if node is not None else None
        broadcast_fresh = age is not None and age <= stale_after
        # The newer word wins: a fenced old primary stops broadcasting, but its status goes
        # on saying "fenced" (its last broadcast said "primary", lag 0).
        if node is not None and (broadcast_fresh or not status_fresh):
            role, lag_bytes, lag_seconds = node.role, node.lag_bytes, node.lag_seconds
            lsn = _lsn_text(node.lsn)
        else:
            role = status.role if status else "?"
            lag_bytes = status.lag_bytes if status else None
            lag_seconds = status.lag_seconds if status else None
            lsn = status.lsn if status else None
        stale = not broadcast_fresh and not status_fresh
        lagging = (lag_seconds is not None and lag_seconds > LAGGING_SECONDS) or (
            lag_bytes is not None and lag_bytes > LAGGING_BYTES
        )
        rows.append(
            Row(
                region=key[0],
                replica_id=key[1],
                role=role,
                lsn=lsn,
                lag_bytes=lag_bytes,
                lag_seconds=lag_seconds,
                broadcast_age=age,
                requests_per_s=(
                    status.served_interval / interval if status and interval else None
                ),
                p50_ms=status.p50_ms if status else None,
                p99_ms=status.p99_ms if status else None,
                errors_per_s=(
                    sum(status.errors_interval.values()) / interval
                    if status and interval
                    else None
                ),
                in_flight=status.in_flight if status else None,
                concurrency=status.concurrency if status else None,
                version=(node.version if node is not None else None)
                or (status.version if status else None),
                stale=stale,
                lagging=lagging,
            )
        )
    rows.sort(key=lambda r: (r.role != "primary", r.region, r.replica_id))
    return rows


@dataclass
class Watch:
    """Listens to a deployment's progress and status subjects on ``nc``."""

    nc: NatsClient
    prefix: str = "writebus"
    stale_after: float = 3.5
    cluster: ClusterView = field(default_factory=ClusterView)
    statuses: dict[tuple[str, str], tuple[Status, float]] = field(default_factory=dict)
    _subs: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        """Subscribe."""
        subjects = Subjects(self.prefix)
        self.cluster.stale_after = self.stale_after
        self._subs.append(await self.nc.subscribe(subjects.lsn_all, cb=self._on_progress))
        self._subs.append(await self.nc.subscribe(subjects.status_all, cb=self._on_status))

    async def stop(self) -> None:
        """Unsubscribe."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _on_progress(self, msg: Any) -> None:
        with contextlib.suppress(Exception):  # a malformed broadcast is not our problem
            upd = decode(msg.data, LsnUpdate, encoding_of(msg.headers, msg.data))
            self.cluster.observe(upd, time.monotonic())

    async def _on_status(self, msg: Any) -> None:
        with contextlib.suppress(Exception):
            status = decode(msg.data, Status, encoding_of(msg.headers, msg.data))
            self.statuses[(status.region, status.replica_id)] = (status, time.monotonic())

    def snapshot(self) -> Snapshot:
        """The picture now. Statuses silent as long as the cluster view forgets nodes after
        are dropped too (a redeploy names nodes anew)."""
        now = time.monotonic()
        forget = self.cluster.forget_after
        for key in [k for k, (_, heard) in self.statuses.items() if now - heard > forget]:
            del self.statuses[key]
        rows = build_rows(
            self.cluster.rows(now), self.statuses, now, stale_after=self.stale_after
        )
        writes = sum(
            r.requests_per_s or 0.0 for r in rows if r.role == "primary" and not r.stale
        )
        return Snapshot(
            time=time.time(),
            rows=rows,
            writes_per_s=writes,
            primary_lsn=_lsn_text(self.cluster.primary_lsn(now)),  # fresh primaries only
        )
