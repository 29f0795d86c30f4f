"""How far behind a replica is, in bytes and seconds: pure bookkeeping, no I/O.

Bytes: the newest primary position announced minus the position replayed. Seconds: how long the
oldest announced-but-not-replayed position has been waiting -- zero when caught up. This is the
replication delay a caller would see, and unlike ``now() - pg_last_xact_replay_timestamp()`` it
does not grow while the primary is simply idle.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class LagClock:
    """Announced primary positions, and the replica's replayed one."""

    #: Keep at most this many pending announcements (the newest merge, keeping the older time).
    capacity: int = 1024
    #: Seconds without any announcement after which the lag is unknown: the primary's node is
    #: down or cut off, and the primary may be committing (directly, in its own region) what
    #: this replica has not replayed. Its node announces at least every heartbeat.
    silent_after: float = 5.0
    primary: int | None = None
    replayed: int | None = None
    heard_at: float | None = None
    _pending: deque[tuple[int, float]] = field(default_factory=deque)

    def announced(self, lsn: int, now: float) -> None:
        """The primary announced ``lsn`` at ``now`` (monotonic seconds)."""
        self.heard_at = now
        if self.primary is not None and lsn <= self.primary:
            return
        self.primary = lsn
        if self.replayed is not None and lsn <= self.replayed:
            return
        if len(self._pending) >= self.capacity:
            # Full: the newest entry merges into the one after it, which keeps the older
            # time -- so the lag may read a little high once replay passes the one before,
            # never low (dropping the newest made it read the age of the latest alone).
            _, since = self._pending.pop()
            self._pending.append((lsn, since))
            return
        self._pending.append((lsn, now))

    def replayed_to(self, lsn: int) -> None:
        """The replica has replayed up to ``lsn``."""
        if self.replayed is None or lsn > self.replayed:
            self.replayed = lsn
        while self._pending and self._pending[0][0] <= lsn:
            self._pending.popleft()

    def silent(self, now: float) -> bool:
        """Whether the primary has announced nothing for :attr:`silent_after` seconds."""
        return self.heard_at is not None and now - self.heard_at > self.silent_after

    def lag_bytes(self, now: float | None = None) -> int | None:
        """WAL bytes behind the newest announcement (None until both are known, and -- given
        ``now`` -- while the primary is :meth:`silent`)."""
        if self.primary is None or self.replayed is None or (now is not None and self.silent(now)):
            return None
        return max(0, self.primary - self.replayed)

    def lag_seconds(self, now: float) -> float | None:
        """Seconds the oldest unreplayed announcement has waited (0 when caught up); None
        until both are known, and while the primary is :meth:`silent`."""
        if self.primary is None or self.replayed is None or self.silent(now):
            return None
        if not self._pending:
            return 0.0
        return max(0.0, now - self._pending[0][1])
