"""What a tracker knows of promotions: which writes a failover left out. Pure, no I/O.

A promotion starts a new WAL timeline whose history forked from the old one at some LSN: what
older timelines committed past that point never arrives in the new history, so waiting for it
would end in a timeout at best and, once the new timeline passes the same position, in a false
"replicated". A tracker hears of a promotion in two ways:

* its own region's database was promoted: that node announces the new timeline and, when it saw
  the promotion, the fork (``LsnUpdate.timeline``, ``fork_lsn``);
* the primary was promoted elsewhere: the region's replica monitors relay what the primary
  announced (``LsnUpdate.primary_timeline``, ``primary_fork_lsn``), and the region's standbys
  follow the new timeline.

A write on timeline ``t`` at ``lsn`` survived only if it is at or before the fork into every
later timeline. A promotion heard without its fork bounds nothing, unless it is the first and
its node was heard replaying as a standby here (its replay then was at or before the fork); a
timeline skipped (a promotion not heard: the tracker started after it) bounds nothing either.
Those writes' outcome is unknown: never reported as replicated.
"""

from __future__ import annotations


class Promotions:
    """Promotions heard (new timeline -> fork) and what they left out."""

    def __init__(self) -> None:
        #: new timeline -> the point past which older timelines' writes are lost (the fork
        #: when announced, else a lower bound of it, 0 when nothing bounds it).
        self._lost_after: dict[int, int] = {}
        #: the same, for the promotions whose fork was announced.
        self._forks: dict[int, int] = {}
        #: what each node was last heard replaying as a standby.
        self._standby_seen: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._lost_after)

    def __repr__(self) -> str:
        return f"<Promotions lost_after={self._lost_after} forks={self._forks}>"

    @property
    def newest(self) -> int:
        """The newest timeline heard promoted (1: none)."""
        return max(self._lost_after, default=1)

    @property
    def forks(self) -> dict[int, int]:
        """Each promotion heard whose fork was announced: new timeline -> fork."""
        return dict(self._forks)

    def standby_replayed(self, node: str, lsn: int) -> None:
        """``node`` was heard replaying ``lsn`` as a standby."""
        if lsn > self._standby_seen.get(node, 0):
            self._standby_seen[node] = lsn

    def is_news(self, timeline: int | None, fork: int | None) -> bool:
        """Whether a promotion into ``timeline`` (forked at ``fork``, None: not announced)
        tells something not yet known: a newer timeline, or the newest one's fork."""
        if timeline is None or timeline <= 1 or timeline < self.newest:
            return False
        return timeline > self.newest or (fork is not None and timeline not in self._forks)

    def heard(self, timeline: int, fork: int | None, node: str | None = None) -> int:
        """Record the promotion into ``timeline``, forked at ``fork``, of ``node`` (None: not
        known here); return the point past which older timelines' writes are lost."""
        seen = self._standby_seen.get(node) if node is not None else None
        if fork is not None:
            self._forks[timeline] = fork
            switch = fork
        elif seen is not None and not self._lost_after:
            switch = seen  # the promoted node's own replay, as heard: at or before the fork
        else:
            switch = 0  # nothing heard bounds the fork
        self._lost_after[timeline] = switch
        return switch

    def lost(self, lsn: int, timeline: int | None) -> int | None:
        """Where a promotion left out a write at ``lsn`` on ``timeline``, or None if none did
        (or the write's timeline is not known). A timeline skipped: 0."""
        if timeline is None or not self._lost_after:
            return None
        for later in range(timeline + 1, max(self._lost_after) + 1):
            at = self._lost_after.get(later)
            if at is None or lsn > at:
                return at or 0  # a gap: a promotion not heard here
        return None
