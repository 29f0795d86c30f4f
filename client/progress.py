"""Which replay position counts for this process's database: pure logic, no I/O.

Each region node broadcasts its replica's replay LSN. When the tracker knows its replica's id it
follows that replica alone. Otherwise it is conservative: the region's position is the *minimum*
over the replicas heard from, so "replayed" is true of whichever one this process reads; once one
goes quiet, the position is unknown, and the tracker reads its own database instead.

After a promotion inside the region, the promoted node's flush position counts alone only for a
process whose own database is that node (:func:`follows_promoted`): a process reading another
replica of the region -- which may still be replaying, or follow the old primary and never
replay the new one's writes -- keeps the minimum, and its waits time out rather than release
reads that would miss the write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: A replica's position until it is heard again (:meth:`RegionProgress.following`).
UNKNOWN = -1


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
        """Record a broadcast received at ``now`` (monotonic seconds). LSNs never go backwards.
        Every replica's is kept; only the one followed counts, when one is."""
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
        return min(fresh) if fresh and UNKNOWN not in fresh else None

    def quiet(self, now: float) -> list[str]:
        """The replicas heard from before, but not within ``stale_after`` -- when this process
        follows no replica (one it follows answers for itself). One quiet for
        ``forget_after`` is forgotten, unless followed."""
        for gone in [r for r, (_, at) in self._seen.items()
                     if now - at > self.forget_after and r != self.replica_id]:  # fmt: skip
            del self._seen[gone]
        if self.replica_id is not None:
            return []
        return sorted(r for r, (_, at) in self._seen.items() if now - at > self.stale_after)

    def single(self, now: float) -> bool:
        """Whether one replica is all this process may read from: the one it follows
        (``replica_id``), or the only one heard from recently."""
        return self.replica_id is not None or len(self._fresh(now)) == 1

    def _counted(self) -> list[tuple[int, float]]:
        if self.replica_id is None:
            return list(self._seen.values())
        mine = self._seen.get(self.replica_id)
        return [mine] if mine is not None else []

    def _fresh(self, now: float) -> list[int]:
        """The positions counted of the replicas heard from within ``stale_after``."""
        return [lsn for lsn, at in self._counted() if now - at <= self.stale_after]

    def following(self, replica_id: str | None) -> RegionProgress:
        """A progress that counts ``replica_id``'s position alone, known at once (not at its
        next broadcast) -- or, None, every replica's, each unknown until it is heard again:
        after a promotion, a position heard before may be on an older timeline, past the
        fork, and one replica's news must not speak for another's."""
        out = RegionProgress(replica_id=replica_id, stale_after=self.stale_after,
                             forget_after=self.forget_after)  # fmt: skip
        if replica_id is None:  # heard when they were: a dead one's clocks run on
            out._seen = {node: (UNKNOWN, at) for node, (_, at) in self._seen.items()}
        elif replica_id in self._seen:
            out._seen[replica_id] = self._seen[replica_id]
        return out

    def last_heard(self) -> float | None:
        """Monotonic time of the latest broadcast counted."""
        return max((at for _, at in self._counted()), default=None)


def follows_promoted(
    *, own_standby: bool, own_timeline: int | None, promoted_timeline: int
) -> bool:
    """Whether a process whose own database is (or is not) a standby, on ``own_timeline`` when
    it is a primary, reads the node promoted onto ``promoted_timeline`` in its region -- so that
    node's flush position is the one to follow. A standby's reader, or a primary on another
    timeline (a stale one), does not."""
    return not own_standby and own_timeline == promoted_timeline


def lag_bound(
    reports: dict[str, tuple[float | None, float]],
    *,
    followed: str | None,
    stale_after: float,
    now: float,
) -> float | None:
    """An upper bound on the replica's lag in seconds from each node's latest ``(lag it
    reported, time heard)``: the followed node's lag plus the time since, else the most behind
    of those heard within ``stale_after``. None when none was, or one reports no lag."""
    bounds = []
    for node, (lag, heard) in reports.items():
        age = now - heard
        if (followed is not None and node != followed) or age > stale_after:
            continue
        if lag is None:
            return None
        bounds.append(lag + age)
    return max(bounds, default=None)
