"""Which replica position counts for a region."""

from __future__ import annotations

from writebus.client.progress import RegionProgress, follows_promoted, lag_bound


def test_min_over_fresh_replicas_without_id() -> None:
    """Without a replica id, the region's position is the slowest fresh replica's."""
    p = RegionProgress(stale_after=3.0)
    p.observe("a", 100, now=10.0)
    p.observe("b", 50, now=10.0)
    assert p.replayed(now=10.5) == 50


def test_a_replica_gone_quiet_makes_the_position_unknown() -> None:
    """Following no replica, one not heard from within stale_after may still be the one this
    process reads (its bus node down, its database serving): the region's position is
    unknown, not the others' -- which released waits it had not replayed -- and the tracker
    reads its own database. Once it speaks again it counts again; quiet for forget_after
    (30 s: a node replaced under another host name), it is forgotten. A followed replica is
    all that matters."""
    p = RegionProgress(stale_after=3.0)
    p.observe("a", 100, now=10.0)
    p.observe("b", 50, now=5.0)
    assert p.quiet(10.0) == ["b"] and p.replayed(now=10.0) is None
    p.observe("b", 90, now=10.5)
    assert p.quiet(11.0) == [] and p.replayed(now=11.0) == 90
    assert p.replayed(now=20.0) is None
    p.observe("a", 200, now=30.0)
    assert p.quiet(31.0) == ["b"]  # quiet for 20.5 s: still unknown
    p.observe("a", 300, now=45.0)
    assert p.quiet(45.0) == [] and p.replayed(now=45.0) == 300  # b forgotten after 30 s
    named = RegionProgress(replica_id="a", stale_after=3.0)
    named.observe("a", 100, now=10.0)
    assert named.quiet(20.0) == [] and named.replayed(now=12.0) == 100


def test_filter_by_replica_id() -> None:
    """With a replica id set, other replicas' broadcasts are ignored."""
    p = RegionProgress(replica_id="mine")
    p.observe("other", 10, now=1.0)
    p.observe("mine", 99, now=1.0)
    assert p.replayed(now=1.0) == 99


def test_never_goes_backwards() -> None:
    """An out-of-order broadcast cannot lower a replica's position."""
    p = RegionProgress()
    p.observe("a", 100, now=1.0)
    p.observe("a", 90, now=2.0)
    assert p.replayed(now=2.0) == 100
    assert p.last_heard() == 2.0


async def test_tracker_follows_the_region_minimum() -> None:
    """A slower replica heard later lowers the tracker's position: waits between the two
    replicas' positions are not released by the faster one."""
    import asyncio

    from tests.support.fake_nats import FakeServer
    from writebus.client.settings import Settings
    from writebus.client.tracker import LsnTracker

    tracker = LsnTracker(Settings(), FakeServer().client())  # never started
    tracker._progress.observe("fast", 1000, now=1.0)
    tracker.advance(tracker._progress.replayed(now=1.0))
    tracker._progress.observe("slow", 500, now=1.0)
    tracker.advance(tracker._progress.replayed(now=1.0))
    assert tracker.replayed == 500
    w = asyncio.ensure_future(tracker.wait_for(800, timeout=5))
    await asyncio.sleep(0)
    assert not w.done() and tracker.waiting == 1
    tracker.advance(800)
    assert await w == 800


def test_single_is_one_fresh_replica_or_the_one_named() -> None:
    """One replica heard recently: single. Two: not (a read may land on either). A stale one
    does not count. A named replica is always the one this process reads."""
    p = RegionProgress(stale_after=3.0)
    assert not p.single(0.0)  # none heard yet
    p.observe("a", 10, 0.0)
    assert p.single(1.0)
    p.observe("b", 10, 1.0)
    assert not p.single(2.0)
    assert p.single(3.5)  # a went quiet: the probe reads this process's own database
    assert RegionProgress(replica_id="a").single(0.0)


def test_following_one_node_counts_its_position_at_once_and_back_to_every_node() -> None:
    """Every replica's position is kept; following one counts its alone, known from what was
    heard before. Following none again makes each unknown until it is heard again: after a
    promotion, a position heard before may be on an older timeline, past the fork (never
    lowered, it would hide the replica's replay of the new timeline), and one replica's news
    (the new primary's, broadcast all the time) must not speak for another's."""
    p = RegionProgress(stale_after=3.0)
    p.observe("r", 300, now=10.0)
    p.observe("y", 500, now=10.0)
    assert p.replayed(now=10.0) == 300
    y = p.following("y")
    assert y.replayed(now=10.0) == 500 and y.single(10.0)
    y.observe("r", 320, now=11.0)
    assert y.replayed(now=11.0) == 500 and y.last_heard() == 10.0
    every = y.following(None)
    assert every.replayed(now=11.0) is None
    every.observe("y", 460, now=12.0)  # y's replay as a standby of the next primary
    assert every.replayed(now=12.0) is None  # r not heard since
    every.observe("r", 470, now=12.0)
    assert every.replayed(now=12.0) == 460
    again = every.following(None)  # still heard when they were: quiet once that is old
    assert again.replayed(now=12.5) is None and again.quiet(20.0) == ["r", "y"]


def test_a_followed_replica_gone_quiet_is_not_forgotten() -> None:
    """A replica named by this process stays known however long it is quiet (its age tells
    the tracker broadcasts stopped); others are forgotten after forget_after."""
    p = RegionProgress(replica_id="a", stale_after=3.0)
    p.observe("a", 100, now=0.0)
    p.observe("b", 90, now=0.0)
    assert p.quiet(100.0) == [] and p.last_heard() == 0.0
    assert "b" not in p._seen


def test_only_a_process_reading_the_promoted_primary_follows_it() -> None:
    """The promoted node's flush position counts alone for a process whose own database is a
    primary on the promoted timeline -- not for one reading a standby, nor a stale primary."""
    assert follows_promoted(own_standby=False, own_timeline=2, promoted_timeline=2)
    assert not follows_promoted(own_standby=True, own_timeline=None, promoted_timeline=2)
    assert not follows_promoted(own_standby=False, own_timeline=1, promoted_timeline=2)


def test_the_lag_bound_is_the_followed_nodes_or_the_most_behind_fresh_one() -> None:
    """Each node's reported lag plus the time since it was heard; a stale report is left out,
    and a node that reports no lag makes the bound unknown."""
    reports = {"r": (8.0, 10.0), "y": (0.0, 10.5), "old": (60.0, 1.0)}
    assert lag_bound(reports, followed=None, stale_after=3.0, now=11.0) == 9.0
    assert lag_bound(reports, followed="y", stale_after=3.0, now=11.0) == 0.5
    assert lag_bound({**reports, "z": (None, 10.9)}, followed=None, stale_after=3.0,
                     now=11.0) is None  # fmt: skip
    assert lag_bound({}, followed=None, stale_after=3.0, now=11.0) is None
