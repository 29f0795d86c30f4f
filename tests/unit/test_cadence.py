"""The replica monitor's polling and publishing decisions."""

from __future__ import annotations

from writebus.bus.cadence import Cadence, MonitorState

C = Cadence(fast_interval=0.001, heartbeat=1.0, fast_window=5.0)


def test_idle_monitor_sleeps_until_heartbeat() -> None:
    """Caught up and nothing announced: the next poll is a heartbeat away, not a busy loop."""
    s = MonitorState(replayed=100)
    s.published_now(now=10.0)
    assert s.next_delay(10.2, C) == 0.8 or abs(s.next_delay(10.2, C) - 0.8) < 1e-9
    assert not s.should_publish(10.5, C)
    assert s.should_publish(11.0, C)


def test_behind_an_announcement_polls_fast() -> None:
    """After the primary announces an LSN beyond the replica's, polling is fast."""
    s = MonitorState(replayed=100)
    s.published_now(now=10.0)
    assert s.announce(150, now=10.1)
    assert s.behind(10.1, C)
    assert s.next_delay(10.1, C) == 0.0  # burst: back to back right after the news
    assert s.next_delay(10.1 + 2 * C.burst_window, C) == C.fast_interval
    s.replayed = 150
    assert not s.behind(10.2, C)


def test_old_announcement_does_not_poll_forever() -> None:
    """An announced LSN the replica never reaches stops fast polling after the window."""
    s = MonitorState(replayed=100)
    s.announce(10**6, now=0.0)
    assert s.behind(4.9, C)
    assert not s.behind(5.1, C)


def test_progress_is_published_at_once() -> None:
    """Any advance of the replay position is published without waiting for a heartbeat."""
    s = MonitorState(replayed=100)
    s.published_now(now=10.0)
    s.replayed = 101
    assert s.should_publish(10.001, C)


def test_stale_announcement_is_not_news() -> None:
    """Announcements at or below the known target do not trigger polling."""
    s = MonitorState()
    assert s.announce(10, now=0.0)
    assert not s.announce(10, now=0.1)
    assert not s.announce(5, now=0.1)


def test_steady_announcements_do_not_spin() -> None:
    """Back-to-back polling follows only an announcement after a quiet spell, not a stream."""
    s = MonitorState(replayed=0)
    s.announce(10, now=1.0)
    assert s.next_delay(1.0, C) == 0.0
    s.announce(20, now=1.001)  # 1 ms later: a busy primary
    assert s.next_delay(1.001, C) == C.fast_interval
    s.announce(30, now=2.0)  # after a quiet second
    assert s.next_delay(2.0, C) == 0.0
