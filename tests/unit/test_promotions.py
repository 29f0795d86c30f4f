"""The promotions a tracker heard, and which writes they left out (pure logic)."""

from __future__ import annotations

from writebus.client.promotions import Promotions


def test_before_any_promotion_nothing_is_lost_and_nothing_is_news_on_timeline_1() -> None:
    """Timeline 1 was never promoted: no write is lost, and hearing it is no news."""
    p = Promotions()
    assert not p and p.newest == 1 and p.forks == {}
    assert p.lost(10**9, 1) is None and p.lost(5, None) is None
    assert not p.is_news(1, None) and not p.is_news(None, 5)


def test_an_announced_fork_decides_what_an_older_timeline_lost() -> None:
    """A write at or before the fork survived; past it, it was lost at the fork. Writes on
    the new timeline are not lost."""
    p = Promotions()
    assert p.is_news(2, 100)
    assert p.heard(2, 100) == 100
    assert p.forks == {2: 100} and p.newest == 2
    assert p.lost(100, 1) is None and p.lost(101, 1) == 100 and p.lost(101, 2) is None
    assert not p.is_news(2, 100) and not p.is_news(2, None)


def test_without_a_fork_the_promoted_nodes_standby_replay_bounds_the_first_one() -> None:
    """The first promotion without a fork: the promoted node's last replay heard here is a
    lower bound of the fork. Another node's replay, or none, bounds nothing: 0."""
    p = Promotions()
    p.standby_replayed("a", 90)
    p.standby_replayed("a", 80)  # never back
    p.standby_replayed("b", 300)
    assert p.heard(2, None, "a") == 90
    assert p.lost(90, 1) is None and p.lost(91, 1) == 90
    assert p.is_news(2, 95)  # the fork, heard later
    assert p.heard(2, 95) == 95 and p.lost(93, 1) is None
    q = Promotions()
    q.standby_replayed("b", 300)
    assert q.heard(2, None, "a") == 0 and q.lost(250, 1) == 0
    assert Promotions().heard(2, None) == 0


def test_a_write_survives_only_up_to_the_fork_into_every_later_timeline() -> None:
    """Two promotions: a timeline-1 write past the first fork is lost there, even below the
    second; a timeline-2 write past the second fork is lost there. A timeline skipped (a
    promotion not heard) leaves no telling: 0."""
    p = Promotions()
    p.heard(2, 100)
    p.heard(3, 300)
    assert p.lost(250, 1) == 100 and p.lost(250, 2) is None and p.lost(350, 2) == 300
    assert not p.is_news(2, 100)  # older than the newest: a stale node's word
    skipped = Promotions()
    skipped.heard(3, 300)
    assert skipped.lost(250, 1) == 0 and skipped.lost(250, 2) is None
    assert skipped.heard(3, 300) == 300 and skipped.lost(50, 1) == 0
