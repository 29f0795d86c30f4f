"""Every region's replay position, from the progress broadcasts: pure bookkeeping, no I/O.

Fed with each :class:`~writebus.client.protocol.LsnUpdate` heard on ``<prefix>.lsn.>``, a
:class:`ClusterView` answers what dashboards, ``writebus top``, the bus node's metrics and its
readiness check ask: where the primary is, how far behind each region's replicas are (in bytes
and seconds), and whose broadcasts went quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from writebus.client.protocol import LsnUpdate, update_lsn

_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class NodeState:
    """The latest broadcast of one node (``region``, ``replica_id``)."""

    region: str
    replica_id: str
    role: str
    lsn: int
    #: Monotonic time it was heard here.
    heard_at: float
    #: The sender's own lag figures, when it sent them (protocol fields with defaults).
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    version: str | None = None
    #: A primary's WAL timeline (None from a node before timelines, and from replicas).
    timeline: int | None = None


@dataclass(frozen=True)
class NodeRow:
    """One node as a dashboard shows it."""

    region: str
    replica_id: str
    role: str
    lsn: int
    lag_bytes: int | None
    lag_seconds: float | None
    age: float
    stale: bool
    version: str | None


@dataclass
class ClusterView:
    """Latest broadcast per node; ``stale_after`` seconds without one marks a node stale, and
    ``forget_after`` drops it: a node replaced under another id (a redeploy names replicas by
    host) does not stay a row for good."""

    stale_after: float = 3.0
    forget_after: float = 300.0
    nodes: dict[tuple[str, str], NodeState] = field(default_factory=dict)

    def observe(self, update: LsnUpdate, now: float) -> None:
        """Record a broadcast heard at ``now`` (monotonic seconds). Malformed ones raise
        :class:`~writebus.client.errors.ProtocolError`."""
        lsn = update_lsn(update)
        for key in [k for k, n in self.nodes.items() if now - n.heard_at > self.forget_after]:
            del self.nodes[key]
        self.nodes[(update.region, update.replica_id)] = NodeState(
            region=update.region,
            replica_id=update.replica_id,
            role=update.role,
            lsn=lsn,
            heard_at=now,
            lag_bytes=getattr(update, "lag_bytes", None),
            lag_seconds=getattr(update, "lag_seconds", None),
            version=getattr(update, "version", None) or None,
            timeline=update.timeline if update.role == "primary" else None,
        )

    def primary_lsn(self, now: float | None = None) -> int | None:
        """The newest position a primary announced, on the newest timeline announced: after a
        failover that lost WAL, the old primary's higher position is not the cluster's. Given
        ``now``, from primaries heard within ``stale_after`` only (None when all went quiet:
        how far anyone is behind is not known)."""
        primaries = [n for n in self.nodes.values() if n.role == "primary" and (
            now is None or now - n.heard_at <= self.stale_after)]  # fmt: skip
        if not primaries:
            return None
        newest = max((n.timeline or 0) for n in primaries)
        return max(n.lsn for n in primaries if (n.timeline or 0) == newest)

    def rows(self, now: float) -> list[NodeRow]:
        """Every node, primary first, then by region and replica id."""
        primary = self.primary_lsn(now)
        out = []
        for n in self.nodes.values():
            lag_bytes = n.lag_bytes
            lag_seconds = n.lag_seconds
            if n.role == "primary":
                lag_bytes, lag_seconds = 0, 0.0
            elif primary is not None:
                # Our own measurement against the newest announcement: the sender's figure may
                # be older than the primary position we heard since.
                lag_bytes = max(0, primary - n.lsn)
                if lag_bytes == 0:
                    lag_seconds = 0.0
            age = now - n.heard_at
            out.append(
                NodeRow(
                    region=n.region,
                    replica_id=n.replica_id,
                    role=n.role,
                    lsn=n.lsn,
                    lag_bytes=lag_bytes,
                    lag_seconds=lag_seconds,
                    age=age,
                    stale=age > self.stale_after,
                    version=n.version,
                )
            )
        out.sort(key=lambda r: (r.role != "primary", r.region, r.replica_id))
        return out

    def region_lag(self, now: float) -> dict[str, tuple[int | None, float | None]]:
        """Per region, the worst (largest) lag of its fresh replicas: (bytes, seconds)."""
        worst: dict[str, tuple[int | None, float | None]] = {}
        for row in self.rows(now):
            if row.role == "primary" or row.stale:
                continue
            prev_b, prev_s = worst.get(row.region, (None, None))
            worst[row.region] = (_max(prev_b, row.lag_bytes), _max(prev_s, row.lag_seconds))
        return worst


def _max(a: _N | None, b: _N | None) -> _N | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
