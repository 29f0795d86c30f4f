"""When the replica monitor polls and publishes: pure decisions, no I/O.

The monitor polls its replica fast only while the replica is behind the newest LSN the primary
announced (and only for ``fast_window`` seconds after that announcement, in case the position is
one a standby never reports). For the first ``burst_window`` after an announcement that follows a
quiet spell it polls back to back: the WAL usually arrives with the announcement and is replayed
within a fraction of a millisecond, sooner than the event loop's 1 ms timer resolution would
notice. Under a steady stream of announcements it keeps to ``fast_interval``, so a busy primary
does not make the monitor spin. Otherwise it sleeps until the next announcement or heartbeat, so
an idle region costs one query and one message per heartbeat interval.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Cadence:
    """Timing knobs, in seconds."""

    fast_interval: float = 0.001
    heartbeat: float = 1.0
    fast_window: float = 5.0
    burst_window: float = 0.004
    quiet_before_burst: float = 0.02


@dataclass
class MonitorState:
    """What the monitor knows; times are monotonic seconds."""

    replayed: int | None = None
    published: int | None = None
    published_at: float = float("-inf")
    target: int = 0
    target_at: float = float("-inf")
    burst: bool = False

    def announce(self, lsn: int, now: float, cadence: Cadence | None = None) -> bool:
        """The primary announced ``lsn``; True if that is news (the monitor should poll)."""
        if lsn > self.target:
            quiet = (cadence or Cadence()).quiet_before_burst
            self.burst = now - self.target_at >= quiet
            self.target = lsn
            self.target_at = now
            return True
        return False

    def behind(self, now: float, cadence: Cadence) -> bool:
        """True while fast polling is warranted."""
        if now - self.target_at > cadence.fast_window:
            return False
        return self.replayed is None or self.replayed < self.target

    def should_publish(self, now: float, cadence: Cadence) -> bool:
        """Publish on progress, and on every heartbeat even without it."""
        if self.replayed is None:
            return now - self.published_at >= cadence.heartbeat
        if self.published is None or self.replayed > self.published:
            return True
        return now - self.published_at >= cadence.heartbeat

    def published_now(self, now: float) -> None:
        """Record a publish of the current position."""
        self.published = self.replayed
        self.published_at = now

    def next_delay(self, now: float, cadence: Cadence) -> float:
        """Seconds until the next poll, absent an announcement (0: poll again at once)."""
        if self.behind(now, cadence):
            if self.burst and now - self.target_at < cadence.burst_window:
                return 0.0
            return cadence.fast_interval
        return max(0.0, self.published_at + cadence.heartbeat - now)
