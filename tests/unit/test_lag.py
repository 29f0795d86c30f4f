"""Replica lag in bytes and seconds from announcements and replay (pure)."""

from __future__ import annotations

from writebus.bus.lag import LagClock


def test_unknown_until_both_sides_are_known() -> None:
    """No lag is claimed before a primary position and a replay position were seen."""
    clock = LagClock()
    assert clock.lag_bytes() is None and clock.lag_seconds(1.0) is None
    clock.announced(100, now=1.0)
    assert clock.lag_bytes() is None


def test_lag_counts_from_the_oldest_unreplayed_announcement() -> None:
    """Seconds run from when the oldest position not yet replayed was announced; bytes from
    the newest announcement."""
    clock = LagClock()
    clock.replayed_to(100)
    clock.announced(150, now=10.0)
    clock.announced(200, now=10.5)
    assert clock.lag_bytes() == 100 and clock.lag_seconds(11.0) == 1.0
    clock.replayed_to(160)
    assert clock.lag_bytes() == 40 and clock.lag_seconds(11.0) == 0.5
    clock.replayed_to(200)
    assert clock.lag_bytes() == 0 and clock.lag_seconds(12.0) == 0.0


def test_an_idle_primary_is_no_lag() -> None:
    """Heartbeat re-announcements of a replayed position never make lag grow."""
    clock = LagClock()
    clock.replayed_to(500)
    for t in range(100):
        clock.announced(500, now=float(t))
    assert clock.lag_seconds(100.0) == 0.0 and clock.lag_bytes(100.0) == 0


def test_pending_announcements_are_bounded_and_keep_the_oldest() -> None:
    """A flood of announcements keeps memory bounded without forgetting how long the oldest
    has waited."""
    clock = LagClock(capacity=8)
    clock.replayed_to(0)
    for i in range(1, 1000):
        clock.announced(i, now=float(i))
    assert len(clock._pending) <= 8
    assert clock.lag_seconds(1000.0) == 999.0


def test_a_full_clock_never_reads_low() -> None:
    """Past its capacity the clock merges the newest announcements, keeping the oldest time
    among them: once replay passes the entries kept whole, the lag is that of the oldest
    position not yet replayed (3 s here) -- it read 0 s, the age of the latest alone."""
    clock = LagClock(capacity=4)
    clock.replayed_to(0)
    for i in range(7):  # positions 10..70 announced at 0..6 s
        clock.announced((i + 1) * 10, float(i))
    clock.replayed_to(35)
    assert clock.lag_seconds(6.0) == 3.0
    clock.replayed_to(70)
    assert clock.lag_seconds(6.0) == 0.0


def test_a_silent_primary_makes_the_lag_unknown() -> None:
    """No announcement for ``silent_after`` seconds: the primary may be committing what the
    replica has not replayed, so the lag is unknown, not the 0 it last was; the next
    announcement makes it known again."""
    clock = LagClock(silent_after=4.0)
    clock.announced(100, 10.0)
    clock.replayed_to(100)
    assert clock.lag_bytes(13.0) == 0 and clock.lag_seconds(13.0) == 0.0
    assert clock.lag_bytes(14.5) is None and clock.lag_seconds(14.5) is None
    clock.announced(100, 15.0)  # a heartbeat: the same position, heard again
    assert clock.lag_bytes(15.0) == 0 and clock.lag_seconds(15.0) == 0.0
