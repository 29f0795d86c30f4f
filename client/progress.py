"""Which replay position counts for this process's database: pure logic, no I/O.

Each region node broadcasts its replica's replay LSN. When the tracker knows its replica's id it
follows that replica alone. Otherwise it is conservative: the region's position is the *minimum*
over the replicas heard from, so "replayed" is true of whichever one this process reads; once one
goes quiet, the position is unknown, and the tracker reads its own database instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RegionProgress:
    """Latest replay LSN per replica of one region."""

    replica_id: str | None = None
    stale_after: float = 3.0
    #: Seconds after which a quiet replica is forgotten: longer than a bus node's restart
    #: (its replica's position is unknown meanwhile), but not for good -- a node replaced
    #: under another id (a new host name) would leave the region unknown until restart.
    forget_after: float = 30.0
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)

    def observe(self, replica_id: str, lsn: int, now: float) -> None:
        """Record a broadcast received at ``now`` (monotonic seconds). LSNs never go backwards."""
        if self.replica_id is not None and replica_id != self.replica_id:
            return
        prev = self._seen.get(replica_id)
        if prev is not None and prev[0] > lsn:
            lsn = prev[0]
        self._seen[replica_id] = (lsn, now)

    def replayed(self, now: float) -> int | None:
        """The position this process may rely on, or None when nothing fresh was heard -- or
        when, following no replica, one heard before has gone quiet (:meth:`quiet`): it may be
        the one this process reads, whose position is then unknown. (Leaving it out of the
        minimum released waits on the others' positions: stale reads from it.)"""
        if self.quiet(now):
            return None
        fresh = self._fresh(now)
        return min(fresh) if fresh else None

    def quiet(self, now: float) -> list[str]:
        """The replicas heard from before, but not within ``stale_after`` -- when this process
        follows no replica (one it follows answers for itself). One quiet for
        ``forget_after`` is forgotten."""
        if self.replica_id is not None:
            return []
        for gone in [r for r, (_, at) in self._seen.items() if now - at > self.forget_after]:
            del self._seen[gone]
        return sorted(r for r, (_, at) in self._seen.items() if now - at > self.stale_after)

    def single(self, now: float) -> bool:
        """Whether one replica is all this process may read from: the one it follows
        (``replica_id``), or the only one heard from recently."""
        return self.replica_id is not None or len(self._fresh(now)) == 1

    def _fresh(self, now: float) -> list[int]:
        """The positions of the replicas heard from within ``stale_after``."""
        return [lsn for lsn, at in self._seen.values() if now - at <= self.stale_after]

    def last_heard(self) -> float | None:
        """Monotonic time of the latest broadcast counted."""
        return max((at for _, at in self._seen.values()), default=None)
